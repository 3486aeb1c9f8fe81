"""aarch64 NEON templates: 4 int32 lanes per q register. LLVM lowers the vector popcount of
uint32 lanes to `cnt vN.16b` (bytes) followed by pairwise widening adds (`uaddlp` .8h, .4s),
which is the NEON bit-serial inner loop; the tests read the generated assembly to keep it so."""

from tvm.s_tir import Schedule
from tvm.target import Target

from . import cpu

NEON_LANES = 4


def schedule_function(sch: Schedule, target: Target) -> None:
    cpu.schedule_function(sch, NEON_LANES)


def conv2d_rule(sch: Schedule, block) -> list[Schedule]:
    return cpu.conv2d(sch, block, lanes=NEON_LANES, tuning=True)


def dense_rule(sch: Schedule, block) -> list[Schedule]:
    return cpu.dense(sch, block, lanes=NEON_LANES, tuning=True)


def bitpack_rule(sch: Schedule, block) -> list[Schedule]:
    return cpu.bitpack(sch, block, tuning=True)
