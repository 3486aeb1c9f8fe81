"""llvm-mca: steady-state cycles per iteration of blocks of machine code on a core's scheduling model.

All blocks go to one llvm-mca run, each as its own code region. An instruction that llvm-mca
cannot read (a GNU objdump spelling it does not parse) or that the model does not know is left
out of its block and counted, so the caller can say how much of the code was not modelled.
"""

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import WrpnError

ITERATIONS = 200  # enough that the pipeline's fill and drain add under 1% to a block's cycles
MAX_ROUNDS = 20

_ERROR_LINE = re.compile(r"^\S+?:(\d+):\d+: error:", re.MULTILINE)
_UNSUPPORTED = re.compile(r"unsupported instruction.*\n.*?note: instruction:\s*(.+)")
_TOTAL = re.compile(r"^Total Cycles:\s+(\d+)$", re.MULTILINE)


@dataclass
class BlockCycles:
    cycles: list  # per block, per iteration
    dropped: int  # instructions llvm-mca could not model, over all blocks


def llvm_mca() -> str:
    for name in ("llvm-mca", "llvm-mca-14"):
        if shutil.which(name):
            return name
    raise WrpnError("llvm-mca not found: install Debian's llvm-14 (scripts/setup.sh does)")


def block_cycles(blocks: "list[list[str]]", triple: str, cpu: str) -> BlockCycles:
    """Cycles per iteration of each block of instruction texts, run as a loop on `cpu`'s model."""
    lines, owner = [], []  # the assembly text, and which block each line belongs to (None: a marker)
    for index, block in enumerate(blocks):
        lines.append(f"# LLVM-MCA-BEGIN r{index}")
        owner.append(None)
        for text in block:
            lines.append(text)
            owner.append(index)
        lines.append("# LLVM-MCA-END")
        owner.append(None)
    dropped = set()
    with tempfile.TemporaryDirectory(prefix="wrpn-mca-") as tmp:
        source = Path(tmp) / "blocks.s"
        for _ in range(MAX_ROUNDS):
            source.write_text("\n".join(text if n not in dropped else "" for n, text in enumerate(lines)) + "\n")
            result = subprocess.run([llvm_mca(), f"-mtriple={triple}", f"-mcpu={cpu}", f"-iterations={ITERATIONS}",
                                     "-all-stats=false", "-instruction-info=false", "-resource-pressure=false", str(source)],
                                    capture_output=True, text=True)
            # llvm-mca skips a line it cannot parse with an error and still exits 0: drop those lines itself.
            if result.returncode == 0 and "error:" not in result.stderr:
                return BlockCycles(_parse(result.stdout, len(blocks), owner, dropped), len(dropped))
            bad = {int(n) - 1 for n in _ERROR_LINE.findall(result.stderr)}
            unsupported = _UNSUPPORTED.search(result.stderr)
            if unsupported:
                bad |= {n for n, text in enumerate(lines) if owner[n] is not None and _same(text, unsupported[1])}
            bad -= dropped
            if not bad:
                raise WrpnError(f"llvm-mca failed: {result.stderr.strip().splitlines()[:2]}")
            dropped |= bad
    raise WrpnError(f"llvm-mca still rejects the code after leaving out {len(dropped)} instructions")


def _same(text: str, printed: str) -> bool:
    """Whether an input line is the instruction llvm-mca printed back (its spacing and case differ)."""
    def squash(s):
        return re.sub(r"\s+", "", s).lower()
    return squash(text) == squash(printed)


def _parse(report: str, count: int, owner: list, dropped: set) -> list:
    # llvm-mca numbers only the regions it analysed: an empty region (all dropped) has none.
    nonempty = sorted({owner[n] for n in range(len(owner)) if owner[n] is not None and n not in dropped})
    totals = [int(t) for t in _TOTAL.findall(report)]
    if len(totals) != len(nonempty):
        raise WrpnError(f"llvm-mca reported {len(totals)} regions for {len(nonempty)} blocks")
    cycles = [0.0] * count
    for block, total in zip(nonempty, totals):
        cycles[block] = total / ITERATIONS
    return cycles
