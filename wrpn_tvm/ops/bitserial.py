"""Bit-serial conv2d and dense as TE computes over packed bit-planes (see bitpack.py for layouts).

sum(A * W) = sum_i sum_j c_j 2^(i+j) popcount(A_i & W_j) with c_j = -1 for the top weight plane
(two's complement) and +1 otherwise. At 1 bit the weight is +-1 and the product is
popcount(A_i & W) - popcount(A_i & ~W) = 2 popcount(A_i & W) - popcount(A_i): the main block
counts only A & W (AND + popcount + add, the roofline loop) and a small block sums the
activation levels per window, subtracted in an elementwise epilogue.
The plane sums are written out in the expression (not reduction axes), so the reduction is only
over the kernel window and channel words: each loaded activation word feeds every weight plane,
and the shifts are compile-time constants.
Popcounts accumulate at the word's width (int64 for 64-bit words: a vector popcount of 64-bit
lanes adds straight into 64-bit lanes, no narrowing in the inner loop); an elementwise epilogue
narrows to the int32 result.
"""

from tvm import te, tirx

from .grid import check_bits
from ..errors import WrpnError

CONV2D_RULE = "wrpn_bitserial_conv2d"
DENSE_RULE = "wrpn_bitserial_dense"
SHIFT_COMBINE = "wrpn_shift_combine"


