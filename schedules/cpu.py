"""The generic CPU templates: register-tiled bit-serial kernels that keep their accumulators in
vector registers, vectorize over output channels (the weight layout puts O innermost, so one
broadcast activation word meets a vector of weight words), and run the outer tiles in parallel.
x86 uses them at its vector width; arm_cpu for the layers its NEON templates do not
take, and for bitpack. A conv that sums each shift group apart (AVX-512's lowering of long
reductions) gets its own tile: one accumulator per group, computed per tile of the combine stage."""

from typing import Callable

from tvm import DataType
from tvm.s_tir import Schedule

from wrpn_tvm.ops import BITPACK_RULE, CONV2D_RULE

from . import prefetch
from .common import (
    Decisions,
    attach_epilogue,
    inline_other_blocks,
    kernel_blocks,
    largest_divisor_at_most,
    loop_extent,
    pad_whole_input,
    place_parallel,
    place_remaining_blocks,
    registers_and_writeback,
    shift_groups,
    try_vectorize,
    weight_bytes,
    weight_read,
)

UNROLL_STEPS = [0, 4, 16]  # the register tile is unrolled already; more only bloats code
MAX_TILE_PIXELS = 7  # a row of ResNet's last stage in one tile
# Of AVX-512's 32 vector registers, what a tile of shift-group accumulators may take: the rest hold
# the weight words, the broadcast activation words and the counts in flight.
GROUP_ACCUMULATOR_REGISTERS = 24
VECTOR_BYTES = 64
# A shift-group kernel's default loop order takes channel tiles outermost where its weights exceed
# this (half a Zen 4/5 core's L2): pixel tiles outermost stream all the weights again for every
# tile, from memory once they fall out of cache. Cold caches, 2 threads, znver4: 7x7x1024 2/2
# (2.4 MB of weights) 1.22x the single sum's time with pixels outermost, 0.97x with channels; 14x14x512
# (590 KB) 0.97x and 0.89x; 28x28x256 (147 KB) 0.91x and 0.95x.
CACHED_WEIGHT_BYTES = 512 * 1024
CONV_LOOP_ORDERS = ("pixels_outer", "channels_outer")


def _prefetch_weights_past_cache(sch: Schedule, parallel, block) -> None:
    """Mark the tile loop to prefetch the next tile's weights (`prefetch`) where they exceed
    CACHED_WEIGHT_BYTES: those come from L3 at every call."""
    if weight_bytes(sch, block) > CACHED_WEIGHT_BYTES:
        prefetch.mark(sch, parallel, weight_read(sch, block).source)


def _default_pixels(width: int, lanes: int) -> int:
    """Pixels of an output row in the default register tile: 4 where the row divides by 4. With
    AVX-512 a row that does not (7 or 14 wide) takes 7: a 1-pixel tile loads every weight vector for
    a single pixel, and ResNet-18's 7x7 layers ran 1.2-3x slower than with a 7 x 2-vector tile
    (znver5, 1/1 to 4/2; 14 wide: 1.9x at 1/1, even at 2/2)."""
    pixels = largest_divisor_at_most(width, 4)
    return largest_divisor_at_most(width, MAX_TILE_PIXELS) if pixels < 4 and lanes >= 16 else pixels


