"""x86 templates.

AVX-512 (with avx512vpopcntdq LLVM emits VPOPCNTQ on zmm registers): the generic CPU templates
at 16 lanes. AVX2 has no vector popcount: bit-serial conv2d and dense with two or more plane
pairs accumulate nibble lookups in 16-bit lanes (`avx2.NibbleCounts`) where the layer's bits and
reduction allow it; other layers use the generic templates at 8 lanes (LLVM's nibble-lookup
popcount per 64-bit lane). A fused epilogue's bitpack packs staged levels (`staged_bitpack`):
each plane's word from two `vpmovmskb` of the level bytes (`pack_word`). The tests
read the generated assembly.

A MetaSchedule rule is handed no target; `tune` runs under its target, so the rules read the ISA
off `Target.current()`: AVX-512 tunes the generic templates at 16 lanes; AVX2 offers both ways as
design spaces (the generic templates at 8 lanes first, then the nibble counts where they fit), and
which popcount is faster for a layer shape is decided by measuring. Under no target (a caller
outside `tune`), a rule offers every space.
"""

from typing import Callable

from tvm import tirx
from tvm.s_tir import Schedule
from tvm.script import tirx as T
from tvm.target import Target
from tvm.target.codegen import target_has_features

from wrpn_tvm.ops import BITPACK_RULE, CONV2D_RULE

from . import cpu, staged_bitpack
from .avx2 import DECODE_INTRIN, LANES, WORD, NibbleCounts, nibble_counts
from .common import (Decisions, attach_epilogue, largest_divisor_at_most, loop_extent, pad_whole_input,
                     shift_groups, try_vectorize)

AVX512_LANES = 16
AVX2_LANES = 8  # the generic template's lanes as before; its tile spills a little and still measured fastest
MAX_PIXELS = 4
MAX_CHANNEL_VECTORS = 4
# The default register tile, pixels x channel vectors of 4 channels (a pixel's broadcast nibbles
# are shared by its vectors), and loop order (a tile's weights stay in cache across the pixels): of
# 1x4, 2x4, 2x2 in both orders, the one always within 5% of the fastest on ResNet-18's 2x-wide 2/2
# layers (56x56x128, 28x28x256, 14x14x512, 7x7x1024; 1 thread, CPU time, znver4 running AVX2 code).
DEFAULT_PIXELS = 1
DEFAULT_VECTORS = 4
DEFAULT_ORDER = "channels_outer"
# A single plane pair (1/1) shares neither its widening nor its operand split with other pairs, and
# LLVM's own popcount in the generic template's wider tile measured faster: untuned, it stays there.
MIN_DEFAULT_PAIRS = 2
_REDUCE = 2  # tirx.IterVar.CommReduce
MOVEMASK_BYTES = 32  # vpmovmskb ymm: the top bit of each of 32 bytes


def _has_avx512(target: Target) -> bool:
    return target_has_features("avx512f", target)


def _plan(sch: Schedule, block) -> "NibbleCounts | None":
    """The block's nibble-count plan, when its words are 64-bit, its output channels fill whole ymm
    registers and its reduction fits the 16-bit lanes. Conv and dense both read activations with the
    planes second to last and weights [..., planes, words, channels]."""
    if shift_groups(sch, block):
        return None  # the nibble counts hold one sum per output channel
    info = sch.get(block)
    channel = [iv for iv in info.iter_vars if int(iv.iter_type) != _REDUCE][-1]
    weights = [r for r in info.reads if r.region[-1].min.same_as(channel.var)]
    activations = [r for r in info.reads if not r.region[-1].min.same_as(channel.var)]
    if len(weights) != 1 or len(activations) != 1 or str(weights[0].source.dtype) != WORD:
        return None
    if int(channel.dom.extent) % LANES:
        return None
    reduction_words = 1
    for iv in info.iter_vars:
        if int(iv.iter_type) == _REDUCE:
            reduction_words *= int(iv.dom.extent)
    return nibble_counts(int(activations[0].region[-2].extent), int(weights[0].region[-3].extent), reduction_words)


