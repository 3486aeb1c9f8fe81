"""x86 templates: AVX-512 where the target has it (16 int32 lanes; with avx512vpopcntdq LLVM emits
VPOPCNTD), AVX2 otherwise (8 lanes; LLVM's nibble-lookup vector popcount)."""

from tvm.s_tir import Schedule
from tvm.target import Target
from tvm.target.codegen import target_has_features

from . import cpu


def vector_lanes(target: Target) -> int:
    return 16 if target_has_features("avx512f", target) else 8


def schedule_function(sch: Schedule, target: Target) -> None:
    cpu.schedule_function(sch, vector_lanes(target))


def conv2d_rule(sch: Schedule, block) -> list[Schedule]:
    return cpu.conv2d(sch, block, lanes=16, tuning=True)


def dense_rule(sch: Schedule, block) -> list[Schedule]:
    return cpu.dense(sch, block, lanes=16, tuning=True)


def bitpack_rule(sch: Schedule, block) -> list[Schedule]:
    return cpu.bitpack(sch, block, tuning=True)
