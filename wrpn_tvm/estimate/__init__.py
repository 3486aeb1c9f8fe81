"""How fast a compiled library would run on a Raspberry Pi, estimated without one.

Method (counting run x llvm-mca):
1. Counting run: the library runs one inference under qemu-user with a plugin that counts how
   often each block of its machine code executes (`counting`). qemu's timings mean nothing; its
   counts are exact, so every loop's trip count is known, whatever the schedule made of the TIR
   loops (unrolled, vectorized, split over threads).
2. Cycles per block: each basic block of the library (`disasm`, from objdump) goes to llvm-mca 14
   with the board core's scheduling model, run as a loop; its steady-state cycles per iteration
   are what one execution costs (`mca`).
3. Kernel cycles = sum of executions x cycles per iteration over the kernel's blocks; latency =
   (serial + parallel / threads) / clock at the board's stock clock (`model`, `boards`).
What it leaves out: cache misses and memory bandwidth (llvm-mca assumes every load hits L1),
branch mispredictions, the cost of starting threads, load imbalance between them, the time spent
in the TVM runtime between kernels, and any code outside the library (libc, libm).
How far to trust it: the same method applied to x86 builds, whose times can be measured on this
machine (benchmarks/arm_estimate.py); the error it found is printed beside every estimate.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..artifact import built_for_target
from ..errors import WrpnError
from . import counting, disasm, mca
from .boards import BOARDS, Board, boards_for, x86_board
from .model import KernelCycles, instruction_counts, kernel_cycles

CALIBRATION_FILE = "arm_estimate.json"
THREADS = (1, 4)


@dataclass
class LibraryProfile:
    """A library's basic blocks and how many times each ran in one inference."""

    library: Path
    target_name: str
    triple: str
    blocks: list
    executions: list


@dataclass
class BoardEstimate:
    board: Board
    kernels: list  # KernelCycles, slowest first
    unmodelled: int  # instructions llvm-mca could not model (left out of their blocks)

    def total_ms(self, threads: int) -> float:
        return sum(kernel.latency_ms(self.board.clock_ghz, threads) for kernel in self.kernels)

    def as_dict(self) -> dict:
        board = self.board
        return {"core": board.core, "clock_ghz": board.clock_ghz, "mca_cpu": board.mca_cpu,
                **{_ms_key(t): self.total_ms(t) for t in THREADS}, "unmodelled_instructions": self.unmodelled,
                "kernels": [{"kernel": k.name, "calls": k.calls, "instructions": k.instructions,
                             **{_ms_key(t): k.latency_ms(board.clock_ghz, t) for t in THREADS}}
                            for k in self.kernels if k.calls]}


def _ms_key(threads: int) -> str:
    return f"ms_{threads}_thread" + ("s" if threads > 1 else "")


@dataclass
class Estimate:
    library: Path
    target_name: str
    boards: list  # BoardEstimate
    calibration: "dict | None" = field(default=None)

    def table(self, threads=THREADS) -> str:
        return format_table(self, threads)


def _read_meta(library: Path) -> dict:
    if not library.is_file():
        raise WrpnError(f"{library}: no such file")
    sidecar = Path(str(library) + ".json")
    try:
        meta = json.loads(sidecar.read_text())
        target = meta["target"]["json"]
        return {"name": meta["target"]["name"], "triple": str(target.get("mtriple", "")), "kind": target["kind"],
                "target": meta["target"]}
    except (OSError, ValueError, KeyError, TypeError):
        raise WrpnError(f"{sidecar}: missing or not a wrpn-tvm sidecar; it is written by `wrpn-tvm compile`") from None


