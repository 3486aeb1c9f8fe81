"""A generic default schedule for the FP32 CPU functions nobody tuned (first/last layers, glue).

TVM's CPU pipeline leaves such functions as they were legalized: one thread, scalar loops.
This first inlines the elementwise blocks a fused function chains together (a quantizer's clip,
multiply, round and divide after a residual add would otherwise each write a full intermediate
map in a parallel pass of their own), then gives each remaining block what any sensible CPU
schedule has: the leading spatial loops fused and run in parallel, and the innermost spatial loop moved inside the reduction (then split and
unrolled, or vectorized when there is no reduction), so LLVM turns a conv's inner loop into
vector code over a row of outputs. Padding stays a separate, parallel block: inlined, it would
put a bounds check in that inner loop. A function the rules do not fit is left as it was; a tuning database wins over this.

Pooling is the exception: a window reduction over a padded map is memory-bound, and a separate
padding pass writes a padded copy of the whole map for the pool to read again. A pool (TOPI's
pool_max / pool_sum after its pad stage) runs its channel planes in parallel instead, each output's
window padded where it is reduced (`_schedule_pool`).
"""

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline

from .common import is_scheduled, with_scheduled

VECTOR_LANES = 16  # float32 lanes of an AVX-512 register; LLVM narrows this for NEON/AVX2
# TOPI's and our padding stages (kept apart from the conv's inner loop, see above).
PADDING_PREFIXES = ("pad", "wrpn_pad")
# Below this many loop iterations a parallel region costs more than it saves.
MIN_PARALLEL_WORK = 1 << 15
POOL_PREFIX = "pool"  # TOPI's pool_max / pool_sum
POOL_UNROLL_STEPS = 512
BLOCKED_POOL_RANK = 5  # an NCHW{B}c pool's output: N, C/B, H, W, B
MATVEC_ROW_FLOATS = 64  # outputs a matrix-vector step reads of a weight row: 256 bytes, 4 cache lines


def _extent(sch: s_tir.Schedule, loop) -> int:
    extent = sch.get(loop).extent
    return extent.value if isinstance(extent, tirx.IntImm) else 0


