"""The cores an estimate is made for, and the llvm-mca scheduling model that stands for each.

LLVM 14's AArch64 backend has its own scheduling models for Cortex-A53 (in-order) and Cortex-A57;
it gives the A57 model to cortex-a72 and cortex-a76 alike. The A72 is an A57 refinement, so that
fits; the A76 is a wider core (4-wide decode, 2 full 128-bit ASIMD pipes), so its figures are
pessimistic. x86 entries exist to calibrate the method on this machine, where times can be measured.
"""

from dataclasses import dataclass

from ..errors import WrpnError


@dataclass(frozen=True)
class Board:
    name: str
    core: str
    clock_ghz: float
    mca_cpu: str  # the llvm-mca -mcpu whose scheduling model is used
    triple: str
    cores: int
    note: str = ""

    @property
    def is_arm(self) -> bool:
        return self.triple.startswith("aarch64")


ARM_TRIPLE = "aarch64-linux-gnu"
BOARDS = {
    "rasp3b": Board("rasp3b", "Cortex-A53", 1.2, "cortex-a53", ARM_TRIPLE, 4, "Pi 3B+ runs at 1.4 GHz"),
    "rasp4": Board("rasp4", "Cortex-A72", 1.5, "cortex-a72", ARM_TRIPLE, 4,
                   "1.5 GHz: boards from 2020 on (rev 1.4+) and recent firmware run at 1.8 GHz, 17% faster"),
    "rasp5": Board("rasp5", "Cortex-A76", 2.4, "cortex-a76", ARM_TRIPLE, 4,
                   "LLVM 14 models the A76 with its Cortex-A57 model: expect an overestimate"),
}
ARM_BOARDS = tuple(BOARDS)

# The x86 presets whose code qemu-user 7.2 can run for the counting run (AVX2, no AVX-512), and the
# closest llvm-mca 14 model of this machine's AMD Zen 4/5 core.
X86_MODELS = {"x86-avx2": "znver3"}


def x86_board(preset: str, clock_ghz: float, cores: int) -> Board:
    """This machine's CPU as a 'board', to check estimates against measured times."""
    if preset not in X86_MODELS:
        raise WrpnError(f"x86 estimates need a library built for {' or '.join(X86_MODELS)} "
                        f"(qemu-user, which counts the loops, runs no AVX-512), not {preset!r}")
    return Board(f"this machine ({preset})", "x86-64", clock_ghz, X86_MODELS[preset], "x86_64-linux-gnu", cores)


def boards_for(target_name: str, triple: str, requested: "list[str] | None") -> list:
    """The ARM boards to estimate a library built for `target_name` on: its own board, or the three
    Raspberry Pis for the generic aarch64 preset, unless `requested` names some."""
    if not triple.startswith("aarch64"):
        raise WrpnError(f"estimate is for ARM libraries (rasp3b, rasp4, rasp5, aarch64); this one is built for {target_name}")
    names = requested or ([target_name] if target_name in BOARDS else list(ARM_BOARDS))
    unknown = [name for name in names if name not in BOARDS]
    if unknown:
        raise WrpnError(f"unknown board {unknown[0]!r}; choose from {', '.join(ARM_BOARDS)}")
    return [BOARDS[name] for name in names]
