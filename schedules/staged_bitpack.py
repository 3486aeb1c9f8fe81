"""A conv or dense bitpack from staged levels, shared by the CPU families.

Inlined (the generic template), a fused epilogue's pack recomputes each channel's epilogue and level
once per plane inside a 64-term bit expression, and whatever LLVM makes of that expression is slow
or spills (vectorized over bits or pixels it needs a vector mask per bit position; scalar, SLP
gathers all 64 levels at once). Staged, each pixel's (a dense input's row's) levels are computed
once into a staging buffer, vectorized over its channels, and the pack is tensorized: the levels
narrowed to bytes, BITPACK_GROUP at a time (a last partial group padded with zeros), and each plane's
word gathered from them by a per-ISA `pack_word` (`neon.pack_word`, `x86.pack_word`). The
intrinsic's description is ops.pack_activation's own compute, so tensorize checks that the two agree.

Where it applies (`levels_to_stage`): a pack of 64-bit words whose single producer is its levels
block, read channels fastest (an NHWC accumulator: a fused epilogue; the NK rows of a dense
layer's input).

Packs read with the column fastest (NCHW float input: the first quantized layer) stage instead the
levels of 4 (or 2) pixels of a row at a time (`column_levels_to_stage`), vectorized over those
contiguous pixels, and a per-ISA `pack_columns` builds the pixels' words together, a vector lane
per pixel (`neon.pack_columns`). Families without one keep their template for these.
"""

import functools
import re
from dataclasses import dataclass
from typing import Callable

from tvm import tirx
from tvm.s_tir import Schedule, TensorIntrin
from tvm.script import tirx as T
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder.tirx import prim_func as build_prim_func

from wrpn_tvm.ops import BITPACK_RULE

from . import cpu
from .common import (block_rule, inline_other_blocks, kernel_blocks, largest_divisor_at_most, loop_extent,
                     try_vectorize)

BITPACK_GROUP = 16  # channels per vector of level bytes the implementations narrow at a time
# Pixels of a row whose levels a column pack stages at a time: a vector of 32-bit lanes where the
# row allows, else half of one (a 14-pixel row: MNIST's first quantized layer).
COLUMN_PIXELS = (4, 2)
WORD = "uint64"
# Where the staged levels live. TVM puts a CPU allocation of any scope but a small "global" one in a
# backend workspace, which LLVM must treat as escaping memory: the levels stay in memory between
# their loop and the pack, as staging means (a scope of their own: `stack_tiles` keeps "local"
# buffers, register tiles, on the stack). A small "global" one (under 1 KiB) is a stack alloca,
# which LLVM may promote to registers: right for a column pack's few pixels (in a workspace, LLVM
# kept a 14x14x16 4-bit row's last levels live across the row loop to store them after it, and
# spilled), wrong for a pixel's channels (promoted, the levels loop and the pack merge into one
# loop that spills).
LEVELS_SCOPE = "local.staged"
COLUMN_LEVELS_SCOPE = "global"
# A levels loop split into vector-register steps, several unrolled (`Interleave`) runs only where it
# keeps this many trips (counting its pixels'): with fewer, LLVM unrolls it whole, hoists every
# channel's scale and offset out of the pixel loop and spills them (80 and 128 channels on Cortex-A53).
MIN_INTERLEAVED_TRIPS = 12
LEVEL_VECTOR_LANES = 16  # float32 lanes of an AVX-512 register: a levels loop's step without Interleave
WORD_BITS = 64
_OUTER_VAR = r"\bv(?:_i)?\d_o\b"  # the blockized pack's outer iter vars, as TVM names them


def merge_unit_axis(sch: Schedule, block, columns: bool = False) -> None:
    """Merge a pack's plane and word axes where either has extent 1 (a single word: up to 64
    channels; a single plane: 1-bit activations). Blockized, a unit loop's iter var would stay in
    the pack's guards (`channel < channels`, bits past a partial word) or its plane shift as a
    variable of the outer block, where the description has zero; merged, it is a constant 0.
    A column pack (blockized at its pixels) drops both where both are units; a pixel's pack keeps
    one, the loop it blockizes at."""
    planes, words = pack_shape(sch, block)
    if columns and planes == words == 1:
        sch.transform_block_layout(block, lambda n, h, w, plane, word: (n, h, w))
    elif planes == 1 or words == 1:
        merged = (lambda plane, word: word) if planes == 1 else (lambda plane, word: plane + word)
        if is_dense(sch, block):
            sch.transform_block_layout(block, lambda n, plane, word: (n, merged(plane, word)))
        else:
            sch.transform_block_layout(block, lambda n, h, w, plane, word: (n, h, w, merged(plane, word)))


