"""WRPN conv2d by table lookup: the third kernel over the same integer levels, exact like the other
two, for AVX2 CPUs without a fast int8 dot product (T-MAC's activation tables, Wei et al. 2024).

A weight of at most 2 bits has at most 4 levels, so the weights of G input channels (G = 2 at 2
bits, 4 at 1 bit) form a 4-bit code, and for every pixel and group of G channels the 16 possible
sums  sum_k a_k * level(code_k)  fit a 16-byte table. One `vpshufb` then looks up 32 output
channels' codes in a pixel's table: 32 x G multiply-accumulates for a lookup and a byte add, where
`vpmaddubsw` does 32 for a multiply and an add. The table entries are bounded (`table_bound`), so
`int8_steps` lookups add up exactly in a signed byte before they are widened (into int16 or int32).

Layouts:
  tables  int8 [N, H + pad, W + pad, CG, 16] (CG = ceil(C / G) groups; padding and padded channels
          give all-zero tables), computed from the NCHW levels in one injective pass (fusable after
          the epilogue that produces them, like the other kernels' packs);
  codes   uint8 [OV, KH, KW, CG, 32], OV = ceil(O / 32) vectors of 32 output channels (padded ones
          code 0), so one vector's codes for a pixel's whole reduction are contiguous;
the conv accumulates int32 [N, OH, OW, OV, 32] and a crop writes NHWC [N, OH, OW, O], as the int8
conv does. The compute states the lookup as a one-hot sum over the 16 entries (no data-dependent
index, so the template can tensorize it); only the template's intrinsic makes it a lookup.
"""

import numpy as np
from tvm import te, tirx

from .bitserial import as_padding4, as_pair
from .grid import check_activation_levels, check_bits, check_weight_levels
from ..errors import WrpnError

LUT_CONV2D_RULE = "wrpn_lut_conv2d"
INDEX_BITS = 4
ENTRIES = 2**INDEX_BITS  # a vpshufb table
LANES = 32  # output channels per ymm of codes
INT8_MAX = 127
STEPS_ATTR = "wrpn_lut_int8_steps"  # block annotation: how many lookups add up exactly in a signed byte
BOUND_ATTR = "wrpn_lut_table_bound"  # block annotation: the largest |table entry| (table_bound)
TABLES_NAME = "wrpn_lut_tables"  # the tables pass's block (the template schedules it)
STRIDE_ATTR = "wrpn_lut_stride_w"  # block annotation: neighbouring output pixels' tables are this far apart


def code_bits(wbits: int) -> int:
    """Bits of one weight's code: 1 for +-1, 2 for the 3 levels of 2 bits."""
    if wbits not in (1, 2):
        raise WrpnError(f"the lookup kernel takes 1- or 2-bit weights, got {wbits}")
    return wbits


def group_channels(wbits: int) -> int:
    """Input channels whose weight codes share one 4-bit table index."""
    return INDEX_BITS // code_bits(wbits)


def code_levels(wbits: int) -> list[int]:
    """The weight level of each code (2 bits: code 3 is unused and means 0)."""
    return [-1, 1] if code_bits(wbits) == 1 else [0, 1, -1, 0]


def table_bound(abits: int, wbits: int) -> int:
    """The largest |table entry|: G activations at their top level times |weight| 1."""
    return group_channels(wbits) * (2**abits - 1)


def lut_fits(abits: int, wbits: int) -> bool:
    """Whether a layer of these widths can run by table lookup: 1- or 2-bit weights, entries in int8."""
    check_bits(abits, wbits)
    return wbits <= 2 and table_bound(abits, wbits) <= INT8_MAX


def int8_steps(abits: int, wbits: int) -> int:
    """Lookups (of one output channel's codes, in consecutive tables) whose entries add up exactly
    in a signed byte."""
    return INT8_MAX // table_bound(abits, wbits)