def profile(library: "str | Path") -> LibraryProfile:
    """Disassemble the library and count its blocks' executions in one inference (the slow part)."""
    library = Path(library)
    meta = _read_meta(library)
    if meta["kind"] != "llvm":
        raise WrpnError(f"{library.name} is built for {meta['name']}: estimates are for CPU libraries")
    arm = meta["triple"].startswith("aarch64")
    code = disasm.instructions(library, arm)
    blocks = disasm.basic_blocks(code, disasm.code_ranges(library, arm))
    counts = instruction_counts(code, counting.block_counts(library, arm))
    count_at = dict(zip((insn.address for insn in code), counts))
    executions = [count_at[block.start] for block in blocks]
    return LibraryProfile(library, meta["name"], meta["triple"], blocks, executions)


def estimate_on(prof: LibraryProfile, board: Board) -> BoardEstimate:
    """Per-kernel cycles of a profiled library on one board's core."""
    ran = [i for i, runs in enumerate(prof.executions) if runs]
    result = mca.block_cycles([[insn.text for insn in prof.blocks[i].instructions] for i in ran], board.triple, board.mca_cpu)
    cycles = [0.0] * len(prof.blocks)
    for i, per_iteration in zip(ran, result.cycles):
        cycles[i] = per_iteration
    kernels = kernel_cycles(prof.blocks, prof.executions, cycles)
    kernels.sort(key=lambda k: k.serial + k.parallel, reverse=True)
    return BoardEstimate(board, kernels, result.dropped)


def estimate(library: "str | Path", boards: "list[str] | None" = None) -> Estimate:
    """Estimated latency per kernel and in total of an ARM library on Raspberry Pi cores.

    `boards`: names from rasp3b, rasp4, rasp5; by default the board the library was built for (all
    three for the generic aarch64 preset)."""
    from ..targets import missing_features, resolve

    library = Path(library)
    meta = _read_meta(library)
    chosen = boards_for(meta["name"], meta["triple"], boards)
    built_for = built_for_target(library, meta["target"])
    for board in chosen:
        lacking = missing_features(built_for, resolve(board.name).target)
        if lacking:
            raise WrpnError(f"{library.name} uses {', '.join(sorted(lacking))}, which the {board.core} ({board.name}) lacks")
    prof = profile(library)
    return Estimate(library, meta["name"], [estimate_on(prof, board) for board in chosen], calibration())


@dataclass
class KernelEstimate:
    """A kernel library's estimated seconds per call on a board, or why there is none."""

    seconds: "float | None"
    error: "str | None" = None


def estimate_kernels(jobs: list, board: Board, threads: int, timeout: float) -> list:
    """Estimated seconds of one call of each kernel library's entry function on a board's core at
    `threads` threads: what a tuning job ranks candidates by (tuning/estimate_runner.py).

    `jobs`: (library, MetaSchedule args_info JSON). All of them share one counting run under
    qemu (its start-up is most of the cost) and one llvm-mca run; a call that fails is that
    job's error. If the shared counting run fails (a candidate that crashes the process),
    each job is counted on its own, so only the one that crashes fails."""
    arm = board.is_arm
    try:
        counted, errors = counting.candidate_counts(jobs, arm, timeout)
    except WrpnError as err:
        if len(jobs) == 1:
            return [KernelEstimate(None, str(err))]
        return [result for job in jobs for result in estimate_kernels([job], board, threads, timeout)]
    profiles = []
    for (library, _), blocks_run, error in zip(jobs, counted, errors):
        if error:
            profiles.append(None)
            continue
        library = Path(library)
        code = disasm.instructions(library, arm)
        blocks = disasm.basic_blocks(code, disasm.kernel_library_ranges(library, arm))
        count_at = dict(zip((insn.address for insn in code), instruction_counts(code, blocks_run)))
        profiles.append(LibraryProfile(library, board.name, board.triple, blocks,
                                       [count_at[block.start] for block in blocks]))
    ran = [(p, i) for p in profiles if p is not None for i, runs in enumerate(p.executions) if runs]
    result = mca.block_cycles([[insn.text for insn in p.blocks[i].instructions] for p, i in ran],
                              board.triple, board.mca_cpu) if ran else None
    cycles = {(id(p), i): per_iteration for (p, i), per_iteration in zip(ran, result.cycles if result else [])}
    estimates = []
    for prof, error in zip(profiles, errors):
        if prof is None:
            estimates.append(KernelEstimate(None, error))
            continue
        kernels = kernel_cycles(prof.blocks, prof.executions,
                                [cycles.get((id(prof), i), 0.0) for i in range(len(prof.blocks))])
        # Kernels never called are the library's start-up code (C runtime initialisers).
        seconds = sum(k.latency_ms(board.clock_ghz, threads) for k in kernels if k.calls) / 1e3
        estimates.append(KernelEstimate(seconds, None) if seconds > 0
                         else KernelEstimate(None, "the counting run saw no call of the kernel"))
    return estimates


