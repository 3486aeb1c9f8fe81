"""The machine code of a compiled library: its instructions, basic blocks, and the kernel each belongs to.

TVM emits, per kernel X, an argument-checking wrapper `__tvm_ffi_X`, the body `X_compute_`, and
for each parallel loop an outlined function with no symbol of its own, placed after the body. So
code in the gap after `X_compute_` (up to the next symbol) is X's parallel code.
"""

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import WrpnError

OTHER_KERNEL = "(other library code)"


@dataclass(frozen=True)
class Instruction:
    address: int
    text: str  # as llvm-mca reads it: addresses of branch targets replaced by a symbol
    ends_block: bool  # a branch, call or return
    target: "int | None"  # a direct branch's destination


@dataclass(frozen=True)
class CodeRange:
    start: int
    end: int
    kernel: str
    parallel: bool
    entry: bool = False  # the kernel's entry point (its wrapper): runs once per call


@dataclass(frozen=True)
class Block:
    """A basic block: straight-line code entered at its first instruction."""

    instructions: tuple
    kernel: str
    parallel: bool
    is_entry: bool

    @property
    def start(self) -> int:
        return self.instructions[0].address


_ARM_BRANCH = re.compile(r"^(b|b\.\w+|bl|blr|br|ret|cbn?z|tbn?z)$")
_X86_BRANCH = re.compile(r"^(j\w+|call\w*|ret\w*|notrack)$")
_LINE = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")
_TARGET = re.compile(r"\b([0-9a-f]+) <[^>]*>")


def _tool(arm: bool, name: str) -> str:
    tool = f"aarch64-linux-gnu-{name}" if arm else name
    if shutil.which(tool) is None:
        package = "binutils-aarch64-linux-gnu" if arm else "binutils"
        raise WrpnError(f"{tool} not found: install Debian's {package} (scripts/setup.sh does)")
    return tool


def _output(argv) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise WrpnError(f"{argv[0]} failed on {argv[-1]}: {result.stderr.strip().splitlines()[-1:]}")
    return result.stdout


def instructions(library: Path, arm: bool) -> list:
    """Every instruction of the library's .text, in address order."""
    listing = _output([_tool(arm, "objdump"), "-d", "--no-show-raw-insn", "-j", ".text", str(library)])
    comment = "//" if arm else "#"
    branch = _ARM_BRANCH if arm else _X86_BRANCH
    found = []
    for line in listing.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        address, mnemonic, operands = int(match[1], 16), match[2], match[3].split(comment)[0].strip()
        target = _TARGET.search(operands)
        is_branch = bool(branch.match(mnemonic))
        text = f"{mnemonic} {_TARGET.sub('wrpn_target', operands)}".strip()
        found.append(Instruction(address, text, is_branch, int(target[1], 16) if target and is_branch else None))
    return found


def code_ranges(library: Path, arm: bool) -> list:
    """The library's text split by kernel, serial and parallel, in address order."""
    symbols = []
    for line in _output([_tool(arm, "nm"), "-S", "--defined-only", str(library)]).splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTwW":
            symbols.append((int(parts[0], 16), int(parts[1], 16), parts[3]))
    symbols.sort()
    ranges = []
    for index, (start, size, name) in enumerate(symbols):
        if name.startswith("__tvm_ffi_"):
            ranges.append(CodeRange(start, start + size, name[len("__tvm_ffi_"):], False, entry=True))
        elif name.endswith("_compute_"):
            kernel = name[: -len("_compute_")]
            ranges.append(CodeRange(start, start + size, kernel, False))
            following = symbols[index + 1][0] if index + 1 < len(symbols) else start + size
            if following > start + size:
                ranges.append(CodeRange(start + size, following, kernel, True))
        else:
            ranges.append(CodeRange(start, start + size, OTHER_KERNEL, False))
    return ranges


def kernel_library_ranges(library: Path, arm: bool) -> list:
    """code_ranges of a library holding one kernel (a MetaSchedule candidate, built from one
    PrimFunc): there LLVM inlines the body into the wrapper, and the parallel loops' outlined code
    follows whatever symbol comes last, so every gap in the code after the kernel's entry point
    is its parallel code. (The C runtime's start-up code, which has no symbol sizes, lies before it.)"""
    ranges = code_ranges(library, arm)
    entries = [r for r in ranges if r.entry]
    if len(entries) != 1:
        raise WrpnError(f"{library.name}: expected one kernel, found {len(entries)}")
    kernel, filled = entries[0], []
    for current, following in zip(ranges, ranges[1:] + [None]):
        filled.append(current)
        gap_end = following.start if following is not None else _text_end(library, arm)
        if current.start >= kernel.start and gap_end > current.end:
            filled.append(CodeRange(current.end, gap_end, kernel.kernel, True))
    return filled


def _text_end(library: Path, arm: bool) -> int:
    for line in _output([_tool(arm, "objdump"), "-h", str(library)]).splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[1] == ".text":
            return int(fields[3], 16) + int(fields[2], 16)
    raise WrpnError(f"{library.name} has no .text section")


def basic_blocks(code: list, ranges: list) -> list:
    """Split the code into basic blocks: a block starts at a range's start, at a branch target or
    after a branch, and belongs to the range it starts in (code outside every range is dropped)."""
    targets = {insn.target for insn in code if insn.target is not None}
    starts = {r.start for r in ranges}
    blocks, current, owner = [], [], None
    range_iter, range_now = iter(ranges), None

    def range_of(address):
        nonlocal range_now
        while range_now is None or address >= range_now.end:
            range_now = next(range_iter, None)
            if range_now is None:
                return None
        return range_now if address >= range_now.start else None

    def close():
        is_entry = owner.entry and current[0].address == owner.start
        blocks.append(Block(tuple(current), owner.kernel, owner.parallel, is_entry))
        current.clear()

    for insn in code:
        here = range_of(insn.address)
        if current and (insn.address in targets or insn.address in starts or here is not owner):
            close()
        owner = here
        if here is None:
            continue
        current.append(insn)
        if insn.ends_block:
            close()
    if current and owner is not None:
        close()
    return blocks
