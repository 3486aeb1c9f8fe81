"""The next weight tile's prefetch (schedules.prefetch): which lines each iteration of a conv's
tile loop prefetches, where the templates ask for it, and that kernels stay exact with it."""

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import te, tirx
from tvm.sym.analyzer import Analyzer

import schedules
from kernel_cases import random_weights, tuning_spaces
from schedules import prefetch
from wrpn_tvm import kernels, ops
from wrpn_tvm.targets import resolve

LINE_ELEMENTS = prefetch.LINE_BYTES // 4  # uint32 weights


def _conv(size, channels, out_channels, blocked=True, stride=1, batch=1):
    """The AVX-512 lowering's form of a 2/2 3x3 conv: 32-bit shift groups, weights blocked by 16
    output channels (or in the plain layout)."""
    words = -(-channels // 32)
    data = te.placeholder((batch, size, size, 2, words), "uint32", name="data")
    block = ops.CONV_WEIGHT_BLOCK
    layout = (out_channels // block, 3, 3, 2, words, block) if blocked else (3, 3, 2, words, out_channels)
    weight = te.placeholder(layout, "uint32", name="weight")
    conv = ops.bitserial_conv2d(data, weight, 2, 2, stride, 1, split_shift_groups=True)
    return te.create_prim_func([data, weight, conv])


def _scheduled(func, target="x86-avx512"):
    return schedules.apply_default_schedules(tvm.IRModule({"main": func}), resolve(target).target)["main"]


def _nodes(root, kind) -> list:
    found = []
    tvm_ffi.structural_walk(root, lambda node: found.append(node) if isinstance(node, kind) else None)
    return found


def _prefetched_lines(func, line_elements=LINE_ELEMENTS) -> dict:
    """iteration of the parallel tile loop -> the weight lines (flat element offset // a line) it
    prefetches, evaluated from the inserted statement."""
    (tile_loop,) = [loop for loop in _nodes(func.body, tirx.For) if loop.kind == tirx.ForKind.PARALLEL
                    and _nodes(loop, tirx.Evaluate) and "prefetch" in str(loop.body)]
    (guard,) = [s for s in _nodes(tile_loop, tirx.IfThenElse) if "prefetch" in str(s.then_case)]
    line_loop = guard.then_case
    (call,) = [n for n in _nodes(line_loop, tirx.Evaluate)]
    (load,) = _nodes(call, tvm.ir.TensorLoad)  # what tirx.BufferLoad makes
    offset = load.indices[-1]
    var, line = tile_loop.loop_var, line_loop.loop_var
    analyzer = Analyzer()

    def value(expr, **values):
        bound = {var: tirx.IntImm(var.ty.dtype, values["tile"]),
                 line: tirx.IntImm(line.ty.dtype, values.get("line", 0))}
        return int(analyzer.simplify(tvm_ffi.structural_map(expr, (tirx.Var, lambda v: bound.get(v, v)))))

    lines = {}
    for iteration in range(int(tile_loop.extent)):
        lines[iteration] = set()
        if value(guard.condition, tile=iteration):
            for step in range(int(line_loop.extent)):
                lines[iteration].add(value(offset, tile=iteration, line=step) // line_elements)
    return lines


@pytest.mark.parametrize("size, stride, batch", [(7, 1, 1), (5, 1, 1), (13, 2, 1), (7, 1, 3)])
def test_each_tile_of_rows_prefetches_the_next_channel_tile(size, stride, batch):
    """Weights past L2's share (7x7 outputs of 512 -> 576 channels: 663 KB) take channel tiles
    outermost, each tile over the output rows (of every image); the rows of tile k together
    prefetch every line of tile k+1's weights (its 16 output channels' block), the last tile none."""
    func = prefetch.insert_prefetches(_scheduled(_conv(size, 500, 576, stride=stride, batch=batch)))
    rows = batch * ((size - 1) // stride + 1)
    block_lines = 9 * 2 * 16 * ops.CONV_WEIGHT_BLOCK // LINE_ELEMENTS  # 3x3, 2 planes, 16 words of 16 channels
    lines = _prefetched_lines(func)
    tiles = 576 // ops.CONV_WEIGHT_BLOCK
    assert len(lines) == tiles * rows
    for tile in range(tiles):
        fetched = set().union(*(lines[tile * rows + row] for row in range(rows)))
        if tile == tiles - 1:
            assert not fetched
        else:
            wanted = set(range((tile + 1) * block_lines, (tile + 2) * block_lines))
            assert wanted <= fetched and len(fetched - wanted) < rows, tile  # shares rounded up
    assert prefetch.ANNOTATION not in func.script()


def test_weights_that_stay_in_cache_are_not_prefetched():
    """Below CACHED_WEIGHT_BYTES (28x28x256 2/2: 147 KB) the template leaves the loop unmarked."""
    scheduled = _scheduled(_conv(28, 256, 256))
    assert prefetch.ANNOTATION not in scheduled.script()
    assert "llvm.prefetch" not in prefetch.insert_prefetches(scheduled).script()


def test_a_tile_whose_weights_are_not_one_run_is_not_prefetched():
    """In the plain layout a channel tile's weights are 16 channels of every row: prefetching their
    span would fetch nearly all the weights. The mark is dropped, nothing is inserted."""
    scheduled = _scheduled(_conv(7, 500, 576, blocked=False))
    assert prefetch.ANNOTATION in scheduled.script()
    lowered = prefetch.insert_prefetches(scheduled)
    assert "llvm.prefetch" not in lowered.script() and prefetch.ANNOTATION not in lowered.script()


def test_builds_emit_the_prefetch_instructions():
    """Through the compiler's TIR pipeline (compile_prim_func, as builds and tuning candidates)."""
    executable = kernels.compile_conv2d((1, 500, 7, 7), (576, 500, 3, 3), 2, 2, 1, 1, target="x86-avx512",
                                        split_shift_groups=True, weight_block=ops.CONV_WEIGHT_BLOCK)
    assert "prefetcht1" in executable.mod.inspect_source("asm")


@pytest.mark.parametrize("image, stride", [(7, 1), (9, 2)])
def test_prefetching_kernels_equal_reference(image, stride):
    """On the host (prefetching where it runs AVX-512; the same form without elsewhere)."""
    rng = np.random.default_rng(image)
    x = rng.integers(0, 4, (1, 500, image, image))
    w = random_weights(rng, 2, (576, 500, 3, 3))
    got = kernels.conv2d_levels(x, w, 2, 2, stride, 1, "host", 32, split_shift_groups=True,
                                weight_block=ops.CONV_WEIGHT_BLOCK)
    assert np.array_equal(got, ops.conv2d_levels_reference(x, w, 2, 2, stride, 1))


def test_tuning_spaces_keep_the_prefetch_and_stay_exact():
    """The x86 rule marks its sampled spaces too (the mark is an instruction of the trace, which
    records replay): after MetaSchedule's CPU postprocs, built as tuning candidates are (through the
    wrpn TIR pipeline), they prefetch and compute exactly."""
    from wrpn_tvm.pipeline import TIR_PIPELINE

    rng = np.random.default_rng(5)
    x = rng.integers(0, 4, (1, 500, 7, 7))
    w = random_weights(rng, 2, (576, 500, 3, 3))
    want = ops.conv2d_levels_reference(x, w, 2, 2, 1, 1)
    args = [ops.pack_activation_reference(x, 2), ops.block_conv_weight(ops.pack_weight(w, 2), ops.CONV_WEIGHT_BLOCK)]
    with resolve("x86-avx512").target:  # the rule reads the ISA off the current target, as `tune` sets it
        spaces = tuning_spaces(_conv(7, 500, 576), "cpu", ops.CONV2D_RULE, "wrpn_bitserial_conv2d", seed=4)
    prefetching = 0
    for space in spaces:
        executable = tvm.compile(space.mod, target=resolve("host").target, tir_pipeline=TIR_PIPELINE)
        prefetching += "prefetch" in executable.mod.inspect_source("asm")
        out = tvm.runtime.tensor(np.zeros((1, 7, 7, 576), np.int32))
        executable["main"](*(tvm.runtime.tensor(a) for a in args), out)
        assert np.array_equal(out.numpy().transpose(0, 3, 1, 2), want)
    assert prefetching


def test_int8_conv_with_channel_blocks_outermost_prefetches_the_next_blocks():
    """The int8-dot template takes weight blocks outermost past BLOCKS_OUTER_WEIGHT_BYTES (7x7x512
    3x3: 2.4 MB) and marks that loop: the 7 rows of each tile of weight blocks together prefetch
    every line of the next tile's blocks, the last tile none."""
    layout = ops.int8_layout(resolve("x86-avx512").target)
    data = te.placeholder((1, 7, 7, 512), "uint8", name="data")
    weight = te.placeholder((512 // layout.out_block, 3, 3, 128, layout.out_block, 4), "int8", name="weight")
    conv = ops.int8_conv2d(data, weight, 512, 1, 1, bits=(2, 2), layout=layout)
    func = prefetch.insert_prefetches(_scheduled(te.create_prim_func([data, weight, conv])))
    lines = _prefetched_lines(func, line_elements=prefetch.LINE_BYTES)
    block_lines = 9 * 128 * layout.out_block * 4 // prefetch.LINE_BYTES
    rows = 7
    tiles = len(lines) // rows
    blocks_per_tile = 512 // layout.out_block // tiles
    for tile in range(tiles):
        fetched = set().union(*(lines[tile * rows + row] for row in range(rows)))
        if tile == tiles - 1:
            assert not fetched
        else:
            first = (tile + 1) * blocks_per_tile * block_lines
            wanted = set(range(first, first + blocks_per_tile * block_lines))
            assert wanted <= fetched and len(fetched - wanted) < rows, tile