def reads_columns_only(sch: Schedule, block) -> bool:
    """Whether every image a conv bitpack reads is read with the output column fastest (NCHW);
    per-channel vectors (a fused scale or bias) are 1-D and do not count."""
    info = sch.get(block)
    column = info.iter_vars[2].var
    for read in info.reads:
        last = read.region[-1]
        # An extent that is no constant: a read through an inlined reshape (a blocked map's).
        one = isinstance(last.extent, tirx.IntImm) and int(last.extent) == 1
        if len(read.region) > 1 and not (one and last.min.same_as(column)):
            return False
    return True


def pack_shape(sch: Schedule, block) -> tuple[int, int]:
    """(planes, words) of a conv or dense bitpack."""
    planes, words = (int(extent) for extent in sch.get(block).writes[0].source.shape[-2:])
    return planes, words


def is_dense(sch: Schedule, block) -> bool:
    """Whether a bitpack packs rows of NK levels (a dense layer's input), not an NCHW image."""
    return len(sch.get_loops(block)) == 3


def _levels_block(sch: Schedule, block):
    """A conv (or dense) bitpack's levels block, where it is its single producer, of 64-bit words,
    from 4-D (2-D) float32 or int32 levels; else None."""
    producers = sch.get_producers(block)
    if (len(sch.get_loops(block)) not in (3, 5) or sch.get(block).writes[0].source.dtype != WORD
            or len(producers) != 1 or block_rule(sch, producers[0]) is not None):
        return None
    levels = sch.get(producers[0]).writes[0].source
    if len(levels.shape) != (2 if is_dense(sch, block) else 4) or levels.dtype not in ("float32", "int32"):
        return None
    return producers[0]


def _reads_columns_inlined(sch: Schedule, block) -> bool:
    """reads_columns_only of the pack once the other injective blocks are inlined into it."""
    trial = sch.copy()
    inline_other_blocks(trial)
    return reads_columns_only(trial, trial.get_sblock(sch.get(block).name_hint))


def levels_to_stage(sch: Schedule, block):
    """The levels block of a conv or dense bitpack that can be staged (see the module docstring),
    or None."""
    producer = _levels_block(sch, block)
    # One plane of one partial word: blockized, a pixel's pack keeps a unit iter var
    # (`merge_unit_axis`), which stays in the guard of the channels past the word's end, where the
    # intrinsic's description has a constant.
    if producer is None or (pack_shape(sch, block) == (1, 1)
                            and int(sch.get(producer).writes[0].source.shape[1]) < WORD_BITS):
        return None
    return producer if is_dense(sch, block) or not _reads_columns_inlined(sch, block) else None


def column_pixels(width: int) -> "int | None":
    """The most pixels of COLUMN_PIXELS that divide a row of `width`, or None."""
    return next((pixels for pixels in COLUMN_PIXELS if width % pixels == 0), None)


def _row_width(sch: Schedule, levels) -> int:
    return int(sch.get(levels).writes[0].source.shape[3])


def column_levels_to_stage(sch: Schedule, block):
    """The levels block of a conv bitpack read with the column fastest that can be staged a few
    pixels at a time (`column_pixels`: even rows), or None."""
    producer = _levels_block(sch, block)
    if producer is None or is_dense(sch, block) or column_pixels(_row_width(sch, producer)) is None:
        return None
    return producer if _reads_columns_inlined(sch, block) else None


@dataclass(frozen=True)
class Interleave:
    """A levels loop in steps of `lanes` (a vector register), `vectors` steps unrolled a trip: each
    level is a chain of dependent float ops, which an in-order core (Cortex-A53) runs one after
    another unless independent chains sit side by side. Each step holds a register per buffer the
    levels read (accumulators, scales, offsets; a residual's too), so it applies only where those
    fit in `registers` (ResNet-18 2x 2/2's two residual packs read 9: they spilled, at 4 steps
    and at 2, and ran twice as slow on Cortex-A72).

    Where a pixel's channels make too few steps (128 channels: 8), `pixels` (most first) lets the
    levels of that many pixels of a row be computed together, each channel step outermost: its
    scale and offset vectors, loaded once, serve every pixel, and the loop keeps its trips."""

    lanes: int
    vectors: int
    registers: int
    pixels: tuple[int, ...] = ()

    def pixels_per_trip(self, channels: int, width: int, per_channel: int, per_pixel: int) -> "int | None":
        """The pixels whose levels one levels loop computes: 1 where a pixel's channel steps alone
        apply, else the first of `pixels` that divides the row (`width`) and applies, else None
        (not interleaved). A step holds a register per buffer read per channel (`per_channel`:
        scales, offsets) and one per pixel for each read per pixel (`per_pixel`: accumulators)."""
        step = self.lanes * self.vectors
        if channels % step:
            return None
        for pixels in (1, *self.pixels):
            if (width % pixels == 0 and channels // step * pixels >= MIN_INTERLEAVED_TRIPS
                    and (per_channel + pixels * per_pixel) * self.vectors <= self.registers):
                return pixels
        return None


