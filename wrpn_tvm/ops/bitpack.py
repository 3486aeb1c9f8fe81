"""Bit-plane packing: activations as a TE compute (fusable after an epilogue), weights offline in numpy.

Packed layouts (bit `c % word_bits` of word `c // word_bits` holds channel c; padding channels are 0):
  activations, conv   [N, H, W, abits, ceil(C / word_bits)]
  activations, dense  [N, abits, ceil(K / word_bits)]
  weights, conv       [KH, KW, wbits, ceil(C / word_bits), O]   (O innermost: kernels vectorize over it)
                      or blocked [O / B, KH, KW, wbits, ceil(C / word_bits), B]  (`block_conv_weight`)
  weights, dense      [wbits, ceil(K / word_bits), O]
Weight planes for wbits >= 2 are the two's-complement bits of the level (the top plane counts
-2^(wbits-1)); at 1 bit the single plane is the sign (bit = level > 0, level in {-1, +1}).
"""

import numpy as np
import tvm
from tvm import te, tirx

from .grid import check_activation_levels, check_bits, check_weight_levels, check_word_bits
from ..errors import WrpnError

BITPACK_RULE = "wrpn_bitpack"
# Output channels per block of blocked conv weights: one AVX-512 vector of int32 accumulators.
CONV_WEIGHT_BLOCK = 16


def num_words(channels: int, word_bits: int) -> int:
    return -(-channels // word_bits)


# tirx.nearbyint (round half to even under the default rounding mode, as torch.round rounds) lacks
# TVM's TVectorizable attribute, so TVM scalarizes every vectorized loop that computes a level, and
# LLVM rebuilt such loops from gathers and byte-by-byte stores: an int8-levels epilogue of a
# 56x56x128 map took 0.34 ms instead of 0.02 (2 threads, znver4). It lowers per lane wherever
# tirx.floor does (llvm.nearbyint on vectors: one vrndscaleps / frinti).
if tvm.ir.Op.get("tirx.nearbyint").get_attr("TVectorizable") is None:
    tvm.ir.register_op_attr("tirx.nearbyint", "TVectorizable", True)


def _level_expr(value, abits: int, quantize: bool):
    """The integer level of one input element: round-half-even of clip(x, 0, 1) * (2^abits - 1)."""
    if not quantize:
        return value.astype("int32")
    scaled = tirx.max(tirx.min(value, tirx.const(1.0, value.dtype)), tirx.const(0.0, value.dtype))
    # nearbyint rounds half to even under the default rounding mode, like torch.round.
    return tirx.nearbyint(scaled * tirx.const(2**abits - 1, value.dtype)).astype("int32")


def pack_activation(x: te.Tensor, abits: int, word_bits: int = 32, quantize: bool = True) -> te.Tensor:
    """Quantize (optionally) and pack x (NCHW or NK) into bit-planes of uint{word_bits} words.

    The result is one injective compute (no reduction), so Relax fusion can merge it with the
    elementwise epilogue that produces x.
    """
    check_bits(abits, 1)
    check_word_bits(word_bits)
    word = f"uint{word_bits}"
    if len(x.shape) == 4:
        _, channels, _, _ = (int(d) for d in x.shape)
        shape = (x.shape[0], x.shape[2], x.shape[3], abits, num_words(channels, word_bits))

        def element(idx, c):
            n, h, w = idx
            return x[n, c, h, w]

    elif len(x.shape) == 2:
        channels = int(x.shape[1])
        shape = (x.shape[0], abits, num_words(channels, word_bits))

        def element(idx, c):
            return x[idx[0], c]

    else:
        raise WrpnError(f"pack_activation expects NCHW or NK data, got shape {tuple(x.shape)}")

    def pack(*indices):
        *outer, plane, cw = indices
        word_value = tirx.const(0, word)
        for bit in range(word_bits):
            channel = cw * word_bits + bit
            level_bit = ((_level_expr(element(outer, channel), abits, quantize) >> plane) & 1).astype(word)
            if channels % word_bits:
                level_bit = tirx.if_then_else(channel < channels, level_bit, tirx.const(0, word))
            word_value = word_value | (level_bit << tirx.const(bit, word))
        return word_value

    return te.compute(shape, pack, name="wrpn_bitpack", attrs={"schedule_rule": BITPACK_RULE})


def pack_bits_last_axis(planes: np.ndarray, word_bits: int) -> np.ndarray:
    """Pack a {0,1} array along its last axis (channels) into little-endian words of word_bits."""
    channels = planes.shape[-1]
    words = num_words(channels, word_bits)
    padded = np.zeros(planes.shape[:-1] + (words * word_bits,), dtype=np.uint64)
    padded[..., :channels] = planes
    padded = padded.reshape(planes.shape[:-1] + (words, word_bits))
    weights = np.left_shift(np.uint64(1), np.arange(word_bits, dtype=np.uint64))
    return (padded * weights).sum(axis=-1, dtype=np.uint64).astype(f"uint{word_bits}")


def weight_bit_planes(levels: np.ndarray, wbits: int) -> np.ndarray:
    """{0,1} planes of on-grid weight levels, stacked on a new leading axis of size wbits."""
    if wbits == 1:
        return (levels > 0)[None].astype(np.uint8)
    twos = levels.astype(np.int64) & (2**wbits - 1)
    return np.stack([(twos >> j) & 1 for j in range(wbits)]).astype(np.uint8)


def pack_weight(w_levels: np.ndarray, wbits: int, word_bits: int = 32) -> np.ndarray:
    """Pre-pack weight levels: conv OIHW -> [KH, KW, wbits, CW, O]; dense (O, K) -> [wbits, KW, O]."""
    check_bits(1, wbits)
    check_word_bits(word_bits)
    levels = check_weight_levels(w_levels, wbits)
    planes = weight_bit_planes(levels, wbits)  # [wbits, O, C(, KH, KW)]
    if levels.ndim == 4:
        by_channel_last = planes.transpose(3, 4, 0, 1, 2)  # [KH, KW, wbits, O, C]
        return np.ascontiguousarray(np.swapaxes(pack_bits_last_axis(by_channel_last, word_bits), -1, -2))
    if levels.ndim == 2:
        return np.ascontiguousarray(np.swapaxes(pack_bits_last_axis(planes, word_bits), -1, -2))
    raise WrpnError(f"pack_weight expects OIHW or (out, in) weights, got shape {levels.shape}")


def block_conv_weight(packed: np.ndarray, block: int = CONV_WEIGHT_BLOCK) -> np.ndarray:
    """Packed conv weights [KH, KW, wbits, CW, O] -> [O / block, KH, KW, wbits, CW, block]: the
    weights of one block of output channels contiguous. A kernel whose tile covers a block then
    reads its weights as one sequential stream; in the plain layout they are 64-byte pieces
    O x word bytes apart (4 KiB at 1024 channels: a page each, which the hardware prefetchers do
    not follow from cold memory)."""
    out_channels = packed.shape[-1]
    if packed.ndim != 5 or out_channels % block:
        raise WrpnError(f"blocked conv weights need [KH, KW, planes, words, O] with O a multiple of {block}, "
                        f"got shape {packed.shape}")
    blocked = packed.reshape(*packed.shape[:4], out_channels // block, block)
    return np.ascontiguousarray(np.moveaxis(blocked, 4, 0))
