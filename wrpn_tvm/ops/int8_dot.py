"""WRPN conv2d as an int8 dot product over the integer levels: the alternative to bit-serial on CPUs
with fast int8 dot instructions, exact in integers like it.

A layer of abits/wbits bits costs abits * wbits AND + popcount plane pairs bit-serially; as int8 it
costs one multiply-accumulate per level pair, whatever the bits, at 4 MACs per 32-bit lane:
  x86 AVX-512 VNNI   vpdpbusd (u8 x s8 -> i32), 16 output channels per zmm
  x86 AVX-512BW      vpmaddubsw + vpmaddwd, 16 per zmm
  x86 AVX2           vpmaddubsw + vpmaddwd, 8 per ymm
  aarch64 dotprod    sdot (s8 x s8 -> i32), 4 per q register
vpmaddubsw adds two u8 x s8 products in a saturating int16: exact while 2 * A * |W| <= 32767, which
holds for every layer `int8_fits` accepts (at most 2 * 127 * 127; 4/4: 2 * 15 * 7 = 210).

Layouts (`Int8Layout`: ob output channels per dot instruction, 4 channels per lane):
  activations  NHWC [N, H, W, Cp] of uint8 (x86) or int8 (sdot), Cp = C rounded up to 4, padded 0
  weights      int8 [ceil(O / ob), KH, KW, Cp / 4, ob, 4] (padded outputs and channels 0)
so one dot instruction reads 4 consecutive channels of one pixel (broadcast to every lane) and the
contiguous [ob, 4] weight block. The conv accumulates [N, OH, OW, ceil(O / ob), ob] int32, which
the template keeps in registers; one elementwise stage drops the padded outputs and writes
[N, OH, OW, O] (the template runs it, and any fused epilogue, on the tile as it is written back).
"""

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from .bitserial import as_padding4, as_pair
from .grid import check_bits, check_weight_levels
from ..errors import WrpnError

INT8_CONV2D_RULE = "wrpn_int8_conv2d"
PAD_NAME = "wrpn_pad"  # the name the CPU templates look for (schedules.common.PAD_BLOCK)
REDUCE_BLOCK = 4
PAIR_SUM_ATTR = "wrpn_int8_pair_sum_max"  # block annotation: pair_sum_max of the layer's bits
INT16_MAX = 2**15 - 1


@dataclass(frozen=True)
class Int8Layout:
    """ob output channels per dot instruction, reduce_block input channels per 32-bit lane, the
    activations' dtype (what the instruction multiplies: uint8 on x86, int8 for sdot), and whether
    the target has AMX tiles (schedules/amx.py runs the layers `amx_tile` accepts on them)."""

    out_block: int
    reduce_block: int = REDUCE_BLOCK
    activation_dtype: str = "uint8"
    amx: bool = False


def has_amx(target) -> bool:
    """Whether the target has AMX-INT8 (x86-64 LLVM targets only: LLVM is never asked about a
    triple it may not know, such as a tuning log's)."""
    from tvm.target import Target
    from tvm.target.codegen import target_has_features

    if target is None:
        return False
    target = target if isinstance(target, Target) else Target(target)
    if target.kind.name != "llvm":
        return False
    triple = str(target.attrs.get("mtriple", ""))
    if triple and not triple.startswith("x86_64"):
        return False
    return target_has_features("amx-int8", target) and target_has_features("amx-tile", target)


def int8_layout(target) -> "Int8Layout | None":
    """The int8 layout a target's dot instruction wants, or None where it has none worth taking
    (aarch64 without dotprod, CUDA, other CPUs)."""
    from tvm.target import Target
    from tvm.target.codegen import target_has_features

    target = target if isinstance(target, Target) else Target(target)
    if target.kind.name != "llvm":
        return None
    triple = str(target.attrs.get("mtriple", ""))
    if triple.startswith("aarch64"):
        return Int8Layout(4, REDUCE_BLOCK, "int8") if target_has_features("dotprod", target) else None
    if target_has_features("avx512bw", target):  # with or without VNNI: 16 int32 lanes per zmm
        return Int8Layout(16, REDUCE_BLOCK, "uint8", has_amx(target))
    if target_has_features("avx2", target):
        return Int8Layout(8, REDUCE_BLOCK, "uint8")
    return None


# AMX (schedules/amx.py): a tile row holds 64 uint8 channels of one pixel, a tile up to 16 rows.
AMX_ROW_CHANNELS = 64
AMX_MAX_PIXELS = 16


def amx_row_pixels(out_width: int) -> int:
    """Pixels of an output row per AMX tile: the largest divisor of the width up to 16."""
    return max(d for d in range(1, min(out_width, AMX_MAX_PIXELS) + 1) if out_width % d == 0)