def _schedule_block(sch: s_tir.Schedule, info) -> None:
    block = info.block_rv
    loops = sch.get_loops(block)
    kinds = info.dom_kind()
    if len(kinds) != len(loops) or not kinds or kinds[0] != "S" or set(kinds) - {"S", "R"}:
        return
    extents = [_extent(sch, loop) for loop in loops]
    if not all(extents):
        return
    spatial = [loop for loop, kind in zip(loops, kinds) if kind == "S"]
    reduction = [loop for loop, kind in zip(loops, kinds) if kind == "R"]
    row_vectors = None
    if len(spatial) == 1 and reduction and _reads_along_spatial_axis(sch, block):
        # A matrix-vector product (a classifier at batch 1): vectors of outputs per step of the
        # reduction, over contiguous weight rows, instead of one strided column per output; several
        # vectors a step, so that each weight row is read in whole cache lines.
        lanes = next((n for n in (VECTOR_LANES, 8, 4) if extents[0] % n == 0 and extents[0] > n), None)
        if lanes is not None:
            vectors = max(v for v in range(1, MATVEC_ROW_FLOATS // lanes + 1) if extents[0] % (v * lanes) == 0)
            chunks, row_vectors, vector = sch.split(spatial[0], [None, vectors, lanes])
            spatial = [chunks, vector]
    inner = spatial[-1] if len(spatial) > 1 else None
    outer = spatial[:-1] if inner is not None else spatial
    if inner is not None:
        sch.reorder(*outer, *reduction, *([row_vectors] if row_vectors is not None else []), inner)
    if int(np.prod(extents)) >= MIN_PARALLEL_WORK:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    if inner is None:
        return
    width = _extent(sch, inner)
    lanes = next((n for n in (VECTOR_LANES, 8, 4) if width % n == 0), None)
    if lanes is None:
        return
    if reduction:
        sch.decompose_reduction(block, reduction[0])
    if width > lanes:
        _, inner = sch.split(inner, [None, lanes])
    if reduction:
        # The update of a reduction cannot take `vectorize`; an innermost spatial loop of fixed
        # extent with no loop-carried dependence is what LLVM's loop vectorizer wants instead.
        sch.unroll(inner)
        if row_vectors is not None:
            sch.unroll(row_vectors)
    else:
        sch.vectorize(inner)


def _pool_of(sch: s_tir.Schedule, padding) -> "s_tir.SBlockRV | None":
    """The pool reading a padding block: its one consumer, a window reduction (spatial loops,
    then the window's two) named as TOPI names pools."""
    consumers = sch.get_consumers(padding.block_rv)
    if len(consumers) != 1 or not sch.get(consumers[0]).name_hint.startswith(POOL_PREFIX):
        return None
    kinds = [int(iv.iter_type) for iv in sch.get(consumers[0]).iter_vars]  # 0: data parallel, 2: reduction
    if len(kinds) < 4 or kinds[-2:] != [2, 2] or set(kinds[:-2]) != {0}:
        return None
    return consumers[0]


def _schedule_pool(sch: s_tir.Schedule, pool, padding) -> None:
    """Channel planes in parallel; each output's window padded where it is reduced, every loop
    under a plane unrolled. ResNet-18 2x's 3x3/2 max pool of its 1x128x112x112 stem map, in the
    model (znver4, 2 threads, per-call profile): 0.58 -> 0.29 ms, the shipped log's tuned record's
    time; the padding pass it replaces wrote a 6.6 MB copy."""
    if len(sch.get(pool).writes[0].source.shape) == BLOCKED_POOL_RANK:
        _schedule_blocked_pool(sch, pool, padding)
        return
    *planes, _, columns, window, _ = sch.get_loops(pool)
    outer = sch.fuse(*planes) if len(planes) > 1 else planes[0]
    sch.parallel(outer)
    sch.annotate(outer, "pragma_auto_unroll_max_step", POOL_UNROLL_STEPS)
    sch.annotate(outer, "pragma_unroll_explicit", 1)
    sch.compute_at(padding.block_rv, columns)
    sch.decompose_reduction(pool, window)


def _schedule_blocked_pool(sch: s_tir.Schedule, pool, padding) -> None:
    """A pool over NCHW{B}c (`lowering.fp32`'s stem pools): rows of channel blocks in parallel,
    each output's window padded where it is reduced, the block's lanes innermost under the window
    so that every step is one vector max."""
    *planes, columns, lanes, window_h, window_w = sch.get_loops(pool)  # planes: batch (unless 1), blocks, rows
    sch.reorder(columns, window_h, window_w, lanes)
    outer = sch.fuse(*planes)
    sch.parallel(outer)
    sch.annotate(outer, "pragma_auto_unroll_max_step", POOL_UNROLL_STEPS)
    sch.annotate(outer, "pragma_unroll_explicit", 1)
    sch.compute_at(padding.block_rv, columns)
    sch.vectorize(sch.get_loops(padding.block_rv)[-1])
    init = sch.decompose_reduction(pool, window_h)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(lanes)  # a reduction's update takes no `vectorize`; LLVM vectorizes the unrolled lanes


def _reads_along_spatial_axis(sch: s_tir.Schedule, block) -> bool:
    """Whether the block's one spatial axis is the last (contiguous) index of a buffer it reads."""
    stmt = sch.get(block)
    spatial = [iv.var for iv in stmt.iter_vars if int(iv.iter_type) == 0]  # 0: tirx.IterVar.DataPar
    if len(spatial) != 1:
        return False
    return any(region.region and region.region[-1].min.same_as(spatial[0]) for region in stmt.reads)


def _is_padding(sch: s_tir.Schedule, info) -> bool:
    return sch.get(info.block_rv).name_hint.startswith(PADDING_PREFIXES)


def schedule_in_place(sch: s_tir.Schedule) -> bool:
    """Apply the generic rules to sch's "main"; False (sch untouched) when they do not apply."""
    infos = normalize_prim_func(sch)
    if infos is None:
        return False
    padding = [info for info in infos if _is_padding(sch, info)]
    pools = {}
    for info in padding:
        pool = _pool_of(sch, info)
        if pool is not None:
            pools[sch.get(pool).name_hint] = info
    others = [info for info in infos if not _is_padding(sch, info) and sch.get(info.block_rv).name_hint not in pools]
    for info in try_inline(sch, others) + [info for info in padding if info not in pools.values()]:
        _schedule_block(sch, info)
    for name, pad in pools.items():
        _schedule_pool(sch, sch.get_sblock(name), pad)
    return True


def schedule_function(func: tirx.PrimFunc) -> "tirx.PrimFunc | None":
    """The scheduled function, or None when the generic rules do not apply."""
    sch = s_tir.Schedule(func)
    if not schedule_in_place(sch):
        return None
    return sch.mod["main"]


def apply_fallback_schedules(mod: tvm.IRModule) -> tvm.IRModule:
    """A copy of a CPU module with every not-yet-scheduled PrimFunc that the generic rules fit
    scheduled and marked (mod itself is left as it is)."""
    updates = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
            continue
        try:
            scheduled = schedule_function(func)
        except (RuntimeError, ValueError):  # a schedule primitive refused this function's structure
            continue
        if scheduled is not None:
            updates[gvar] = scheduled
    return with_scheduled(mod, updates)
