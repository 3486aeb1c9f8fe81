"""CUDA templates: one thread per small register tile of (pixels x output channels), output
channels fastest across a warp so weight loads and output stores are coalesced, the reduction
over the kernel window and channel words serial in the thread with `__popc` on 32-bit words."""

from tvm.s_tir import Schedule
from tvm.target import Target

from wrpn_tvm.ops import BITPACK_RULE, CONV2D_RULE

from .common import (
    Decisions,
    attach_epilogue,
    inline_other_blocks,
    inline_padding,
    inner_tile,
    kernel_blocks,
    loop_extent,
    place_remaining_blocks,
)

THREADS_PER_BLOCK = [64, 128, 256, 512]
DEFAULT_THREADS = 128
UNROLL_STEPS = [0, 16, 64, 512]


def _annotate_unroll(sch: Schedule, loop, decisions: Decisions) -> None:
    sch.annotate(loop, "pragma_auto_unroll_max_step", decisions.choice(UNROLL_STEPS, default=64))
    sch.annotate(loop, "pragma_unroll_explicit", 1)


def _thread_tiles(sch: Schedule, decisions: Decisions, pixels, channels):
    """Split pixels and channels into (grid, threads, per-thread registers)."""
    channel_default = inner_tile(loop_extent(sch, channels), [32, 2])
    pixel_default = inner_tile(loop_extent(sch, pixels), [max(1, DEFAULT_THREADS // channel_default[1]), 1])
    p_grid, p_threads, p_regs = sch.split(pixels, decisions.tile(pixels, 3, 4, pixel_default))
    c_grid, c_threads, c_regs = sch.split(channels, decisions.tile(channels, 3, 4, channel_default))
    return (p_grid, p_threads, p_regs), (c_grid, c_threads, c_regs)


def _bind_and_accumulate(sch: Schedule, block, pixel_tiles, channel_tiles, reduction, decisions) -> None:
    (p_grid, p_threads, p_regs), (c_grid, c_threads, c_regs) = pixel_tiles, channel_tiles
    sch.reorder(p_grid, c_grid, p_threads, c_threads, *reduction, p_regs, c_regs)
    grid = sch.fuse(p_grid, c_grid)
    threads = sch.fuse(p_threads, c_threads)
    sch.bind(grid, "blockIdx.x")
    sch.bind(threads, "threadIdx.x")
    _annotate_unroll(sch, grid, decisions)
    writeback = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(writeback, threads, preserve_unit_loops=True)
    attach_epilogue(sch, writeback, threads, vectorize=False)
    if not decisions.tuning:  # when tuning, MetaSchedule's RewriteReductionBlock postproc does it
        sch.decompose_reduction(block, reduction[0])
    sch.unroll(p_regs)
    sch.unroll(c_regs)


def conv2d(sch: Schedule, block, tuning: bool) -> list[Schedule]:
    decisions = Decisions(sch, tuning)
    inline_padding(sch, block)
    n, oh, ow, o, kh, kw, cw = sch.get_loops(block)
    pixels = sch.fuse(n, oh, ow)
    pixel_tiles, channel_tiles = _thread_tiles(sch, decisions, pixels, o)
    _bind_and_accumulate(sch, block, pixel_tiles, channel_tiles, [kh, kw, cw], decisions)
    return [sch]


def dense(sch: Schedule, block, tuning: bool) -> list[Schedule]:
    decisions = Decisions(sch, tuning)
    n, o, k = sch.get_loops(block)
    pixel_tiles, channel_tiles = _thread_tiles(sch, decisions, n, o)
    _bind_and_accumulate(sch, block, pixel_tiles, channel_tiles, [k], decisions)
    return [sch]


def bitpack(sch: Schedule, block, tuning: bool) -> list[Schedule]:
    decisions = Decisions(sch, tuning)
    loops = sch.get_loops(block)
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    _, threads = sch.split(fused, [None, decisions.choice(THREADS_PER_BLOCK, default=DEFAULT_THREADS)])
    grid = sch.get_loops(block)[0]
    sch.bind(grid, "blockIdx.x")
    sch.bind(threads, "threadIdx.x")
    return [sch]


def place_threads(sch: Schedule, block, spatial_loops) -> None:
    """A plain schedule for a leftover block: spatial loops fused and spread over threads."""
    fused = sch.fuse(*spatial_loops) if len(spatial_loops) > 1 else spatial_loops[0]
    grid, threads = sch.split(fused, [None, DEFAULT_THREADS])
    sch.bind(grid, "blockIdx.x")
    sch.bind(threads, "threadIdx.x")


def schedule_function(sch: Schedule, target: Target) -> None:
    kernels = kernel_blocks(sch)
    others = inline_other_blocks(sch)
    for block, rule in kernels:
        if rule == BITPACK_RULE:
            bitpack(sch, block, tuning=False)
        elif rule == CONV2D_RULE:
            conv2d(sch, block, tuning=False)
        else:
            dense(sch, block, tuning=False)
    place_remaining_blocks(sch, others, place_threads)


def has_no_decisions(sch: Schedule, target: Target) -> bool:
    """Every GPU template samples its thread tiles."""
    return False


def register_replay_intrinsics(sch: Schedule) -> None:
    """The GPU templates tensorize nothing: their records name no intrinsic of ours."""


def conv2d_rule(sch: Schedule, block) -> list[Schedule]:
    return conv2d(sch, block, tuning=True)


def dense_rule(sch: Schedule, block) -> list[Schedule]:
    return dense(sch, block, tuning=True)


def bitpack_rule(sch: Schedule, block) -> list[Schedule]:
    return bitpack(sch, block, tuning=True)
