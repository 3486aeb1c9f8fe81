"""Numpy references that the compiled kernels must match bit for bit."""

import numpy as np

from .bitpack import pack_bits_last_axis
from .bitserial import as_padding4, as_pair
from .grid import check_activation_levels, check_bits, check_weight_levels, check_word_bits
from ..errors import WrpnError


def quantize_activation_reference(x: np.ndarray, abits: int) -> np.ndarray:
    """float32 -> level: round-half-even(clip(x, 0, 1) * (2^abits - 1)), computed in float32."""
    scaled = np.clip(np.asarray(x, dtype=np.float32), 0, 1) * np.float32(2**abits - 1)
    return np.rint(scaled).astype(np.int64)


def pack_activation_reference(levels: np.ndarray, abits: int, word_bits: int = 32) -> np.ndarray:
    """What pack_activation(quantize=False) produces from integer levels (NCHW or NK)."""
    arr = check_activation_levels(levels, abits)
    check_word_bits(word_bits)
    planes = np.stack([(arr >> i) & 1 for i in range(abits)])  # [abits, N, C(, H, W)]
    if arr.ndim == 4:
        return pack_bits_last_axis(planes.transpose(1, 3, 4, 0, 2), word_bits)
    if arr.ndim == 2:
        return pack_bits_last_axis(planes.transpose(1, 0, 2), word_bits)
    raise WrpnError(f"activations must be NCHW or NK, got shape {arr.shape}")


def conv2d_levels_reference(x, w, abits, wbits, stride=1, padding=0) -> np.ndarray:
    """int32 NCHW conv of integer levels (x NCHW, w OIHW), zero padding = level 0."""
    check_bits(abits, wbits)
    x = check_activation_levels(x, abits)
    w = check_weight_levels(w, wbits)
    stride_h, stride_w = as_pair(stride, "stride")
    top, left, bottom, right = as_padding4(padding)
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    batch, _, height, width = x.shape
    out_c, _, kernel_h, kernel_w = w.shape
    out_h = (height - kernel_h) // stride_h + 1
    out_w = (width - kernel_w) // stride_w + 1
    out = np.zeros((batch, out_c, out_h, out_w), dtype=np.int64)
    for kh in range(kernel_h):
        for kw in range(kernel_w):
            window = x[:, :, kh : kh + stride_h * out_h : stride_h, kw : kw + stride_w * out_w : stride_w]
            out += np.einsum("nchw,oc->nohw", window, w[:, :, kh, kw])
    return out.astype(np.int32)


def dense_levels_reference(x, w, abits, wbits) -> np.ndarray:
    """int32 [N, O] product of integer levels x (N, K) and w (O, K)."""
    check_bits(abits, wbits)
    x = check_activation_levels(x, abits)
    w = check_weight_levels(w, wbits)
    return (x @ w.T).astype(np.int32)


def conv2d_float_reference(x, w, bias=None, stride=1, padding=0, dilation=1) -> np.ndarray:
    """float64 NCHW conv of x (NCHW) with w (OIHW) plus bias [O], zero padding."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    stride_h, stride_w = as_pair(stride, "stride")
    dilation_h, dilation_w = as_pair(dilation, "dilation")
    top, left, bottom, right = as_padding4(padding)
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    batch, _, height, width = x.shape
    out_c, _, kernel_h, kernel_w = w.shape
    out_h = (height - dilation_h * (kernel_h - 1) - 1) // stride_h + 1
    out_w = (width - dilation_w * (kernel_w - 1) - 1) // stride_w + 1
    out = np.zeros((batch, out_c, out_h, out_w))
    for kh in range(kernel_h):
        for kw in range(kernel_w):
            y0, x0 = kh * dilation_h, kw * dilation_w
            window = x[:, :, y0 : y0 + stride_h * out_h : stride_h, x0 : x0 + stride_w * out_w : stride_w]
            out += np.einsum("nchw,oc->nohw", window, w[:, :, kh, kw])
    return out if bias is None else out + np.asarray(bias, dtype=np.float64).reshape(1, -1, 1, 1)
