"""x86 templates: AVX-512 where the target has it (16 int32 lanes; with avx512vpopcntdq LLVM emits
VPOPCNTD), AVX2 otherwise (8 lanes; LLVM's nibble-lookup vector popcount)."""

from tvm.target import Target
from tvm.target.codegen import target_has_features

from .cpu import Family


def vector_lanes(target: Target) -> int:
    return 16 if target_has_features("avx512f", target) else 8


TEMPLATES = Family(lanes=vector_lanes, tuning_lanes=16)
