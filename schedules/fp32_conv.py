"""CPU template for the blocked FP32 conv (`wrpn_tvm.ops.blocked_conv2d`): the layers a WRPN model
keeps in full precision, and every conv of an FP32 model.

The register tile is (a few output pixels) x (one or two 16-channel weight blocks): per step of
the reduction it loads the weight vectors, broadcasts one input value per pixel and does one FMA
per pixel and vector, with every accumulator in a register until the reduction ends.
Tiles run in parallel, weight block outermost so consecutive tiles of a thread reuse the block
from cache. The zero padding stays one parallel pass over the input (per tile, the halo copy
would cost as much as the FMAs of a thin layer); the bias and the fused epilogue run on the tile
as it is written back. MetaSchedule samples the tile (weight blocks x rows x columns) and the unroll depth.
"""

from dataclasses import dataclass

from tvm.s_tir import Schedule
from tvm.target import Target
from tvm.target.codegen import target_has_features

from wrpn_tvm.ops import FP32_CONV2D_RULE
from wrpn_tvm.ops.blocked_conv2d import PAD_NAME

from .common import (
    Decisions,
    block_rule,
    divisors,
    inline_other_blocks,
    loop_extent,
    place_parallel,
    place_remaining_blocks,
    registers_and_writeback,
    root_blocks,
    try_vectorize,
)

UNROLL_STEPS = [0, 16, 64]
MAX_TILE_ROWS = 4
MAX_TILE_BLOCKS = 2


@dataclass(frozen=True)
class RegisterFile:
    """What bounds the register tile: accumulator registers, and vector registers per 16-channel
    weight block (1 zmm, 2 ymm, 4 NEON q registers)."""

    accumulators: int
    vectors_per_block: int


AVX512_REGISTERS = RegisterFile(accumulators=24, vectors_per_block=1)
AVX2_REGISTERS = RegisterFile(accumulators=12, vectors_per_block=2)
ARM_REGISTERS = RegisterFile(accumulators=24, vectors_per_block=4)
# A tuning rule serves every x86 target: it samples within the larger file, and measuring
# rejects the tiles that spill on AVX2.
X86_TUNING_REGISTERS = AVX512_REGISTERS


def register_file(target: Target) -> RegisterFile:
    """Room for accumulators after the weight vectors and a broadcast: 32 registers with AVX-512
    or NEON, 16 with AVX2. With AVX-512 a 16-lane vector is one zmm register even where the target
    prefers 256-bit vectors (that preference steers LLVM's own vectorizer, not explicit vectors)."""
    if "arm_cpu" in target.keys:
        return ARM_REGISTERS
    return AVX512_REGISTERS if target_has_features("avx512f", target) else AVX2_REGISTERS


def has_fp32_conv(sch: Schedule) -> bool:
    return any(block_rule(sch, block) == FP32_CONV2D_RULE for block in root_blocks(sch))


def default_tile(blocks: int, columns: int, registers: RegisterFile) -> tuple[int, int]:
    """(weight blocks, columns of one row) per tile, each dividing its extent, whose accumulators
    fit: the most FMAs per load (a broadcast per pixel, a vector per weight block and register),
    then the most pixels. One row: two-row tiles measured slower on the 7x7 layers and the stem
    (znver4); tuning samples up to MAX_TILE_ROWS."""
    vectors = registers.vectors_per_block

    def score(tile):
        b, c = tile
        return b * vectors * c / (c + b * vectors), c

    tiles = [(b, c) for b in divisors(blocks) if b <= MAX_TILE_BLOCKS
             for c in divisors(columns) if b * vectors * c <= registers.accumulators]
    return max(tiles, key=score)


def conv2d(sch: Schedule, block, registers: RegisterFile, tuning: bool) -> list[Schedule]:
    decisions = Decisions(sch, tuning)
    n, ob, oh, ow, oi, rc, ry, rx = sch.get_loops(block)
    extents = [loop_extent(sch, loop) for loop in (ob, oh, ow)]
    blocks, columns = default_tile(extents[0], extents[2], registers)
    max_columns = max(1, registers.accumulators // registers.vectors_per_block)
    ob_outer, ob_inner = sch.split(ob, decisions.tile(ob, 2, MAX_TILE_BLOCKS, [extents[0] // blocks, blocks]))
    oh_outer, oh_inner = sch.split(oh, decisions.tile(oh, 2, MAX_TILE_ROWS, [extents[1], 1]))
    ow_outer, ow_inner = sch.split(ow, decisions.tile(ow, 2, max_columns, [extents[2] // columns, columns]))
    # Blocks innermost, each pixel's broadcast feeding every block's FMA at once (as int8_dot's
    # tiles): the stem (3 -> 128, 7x7/2, 2x8 tile), x86-avx512, weights flushed, 0.87x the time of
    # blocks outermost at 1 thread, 0.90x at 2; AVX2's one-block tiles unchanged.
    sch.reorder(n, ob_outer, oh_outer, ow_outer, rc, ry, rx, oh_inner, ow_inner, ob_inner, oi)
    tile = sch.fuse(n, ob_outer, oh_outer, ow_outer)
    sch.parallel(tile)
    sch.annotate(tile, "pragma_auto_unroll_max_step", decisions.choice(UNROLL_STEPS, default=0))
    sch.annotate(tile, "pragma_unroll_explicit", 1)
    registers_and_writeback(sch, block, tile, [oh_inner, ow_inner, ob_inner], oi, rc, tuning)
    return [sch]


def _schedule_padding(sch: Schedule) -> None:
    for block in root_blocks(sch):
        if sch.get(block).name_hint.startswith(PAD_NAME):
            n, c, h, w = sch.get_loops(block)
            sch.parallel(sch.fuse(n, c, h))
            try_vectorize(sch, w)


def schedule_function(sch: Schedule, target: Target) -> None:
    """Untuned schedule of a PrimFunc holding blocked FP32 conv(s) and their fused neighbours
    (the padding is left out of `others` by name and scheduled on its own)."""
    others = inline_other_blocks(sch)
    for block in root_blocks(sch):
        if block_rule(sch, block) == FP32_CONV2D_RULE:
            conv2d(sch, block, register_file(target), tuning=False)
    _schedule_padding(sch)
    place_remaining_blocks(sch, others, place_parallel)


def rule(registers: RegisterFile):
    """The MetaSchedule custom rule for one register file (a rule has no target at hand)."""

    def conv2d_rule(sch: Schedule, block) -> list[Schedule]:
        return conv2d(sch, block, registers, tuning=True)

    return conv2d_rule

