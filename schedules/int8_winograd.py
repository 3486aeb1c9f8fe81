"""CPU template for the Winograd int8 conv (`wrpn_tvm.ops.int8_winograd`): x86 dot kernels.

Per row of 2x2 output tiles (the parallel loop) the input transform of the row's 4 input rows is
computed in cache (`wino_rows`, then the 16 positions' uint8 inputs, vectorized over channels), then
the 16 GEMMs of the row's tiles by the position's weights on `int8_dot`'s register tiles (weight
blocks x tiles, tensorized with the same dot instructions), then the output transform of the row's
tiles. The tiles' int32 sums are read back as NHWC by the epilogue's own parallel pass (a layer's
sums stay in the L2 of the core that wrote them: that pass reads its own half). Nothing is sampled:
`schedules.apply_fixed_schedules` schedules these functions before tuning, which makes no task of
them.
"""

from tvm.s_tir import Schedule
from tvm.target import Target

from wrpn_tvm.ops.int8_winograd import TILE, WINOGRAD_RULE

from .common import (
    block_rule,
    inline_other_blocks,
    largest_divisor_at_most,
    loop_extent,
    place_parallel,
    place_remaining_blocks,
    root_blocks,
    try_vectorize,
)
from .int8_dot import PAD_VECTOR_BYTES, default_tile, dot_kernel

STAGES = ("wino_rows", "wino_input", "wino_output_tiles")
OUTPUT_LANES = 16  # int32 lanes of a zmm


def has_winograd_conv(sch: Schedule) -> bool:
    return any(block_rule(sch, block) == WINOGRAD_RULE for block in root_blocks(sch))


def _vectorize_channels(sch: Schedule, loop, lanes: int) -> None:
    try_vectorize(sch, sch.split(loop, [None, largest_divisor_at_most(loop_extent(sch, loop), lanes)])[1])


def _gemm(sch: Schedule, block, target: "Target | None") -> None:
    """The positions' GEMMs under the tile row: register tiles of weight blocks x tiles, the dot
    instruction tensorized, accumulators written back after the channel loop."""
    ob = int(sch.get(block).writes[0].source.shape[-1])
    kernel = dot_kernel(ob, "uint8", target)
    *_, tw, xi, b, oi, c4, ci = sch.get_loops(block)
    blocks, _, columns = default_tile(loop_extent(sch, b), 1, loop_extent(sch, tw), kernel, 1)
    b_outer, b_inner = sch.split(b, [None, blocks])
    tw_outer, tw_inner = sch.split(tw, [None, columns])
    sch.reorder(xi, b_outer, tw_outer, c4, b_inner, tw_inner, oi, ci)
    for loop in (b_inner, tw_inner):
        sch.unroll(loop)
    writeback = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(writeback, tw_outer, preserve_unit_loops=True)
    try_vectorize(sch, sch.get_loops(writeback)[-1])
    init = sch.decompose_reduction(block, c4)
    try_vectorize(sch, sch.get_loops(init)[-1])
    sch.tensorize(oi, kernel.intrin(1))


def _height_loop(sch: Schedule, block, tiles_buffer):
    """The loop of `block` (a consumer of the tiles, unscheduled) over output rows: the block
    variable that the tiles' row-of-tiles index is computed from."""
    (read,) = [r for r in sch.get(block).reads if r.source.same_as(tiles_buffer)]
    row_var = read.region[1].min.a  # oh // TILE
    block_vars = [iv.var for iv in sch.get(block).iter_vars]
    return sch.get_loops(block)[[var.same_as(row_var) for var in block_vars].index(True)]


def schedule_function(sch: Schedule, target: "Target | None") -> None:
    """Untuned (and only) schedule of a PrimFunc holding a Winograd int8 conv and its fused
    neighbours (the epilogue after its output, an int8 pack before it): the parallel loop runs over
    pairs of output rows of the function's output, and each iteration computes its row of tiles
    (inputs, GEMMs, output transform) in cache before the epilogue writes the two rows."""
    (gemm,) = [block for block in root_blocks(sch) if block_rule(sch, block) == WINOGRAD_RULE]
    others = inline_other_blocks(sch, frozenset({*STAGES, sch.get(gemm).name_hint}))  # outputs, reductions
    blocks = {sch.get(block).name_hint: block for block in root_blocks(sch)}
    rows, inputs, tiles = (blocks[name] for name in STAGES)
    tiles_buffer = sch.get(tiles).writes[0].source
    (output,) = [blocks[name] for name in others
                 if any(r.source.same_as(tiles_buffer) for r in sch.get(blocks[name]).reads)]
    row_pair, _ = sch.split(_height_loop(sch, output, tiles_buffer), [None, TILE])
    batch, *rest = [loop for loop in sch.get_loops(output) if not sch.get(loop).same_as(sch.get(row_pair))]
    sch.reorder(batch, row_pair, *rest)  # an NCHW output's channels go inside the row pair
    row = sch.fuse(batch, row_pair)
    sch.parallel(row)
    _vectorize_channels(sch, sch.get_loops(output)[-1], OUTPUT_LANES)
    sch.compute_at(tiles, row)
    sch.compute_at(gemm, row, preserve_unit_loops=True)
    sch.compute_at(inputs, row)
    sch.compute_at(rows, row)
    for stage in (rows, inputs):
        *_, unrolled, stage_channels = sch.get_loops(stage)
        sch.unroll(unrolled)
        _vectorize_channels(sch, stage_channels, PAD_VECTOR_BYTES)
    *_, r, s, channels = sch.get_loops(tiles)
    sch.unroll(r)
    sch.unroll(s)
    _vectorize_channels(sch, channels, OUTPUT_LANES)
    _gemm(sch, gemm, target)
    place_remaining_blocks(sch, [name for name in others if name != sch.get(output).name_hint], place_parallel)