def _pixels_per_trip(info, interleave: Interleave) -> "int | None":
    """Interleave.pixels_per_trip of a levels block (its reads as they are: inline the others first).
    A read per pixel is of a buffer with more than one axis past 1 (an NHWC accumulator); a
    per-channel vector has one."""
    levels = info.writes[0].source
    per_pixel = sum(sum(int(extent) > 1 for extent in read.source.shape) > 1 for read in info.reads)
    width = int(levels.shape[3]) if len(levels.shape) == 4 else 1
    return interleave.pixels_per_trip(int(levels.shape[1]), width, len(info.reads) - per_pixel, per_pixel)


def interleaved_pixels(sch: Schedule, levels, interleave: Interleave) -> "int | None":
    """The pixels per trip of these levels' loop in `pack_from_levels`, None where not interleaved:
    it counts their reads once the other injective blocks (an epilogue's steps, a residual's glue)
    are inlined into them."""
    name = sch.get(levels).name_hint
    trial = sch.copy()
    inline_other_blocks(trial, frozenset({name}))
    return _pixels_per_trip(trial.get(trial.get_sblock(name)), interleave)


def pack_from_levels(sch: Schedule, block, levels, pack_word: Callable,
                     interleave: "Interleave | None" = None) -> None:
    """Each pixel's (a dense input's row's) levels computed once into a staging buffer (vectorized
    over its channels; with `interleave`, in its steps, perhaps several pixels' at a time), then
    packed by the intrinsic whose words `pack_word` computes (`intrin`)."""
    buffer = sch.get(levels).writes[0].source
    channels = int(buffer.shape[1])
    planes, _ = pack_shape(sch, block)
    dense = is_dense(sch, block)
    pixels = None if interleave is None else _pixels_per_trip(sch.get(levels), interleave)
    merge_unit_axis(sch, block)
    if dense:
        pixel, plane_and_word = sch.get_loops(block)[:2]
        sch.parallel(pixel)
    else:
        n, h, pixel, plane_and_word = sch.get_loops(block)[:4]
        sch.parallel(sch.fuse(n, h))
    if pixels is not None and pixels > 1:
        # Each pixel's levels contiguous, as the intrinsic reads them: [pixel, channel, 1, 1].
        _, _, height, width = (int(extent) for extent in buffer.shape)
        sch.transform_layout(levels, ("write", 0),
                             lambda n, c, y, x: ((n * height + y) * width + x, c, n * 0, n * 0))
        pixel, _ = sch.split(pixel, [None, pixels])
    sch.compute_at(levels, pixel)
    sch.set_scope(levels, 0, LEVELS_SCOPE)
    loops = sch.get_loops(levels)
    at = next(index for index, loop in enumerate(loops) if sch.get(loop).same_as(sch.get(pixel)))
    own_loops = [loop for loop in loops[at + 1:] if loop_extent(sch, loop) > 1]
    channel_loop = next((loop for loop in own_loops if loop_extent(sch, loop) == channels), own_loops[-1])
    if pixels is not None and loop_extent(sch, channel_loop) == channels:
        pixel_loop = next(loop for loop in own_loops if loop_extent(sch, loop) == pixels) if pixels > 1 else None
        steps, unrolled, channel_loop = sch.split(channel_loop, [None, interleave.vectors, interleave.lanes])
        if pixel_loop is not None:
            sch.reorder(steps, pixel_loop, unrolled, channel_loop)
        sch.unroll(unrolled)
    if interleave is None:
        if loop_extent(sch, channel_loop) > LEVEL_VECTOR_LANES:
            # One vector register a step: a loop vectorized whole (256 channels) becomes one
            # 256-lane expression, which LLVM splits into registers that spill.
            _, channel_loop = sch.split(
                channel_loop, [None, largest_divisor_at_most(loop_extent(sch, channel_loop), LEVEL_VECTOR_LANES)])
        try_vectorize(sch, channel_loop)
    # With `interleave` (NEON) the channel loop stays serial, for LLVM's loop and SLP vectorizers:
    # vectorized by TVM, the levels (their rounding a vector frinti) held registers Interleave's
    # budget does not count, and ResNet-18's packs spilled on Cortex-A53/A72/A76 (test_arm_asm).
    sch.tensorize(sch.blockize(plane_and_word), intrin(pack_word, str(buffer.dtype), channels, planes, dense))


