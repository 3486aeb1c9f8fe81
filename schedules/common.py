"""What every schedule template shares: finding the WRPN blocks of a PrimFunc, tile decisions that
are either sampled (MetaSchedule tuning) or fixed (an untuned compile), and the glue that inlines
padding/epilogues and gives the remaining blocks a plain schedule."""

from dataclasses import dataclass
from typing import Callable

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import Schedule
from tvm.script import tirx as T
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder.tirx import prim_func as build_prim_func

from wrpn_tvm.ops import BITPACK_RULE, CONV2D_RULE, DENSE_RULE, SHIFT_COMBINE

WRPN_RULES = (CONV2D_RULE, DENSE_RULE, BITPACK_RULE)
# What MetaScheduleApplyDatabase and dlight set on a function they scheduled (TVM 0.27 spelling).
SCHEDULED_ATTR = "tirx.is_scheduled"


def is_scheduled(func: tirx.PrimFunc) -> bool:
    return func.attrs is not None and bool(func.attrs.get(SCHEDULED_ATTR, False))


def with_scheduled(mod: tvm.IRModule, updates: dict) -> tvm.IRModule:
    """A copy of mod with the scheduled functions in updates (global var -> PrimFunc) marked and
    swapped in, so that later schedule passes leave them alone; mod itself when there are none."""
    if not updates:
        return mod
    scheduled = mod.clone()
    for global_var, func in updates.items():
        scheduled.update_func(global_var, func.with_attr(SCHEDULED_ATTR, True))
    return scheduled
PAD_BLOCK = "wrpn_pad"
_DATA_PAR = 0  # tirx.IterVar.DataPar


def block_rule(sch: Schedule, block) -> str | None:
    rule = sch.get(block).annotations.get("schedule_rule")
    return str(rule) if rule is not None else None


def root_blocks(sch: Schedule) -> list:
    """The blocks directly under the PrimFunc's root block (all of them, for TE and fused funcs)."""
    return sch.get_child_blocks(sch.get_sblock(sch.mod["main"].body.block.name_hint))


def kernel_blocks(sch: Schedule) -> list:
    """(block, rule) for each WRPN kernel block (conv2d, dense, bitpack) of the PrimFunc."""
    pairs = [(block, block_rule(sch, block)) for block in root_blocks(sch)]
    return [(block, rule) for block, rule in pairs if rule in WRPN_RULES]


def has_wrpn_block(func: tirx.PrimFunc) -> bool:
    return bool(kernel_blocks(Schedule(func)))


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in divisors(n) if d <= limit)


def inner_tile(extent: int, sizes: list[int]) -> list[int]:
    """A perfect tiling of extent whose innermost factors are as close to `sizes` (inner first
    after the outermost) as divisibility allows: the default decision for sample_perfect_tile."""
    remaining, inner = extent, []
    for size in reversed(sizes):
        factor = largest_divisor_at_most(remaining, size)
        inner.insert(0, factor)
        remaining //= factor
    return [remaining] + inner


@dataclass
class Decisions:
    """tuning=True: sample every decision (MetaSchedule mutates them); False: use the defaults.

    Either way the decisions go through sample_* instructions, so the trace is the same shape."""

    sch: Schedule
    tuning: bool

    def tile(self, loop, parts: int, max_innermost: int, default: list[int]) -> list:
        decision = None if self.tuning else default
        return self.sch.sample_perfect_tile(loop, n=parts, max_innermost_factor=max_innermost, decision=decision)

    def choice(self, candidates: list[int], default: int):
        decision = None if self.tuning else candidates.index(default)
        probs = [1.0 / len(candidates)] * len(candidates)
        return self.sch.sample_categorical(candidates, probs, decision=decision)


