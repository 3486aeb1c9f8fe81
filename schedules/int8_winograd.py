"""CPU template for the Winograd int8 conv (`wrpn_tvm.ops.int8_winograd`): x86 dot kernels.

Two structures, by the size of the transformed weights (16 positions x out x in channels bytes),
which the op's weight form tells (`ops.int8_winograd.IN_KERNEL_TRANSFORM_BYTES`):

* up to that size (weights transformed ahead), per row of 2x2 output tiles (the parallel loop):
  the input transform of the row's 4 input rows in cache (`wino_rows`, then the 16 positions'
  uint8 inputs, vectorized over channels), then for each register tile's weight blocks the 16
  GEMMs of the row's tiles by the position's weights and those blocks' output transform, then the
  epilogue's two output rows. Each core reads all the weights once a row, from its L2;
* beyond it the weights would come from L3 or memory once a row, so the input transform is a
  parallel pass of its own and the parallel loop runs over groups of output channels
  (GROUP_WEIGHT_BYTES of transformed weights each): the group's weights transformed from the
  direct ones the op takes for such layers into a buffer, then for each register tile's weight
  blocks of the group, their GEMMs for every tile of the map and their output transform; then the
  group's epilogue. Every weight is read once a call.

The GEMMs run on `int8_dot`'s register tiles (weight blocks x rows x columns of tiles, tensorized
with the same dot instructions). Nothing is sampled: `schedules.apply_fixed_schedules` schedules
these functions before tuning, which makes no task of them.
"""

from tvm.s_tir import Schedule
from tvm.target import Target

from wrpn_tvm.ops.int8_winograd import POSITIONS, TILE, WINOGRAD_RULE

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
from .int8_dot import PAD_VECTOR_BYTES, DotKernel, default_tile, dot_kernel

STAGES = ("wino_rows", "wino_input", "wino_output_tiles")
WEIGHT_STAGES = ("wino_weight_rows", "wino_weight")  # where the op transforms the weights
INT8_LANES = 64  # int8 lanes of a zmm
OUTPUT_LANES = 16  # int32 lanes of a zmm
# ResNet-18 2x 2/2's layers, x86-avx512 on an AMX Xeon (2 MiB L2 a core), 2 threads, weights flushed
# from cache before each call: 28x28x256 (1 MiB of weights) 0.34-0.37 ms by rows, 0.54-0.57 in groups
# (whose GEMM sums for all 196 tiles outgrow L2); 14x14x512 (4 MiB) 0.55-0.57 by rows, 0.41 in groups
# of 512 KiB; 7x7x1024 0.60 in groups. The direct conv: 0.67, 0.64, 0.84.
GROUP_WEIGHT_BYTES = 1 << 19


def has_winograd_conv(sch: Schedule) -> bool:
    return any(block_rule(sch, block) == WINOGRAD_RULE for block in root_blocks(sch))


def _vectorize_channels(sch: Schedule, loop, lanes: int) -> None:
    try_vectorize(sch, sch.split(loop, [None, largest_divisor_at_most(loop_extent(sch, loop), lanes)])[1])


def _gemm(sch: Schedule, block, kernel: DotKernel, rows: int, columns: int) -> None:
    """The positions' GEMMs under their register tile's weight blocks (the block loop's whole
    extent): tiles of rows x columns of tiles, the dot instruction tensorized, accumulators written
    back after the channel loop."""
    *_, th, tw, xi, b, oi, c4, ci = sch.get_loops(block)
    th_outer, th_inner = sch.split(th, [None, rows])
    tw_outer, tw_inner = sch.split(tw, [None, columns])
    # Blocks innermost, as in int8_dot.conv2d: 56x56x128 as 2x(1x14) 0.87-0.91x the time of 1x(1x28).
    sch.reorder(xi, th_outer, tw_outer, c4, th_inner, tw_inner, b, oi, ci)
    for loop in (b, th_inner, tw_inner):
        sch.unroll(loop)
    writeback = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(writeback, tw_outer, preserve_unit_loops=True)
    try_vectorize(sch, sch.get_loops(writeback)[-1])
    init = sch.decompose_reduction(block, c4)
    try_vectorize(sch, sch.get_loops(init)[-1])
    sch.tensorize(oi, kernel.intrin(1))


def _output_loop(sch: Schedule, block, tiles_buffer, axis: int):
    """The loop of `block` (a consumer of the tiles, unscheduled) whose block variable the tiles'
    index on `axis` is computed from (1: the row of tiles, oh // TILE; 3: the weight block, o // ob)."""
    (read,) = [r for r in sch.get(block).reads if r.source.same_as(tiles_buffer)]
    var = read.region[axis].min.a
    block_vars = [iv.var for iv in sch.get(block).iter_vars]
    return sch.get_loops(block)[[v.same_as(var) for v in block_vars].index(True)]


