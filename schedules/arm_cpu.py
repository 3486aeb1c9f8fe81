"""aarch64 NEON templates.

Bit-serial conv2d and dense accumulate in narrow count lanes where the layer allows it
(`neon.narrow_accumulation`: up to 4 plane pairs of 64-bit words, 2 of 32-bit words, layers with
more pairs (4/2, 4/4, 3/1) with their activation planes weighed in bytes): the hot loop is
`ld1r`/`ldr q`, then per 128 bits `and` + `cnt`, with one `addp` fold or `uadalp` per pair on
average, at NEON's limit of about 1.5 cycles per 128-bit AND + popcount + accumulate on two-pipe
cores. On dotprod targets (rasp5) `udot` with a ones vector into 32-bit lanes replaces `uadalp`
where the tile model rates it no dearer. A reduction longer than the 16-bit lanes hold runs in
chunks they hold, each widened into the layer's accumulator (rfactor). The register tile is one q
register per pixel and channel vector, the cheapest by a model of those pipes among the tiles whose
accumulators, weights and broadcast activations stay within the 32 q registers. Other layers use
the generic CPU template at NEON's width for their accumulator type. A fused epilogue's bitpack packs
staged levels with NEON (`staged_bitpack`, `neon.pack_word`), the levels interleaved (several pixels'
at a time where a pixel's channels are few); a bitpack of NCHW input (the first
quantized layer) stages the levels of 4 or 2 pixels of a row and builds their words with `sli`
chains (`neon.pack_columns`). The tests read the generated assembly to keep it so.
"""

import tvm
from tvm.s_tir import Schedule
from tvm.target import Target
from tvm.target.codegen import target_has_features

from wrpn_tvm.ops import BITPACK_RULE, CONV2D_RULE

from . import cpu, staged_bitpack
from .common import Decisions, attach_epilogue, divisors, loop_extent, pad_whole_input, try_vectorize
from .neon import Q_BYTES, NarrowAccumulation, narrow_accumulation, pack_columns, pack_word

NEON_INT32_LANES = 4
Q_REGISTERS = 32
SCRATCH_REGISTERS = 6  # and/cnt/addp temporaries in flight (an in-order core's schedule keeps more)
# udot's ones vector: live across the loop, and where registers ran short LLVM rematerialized it
# in the loop and spilled (7x7x512 1/1 at the tile uadalp fits): counted twice.
ONES_REGISTERS = 2
MAX_CHANNEL_VECTORS = 8
MAX_PIXELS = 4
# A pixel's staged levels loop in q registers of int32 lanes, 4 unrolled a trip: on Cortex-A53
# 1.7-1.8x fewer llvm-mca cycles per word (2 bits, 192+ channels), on Cortex-A72 5-10%. Below 192
# channels the levels of 4 (or 2) pixels a trip, at 28x28x128 1.5-1.9x fewer on both (and the
# A53's 1-bit pack stages without spilling); at 64 channels within 4%.
LEVELS_INTERLEAVE = staged_bitpack.Interleave(lanes=NEON_INT32_LANES, vectors=4, registers=Q_REGISTERS,
                                              pixels=(4, 2))
# q-register counts per iteration of the innermost reduction loop that keep both NEON pipes busy
# across the load -> and -> cnt -> uadalp latency; smaller tiles take two words per iteration.
MIN_COUNTS_PER_ITERATION = 16
_REDUCE = 2  # tirx.IterVar.CommReduce


def _generic_lanes(sch: Schedule, block) -> int:
    """The generic template's vector width for the block (its default tile is 4 pixels x 4
    vectors). int32: a q register. int64: one lane, so that the tile (16 accumulators in 8 q
    registers) leaves room for the temporaries of each count's widening chain."""
    return NEON_INT32_LANES if tvm.DataType(sch.get(block).writes[0].source.dtype).bits == 32 else 1


def has_dotprod(target: "Target | None") -> bool:
    """udot may be used: only where the target says so (a MetaSchedule rule outside a target
    scope has none, and takes uadalp, which every aarch64 core runs)."""
    return target is not None and bool(target_has_features("dotprod", target))