def as_pair(value, what: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if len(value) == 2:
        return int(value[0]), int(value[1])
    raise WrpnError(f"{what} must be an int or a pair, got {value!r}")


def as_padding4(padding) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from an int, a (vertical, horizontal) pair, or four values."""
    if isinstance(padding, int):
        return (padding,) * 4
    if len(padding) == 2:
        return int(padding[0]), int(padding[1]), int(padding[0]), int(padding[1])
    if len(padding) == 4:
        return tuple(int(p) for p in padding)
    raise WrpnError(f"padding must be an int, a pair or (top, left, bottom, right), got {padding!r}")


def _accumulator(word_dtype) -> str:
    return "int64" if str(word_dtype) == "uint64" else "int32"


def _shift_groups(abits: int, wbits: int) -> list[list[tuple[int, int, bool]]]:
    """The plane pairs (i, j, negative) of each shift i + j, shifts 0, 1, ... in order, positive
    pairs first in each group; negative: j is the top (two's complement) weight plane."""
    groups: dict[int, list] = {}
    for i in range(abits):
        for j in range(wbits):
            groups.setdefault(i + j, []).append((i, j, wbits > 1 and j == wbits - 1))
    return [sorted(groups[shift], key=lambda pair: pair[2]) for shift in sorted(groups)]


def _group_sum(group, activation_words, weight_words, accumulator: str):
    """The signed sum of one shift group's popcount(A_i & W_j), unshifted."""
    total = None
    for i, j, negative in group:
        count = tirx.popcount(activation_words[i] & weight_words[j]).astype(accumulator)
        if total is None:
            total = -count if negative else count
        else:
            total = total - count if negative else total + count
    return total


def _plane_dot(activation_words, weight_words, wbits: int, accumulator: str):
    """int32 sum over plane pairs of c_j 2^(i+j) popcount(A_i & W_j) for one word of each.

    At 1 bit this is only sum_i 2^i popcount(A_i & W); the caller subtracts the activation sum.
    Terms are grouped by shift so each shift is applied once per group, not once per pair.
    """
    total = None
    for shift, group in enumerate(_shift_groups(len(activation_words), wbits)):
        term = _group_sum(group, activation_words, weight_words, accumulator)
        term = term << shift if shift else term
        total = term if total is None else total + term
    return total


def _level_sum(activation_words, accumulator: str):
    """sum_i 2^i popcount(A_i): the sum of the activation levels held in one word per plane."""
    counts = [tirx.popcount(a).astype(accumulator) for a in activation_words]
    total = counts[0]
    for i, count in enumerate(counts[1:], start=1):
        total = total + (count << i)
    return total


def _check_planes(what: str, actual, expected: int) -> None:
    if int(actual) != expected:
        raise WrpnError(f"{what} has {int(actual)} bit-planes but the layer has {expected} bits")


def bitserial_conv2d(data_packed, weight_packed, abits, wbits, stride, padding, out_dtype="int32",
                     split_shift_groups=False):
    """int32 NHWC [N, OH, OW, O] conv of packed activations [N, H, W, abits, CW] with packed
    weights [KH, KW, wbits, CW, O], or blocked [O / B, KH, KW, wbits, CW, B] (bitpack's
    block_conv_weight); zero padding is activation level 0.

    `split_shift_groups` (multi-bit weights): the kernel block sums each shift group apart,
    [N, OH, OW, groups, O], and an elementwise stage (SHIFT_COMBINE) shifts and adds the groups.
    A register tile then keeps one accumulator per group: AND + popcount + add or subtract per
    plane pair, the roofline loop's 3 operations, where the single sum also spends one shift
    and one add per group on every word (14 vector operations per 4 plane pairs at 2/2, not 12)."""
    check_bits(abits, wbits)
    if out_dtype != "int32":
        raise WrpnError(f"bit-serial conv2d accumulates in int32, got out_dtype={out_dtype!r}")
    batch, height, width, a_planes, words = data_packed.shape
    if len(weight_packed.shape) == 6:
        blocks, kernel_h, kernel_w, w_planes, w_words, block = weight_packed.shape
        out_channels = blocks * block

        def weight_word(kh, kw, j, cw, o):
            return weight_packed[o // block, kh, kw, j, cw, o % block]
    else:
        kernel_h, kernel_w, w_planes, w_words, out_channels = weight_packed.shape

        def weight_word(kh, kw, j, cw, o):
            return weight_packed[kh, kw, j, cw, o]
    _check_planes("packed data", a_planes, abits)
    _check_planes("packed weight", w_planes, wbits)
    if int(words) != int(w_words) or data_packed.dtype != weight_packed.dtype:
        raise WrpnError("packed data and weight disagree on channel words or word size")
    stride_h, stride_w = as_pair(stride, "stride")
    top, left, bottom, right = as_padding4(padding)
    out_h = (height + top + bottom - kernel_h) // stride_h + 1
    out_w = (width + left + right - kernel_w) // stride_w + 1

    zero = tirx.const(0, data_packed.dtype)

    def padded_word(n, h, w, i, c):
        """The packed word at padded position (h, w): level 0 outside the image."""
        inside = tirx.all(h >= top, h < height + top, w >= left, w < width + left)
        return tirx.if_then_else(inside, data_packed[n, h - top, w - left, i, c], zero)

    if top or left or bottom or right:
        padded = te.compute(
            (batch, height + top + bottom, width + left + right, a_planes, words), padded_word, name="wrpn_pad"
        )
    else:
        padded = data_packed

    accumulator = _accumulator(data_packed.dtype)
    kh = te.reduce_axis((0, kernel_h), name="kh")
    kw = te.reduce_axis((0, kernel_w), name="kw")
    cw = te.reduce_axis((0, words), name="cw")

    def words_at(n, oh, ow, o):
        h, w = oh * stride_h + kh, ow * stride_w + kw
        return [padded[n, h, w, i, cw] for i in range(abits)], [weight_word(kh, kw, j, cw, o) for j in range(wbits)]

    if split_shift_groups and wbits > 1:
        return _conv2d_by_shift_group((batch, out_h, out_w, out_channels), words_at, abits, wbits, accumulator,
                                      [kh, kw, cw])

    def conv(n, oh, ow, o):
        a, wt = words_at(n, oh, ow, o)
        return te.sum(_plane_dot(a, wt, wbits, accumulator), axis=[kh, kw, cw])

    counts = te.compute(
        (batch, out_h, out_w, out_channels),
        conv,
        name="wrpn_bitserial_conv2d",
        attrs={"schedule_rule": CONV2D_RULE},
    )
    if wbits > 1:
        return _as_int32(counts)
    # +-1 weights: sum(A * W) = 2 sum(A & W) - sum(A); sum(A) does not depend on the output channel.
    skh = te.reduce_axis((0, kernel_h), name="skh")
    skw = te.reduce_axis((0, kernel_w), name="skw")
    scw = te.reduce_axis((0, words), name="scw")

    def window_sum(n, oh, ow):
        h, w = oh * stride_h + skh, ow * stride_w + skw
        # Reads the unpadded input (not `padded`) so the padding stage has the kernel as its only
        # consumer and can be computed per tile.
        words_at = [padded_word(n, h, w, i, scw) for i in range(abits)]
        return te.sum(_level_sum(words_at, accumulator), axis=[skh, skw, scw])

    level_sums = te.compute((batch, out_h, out_w), window_sum, name="wrpn_window_level_sum")
    return te.compute(
        counts.shape,
        lambda n, oh, ow, o: ((counts[n, oh, ow, o] << 1) - level_sums[n, oh, ow]).astype("int32"),
        name="wrpn_binary_weight_correction",
    )


def _conv2d_by_shift_group(out_shape, words_at, abits, wbits, accumulator, reduction):
    groups = _shift_groups(abits, wbits)

    def group_sum(n, oh, ow, g, o):
        a, wt = words_at(n, oh, ow, o)
        # g is a loop the templates unroll: each copy keeps its own group's terms after simplification.
        value = _group_sum(groups[-1], a, wt, accumulator)
        for shift in range(len(groups) - 2, -1, -1):
            value = tirx.if_then_else(g == shift, _group_sum(groups[shift], a, wt, accumulator), value)
        return te.sum(value, axis=reduction)

    batch, out_h, out_w, out_channels = out_shape
    counts = te.compute((batch, out_h, out_w, len(groups), out_channels), group_sum, name="wrpn_bitserial_conv2d",
                        attrs={"schedule_rule": CONV2D_RULE})

    def combine(n, oh, ow, o):
        total = counts[n, oh, ow, 0, o]
        for shift in range(1, len(groups)):
            total = total + (counts[n, oh, ow, shift, o] << shift)
        return total.astype("int32")

    return te.compute(out_shape, combine, name=SHIFT_COMBINE)


def _as_int32(counts):
    if counts.dtype == "int32":
        return counts
    return te.compute(counts.shape, lambda *i: counts(*i).astype("int32"), name="wrpn_narrow")


def bitserial_dense(data_packed, weight_packed, abits, wbits):
    """int32 [N, O] product of packed activations [N, abits, KW] with packed weights [wbits, KW, O]."""
    check_bits(abits, wbits)
    batch, a_planes, words = data_packed.shape
    w_planes, w_words, out_features = weight_packed.shape
    _check_planes("packed data", a_planes, abits)
    _check_planes("packed weight", w_planes, wbits)
    if int(words) != int(w_words) or data_packed.dtype != weight_packed.dtype:
        raise WrpnError("packed data and weight disagree on input words or word size")
    accumulator = _accumulator(data_packed.dtype)
    k = te.reduce_axis((0, words), name="k")

    def dense(n, o):
        a = [data_packed[n, i, k] for i in range(abits)]
        wt = [weight_packed[j, k, o] for j in range(wbits)]
        return te.sum(_plane_dot(a, wt, wbits, accumulator), axis=[k])

    counts = te.compute(
        (batch, out_features), dense, name="wrpn_bitserial_dense", attrs={"schedule_rule": DENSE_RULE}
    )
    if wbits > 1:
        return _as_int32(counts)
    sk = te.reduce_axis((0, words), name="sk")
    level_sums = te.compute(
        (batch,),
        lambda n: te.sum(_level_sum([data_packed[n, i, sk] for i in range(abits)], accumulator), axis=[sk]),
        name="wrpn_level_sum",
    )
    return te.compute(
        counts.shape,
        lambda n, o: ((counts[n, o] << 1) - level_sums[n]).astype("int32"),
        name="wrpn_binary_weight_correction",
    )