def pack_columns_from_levels(sch: Schedule, block, levels, pack_columns: Callable) -> None:
    """The levels of `column_pixels` pixels of a row computed once into a staging buffer (vectorized
    over those pixels, contiguous in the NCHW input), then packed by the intrinsic whose words
    `pack_columns` computes (`column_intrin`)."""
    buffer = sch.get(levels).writes[0].source
    planes, _ = pack_shape(sch, block)
    pixels = column_pixels(_row_width(sch, levels))
    merge_unit_axis(sch, block, columns=True)
    n, h, w = sch.get_loops(block)[:3]
    w_outer, w_pixels = sch.split(w, [None, pixels])
    sch.parallel(sch.fuse(n, h))
    sch.compute_at(levels, w_outer)
    sch.set_scope(levels, 0, COLUMN_LEVELS_SCOPE)
    try_vectorize(sch, sch.get_loops(levels)[-1])
    sch.tensorize(sch.blockize(w_pixels),
                  column_intrin(pack_columns, str(buffer.dtype), int(buffer.shape[1]), planes, pixels))


def stages_every_kernel(sch: Schedule, stage: Callable, columns: bool = False) -> bool:
    """Whether every WRPN kernel of the function is a pack that `schedule_kernels` stages (by
    `stage`, or with `columns` a column pack): a function whose schedule has no decision to tune."""
    kernels = kernel_blocks(sch)
    return bool(kernels) and all(
        rule == BITPACK_RULE and (stage(sch, block) is not None
                                  or (columns and column_levels_to_stage(sch, block) is not None))
        for block, rule in kernels)


def schedule_kernels(sch: Schedule, schedule_kernel: Callable, stage: Callable, pack_word: Callable,
                     pack_columns: "Callable | None" = None, interleave: "Interleave | None" = None) -> None:
    """cpu.schedule_kernels, except that a conv bitpack's levels stay a stage of their own where
    `stage(sch, block)` names them, and that pack is staged (`pack_from_levels`, its levels loop
    `interleave`d where given); with `pack_columns`, so are packs read with the column fastest
    (`pack_columns_from_levels`)."""
    staged = {}
    for block, rule in kernel_blocks(sch):
        if rule != BITPACK_RULE:
            continue
        levels = stage(sch, block)
        if levels is not None:
            staged[sch.get(block).name_hint] = (sch.get(levels).name_hint, False)
        elif pack_columns is not None and (levels := column_levels_to_stage(sch, block)) is not None:
            staged[sch.get(block).name_hint] = (sch.get(levels).name_hint, True)
    kept = frozenset(levels for levels, _ in staged.values())

    def schedule_kernel_or_stage(sch: Schedule, block, rule: str) -> None:
        if sch.get(block).name_hint not in staged:
            schedule_kernel(sch, block, rule)
            return
        levels, columns = staged[sch.get(block).name_hint]
        if columns:
            pack_columns_from_levels(sch, block, sch.get_sblock(levels), pack_columns)
        else:
            pack_from_levels(sch, block, sch.get_sblock(levels), pack_word, interleave)

    cpu.schedule_kernels(sch, schedule_kernel_or_stage, kept)


def register_intrinsics(sch: Schedule, pack_word: Callable, pack_columns: "Callable | None" = None) -> None:
    """Register the intrinsic of every pack of sch that `schedule_kernels` can stage with these
    word functions: a tuning database records the staged packs' traces too (the defaults a job
    measures first), and replaying one happens in processes where no pack was ever staged."""
    for block, rule in kernel_blocks(sch):
        if rule != BITPACK_RULE:
            continue
        planes, _ = pack_shape(sch, block)
        if (levels := levels_to_stage(sch, block)) is not None:
            buffer = sch.get(levels).writes[0].source
            intrin(pack_word, str(buffer.dtype), int(buffer.shape[1]), planes, is_dense(sch, block))
        elif pack_columns is not None and (levels := column_levels_to_stage(sch, block)) is not None:
            buffer = sch.get(levels).writes[0].source
            column_intrin(pack_columns, str(buffer.dtype), int(buffer.shape[1]), planes,
                          column_pixels(_row_width(sch, levels)))