def loop_extent(sch: Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def padding_block(sch: Schedule, block):
    """The zero-padding stage feeding the kernel, or None when the layer has no padding."""
    for producer in sch.get_producers(block):
        if sch.get(producer).name_hint.startswith(PAD_BLOCK):
            return producer
    return None


def inline_padding(sch: Schedule, block) -> None:
    """Fold the zero padding into the kernel's loads (a bounds check per activation load)."""
    pad = padding_block(sch, block)
    if pad is not None:
        sch.compute_inline(pad)


def pad_whole_input(sch: Schedule, block) -> None:
    """Materialize the zero-padded input once, in parallel over rows, before the kernel: a copy per
    tile of one to four pixels repeats a halo several times its size for every channel tile, and its
    loop state beside the kernel's spilled to the stack on Cortex-A53 (7x7x1024)."""
    pad = padding_block(sch, block)
    if pad is not None:
        sch.parallel(sch.fuse(*sch.get_loops(pad)[:2]))


def attach_epilogue(sch: Schedule, writeback, loop, vectorize: bool = True) -> None:
    """Move the elementwise consumers of the kernel's write-back (the +-1 weight correction, a
    fused scale/bias/ReLU) under the kernel's tile loop, so they run on the tile while it is still
    in cache. Blocks that cannot follow a tile (another WRPN kernel, a bitpack that needs whole
    channel words) stay where they are."""
    frontier = [writeback]
    while frontier:
        producer = frontier.pop()
        for consumer in sch.get_consumers(producer):
            if block_rule(sch, consumer) in WRPN_RULES:
                continue
            try:
                sch.reverse_compute_at(consumer, loop, preserve_unit_loops=True)
            except s_tir.ScheduleError:
                continue
            if vectorize:
                try_vectorize(sch, sch.get_loops(consumer)[-1])
            frontier.append(consumer)


def registers_and_writeback(sch: Schedule, block, outer, register_loops, vector_loop, first_reduction,
                            tuning: bool) -> None:
    """Accumulate in a local tile (register loops unrolled, the vector loop vectorized), written
    back under `outer` after the reduction, where the epilogue then runs on the tile. When tuning,
    MetaSchedule's RewriteReductionBlock postproc splits off the init (its
    RewriteParallelVectorizeUnroll postproc, which runs first, rejects decomposed blocks)."""
    for loop in register_loops:
        sch.unroll(loop)
    sch.vectorize(vector_loop)
    writeback = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(writeback, outer, preserve_unit_loops=True)
    try_vectorize(sch, sch.get_loops(writeback)[-1])
    attach_epilogue(sch, writeback, outer)
    inline_tile_copy(sch, writeback, outer)
    if not tuning:
        sch.decompose_reduction(block, first_reduction)


def inline_tile_copy(sch: Schedule, writeback, outer) -> None:
    """Where every consumer of the write-back copy runs on the tile, let them read the local tile
    instead: the copy otherwise stores each tile into a full-size intermediate (int64 sums, twice
    the bytes of the int32 output) that goes back to memory. 56x56x128 2/2, 2 threads, znver4:
    7-9% of the kernel's time."""
    consumers = sch.get_consumers(writeback)
    tile_loop = sch.get(outer)
    if consumers and all(any(sch.get(loop).same_as(tile_loop) for loop in sch.get_loops(consumer))
                         for consumer in consumers):
        sch.compute_inline(writeback)


def writeback_func(lanes: int, dtype: str, store_decoded: "Callable | None", accumulate: bool = False) -> tirx.PrimFunc:
    """The write-back of one vector of a register tile whose accumulators hold their sums encoded
    (int16 pair sums, packed bit counts): a copy of the lanes (the description, store_decoded
    None), or store_decoded(S, D) writing the decoded sums of local S into D (the implementation).
    `accumulate`: D += S instead (a chunk's widening: rfactor's write-back block), which
    store_decoded then does too. Tensorizing the write-back with it ties the encoded update to its
    decoding."""
    with IRBuilder() as builder:
        with build_prim_func():
            s, d = T.arg("s", T.handle()), T.arg("d", T.handle())
            S = T.match_buffer(s, (lanes,), dtype, offset_factor=1, scope="local")
            D = T.match_buffer(d, (lanes,), dtype, offset_factor=1)
            with T.sblock("root"):
                T.reads(*([D[0:lanes]] if accumulate else []), S[0:lanes])
                T.writes(D[0:lanes])
                if store_decoded is not None:
                    store_decoded(S, D)
                else:
                    with T.serial(0, lanes) as i:
                        with T.sblock("writeback"):
                            vi = T.axis.spatial(lanes, i)
                            T.reads(*([D[vi]] if accumulate else []), S[vi])
                            T.writes(D[vi])
                            T.buffer_store(D, D[vi] + S[vi] if accumulate else S[vi], [vi])
    return builder.get()


def try_vectorize(sch: Schedule, loop) -> None:
    try:
        sch.vectorize(loop)
    except s_tir.ScheduleError:
        pass


def leading_spatial_loops(sch: Schedule, block) -> list:
    """The block's outer loops that iterate spatial (non-reduction) axes, for an unscheduled block."""
    loops = sch.get_loops(block)
    spatial = []
    for loop, iter_var in zip(loops, sch.get(block).iter_vars):
        if int(iter_var.iter_type) != _DATA_PAR:
            break
        spatial.append(loop)
    return spatial


def _inline_blocks(sch: Schedule, skipped, kept: set) -> list[str]:
    """Inline every root block but those `skipped(block, name)` and those named in `kept`; return
    the names of the kept ones and of those that could not be inlined."""
    remaining = []
    for block in root_blocks(sch):
        name = sch.get(block).name_hint
        if skipped(block, name):
            continue
        if name in kept:
            remaining.append(name)
            continue
        try:
            sch.compute_inline(block)
        except s_tir.ScheduleError:
            remaining.append(name)
    return remaining


def inline_other_blocks(sch: Schedule, kept: frozenset = frozenset()) -> list[str]:
    """Inline the injective blocks that are neither WRPN kernels nor padding nor a shift-group
    combine (its kernel's template computes the kernel at it) nor `kept` (names): fused producers
    and epilogues; return the names of the other blocks that remain (outputs, reductions)."""
    return _inline_blocks(sch, lambda block, name: block_rule(sch, block) in WRPN_RULES
                          or name.startswith((PAD_BLOCK, SHIFT_COMBINE)) or name in kept, set())


def shift_groups(sch: Schedule, block) -> int:
    """How many shift groups a bit-serial conv block sums apart (ops.bitserial_conv2d's
    split_shift_groups: a group axis before the output channels); 0 for a single sum."""
    spatial = [iv for iv in sch.get(block).iter_vars if int(iv.iter_type) == _DATA_PAR]
    return int(spatial[3].dom.extent) if len(spatial) == 5 else 0


def inline_around_kernels(sch: Schedule, rule: str, skipped_prefix: "str | None" = None) -> list[str]:
    """Inline the injective blocks other than `rule`'s kernels, blocks named `skipped_prefix`...
    (a padding stage the template places itself) and the kernels' direct inputs (a tensorized
    kernel reads them as buffers, not as expressions); return the names of the blocks left."""
    kernels = [block for block in root_blocks(sch) if block_rule(sch, block) == rule]
    inputs = {sch.get(p).name_hint for k in kernels for p in sch.get_producers(k)}
    return _inline_blocks(sch, lambda block, name: block_rule(sch, block) == rule
                          or (skipped_prefix is not None and name.startswith(skipped_prefix)), inputs)


def place_parallel(sch: Schedule, block, spatial_loops) -> None:
    """A plain schedule for a leftover block: its spatial loops fused and run in parallel."""
    sch.parallel(sch.fuse(*spatial_loops) if len(spatial_loops) > 1 else spatial_loops[0])


def place_remaining_blocks(sch: Schedule, names: list[str], place) -> None:
    """Give each still-existing block from `names` a plain schedule: `place(sch, block, loops)`
    with its leading spatial loops (parallelize on a CPU, bind to threads on a GPU). Blocks that
    a kernel template already moved under its tile loops are left where they are."""
    existing = {sch.get(block).name_hint: block for block in root_blocks(sch)}
    for name in names:
        if name not in existing:
            continue
        loops = sch.get_loops(existing[name])
        if loops and sch.get(loops[0]).kind != tirx.ForKind.SERIAL:
            continue
        spatial = leading_spatial_loops(sch, existing[name])
        if spatial:
            place(sch, existing[name], spatial)


def weight_read(sch: Schedule, block) -> "tirx.BufferRegion | None":
    """The weights an unscheduled kernel block reads: the buffer indexed by its output channel
    innermost (`o`, or `o % B` in blocked weights)."""
    channel = [iv for iv in sch.get(block).iter_vars if int(iv.iter_type) == _DATA_PAR][-1].var
    for read in sch.get(block).reads:
        innermost = read.region[-1].min
        if isinstance(innermost, tirx.FloorMod):
            innermost = innermost.a
        if innermost.same_as(channel):
            return read
    return None


def weight_bytes(sch: Schedule, block) -> int:
    """The size of the weight buffer an unscheduled kernel block reads (`weight_read`), 0 if none."""
    read = weight_read(sch, block)
    if read is None:
        return 0
    size = tvm.DataType(read.source.dtype).bits // 8
    for extent in read.source.shape:
        size *= int(extent)
    return size