def _split_channels(sch: Schedule, decisions: Decisions, loop, lanes: int, pixels: int):
    """Output channels -> [outer, registers (unrolled, at most 4), vector (at most 16 lanes)]:
    both inner factors are bounded so a sampled register tile cannot blow up the unrolled code.
    Default: 16 channels as 4 NEON vectors; with AVX-512, 2 vectors of 16 for a tile of several
    pixels (8-14 accumulators: with 4 vectors LLVM spilled accumulators at 2/2, and ResNet-18's
    2x layers ran 1-8% slower at 2/2 and 8-25% at 1/1 on znver5, as tuning on znver4 also chose),
    4 for a single pixel or row, whose accumulators would otherwise wait on each other."""
    extent = loop_extent(sch, loop)
    vector_default = largest_divisor_at_most(extent, min(16, 4 * lanes))
    rest, vector = sch.split(loop, decisions.tile(loop, 2, 16, [extent // vector_default, vector_default]))
    registers_wanted = (2 if pixels > 1 else 4) if lanes >= 16 else 1
    registers_default = largest_divisor_at_most(extent // vector_default, registers_wanted)
    outer, registers = sch.split(
        rest, decisions.tile(rest, 2, 4, [extent // vector_default // registers_default, registers_default]))
    return outer, registers, vector


def annotate_unroll(sch: Schedule, loop, decisions: Decisions) -> None:
    steps = decisions.choice(UNROLL_STEPS, default=0)
    sch.annotate(loop, "pragma_auto_unroll_max_step", steps)
    sch.annotate(loop, "pragma_unroll_explicit", 1)


def _conv2d_variant(sch: Schedule, block, lanes: int, tuning: bool, order: str) -> None:
    decisions = Decisions(sch, tuning)
    n, oh, ow, o, kh, kw, cw = sch.get_loops(block)
    oh_outer, oh_inner = sch.split(oh, decisions.tile(oh, 2, 2, [loop_extent(sch, oh), 1]))
    ow_default = _default_pixels(loop_extent(sch, ow), lanes)
    ow_outer, ow_inner = sch.split(
        ow, decisions.tile(ow, 2, MAX_TILE_PIXELS, [loop_extent(sch, ow) // ow_default, ow_default]))
    o_outer, o_regs, o_vec = _split_channels(sch, decisions, o, lanes, ow_default)
    outer = [n, oh_outer, ow_outer, o_outer] if order == "pixels_outer" else [o_outer, n, oh_outer, ow_outer]
    sch.reorder(*outer, kh, kw, cw, oh_inner, ow_inner, o_regs, o_vec)
    parallel = sch.fuse(*outer)
    sch.parallel(parallel)
    annotate_unroll(sch, parallel, decisions)
    if lanes >= 16:
        _prefetch_weights_past_cache(sch, parallel, block)
    pad_whole_input(sch, block)
    registers_and_writeback(sch, block, parallel, [oh_inner, ow_inner, o_regs], o_vec, kh, tuning)


def _group_tile_default(width: int, channels: int, groups: int, lanes: int, accumulator_bytes: int):
    """(pixels, channel vectors, lanes per vector) of the default tile of a shift-group kernel: the
    generic tile's pixels and lanes, then a vector of one register, then fewer pixels, until every
    group's accumulators fit GROUP_ACCUMULATOR_REGISTERS. ResNet-18's 2x 2/2 layers take 4 pixels x
    16 lanes (56 and 28 wide) and 7 pixels x 8 lanes (14 and 7 wide; x 16 lanes spilled)."""
    def registers(pixels, vector):
        return groups * pixels * max(1, vector * accumulator_bytes // VECTOR_BYTES)

    pixels = _default_pixels(width, lanes)
    vector = largest_divisor_at_most(channels, lanes)
    if registers(pixels, vector) > GROUP_ACCUMULATOR_REGISTERS:
        vector = largest_divisor_at_most(channels, max(1, VECTOR_BYTES // accumulator_bytes))
    while pixels > 1 and registers(pixels, vector) > GROUP_ACCUMULATOR_REGISTERS:
        pixels = largest_divisor_at_most(width, pixels - 1)
    vectors = largest_divisor_at_most(channels // vector,
                                      max(1, min(4, GROUP_ACCUMULATOR_REGISTERS // registers(pixels, vector))))
    return pixels, vectors, vector


def _grouped_conv2d_variant(sch: Schedule, block, lanes: int, tuning: bool, order: str) -> None:
    """The register tile of a kernel that sums each shift group apart: tiled on its combine stage,
    whose loops run in parallel, with the kernel computed per tile into local accumulators (one
    per group, the group loop unrolled inside the tile) that the combine reads straight back."""
    decisions = Decisions(sch, tuning)
    (combine,) = sch.get_consumers(block)
    n, oh, ow, o = sch.get_loops(combine)
    width, channels = loop_extent(sch, ow), loop_extent(sch, o)
    accumulator_bytes = DataType(sch.get(block).writes[0].source.dtype).bits // 8
    pixels, vectors, vector = _group_tile_default(width, channels, shift_groups(sch, block), lanes,
                                                  accumulator_bytes)
    oh_outer, oh_inner = sch.split(oh, decisions.tile(oh, 2, 2, [loop_extent(sch, oh), 1]))
    ow_outer, ow_inner = sch.split(ow, decisions.tile(ow, 2, MAX_TILE_PIXELS, [width // pixels, pixels]))
    rest, vector_factor = decisions.tile(o, 2, 16, [channels // vector, vector])
    o_rest, o_vector = sch.split(o, [rest, vector_factor])
    o_outer, o_registers = sch.split(
        o_rest, decisions.tile(o_rest, 2, 4, [channels // vector // vectors, vectors]))
    outer = [n, oh_outer, ow_outer, o_outer] if order == "pixels_outer" else [o_outer, n, oh_outer, ow_outer]
    sch.reorder(*outer, oh_inner, ow_inner, o_registers, o_vector)
    parallel = sch.fuse(*outer)
    sch.parallel(parallel)
    annotate_unroll(sch, parallel, decisions)
    _prefetch_weights_past_cache(sch, parallel, block)
    try_vectorize(sch, o_vector)
    sch.compute_at(block, parallel, preserve_unit_loops=True)
    sch.set_scope(block, 0, "local")
    # The halo copied per tile cost this kernel a fifth of its time (28x28x256 2/2, 1 thread, znver4:
    # 2.09 -> 1.65 ms padded whole); the single sum's tile pads whole too (56x56x128 2/2: 3% faster).
    pad_whole_input(sch, block)
    _, tile_n, tile_h, tile_w, group, channel, kh, kw, cw = sch.get_loops(block)
    tile_registers, tile_vector = sch.split(channel, [None, vector_factor])
    sch.reorder(kh, kw, cw, tile_n, tile_h, tile_w, tile_registers, group, tile_vector)
    for loop in (tile_h, tile_w, tile_registers, group):
        sch.unroll(loop)
    sch.vectorize(tile_vector)
    attach_epilogue(sch, combine, parallel)
    if not tuning:
        sch.decompose_reduction(block, kh)


def conv2d(sch: Schedule, block, lanes: int, tuning: bool) -> list[Schedule]:
    """Tuning returns one design space per loop order (pixels or channel tiles outermost: the
    latter keeps a weight tile in cache across all pixels, which pays off on wide layers)."""
    orders = CONV_LOOP_ORDERS if tuning else CONV_LOOP_ORDERS[:1]
    spaces = []
    for order in orders:
        space = sch.copy() if len(orders) > 1 else sch
        if shift_groups(space, block):
            if not tuning and weight_bytes(space, block) > CACHED_WEIGHT_BYTES:
                order = "channels_outer"
            _grouped_conv2d_variant(space, block, lanes, tuning, order)
        else:
            _conv2d_variant(space, block, lanes, tuning, order)
        spaces.append(space)
    return spaces


def dense(sch: Schedule, block, lanes: int, tuning: bool) -> list[Schedule]:
    decisions = Decisions(sch, tuning)
    n, o, k = sch.get_loops(block)
    n_default = largest_divisor_at_most(loop_extent(sch, n), 4)
    n_outer, n_regs = sch.split(n, decisions.tile(n, 2, 8, [loop_extent(sch, n) // n_default, n_default]))
    o_outer, o_regs, o_vec = _split_channels(sch, decisions, o, lanes, n_default)
    sch.reorder(o_outer, n_outer, k, n_regs, o_regs, o_vec)
    parallel = sch.fuse(o_outer, n_outer)
    sch.parallel(parallel)
    annotate_unroll(sch, parallel, decisions)
    registers_and_writeback(sch, block, parallel, [n_regs, o_regs], o_vec, k, tuning)
    return [sch]


def bitpack(sch: Schedule, block, tuning: bool) -> list[Schedule]:
    """Parallel over pixels (conv) or rows (dense); each word's 32/64 channel bits are unrolled
    in the compute expression already."""
    loops = sch.get_loops(block)
    outer = loops[:-2] if len(loops) > 3 else loops[:1]
    parallel = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    sch.parallel(parallel)
    annotate_unroll(sch, parallel, Decisions(sch, tuning))
    return [sch]


def schedule_kernels(sch: Schedule, schedule_kernel: Callable, kept: frozenset = frozenset()) -> None:
    """Untuned schedule of a whole PrimFunc: each WRPN kernel block through
    `schedule_kernel(sch, block, rule)` at default decisions, the rest inlined (but `kept`, names
    the kernels place themselves) or parallelized."""
    kernels = kernel_blocks(sch)
    others = inline_other_blocks(sch, kept)
    for block, rule in kernels:
        schedule_kernel(sch, block, rule)
    place_remaining_blocks(sch, others, place_parallel)


def kernel_scheduler(lanes: int) -> Callable:
    """`schedule_kernel(sch, block, rule)`: the untuned generic template of one WRPN block."""

    def schedule_kernel(sch: Schedule, block, rule: str) -> None:
        if rule == BITPACK_RULE:
            bitpack(sch, block, tuning=False)
        elif rule == CONV2D_RULE:
            conv2d(sch, block, lanes, tuning=False)
        else:
            dense(sch, block, lanes, tuning=False)

    return schedule_kernel


def schedule_function(sch: Schedule, lanes: int) -> None:
    schedule_kernels(sch, kernel_scheduler(lanes))