def _narrow_plans(sch: Schedule, block, dotprod: bool) -> list[NarrowAccumulation]:
    """The block's narrow accumulations (udot first, where the target has dotprod), those that its
    bits, words and reduction length allow and whose q registers its output channels fill. Conv
    and dense both read activations with the planes second to last and weights [..., planes,
    words, channels]."""
    info = sch.get(block)
    channel = [iv for iv in info.iter_vars if int(iv.iter_type) != _REDUCE][-1]
    weights = [r for r in info.reads if r.region[-1].min.same_as(channel.var)]
    activations = [r for r in info.reads if not r.region[-1].min.same_as(channel.var)]
    if len(weights) != 1 or len(activations) != 1:
        return []
    plans = [narrow_accumulation(int(activations[0].region[-2].extent), int(weights[0].region[-3].extent),
                                 str(weights[0].source.dtype), dot) for dot in ((True, False) if dotprod else (False,))]
    return [plan for plan in plans if plan is not None and _chunk_words(plan, info.iter_vars) is not None
            and int(channel.dom.extent) % plan.lanes == 0]


def _plan_and_tile(sch: Schedule, block, plans: list[NarrowAccumulation], pixels: int, channels: int):
    """(plan, (pixels, channel vectors), words per chunk): the plan whose default tile
    `_cycles_per_count` rates cheapest; a tie keeps the first (udot: either NEON pipe takes it,
    uadalp only one on Cortex-A76). udot holds its ones vector in a register, so where the tile is
    register-bound it may lose (2/2 loses anyway: its 4 lanes make it weigh the planes)."""
    choices = []
    for plan in plans:
        words = _chunk_words(plan, sch.get(block).iter_vars)
        tile = _default_tile(plan, pixels, channels // plan.lanes, words)
        choices.append((_cycles_per_count(plan, *tile), plan, tile, words))
    _, plan, tile, words = min(choices, key=lambda choice: choice[0])
    return plan, tile, words


def _chunk_words(plan: NarrowAccumulation, iter_vars) -> "int | None":
    """`plan.chunk_words` of the block's reduction: the word loop is its last axis (cw, k), the
    kernel window the others."""
    reduction = [int(iv.dom.extent) for iv in iter_vars if int(iv.iter_type) == _REDUCE]
    window = 1
    for extent in reduction[:-1]:
        window *= extent
    return plan.chunk_words(window, reduction[-1])


def _cycles_per_count(plan: NarrowAccumulation, pixels: int, vectors: int) -> float:
    """A two-pipe core's cycles per 128-bit count for a register tile (Cortex-A72 in LLVM's model):
    the updates' NEON ops (and, cnt, Horner adds, folds, uadalp: 3 per count without Horner) on 2
    pipes, each broadcast (`ld1r`) one more NEON op; every q register of weights and every
    broadcast a load on the one load pipe; 3 ops issue per cycle, a broadcast taking 2 and a q
    register of weights 1.5 (LLVM pairs them into `ldp q`, 3 ops)."""
    counts = len(plan.pairs) * pixels * vectors
    broadcasts, weight_loads = plan.abits * pixels, plan.wbits * vectors
    updates = plan.neon_ops_per_vector * pixels * vectors
    return max((updates + broadcasts) / 2, broadcasts + weight_loads,
               (updates + 2 * broadcasts + 1.5 * weight_loads) / 3) / counts


def _default_tile(plan: NarrowAccumulation, pixels: int, vectors: int, words: int) -> tuple[int, int]:
    """(pixels, channel vectors) of the default register tile: the cheapest per count by
    `_cycles_per_count` among those whose accumulators (pixels x vectors q registers), weights
    (wbits x vectors per word in flight), broadcast activations (abits x pixels) and scratch fit
    the q registers, preferring tiles whose innermost iteration (two words where `words` is even)
    holds enough counts to hide the latencies; on a tie, the fewest registers."""

    def words_in_flight(p: int, v: int) -> int:
        # Two where the template unrolls two words, or LLVM unrolls a 2-trip word loop itself.
        short = len(plan.pairs) * p * v < MIN_COUNTS_PER_ITERATION
        return 2 if words == 2 or (short and words % 2 == 0) else 1

    def key(p: int, v: int):
        short = len(plan.pairs) * p * v * words_in_flight(p, v) < MIN_COUNTS_PER_ITERATION
        return short, _cycles_per_count(plan, p, v), p * v

    candidates = [(p, v) for p in divisors(pixels) if p <= MAX_PIXELS
                  for v in divisors(vectors) if v <= MAX_CHANNEL_VECTORS
                  and p * v + plan.wbits * v * words_in_flight(p, v) + plan.abits * p + SCRATCH_REGISTERS
                  + ONES_REGISTERS * plan.dot <= Q_REGISTERS]
    return min(candidates, key=lambda tile: key(*tile))


def _split_channel_vectors(sch: Schedule, decisions: Decisions, loop, plan: NarrowAccumulation, default: int):
    """Output channels -> [outer, vectors (unrolled), lanes of one q register (tensorized)]."""
    rest, lanes = sch.split(loop, [None, plan.lanes])
    extent = loop_extent(sch, rest)
    outer, vectors = sch.split(rest, decisions.tile(rest, 2, MAX_CHANNEL_VECTORS, [extent // default, default]))
    return outer, vectors, lanes


def _unroll_small_tiles(sch: Schedule, plan: NarrowAccumulation, word_loop, tile_loops):
    """Two words per iteration for a tile of few counts; returns the word loop's outer part."""
    counts = len(plan.pairs)
    for loop in tile_loops:
        counts *= loop_extent(sch, loop)
    if counts < MIN_COUNTS_PER_ITERATION and loop_extent(sch, word_loop) % 2 == 0:
        word_loop, pair = sch.split(word_loop, [None, 2])
        sch.unroll(pair)
    return word_loop


def _narrow_registers_and_writeback(sch: Schedule, block, plan, outer, register_loops, lanes, first_reduction,
                                    tuning: bool):
    """Accumulate the tile in local 16-bit count lanes (the update tensorized per reduction word),
    decode them while writing back (tensorized per q register), then run the epilogue on the tile.
    When tuning, both are blockized and annotated for MetaSchedule's RewriteTensorize postproc,
    which runs after RewriteReductionBlock has split off the init (RewriteParallelVectorizeUnroll,
    which runs before them, rejects decomposed and tensorized blocks)."""
    for loop in register_loops:
        sch.unroll(loop)
    writeback = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(writeback, outer, preserve_unit_loops=True)
    attach_epilogue(sch, writeback, outer)
    sch.split(sch.get_loops(writeback)[-1], [None, plan.lanes])
    *tile_loops, writeback_lanes = sch.get_loops(writeback)[1:]  # under the parallel loop
    # Unrolled, the loops around the decoding are no candidates for MetaSchedule's vectorizer.
    for loop in tile_loops:
        sch.unroll(loop)
    _tensorize(sch, block, plan, writeback_lanes, plan.decode_intrin, tile_loops, register_loops, lanes,
               first_reduction, tuning)


def _tensorize(sch: Schedule, block, plan, writeback_lanes, writeback_intrin, tile_loops, register_loops, lanes,
               first_reduction, tuning: bool):
    """The write-back's q registers decoded by `writeback_intrin`, the update's by the plan's
    update intrinsic (when tuning: blockized and annotated for RewriteTensorize)."""
    if tuning:
        sch.annotate(sch.blockize(writeback_lanes), "meta_schedule.auto_tensorize", writeback_intrin)
        sch.annotate(sch.blockize(lanes), "meta_schedule.auto_tensorize", plan.update_intrin)
        # Blocks inside a block are out of RewriteParallelVectorizeUnroll's reach: it would
        # vectorize the register tile's loops around the tensorized q registers.
        sch.blockize(tile_loops[0])
        sch.blockize(register_loops[0])
        return
    sch.tensorize(writeback_lanes, writeback_intrin)
    init = sch.decompose_reduction(block, first_reduction)
    try_vectorize(sch, sch.get_loops(init)[-1])
    sch.tensorize(lanes, plan.update_intrin)


def _narrow_chunks_and_widening(sch: Schedule, block, plan, chunks, register_loops, tuning: bool):
    """Periodic widening, for a reduction longer than the 16-bit lanes hold: rfactor over the
    chunk loop gives a block that accumulates one chunk in local 16-bit lanes (zeroed per
    chunk, updates tensorized as in `_narrow_registers_and_writeback`), and the original block
    becomes their widening, tensorized to add each chunk's decoded counts into the layer's
    accumulator in memory (a load and store per chunk: no registers taken from the hot loop)."""
    depth = len(register_loops) + 1  # the tile's loops, innermost in both nests
    narrow = sch.rfactor(chunks, factor_axis=0)
    sch.set_scope(narrow, 0, "local")
    # rfactor gave the narrow block a copy of the loop nest: the widening goes under its chunk loop.
    outer, chunks, first_reduction, *_ = sch.get_loops(narrow)
    *register_loops, lanes = sch.get_loops(narrow)[-depth:]
    for loop in register_loops:
        sch.unroll(loop)
    sch.reverse_compute_at(block, chunks, preserve_unit_loops=True)
    attach_epilogue(sch, block, outer)
    sch.split(sch.get_loops(block)[-1], [None, plan.lanes])
    *tile_loops, widen_lanes = sch.get_loops(block)[2:]  # under the parallel and chunk loops
    for loop in tile_loops:
        sch.unroll(loop)
    if not tuning:
        init = sch.decompose_reduction(block, chunks)
        try_vectorize(sch, sch.get_loops(init)[-1])
    _tensorize(sch, narrow, plan, widen_lanes, plan.widen_intrin, tile_loops, register_loops, lanes, first_reduction,
               tuning)


def _conv2d_narrow(sch: Schedule, block, plans: list[NarrowAccumulation], tuning: bool, order: str) -> None:
    decisions = Decisions(sch, tuning)
    n, oh, ow, o, kh, kw, cw = sch.get_loops(block)
    plan, (pixels, vectors), words = _plan_and_tile(sch, block, plans, loop_extent(sch, ow), loop_extent(sch, o))
    oh_outer, oh_inner = sch.split(oh, decisions.tile(oh, 2, 2, [loop_extent(sch, oh), 1]))
    ow_outer, ow_inner = sch.split(ow, decisions.tile(ow, 2, MAX_PIXELS, [loop_extent(sch, ow) // pixels, pixels]))
    o_outer, o_vectors, o_lanes = _split_channel_vectors(sch, decisions, o, plan, vectors)
    outer = [n, oh_outer, ow_outer, o_outer] if order == "pixels_outer" else [o_outer, n, oh_outer, ow_outer]
    chunks, cw = sch.split(cw, [None, words]) if words < loop_extent(sch, cw) else (None, cw)
    sch.reorder(*outer, *([chunks] if chunks else []), kh, kw, cw, oh_inner, ow_inner, o_vectors, o_lanes)
    # One loop over the kernel window: LLVM unrolls a 3-trip kw loop into a copy of the hot loop
    # per column, and where a column's weight offset passes ldr's immediate range (64 KiB: kw = 2
    # at 7x7x512 1/1) that copy loads with register offsets, two ops per load on Cortex-A72. Not
    # where LLVM unrolls the word loop itself (2 words): the window loop is then the innermost one,
    # and its row and column (a division by 3) would be computed in it.
    window = sch.fuse(kh, kw) if words > 2 else kh
    _unroll_small_tiles(sch, plan, cw, [oh_inner, ow_inner, o_vectors])
    parallel = sch.fuse(*outer)
    sch.parallel(parallel)
    cpu.annotate_unroll(sch, parallel, decisions)
    pad_whole_input(sch, block)
    if chunks is None:
        _narrow_registers_and_writeback(sch, block, plan, parallel, [oh_inner, ow_inner, o_vectors], o_lanes, window,
                                        tuning)
    else:
        _narrow_chunks_and_widening(sch, block, plan, chunks, [oh_inner, ow_inner, o_vectors], tuning)


def _dense_narrow(sch: Schedule, block, plans: list[NarrowAccumulation], tuning: bool) -> None:
    decisions = Decisions(sch, tuning)
    n, o, k = sch.get_loops(block)
    plan, (rows, vectors), words = _plan_and_tile(sch, block, plans, loop_extent(sch, n), loop_extent(sch, o))
    n_outer, n_regs = sch.split(n, decisions.tile(n, 2, MAX_PIXELS, [loop_extent(sch, n) // rows, rows]))
    o_outer, o_vectors, o_lanes = _split_channel_vectors(sch, decisions, o, plan, vectors)
    chunks, k = sch.split(k, [None, words]) if words < loop_extent(sch, k) else (None, k)
    sch.reorder(o_outer, n_outer, *([chunks] if chunks else []), k, n_regs, o_vectors, o_lanes)
    k = _unroll_small_tiles(sch, plan, k, [n_regs, o_vectors])
    parallel = sch.fuse(o_outer, n_outer)
    sch.parallel(parallel)
    cpu.annotate_unroll(sch, parallel, decisions)
    if chunks is None:
        _narrow_registers_and_writeback(sch, block, plan, parallel, [n_regs, o_vectors], o_lanes, k, tuning)
    else:
        _narrow_chunks_and_widening(sch, block, plan, chunks, [n_regs, o_vectors], tuning)


def conv2d(sch: Schedule, block, tuning: bool, dotprod: bool) -> list[Schedule]:
    plans = _narrow_plans(sch, block, dotprod)
    if not plans:
        return cpu.conv2d(sch, block, _generic_lanes(sch, block), tuning)
    orders = cpu.CONV_LOOP_ORDERS if tuning else cpu.CONV_LOOP_ORDERS[:1]
    spaces = []
    for order in orders:
        space = sch.copy() if len(orders) > 1 else sch
        _conv2d_narrow(space, block, plans, tuning, order)
        spaces.append(space)
    return spaces


def dense(sch: Schedule, block, tuning: bool, dotprod: bool) -> list[Schedule]:
    plans = _narrow_plans(sch, block, dotprod)
    if not plans:
        return cpu.dense(sch, block, _generic_lanes(sch, block), tuning)
    _dense_narrow(sch, block, plans, tuning)
    return [sch]


def _word_lanes(sch: Schedule, block) -> int:
    """A bitpack's words in a q register."""
    return Q_BYTES * 8 // tvm.DataType(sch.get(block).writes[0].source.dtype).bits


def _reads_columns(sch: Schedule, block) -> bool:
    """Whether a conv bitpack reads its activations with the output column fastest (NCHW), a q
    register of words to as many columns."""
    loops = sch.get_loops(block)
    if len(loops) != 5 or loop_extent(sch, loops[2]) % _word_lanes(sch, block):
        return False
    return staged_bitpack.reads_columns_only(sch, block)


def bitpack(sch: Schedule, block, tuning: bool) -> list[Schedule]:
    """Conv activations read with the output column fastest (NCHW: the first quantized layer, and
    the single kernels) where `schedule_function` did not stage them (odd rows, the tuning rule): a
    q register of words for 2 (64-bit words) or 4 (32-bit) pixels of a row, each bit of them one
    contiguous load, shifted and or-ed in lanes. Scalar, LLVM kept a word's 64 strided loads in
    flight at once and, at 4 planes, spilled them on Cortex-A72 (this one spills too, at 128
    channels: benchmarks/results/arm_hot_loops.md). Other layouts (dense; a fused NHWC epilogue
    whose levels `schedule_function` did not stage) keep the generic schedule."""
    if not _reads_columns(sch, block):
        return cpu.bitpack(sch, block, tuning)
    n, h, w, plane, cw = sch.get_loops(block)
    w_outer, w_lanes = sch.split(w, [None, _word_lanes(sch, block)])
    sch.reorder(n, h, w_outer, plane, cw, w_lanes)
    parallel = sch.fuse(n, h, w_outer)
    sch.parallel(parallel)
    cpu.annotate_unroll(sch, parallel, Decisions(sch, tuning))
    sch.vectorize(w_lanes)
    return [sch]


class NeonTemplates:
    """The arm_cpu entry points (the same as x86's and cuda's). A rule takes dotprod from
    `Target.current()`, where the tuning runs under one."""

    @staticmethod
    def schedule_function(sch: Schedule, target: Target) -> None:
        """cpu.schedule_kernels, except that a conv bitpack's levels may stay a stage of their own
        (`staged_bitpack.levels_to_stage`, or a few pixels of an NCHW row), packed by NEON
        (`neon.pack_word`, `neon.pack_columns`), several pixels' levels at a time where a pixel's
        are too few to interleave (`LEVELS_INTERLEAVE`)."""
        dotprod = has_dotprod(target)

        def schedule_kernel(sch: Schedule, block, rule: str) -> None:
            if rule == BITPACK_RULE:
                bitpack(sch, block, tuning=False)
            elif rule == CONV2D_RULE:
                conv2d(sch, block, tuning=False, dotprod=dotprod)
            else:
                dense(sch, block, tuning=False, dotprod=dotprod)

        staged_bitpack.schedule_kernels(sch, schedule_kernel, staged_bitpack.levels_to_stage, pack_word, pack_columns,
                                        LEVELS_INTERLEAVE)

    @staticmethod
    def has_no_decisions(sch: Schedule, target: Target) -> bool:
        return staged_bitpack.stages_every_kernel(sch, staged_bitpack.levels_to_stage, columns=True)

    @staticmethod
    def register_replay_intrinsics(sch: Schedule) -> None:
        staged_bitpack.register_intrinsics(sch, pack_word, pack_columns)

    @staticmethod
    def conv2d_rule(sch: Schedule, block) -> list[Schedule]:
        return conv2d(sch, block, tuning=True, dotprod=has_dotprod(Target.current(allow_none=True)))

    @staticmethod
    def dense_rule(sch: Schedule, block) -> list[Schedule]:
        return dense(sch, block, tuning=True, dotprod=has_dotprod(Target.current(allow_none=True)))

    @staticmethod
    def bitpack_rule(sch: Schedule, block) -> list[Schedule]:
        return bitpack(sch, block, tuning=True)


TEMPLATES = NeonTemplates()