def channel_group_blocks(blocks: int, channels: int, ob: int) -> int:
    """Weight blocks per channel group: its transformed weights GROUP_WEIGHT_BYTES at most (in
    cache for all of the map's tiles)."""
    return largest_divisor_at_most(blocks, max(1, GROUP_WEIGHT_BYTES // (POSITIONS * ob * channels)))


def _transform_weights_per_group(sch: Schedule, rows, weights, parallel) -> None:
    """The group's transformed weights into a buffer at the start of its iteration: per weight
    block and channel group of 4, the 12 vectors of 2G g, then the 16 positions, 64 int8 lanes each."""
    # A weight block and channel group's 16 positions side by side: laid out by position (32 KiB
    # apart in a group of 2 blocks) its 16 stores share one L1 set, and 7x7x1024 ran 1.14x slower.
    sch.transform_layout(weights, ("write", 0), lambda xi, b, c4, oi, ci: (b, c4, xi, oi, ci))
    sch.compute_at(weights, parallel, preserve_unit_loops=True)
    *_, xi, b, c4, oi, ci = sch.get_loops(weights)
    sch.reorder(b, c4, xi, oi, ci)
    sch.unroll(xi)
    _vectorize_channels(sch, sch.fuse(oi, ci), INT8_LANES)
    sch.compute_at(rows, c4)
    *_, i, l, oi, ci = sch.get_loops(rows)
    sch.unroll(i)
    sch.unroll(l)
    _vectorize_channels(sch, sch.fuse(oi, ci), INT8_LANES)


def schedule_function(sch: Schedule, target: "Target | None") -> None:
    """Untuned (and only) schedule of a PrimFunc holding a Winograd int8 conv and its fused
    neighbours (the epilogue after its output, an int8 pack before it): the parallel loop over the
    output's row pairs or channel groups (see the module's docstring), the tiles computed at it."""
    (gemm,) = [block for block in root_blocks(sch) if block_rule(sch, block) == WINOGRAD_RULE]
    others = inline_other_blocks(sch, frozenset({*STAGES, *WEIGHT_STAGES, sch.get(gemm).name_hint}))
    blocks = {sch.get(block).name_hint: block for block in root_blocks(sch)}
    rows, inputs, tiles = (blocks[name] for name in STAGES)
    tiles_buffer = sch.get(tiles).writes[0].source
    (output,) = [blocks[name] for name in others
                 if any(r.source.same_as(tiles_buffer) for r in sch.get(blocks[name]).reads)]
    weight_blocks, _, ob = (int(d) for d in sch.get(gemm).writes[0].source.shape[-3:])
    channels = int(sch.get(inputs).writes[0].source.shape[-1])
    weight_stages = [blocks[name] for name in WEIGHT_STAGES if name in blocks]
    group = channel_group_blocks(weight_blocks, channels, ob) if weight_stages else 0
    if group:
        outer, _ = sch.split(_output_loop(sch, output, tiles_buffer, 3), [None, group * ob])
    else:
        outer, _ = sch.split(_output_loop(sch, output, tiles_buffer, 1), [None, TILE])
    batch, *rest = [loop for loop in sch.get_loops(output) if not sch.get(loop).same_as(sch.get(outer))]
    sch.reorder(batch, outer, *rest)  # an NCHW output's channels go inside the parallel loop
    parallel = sch.fuse(batch, outer)
    sch.parallel(parallel)
    _vectorize_channels(sch, sch.get_loops(output)[-1], OUTPUT_LANES)
    # A register tile's weight blocks: their GEMMs, then their output transform while the products
    # are in L1 (all blocks' products of a row of 28 tiles are 224 KiB). 2 threads, x86-avx512,
    # weights flushed: 7x7x1024 0.89x the time of all GEMMs first, 28x28x256 0.96x, 56x56 and 14x14 1x.
    sch.compute_at(tiles, parallel, preserve_unit_loops=True)
    *_, th, tw, b, row, column, lanes = sch.get_loops(tiles)
    kernel = dot_kernel(ob, "uint8", target)
    blocks, tile_rows, tile_columns = default_tile(*(loop_extent(sch, loop) for loop in (b, th, tw)), kernel, 1)
    b_outer, b_inner = sch.split(b, [None, blocks])
    sch.reorder(b_outer, th, tw, b_inner, row, column, lanes)
    sch.unroll(row)
    sch.unroll(column)
    _vectorize_channels(sch, lanes, OUTPUT_LANES)
    sch.compute_at(gemm, b_outer, preserve_unit_loops=True)
    if group:
        _transform_weights_per_group(sch, *weight_stages, parallel)
        sch.compute_at(rows, sch.get_loops(inputs)[1])
        sch.parallel(sch.fuse(*sch.get_loops(inputs)[:2]))
    else:
        sch.compute_at(inputs, parallel)
        sch.compute_at(rows, parallel)
    for stage in (rows, inputs):
        *_, unrolled, stage_channels = sch.get_loops(stage)
        sch.unroll(unrolled)
        _vectorize_channels(sch, stage_channels, PAD_VECTOR_BYTES)
    _gemm(sch, gemm, kernel, tile_rows, tile_columns)
    place_remaining_blocks(sch, [name for name in others if name != sch.get(output).name_hint], place_parallel)
