"""Register tiles on the stack (schedules.stack_tiles): which allocations the pass keeps off the
workspace pool, and that a compiled kernel's tile no longer comes from it (exactness: every
kernel test compiles through the same pipeline)."""

import re

import pytest
from tvm import te
from tvm.script import tirx as T

from schedules import stack_tiles
from wrpn_tvm import ops
from wrpn_tvm.lowering.rewrite import conv_weight_block, conv_words, splits_shift_groups
from wrpn_tvm.pipeline import compile_prim_func
from wrpn_tvm.targets import resolve


@T.prim_func
def _three_buffers(a: T.Buffer((16,), "int32")):
    tile = T.alloc_buffer((384,), "int32", scope="local")
    large = T.alloc_buffer((8192,), "int32", scope="local")
    staged = T.alloc_buffer((384,), "int32")
    for i in range(16):
        tile[i] = a[i]
        large[i] = tile[i]
        staged[i] = large[i]
        a[i] = staged[i]


def test_only_local_buffers_of_a_known_size_up_to_the_limit_are_kept_on_the_stack():
    script = stack_tiles.keep_tiles_on_stack(_three_buffers).script()
    marked = [line.split("=")[0].strip() for line in script.splitlines() if stack_tiles.DISABLE_LOWER_BUILTIN in line]
    assert marked == ["tile"], script  # 1.5 KB local; not 32 KB local, not a global buffer


def _workspace_allocations(func, target: str) -> list[str]:
    """The names of the buffers a compiled function takes from the workspace pool (LLVM IR)."""
    module = compile_prim_func(func, resolve(target)).mod
    ir = (module.imports[0] if module.imports else module).inspect_source("ll")
    return re.findall(r"%(\w+) = tail call ptr %\d+\(i32 1, i32 %dev_id", ir)


def _lowered_conv(size: int, channels: int, spec):
    """A 2/2 3x3 bit-serial conv in the form the lowering gives it for `spec`."""
    dtype, words = conv_words(spec, 2, channels)
    data = te.placeholder((1, size, size, 2, words), dtype, name="data")
    block = conv_weight_block(spec, 2, channels)
    shape = (3, 3, 2, words, channels) if block is None else (channels // block, 3, 3, 2, words, block)
    weight = te.placeholder(shape, dtype, name="weight")
    conv = ops.bitserial_conv2d(data, weight, 2, 2, 1, 1, split_shift_groups=splits_shift_groups(spec, 2))
    return te.create_prim_func([data, weight, conv])


@pytest.mark.parametrize("target", ["x86-avx512", "x86-avx2"])
def test_a_compiled_convs_register_tile_comes_from_the_stack(target):
    """The AVX-512 tile (1.5 KB) and the AVX2 one (128 bytes) went to the pool before; the padded
    input (a global buffer over 1 KB) still does."""
    spec = resolve(target)
    assert _workspace_allocations(_lowered_conv(8, 64, spec), target) == ["wrpn_pad"]