def intrin(pack_word: Callable, dtype: str, channels: int, planes: int, dense: bool = False) -> str:
    """The registered intrinsic that packs one pixel's (dense: one row's) `channels` levels of
    `dtype` (a local [1, C, 1, 1] buffer; dense [1, C]) into its [planes, words] 64-bit words, each
    computed by `pack_word`."""
    name = f"wrpn_{pack_word.__module__.rsplit('.', 1)[-1]}_bitpack_{dtype}_{channels}_{planes}{'_dense' * dense}"
    if TensorIntrin.get(name, allow_missing=True) is None:
        TensorIntrin.register(name, _description(dtype, channels, planes, dense=dense),
                              _implementation(dtype, channels, planes, pack_word, dense))
    return name


def column_intrin(pack_columns: Callable, dtype: str, channels: int, planes: int, pixels: int) -> str:
    """The registered intrinsic that packs the `channels` levels of `dtype` of `pixels` pixels of
    a row (a local [1, C, 1, pixels] buffer) into their [pixels, planes, words] 64-bit words, each
    plane of a word for all the pixels by `pack_columns`."""
    name = f"wrpn_{pack_columns.__module__.rsplit('.', 1)[-1]}_column_bitpack_{dtype}_{channels}_{planes}_{pixels}"
    if TensorIntrin.get(name, allow_missing=True) is None:
        TensorIntrin.register(name, _description(dtype, channels, planes, pixels),
                              _column_implementation(dtype, channels, planes, pixels, pack_columns))
    return name