def estimate_x86(library: "str | Path", clock_ghz: float, cores: int) -> BoardEstimate:
    """The same method on an x86 library, for this machine: what calibrates the ARM figures."""
    board = x86_board(_read_meta(Path(library))["name"], clock_ghz, cores)  # before the slow counting run
    return estimate_on(profile(library), board)


def calibration() -> "dict | None":
    """The committed x86 calibration's summary (benchmarks/results/arm_estimate.json), if present."""
    from ..resources import shipped_dir

    path = shipped_dir("benchmark_results") / CALIBRATION_FILE
    try:
        return json.loads(path.read_text())["summary"]
    except (OSError, ValueError, KeyError):
        return None


def calibration_line(summary: "dict | None") -> str:
    if not summary:
        return "x86 calibration: none committed (run benchmarks/arm_estimate.py)"
    return (f"x86 calibration of this method (same models built for {summary['preset']}, llvm-mca {summary['mca_cpu']}, "
            f"vs. measured on {summary['cpu']}, {summary['threads']} thread): end to end {summary['end_to_end']}; "
            f"per kernel {summary['per_kernel']}")


def format_table(result: Estimate, threads=THREADS) -> str:
    lines = [f"{result.library.name} (built for {result.target_name}): ESTIMATED latency, not measured"]
    for board_estimate in result.boards:
        board = board_estimate.board
        heads = "".join(f"{f'ms @{t} thr':>12}" for t in threads)
        lines += ["", f"{board.name}: {board.core} at {board.clock_ghz} GHz, llvm-mca model {board.mca_cpu}"
                  + (f" ({board.note})" if board.note else ""),
                  f"{'kernel':<58}{'calls':>6}{'M instr':>9}{heads}"]
        total_cycles = sum(k.serial + k.parallel for k in board_estimate.kernels)
        for kernel in board_estimate.kernels:
            if kernel.calls == 0 and kernel.serial + kernel.parallel < 1e-3 * total_cycles:
                continue  # library start-up code (C runtime initialisers), not part of an inference
            times = "".join(f"{kernel.latency_ms(board.clock_ghz, t):12.3f}" for t in threads)
            lines.append(f"{kernel.name[:58]:<58}{kernel.calls:>6}{kernel.instructions / 1e6:9.2f}{times}")
        totals = "".join(f"{board_estimate.total_ms(t):12.3f}" for t in threads)
        instructions = sum(k.instructions for k in board_estimate.kernels)
        lines.append(f"{'total':<58}{'':>6}{instructions / 1e6:9.2f}{totals}")
        if board_estimate.unmodelled:
            lines.append(f"({board_estimate.unmodelled} instructions llvm-mca could not model were left out)")
    lines += ["", "method: a counting run under qemu-user (exact block counts) x llvm-mca 14 cycles per block; "
              "L1 hits only, perfect thread scaling, TVM runtime time between kernels not included",
              calibration_line(result.calibration)]
    return "\n".join(lines)


__all__ = ["BOARDS", "Estimate", "BoardEstimate", "KernelCycles", "KernelEstimate", "estimate", "estimate_kernels",
           "estimate_x86", "profile"]