def groups(channels: int, wbits: int) -> int:
    return -(-channels // group_channels(wbits))


def _code_level(code, wbits: int):
    """The level of a weight code, as int16 arithmetic on a TIR expression (for the 16 codes of a
    table, constants LLVM folds: the table pass is then multiplies and adds of int16 vectors)."""
    if code_bits(wbits) == 1:
        return code * 2 - 1
    return tirx.bitwise_and(code, 1) - tirx.bitwise_and(tirx.shift_right(code, 1), 1)  # 0, 1, -1, 0


def lut_tables(x: te.Tensor, wbits: int, padding=0) -> te.Tensor:
    """NCHW integer levels (any dtype, e.g. float32 from an epilogue) -> int8 tables [N, H + top +
    bottom, W + left + right, CG, 16]: entry i of group g is sum_k level_k * code_level(code_k(i)),
    code_k(i) the k-th code of index i. Outside the image and past C the levels are 0."""
    if len(x.shape) != 4:
        raise WrpnError(f"lut_tables expects NCHW data, got shape {tuple(x.shape)}")
    batch, channels, height, width = (int(d) for d in x.shape)
    top, left, bottom, right = as_padding4(padding)
    per_group, bits = group_channels(wbits), code_bits(wbits)
    mask = (1 << bits) - 1

    def entry(n, h, w, g, i):
        inside = tirx.all(h >= top, h < height + top, w >= left, w < width + left)
        # Clamped loads: a vectorized select evaluates both sides.
        y = tirx.min(tirx.max(h - top, 0), height - 1)
        z = tirx.min(tirx.max(w - left, 0), width - 1)
        total = tirx.const(0, "int16")
        for k in range(per_group):
            channel = g * per_group + k
            level = x[n, tirx.min(channel, channels - 1), y, z].astype("int16")
            valid = inside if channels % per_group == 0 else tirx.all(inside, channel < channels)
            code = tirx.bitwise_and(tirx.shift_right(i.astype("int16"), bits * k), mask)
            total = total + tirx.if_then_else(valid, level, tirx.const(0, "int16")) * _code_level(code, wbits)
        return total.astype("int8")

    return te.compute((batch, height + top + bottom, width + left + right, groups(channels, wbits), ENTRIES),
                      entry, name=TABLES_NAME)


def prepack_lut_codes(w_levels: np.ndarray, wbits: int) -> np.ndarray:
    """OIHW integer weight levels -> uint8 codes [ceil(O / 32), KH, KW, CG, 32]: per output channel
    and group, the group's weight codes, channel k of the group at bits [k * code_bits, ...)."""
    levels = np.asarray(w_levels)
    if levels.ndim != 4:
        raise WrpnError(f"prepack_lut_codes expects OIHW weights, got shape {levels.shape}")
    levels = check_weight_levels(levels, wbits)
    bits, per_group = code_bits(wbits), group_channels(wbits)
    out_channels, channels, kernel_h, kernel_w = levels.shape
    code_of = {level: code for code, level in enumerate(code_levels(wbits)) if code == 0 or level != 0}
    codes = np.vectorize(code_of.__getitem__, otypes=[np.uint8])(levels) if levels.size else levels.astype(np.uint8)
    vectors, cg = -(-out_channels // LANES), groups(channels, wbits)
    padded = np.zeros((vectors * LANES, cg * per_group, kernel_h, kernel_w), dtype=np.uint8)
    padded[:out_channels, :channels] = codes
    grouped = padded.reshape(vectors * LANES, cg, per_group, kernel_h, kernel_w)
    index = np.zeros((vectors * LANES, cg, kernel_h, kernel_w), dtype=np.uint8)
    for k in range(per_group):
        index |= grouped[:, :, k] << (bits * k)
    # [OV, 32, CG, KH, KW] -> [OV, KH, KW, CG, 32]
    return np.ascontiguousarray(index.reshape(vectors, LANES, cg, kernel_h, kernel_w).transpose(0, 3, 4, 2, 1))


def lut_conv2d(tables, codes, out_channels: int, stride=1, bits=None) -> te.Tensor:
    """int32 NHWC [N, OH, OW, out_channels] conv of lut_tables [N, Hp, Wp, CG, 16] (padding already
    in them) with prepack_lut_codes codes [OV, KH, KW, CG, 32].

    bits: the layer's (abits, wbits), which bound the table entries; the block records the bound and
    how many lookups the template may add in a signed byte (`int8_steps`; without bits, one)."""
    batch, height, width, cg, entries = (int(d) for d in tables.shape)
    vectors, kernel_h, kernel_w, codes_cg, lanes = (int(d) for d in codes.shape)
    if str(tables.dtype) != "int8" or str(codes.dtype) != "uint8":
        raise WrpnError(f"the lookup conv takes int8 tables and uint8 codes, got {tables.dtype} and {codes.dtype}")
    if entries != ENTRIES or lanes != LANES or codes_cg != cg:
        raise WrpnError(f"lookup tables {tuple(tables.shape)} and codes {tuple(codes.shape)} do not match")
    if not (vectors - 1) * LANES < int(out_channels) <= vectors * LANES:
        raise WrpnError(f"{int(out_channels)} output channels do not fit {vectors} code vectors of {LANES}")
    stride_h, stride_w = as_pair(stride, "stride")
    out_h = (height - kernel_h) // stride_h + 1
    out_w = (width - kernel_w) // stride_w + 1
    kh = te.reduce_axis((0, kernel_h), name="kh")
    kw = te.reduce_axis((0, kernel_w), name="kw")
    g = te.reduce_axis((0, cg), name="g")
    e = te.reduce_axis((0, ENTRIES), name="e")
    acc = te.compute(
        (batch, out_h, out_w, vectors, LANES),
        lambda n, oh, ow, v, j: te.sum(
            tirx.if_then_else(codes[v, kh, kw, g, j] == e.var.astype("uint8"),
                              tables[n, oh * stride_h + kh, ow * stride_w + kw, g, e].astype("int32"), 0),
            axis=[kh, kw, g, e],
        ),
        name="wrpn_lut_conv2d",
        attrs={"schedule_rule": LUT_CONV2D_RULE, STRIDE_ATTR: stride_w,
               **({STEPS_ATTR: int8_steps(*bits), BOUND_ATTR: table_bound(*bits)} if bits is not None else {})},
    )
    return te.compute(
        (batch, out_h, out_w, int(out_channels)),
        lambda n, oh, ow, o: acc[n, oh, ow, o // LANES, o % LANES],
        name="wrpn_lut_conv2d_output",
    )


def lut_conv2d_reference(x_levels, w_levels, abits: int, wbits: int, stride=1, padding=0) -> np.ndarray:
    """The lookup formulation in numpy: tables from the levels, codes from the weights, gathered and
    summed (int64 NCHW). Equal to conv2d_levels_reference where the layout functions are right."""
    x = check_activation_levels(x_levels, abits)
    if not lut_fits(abits, wbits):
        raise WrpnError(f"a{abits}/w{wbits} does not fit the lookup kernel")
    codes = prepack_lut_codes(w_levels, wbits).astype(np.int64)
    batch, channels, height, width = x.shape
    top, left, bottom, right = as_padding4(padding)
    stride_h, stride_w = as_pair(stride, "stride")
    per_group, bits = group_channels(wbits), code_bits(wbits)
    cg = groups(channels, wbits)
    levels = np.zeros((batch, cg * per_group, height + top + bottom, width + left + right), np.int64)
    levels[:, :channels, top:top + height, left:left + width] = x
    index = np.arange(ENTRIES)
    code_level = np.array(code_levels(wbits))
    # tables[n, g, h, w, i] = sum_k levels[n, g * G + k, h, w] * level(code_k(i))
    per_channel = levels.reshape(batch, cg, per_group, *levels.shape[2:])
    tables = sum(per_channel[:, :, k, :, :, None] * code_level[(index >> (bits * k)) & ((1 << bits) - 1)]
                 for k in range(per_group))
    vectors, kernel_h, kernel_w = codes.shape[:3]
    out_h = (levels.shape[2] - kernel_h) // stride_h + 1
    out_w = (levels.shape[3] - kernel_w) // stride_w + 1
    out = np.zeros((batch, vectors * LANES, out_h, out_w), np.int64)
    flat_codes = codes.transpose(0, 4, 1, 2, 3).reshape(vectors * LANES, kernel_h, kernel_w, cg)
    for kh in range(kernel_h):
        for kw in range(kernel_w):
            window = tables[:, :, kh:kh + stride_h * (out_h - 1) + 1:stride_h, kw:kw + stride_w * (out_w - 1) + 1:stride_w]
            for g in range(cg):
                # window[n, g, y, x, code] for each output channel's code
                out += np.take(window[:, g], flat_codes[:, kh, kw, g], axis=-1).transpose(0, 3, 1, 2)
    return out[:, :w_levels.shape[0]]