def _column_implementation(dtype: str, channels: int, planes: int, pixels: int,
                           pack_columns: Callable) -> tirx.PrimFunc:
    """Per word and plane: `pack_columns(levels, plane, pixels)` of the word's channels (an int32
    vector of the pixels' levels each, channel-major in the buffer) gives the pixels' words, two
    to a vector."""
    words = -(-channels // WORD_BITS)
    with IRBuilder() as builder:
        with build_prim_func():
            l, o = T.arg("l", T.handle()), T.arg("o", T.handle())
            L = T.match_buffer(l, (1, channels, 1, pixels), dtype, offset_factor=1, scope=COLUMN_LEVELS_SCOPE)
            O = T.match_buffer(o, (1, 1, pixels, planes, words), WORD, offset_factor=1,
                               strides=[T.int64(), T.int64(), T.int64(), T.int64(), T.int64()])
            with T.sblock("root"):
                T.reads(L[0, 0:channels, 0, 0:pixels])
                T.writes(O[0, 0, 0:pixels, 0:planes, 0:words])
                flat = T.decl_buffer((channels * pixels,), dtype, data=L.data, elem_offset=L.elem_offset,
                                     scope=COLUMN_LEVELS_SCOPE)
                for word in range(words):
                    # Bound once: TIR has no common subexpressions, and LLVM does not reload a
                    # level past the stores of words it cannot tell apart from the buffer.
                    levels = [T.bind(T.Cast(f"int32x{pixels}", flat[T.ramp(channel * pixels, 1, pixels)]))
                              for channel in range(word * WORD_BITS, min(channels, (word + 1) * WORD_BITS))]
                    for plane in range(planes):
                        pairs = [T.bind(pair) for pair in pack_columns(levels, plane, pixels)]
                        for pixel in range(pixels):
                            T.buffer_store(O, tirx.Shuffle([pairs[pixel // 2]], [pixel % 2]), [0, 0, pixel, plane, word])
    return builder.get()


def _level_bytes(flat, start: int, count: int):
    """BITPACK_GROUP levels from `start` narrowed to bytes: `count` of them, zeros after (none past
    the last channel are read)."""
    if count <= 0:
        return T.broadcast(T.uint8(0), BITPACK_GROUP)
    if count == 1:
        return tirx.Shuffle([T.Cast("uint8", T.Cast("int32", flat[start])), T.broadcast(T.uint8(0), BITPACK_GROUP - 1)],
                            list(range(BITPACK_GROUP)))
    levels = T.Cast(f"uint8x{count}", T.Cast(f"int32x{count}", flat[T.ramp(start, 1, count)]))
    if count == BITPACK_GROUP:
        return levels
    return tirx.Shuffle([levels, T.broadcast(T.uint8(0), BITPACK_GROUP - count)], list(range(BITPACK_GROUP)))


def _implementation(dtype: str, channels: int, planes: int, pack_word: Callable, dense: bool = False) -> tirx.PrimFunc:
    """Per word: its 64 levels narrowed to BITPACK_GROUP bytes at a time (zeros past the last
    channel), then each plane's word `pack_word(groups, plane)` stored. Levels fit a byte (at most
    8 bits)."""
    words = -(-channels // WORD_BITS)
    # A pixel of an NCHW image packed to [n, h, w, plane, word], or a row of NK levels to [n, plane, word].
    pixel = () if dense else (0, 0)
    with IRBuilder() as builder:
        with build_prim_func():
            l, o = T.arg("l", T.handle()), T.arg("o", T.handle())
            L = T.match_buffer(l, (1, channels) if dense else (1, channels, 1, 1), dtype, offset_factor=1,
                               scope=LEVELS_SCOPE)
            O = T.match_buffer(o, (1, *[1] * len(pixel), planes, words), WORD, offset_factor=1,
                               strides=[T.int64() for _ in range(3 + len(pixel))])
            with T.sblock("root"):
                T.reads(L[0, 0:channels] if dense else L[0, 0:channels, 0, 0])
                T.writes(O[(0, *pixel, slice(0, planes), slice(0, words))])
                # Compact (its region is the whole local buffer): channels are contiguous.
                flat = T.decl_buffer((channels,), dtype, data=L.data, elem_offset=L.elem_offset, scope=LEVELS_SCOPE)
                for word in range(words):
                    first = word * WORD_BITS
                    groups = [_level_bytes(flat, start, min(BITPACK_GROUP, channels - start))
                              for start in range(first, first + WORD_BITS, BITPACK_GROUP)]
                    for plane in range(planes):
                        T.buffer_store(O, pack_word(groups, plane), [0, *pixel, plane, word])
    return builder.get()


@functools.cache  # parsing the script takes most of a second; the x86 and NEON intrinsics share it
def _description(dtype: str, channels: int, planes: int, pixels: int = 1, dense: bool = False) -> tirx.PrimFunc:
    """ops.pack_activation's own compute on a 1x1 image (dense: one row of NK levels), blockized at
    the plane loop as the template blockizes a model's pack (a unit plane or word axis merged as
    there); or, with `pixels`, on a row of that many pixels, blockized at the column loop: the very
    expression tensorize compares. The outer block's unit iter vars become zeros and the block the
    root, through the printed script (TVM's Python API has no TIR substitution)."""
    from tvm import te
    from tvm.script import from_source

    from wrpn_tvm.ops.bitpack import num_words, pack_activation

    words = num_words(channels, WORD_BITS)
    scope = COLUMN_LEVELS_SCOPE if pixels > 1 else LEVELS_SCOPE  # several pixels: a column pack's row
    shape = (1, channels) if dense else (1, channels, 1, pixels)
    packed = (1, planes, words) if dense else (1, 1, pixels, planes, words)
    levels = te.placeholder([tirx.IntImm("int64", extent) for extent in shape], dtype, name="levels")
    sch = Schedule(te.create_prim_func([levels, pack_activation(levels, planes, WORD_BITS, quantize=False)],
                                       index_dtype_override="int64"))
    block = sch.get_sblock("wrpn_bitpack")
    merge_unit_axis(sch, block, columns=pixels > 1)
    sch.blockize(sch.get_loops(block)[1 if dense else 3 if pixels == 1 else 2])
    lines = []
    for line in sch.mod["main"].script().splitlines():
        if line.startswith("def main"):
            lines += ["def main(l: T.handle, o: T.handle):",
                      f"    levels = T.match_buffer(l, {shape}, '{dtype}', offset_factor=1, scope='{scope}')",
                      f"    wrpn_bitpack = T.match_buffer(o, {packed}, '{WORD}', offset_factor=1,"
                      f" strides=({', '.join(['T.int64()'] * len(packed))}))"]
        elif not (line.lstrip().startswith(("T.func_attr", "# ")) or re.match(r" {4}for ", line)
                  or re.search(_OUTER_VAR + r".*T\.axis", line)):
            line = re.sub(_OUTER_VAR, "T.int64(0)", line.replace('"wrpn_bitpack_o"', '"root"'))
            lines.append(line[4:] if line.startswith(" " * 8) else line)
    return from_source("\n".join(lines))