def _split_tile(sch: Schedule, decisions: Decisions, pixel_loop, channel_loop):
    """(pixel outer, pixels) and (channel outer, channel vectors, the 4 channels of one ymm)."""
    pixels = largest_divisor_at_most(loop_extent(sch, pixel_loop), DEFAULT_PIXELS)
    pixel_outer, pixel_tile = sch.split(
        pixel_loop, decisions.tile(pixel_loop, 2, MAX_PIXELS, [loop_extent(sch, pixel_loop) // pixels, pixels]))
    rest, lanes = sch.split(channel_loop, [None, LANES])
    vectors = largest_divisor_at_most(loop_extent(sch, rest), DEFAULT_VECTORS)
    channel_outer, vector_tile = sch.split(
        rest, decisions.tile(rest, 2, MAX_CHANNEL_VECTORS, [loop_extent(sch, rest) // vectors, vectors]))
    return (pixel_outer, pixel_tile), (channel_outer, vector_tile, lanes)


def _nibble_registers_and_writeback(sch: Schedule, block, plan: NibbleCounts, outer, register_loops, lanes,
                                    first_reduction, tuning: bool) -> None:
    """Accumulate the tile in local 16-bit lanes (the update tensorized per word and ymm), decode
    them while writing back (tensorized per ymm), then run the epilogue on the tile.
    When tuning, both are blockized and annotated for MetaSchedule's RewriteTensorize postproc,
    which runs after RewriteReductionBlock has split off the init (RewriteParallelVectorizeUnroll,
    which runs before them, rejects decomposed and tensorized blocks)."""
    for loop in register_loops:
        sch.unroll(loop)
    writeback = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(writeback, outer, preserve_unit_loops=True)
    attach_epilogue(sch, writeback, outer)
    sch.split(sch.get_loops(writeback)[-1], [None, LANES])
    *tile_loops, writeback_lanes = sch.get_loops(writeback)[1:]  # under the parallel loop
    # Unrolled, the loops around the decoding are no candidates for MetaSchedule's vectorizer.
    for loop in tile_loops:
        sch.unroll(loop)
    if tuning:
        sch.annotate(sch.blockize(writeback_lanes), "meta_schedule.auto_tensorize", DECODE_INTRIN)
        sch.annotate(sch.blockize(lanes), "meta_schedule.auto_tensorize", plan.update_intrin)
        # Blocks inside a block are out of RewriteParallelVectorizeUnroll's reach: it would
        # vectorize the register tile's loops around the tensorized ymm registers.
        sch.blockize(tile_loops[0])
        sch.blockize(register_loops[0])
        return
    sch.tensorize(writeback_lanes, DECODE_INTRIN)
    init = sch.decompose_reduction(block, first_reduction)
    try_vectorize(sch, sch.get_loops(init)[-1])
    sch.tensorize(lanes, plan.update_intrin)


def _conv2d_nibbles(sch: Schedule, block, plan: NibbleCounts, tuning: bool, order: str) -> None:
    decisions = Decisions(sch, tuning)
    n, oh, ow, o, kh, kw, cw = sch.get_loops(block)
    oh_outer, oh_inner = sch.split(oh, decisions.tile(oh, 2, 2, [loop_extent(sch, oh), 1]))
    (ow_outer, ow_inner), (o_outer, o_vectors, o_lanes) = _split_tile(sch, decisions, ow, o)
    outer = [n, oh_outer, ow_outer, o_outer] if order == "pixels_outer" else [o_outer, n, oh_outer, ow_outer]
    sch.reorder(*outer, kh, kw, cw, oh_inner, ow_inner, o_vectors, o_lanes)
    parallel = sch.fuse(*outer)
    sch.parallel(parallel)
    cpu.annotate_unroll(sch, parallel, decisions)
    pad_whole_input(sch, block)
    _nibble_registers_and_writeback(sch, block, plan, parallel, [oh_inner, ow_inner, o_vectors], o_lanes, kh,
                                    tuning)


def _dense_nibbles(sch: Schedule, block, plan: NibbleCounts, tuning: bool) -> None:
    decisions = Decisions(sch, tuning)
    n, o, k = sch.get_loops(block)
    (n_outer, n_rows), (o_outer, o_vectors, o_lanes) = _split_tile(sch, decisions, n, o)
    sch.reorder(o_outer, n_outer, k, n_rows, o_vectors, o_lanes)
    parallel = sch.fuse(o_outer, n_outer)
    sch.parallel(parallel)
    cpu.annotate_unroll(sch, parallel, decisions)
    _nibble_registers_and_writeback(sch, block, plan, parallel, [n_rows, o_vectors], o_lanes, k, tuning)


def conv2d_nibbles(sch: Schedule, block, plan: NibbleCounts, tuning: bool) -> list[Schedule]:
    orders = cpu.CONV_LOOP_ORDERS if tuning else (DEFAULT_ORDER,)
    spaces = []
    for order in orders:
        space = sch.copy() if len(orders) > 1 else sch
        _conv2d_nibbles(space, block, plan, tuning, order)
        spaces.append(space)
    return spaces


def _avx2_kernel(sch: Schedule, block, rule: str) -> None:
    """The untuned AVX2 schedule of one WRPN block."""
    if rule == BITPACK_RULE:
        cpu.bitpack(sch, block, tuning=False)
        return
    plan = _plan(sch, block)
    if plan is not None and len(plan.pairs) < MIN_DEFAULT_PAIRS:
        plan = None
    if rule == CONV2D_RULE:
        if plan is None:
            cpu.conv2d(sch, block, AVX2_LANES, tuning=False)
        else:
            conv2d_nibbles(sch, block, plan, tuning=False)
    elif plan is None:
        cpu.dense(sch, block, AVX2_LANES, tuning=False)
    else:
        _dense_nibbles(sch, block, plan, tuning=False)


def _rule_target() -> "Target | None":
    return Target.current(allow_none=True)


def _rule_lanes() -> int:
    target = _rule_target()
    return AVX2_LANES if target is not None and not _has_avx512(target) else AVX512_LANES


def _nibble_plan_for_rule(sch: Schedule, block) -> "NibbleCounts | None":
    """The nibble-count plan a tuning rule offers: none on AVX-512, where VPOPCNTQ counts whole words."""
    target = _rule_target()
    return None if target is not None and _has_avx512(target) else _plan(sch, block)


def _stage(target: Target) -> Callable:
    """Which packs the target stages: vpmovmskb ymm needs AVX2, so other "cpu" targets (older x86,
    other ISAs) keep the generic pack."""
    return staged_bitpack.levels_to_stage if target_has_features("avx2", target) else (lambda sch, block: None)


def pack_word(groups: list, plane: int):
    """staged_bitpack's word of one plane from its 64 level bytes (`groups`; the levels narrowed
    by `vcvttps2dq`, `vpmovdb` or packs): each byte shifted so that the plane's bit is its top bit,
    and two `vpmovmskb` gather the 64 top bits. AVX2 and AVX-512 alike (LLVM may fold the shift and
    mask into a mask register on AVX-512)."""
    levels = tirx.Shuffle(groups, list(range(staged_bitpack.WORD_BITS)))
    top = levels << T.broadcast(T.uint8(7 - plane), staged_bitpack.WORD_BITS)
    halves = [T.Cast("uint64", T.Cast("uint32", T.call_llvm_pure_intrin(
        "int32", "llvm.x86.avx2.pmovmskb", tirx.Shuffle([top], list(range(start, start + MOVEMASK_BYTES))))))
        for start in (0, MOVEMASK_BYTES)]
    return halves[0] | (halves[1] << T.uint64(MOVEMASK_BYTES))


class X86Templates:
    """The x86 entry points (the same as arm_cpu's and cuda's)."""

    @staticmethod
    def schedule_function(sch: Schedule, target: Target) -> None:
        kernel = cpu.kernel_scheduler(AVX512_LANES) if _has_avx512(target) else _avx2_kernel
        staged_bitpack.schedule_kernels(sch, kernel, _stage(target), pack_word)

    @staticmethod
    def has_no_decisions(sch: Schedule, target: Target) -> bool:
        return staged_bitpack.stages_every_kernel(sch, _stage(target))

    @staticmethod
    def register_replay_intrinsics(sch: Schedule) -> None:
        staged_bitpack.register_intrinsics(sch, pack_word)

    @staticmethod
    def conv2d_rule(sch: Schedule, block) -> list[Schedule]:
        spaces = cpu.conv2d(sch, block, _rule_lanes(), tuning=True)  # copies: sch stays as it is
        plan = _nibble_plan_for_rule(sch, block)
        return spaces + (conv2d_nibbles(sch, block, plan, tuning=True) if plan is not None else [])

    @staticmethod
    def dense_rule(sch: Schedule, block) -> list[Schedule]:
        plan = _nibble_plan_for_rule(sch, block)
        generic = sch.copy() if plan is not None else sch
        spaces = cpu.dense(generic, block, _rule_lanes(), tuning=True)
        if plan is not None:
            _dense_nibbles(sch, block, plan, tuning=True)
            spaces.append(sch)
        return spaces

    @staticmethod
    def bitpack_rule(sch: Schedule, block) -> list[Schedule]:
        return cpu.bitpack(sch, block, tuning=True)


TEMPLATES = X86Templates()