@dataclass(frozen=True)
class AmxTile:
    """How an int8 conv's out_height x out_width output maps onto AMX tiles of up to 16 pixel rows.

    A tile holds `rows` output rows of `pixels` pixels each. Where a whole output row is short
    (7x7 maps), several fit one tile through the padded input's columns: tile row j reads the input
    `j` conv strides after the tile's first pixel, so rows of the padded input `padded_width`
    pixels wide follow each other `padded_width` tile rows apart, the padding columns' tile rows
    between them computed and dropped. The conv then computes `computed_rows` output rows (a
    multiple of `rows`; the extra ones read zero padding and are dropped too)."""

    rows: int
    pixels: int
    padded_width: int
    out_height: int
    out_width: int

    @property
    def computed_rows(self) -> int:
        return -(-self.out_height // self.rows) * self.rows

    @property
    def tile_rows(self) -> int:
        """Rows of the AMX tile (a pixel each): whole padded rows, then the last row's pixels."""
        return (self.rows - 1) * self.padded_width + self.pixels

    @property
    def useful_fraction(self) -> float:
        """Output pixels over the tiles' 16-row capacity that computing the layer takes."""
        tiles = (self.computed_rows // self.rows) * (self.out_width // self.pixels)
        return self.out_height * self.out_width / (tiles * AMX_MAX_PIXELS)


def amx_runs(channels: int, layout: Int8Layout) -> bool:
    """Whether AMX tiles run a layer of these input channels in this layout: the channels fill
    whole 64-byte tile rows, and the layout is the AVX-512 one (16 output channels a block, uint8
    activations)."""
    return layout.out_block == 16 and layout.activation_dtype == "uint8" \
        and padded_channels(channels, layout) % AMX_ROW_CHANNELS == 0


def amx_tile(channels: int, out_height: int, out_width: int, padded_width: int, stride,
             layout: Int8Layout) -> "AmxTile | None":
    """The AMX tiling of a layer, or None where AMX does not run it (`amx_runs`). Several output
    rows share a tile where whole rows fit and the strides are equal (one tile row pitch for
    both); otherwise a tile is `amx_row_pixels` of one row."""
    if not amx_runs(channels, layout):
        return None
    stride_h, stride_w = as_pair(stride, "stride")
    rows = 1
    if stride_h == stride_w and out_width < AMX_MAX_PIXELS:
        rows = min(1 + (AMX_MAX_PIXELS - out_width) // padded_width, out_height)
    pixels = out_width if rows > 1 else amx_row_pixels(out_width)
    return AmxTile(rows, pixels, padded_width, out_height, out_width)


def int8_fits(abits: int, wbits: int) -> bool:
    """Whether levels of these widths are exact in every int8 kernel: weights (at most 8 bits) are
    within +-127 always; activations must fit sdot's signed bytes."""
    check_bits(abits, wbits)
    return 2**abits - 1 <= 127


def padded_channels(channels: int, layout: Int8Layout) -> int:
    return -(-channels // layout.reduce_block) * layout.reduce_block


def int8_levels(x: te.Tensor, layout: Int8Layout) -> te.Tensor:
    """NCHW integer levels (any dtype, e.g. float32 from an epilogue) -> NHWC [N, H, W, Cp] of the
    layout's activation dtype, channels past C zero. One injective compute, fusable after the
    epilogue that produces x."""
    if len(x.shape) != 4:
        raise WrpnError(f"int8_levels expects NCHW data, got shape {tuple(x.shape)}")
    return int8_levels_of(x, x.shape, layout)


def int8_levels_of(level, shape, layout: Int8Layout) -> te.Tensor:
    """int8_levels of the NCHW levels `level(n, c, h, w)` computes (a tensor, or an expression of
    other tensors) over `shape`, in one compute: where the expression reads NHWC accumulators, it
    reads them in place, which makes the pass elementwise to the int8 conv computing them."""
    batch, channels, height, width = shape
    channels = int(channels)
    dtype = layout.activation_dtype
    zero = tirx.const(0, dtype)

    def value(n, h, w, c):
        if channels % layout.reduce_block == 0:
            return level(n, c, h, w).astype(dtype)
        # min() keeps the load in bounds where a vectorized select evaluates both sides.
        return tirx.if_then_else(c < channels, level(n, tirx.min(c, channels - 1), h, w).astype(dtype), zero)

    return te.compute((batch, height, width, padded_channels(channels, layout)), value, name="wrpn_int8_levels")


def prepack_int8_weight(w_levels: np.ndarray, layout: Int8Layout) -> np.ndarray:
    """OIHW integer weight levels -> int8 [ceil(O / ob), KH, KW, Cp / 4, ob, 4], zero-padded."""
    levels = np.asarray(w_levels)
    if levels.ndim != 4:
        raise WrpnError(f"prepack_int8_weight expects OIHW weights, got shape {levels.shape}")
    levels = check_weight_levels(levels, 8)  # the int8 range, excluding -128 (symmetric grids only)
    out_channels, channels, kernel_h, kernel_w = levels.shape
    ob, lane = layout.out_block, layout.reduce_block
    blocks = -(-out_channels // ob)
    cp = padded_channels(channels, layout)
    padded = np.zeros((blocks * ob, cp, kernel_h, kernel_w), dtype=np.int8)
    padded[:out_channels, :channels] = levels
    # [OB, ob, C4, lane, KH, KW] -> [OB, KH, KW, C4, ob, lane]
    blocked = padded.reshape(blocks, ob, cp // lane, lane, kernel_h, kernel_w)
    return np.ascontiguousarray(blocked.transpose(0, 4, 5, 2, 1, 3))


def pair_sum_max(abits: int, wbits: int) -> int:
    """The largest |A1 W1 + A2 W2| of two level products (what vpmaddubsw puts in an int16)."""
    check_bits(abits, wbits)
    return 2 * (2**abits - 1) * max(1, 2 ** (wbits - 1) - 1)


def pair_sums_fit_int16(pair_sum_bound: int, steps: int) -> bool:
    """Whether `steps` vpmaddubsw pair sums of at most `pair_sum_bound` each add up within an
    int16 lane (one pair sum per 4-channel reduction step lands in each lane)."""
    return steps * pair_sum_bound <= INT16_MAX


def int8_conv2d(data, weight, out_channels: int, stride=1, padding=0, bits=None,
                layout: "Int8Layout | None" = None) -> te.Tensor:
    """int32 NHWC [N, OH, OW, out_channels] conv of int8_levels data [N, H, W, Cp] with
    prepack_int8_weight weights [OB, KH, KW, Cp / 4, ob, 4]; zero padding is level 0.

    bits: the layer's (abits, wbits), optional. The result is the same either way; knowing how
    small the levels are lets the vpmaddubsw kernels (AVX2, AVX-512BW) add int16 pair sums before
    widening them, over the whole reduction where `pair_sums_fit_int16` (the block records
    `pair_sum_max`).

    layout: the target's, optional. On AMX (`layout.amx`) the accumulators get the rows
    `amx_tile` computes (whole tiles of several short rows); the result is the same."""
    batch, height, width, channels = (int(d) for d in data.shape)
    blocks, kernel_h, kernel_w, lanes_c, ob, lane = (int(d) for d in weight.shape)
    if str(weight.dtype) != "int8" or str(data.dtype) not in ("uint8", "int8"):
        raise WrpnError(f"int8 conv2d takes uint8/int8 data and int8 weights, got {data.dtype} and {weight.dtype}")
    if lanes_c * lane != channels:
        raise WrpnError(f"int8 conv2d data has {channels} channels but the weight expects {lanes_c * lane}")
    if not (blocks - 1) * ob < int(out_channels) <= blocks * ob:
        raise WrpnError(f"{int(out_channels)} output channels do not fit {blocks} weight blocks of {ob}")
    stride_h, stride_w = as_pair(stride, "stride")
    top, left, bottom, right = as_padding4(padding)
    out_h = (height + top + bottom - kernel_h) // stride_h + 1
    out_w = (width + left + right - kernel_w) // stride_w + 1
    tile = amx_tile(channels, out_h, out_w, width + left + right, stride, layout) if layout is not None and layout.amx else None
    acc_h = tile.computed_rows if tile is not None else out_h
    # Extra accumulator rows read zero padding below the input.
    bottom += (acc_h - out_h) * stride_h

    if top or left or bottom or right:
        zero = tirx.const(0, data.dtype)

        def padded_value(n, h, w, c):
            inside = tirx.all(h >= top, h < height + top, w >= left, w < width + left)
            return tirx.if_then_else(inside, data[n, h - top, w - left, c], zero)

        padded = te.compute((batch, height + top + bottom, width + left + right, channels), padded_value,
                            name=PAD_NAME)
    else:
        padded = data

    kh = te.reduce_axis((0, kernel_h), name="kh")
    kw = te.reduce_axis((0, kernel_w), name="kw")
    c4 = te.reduce_axis((0, lanes_c), name="c4")
    ci = te.reduce_axis((0, lane), name="ci")
    acc = te.compute(
        (batch, acc_h, out_w, blocks, ob),
        lambda n, oh, ow, b, oi: te.sum(
            padded[n, oh * stride_h + kh, ow * stride_w + kw, c4 * lane + ci].astype("int32")
            * weight[b, kh, kw, c4, oi, ci].astype("int32"),
            axis=[kh, kw, c4, ci],
        ),
        name="wrpn_int8_conv2d",
        attrs={"schedule_rule": INT8_CONV2D_RULE,
               **({PAIR_SUM_ATTR: pair_sum_max(*bits)} if bits is not None else {})},
    )
    return te.compute(
        (batch, out_h, out_w, int(out_channels)),
        lambda n, oh, ow, o: acc[n, oh, ow, o // ob, o % ob],
        name="wrpn_int8_conv2d_output",
    )
