"""FP32 conv2d for the layers a WRPN model keeps in full precision (the stem, shortcut convs of a
partly quantized net, every conv of an FP32 model), as a TE compute our CPU templates schedule.

The input stays NCHW, so nothing before the layer changes; the constant weights are re-laid out,
as [O/B, I, KH, KW, B] with B output channels innermost. The template vectorizes over those B
channels: one broadcast input pixel meets a vector of weights, the FMA register tile a direct conv
needs on any SIMD ISA, and any stride or kernel size works the same.
The conv accumulates into a blocked [N, O/B, OH, OW, B] tile that the schedule keeps in
registers; one elementwise stage adds the per-channel bias and writes NCHW, or NCHW{B}c where the
lowering asks for it (a stem whose max pool runs in that layout: `lowering.fp32`). A folded batch
norm or scale arrives already multiplied into the weights and bias (`block_weight`).
"""

import numpy as np
from tvm import te, tirx

from .bitserial import as_pair, as_padding4
from ..errors import WrpnError

FP32_CONV2D_RULE = "wrpn_fp32_conv2d"
PAD_NAME = "wrpn_pad"
# Output channels per weight block: two AVX2/AVX-512-ymm or four NEON vectors of float32, so the
# template's register tile is (pixels x 16 channels) on every CPU we target.
CHANNEL_BLOCK = 16


def block_weight(weight: np.ndarray, block: int = CHANNEL_BLOCK) -> np.ndarray:
    """OIHW float weights -> float32 [ceil(O/block), I, KH, KW, block], zero-padded on O."""
    if weight.ndim != 4:
        raise WrpnError(f"conv2d weight must be OIHW, got shape {weight.shape}")
    out_channels = weight.shape[0]
    blocks = -(-out_channels // block)
    padded = np.zeros((blocks * block, *weight.shape[1:]), dtype=np.float32)
    padded[:out_channels] = weight
    return np.ascontiguousarray(padded.reshape(blocks, block, *weight.shape[1:]).transpose(0, 2, 3, 4, 1))


def blocked_conv2d(data, weight_blocked, bias, stride=1, padding=0, dilation=1, blocked_output=False):
    """float32 NCHW conv of data [N, I, H, W] with blocked weights [O/B, I, KH, KW, B] plus
    bias [O] (O = bias length, at most O/B * B; the padded channels are never written).
    `blocked_output`: the result as NCHW{B}c, [N, O/B, OH, OW, B] (O a multiple of B), written
    from the register tile as whole vectors where NCHW scatters each tile's channels over rows."""
    batch, in_channels, height, width = data.shape
    blocks, w_in, kernel_h, kernel_w, block = weight_blocked.shape
    (out_channels,) = bias.shape
    if int(w_in) != int(in_channels):
        raise WrpnError(f"conv2d input has {int(in_channels)} channels but the weight expects {int(w_in)}")
    if not int(blocks) * int(block) - int(block) < int(out_channels) <= int(blocks) * int(block):
        raise WrpnError(f"bias of {int(out_channels)} channels does not fit {int(blocks)} weight blocks of {int(block)}")
    stride_h, stride_w = as_pair(stride, "stride")
    dilation_h, dilation_w = as_pair(dilation, "dilation")
    top, left, bottom, right = as_padding4(padding)
    out_h = (height + top + bottom - dilation_h * (kernel_h - 1) - 1) // stride_h + 1
    out_w = (width + left + right - dilation_w * (kernel_w - 1) - 1) // stride_w + 1

    if top or left or bottom or right:
        zero = tirx.const(0, data.dtype)

        def padded_value(n, c, h, w):
            inside = tirx.all(h >= top, h < height + top, w >= left, w < width + left)
            return tirx.if_then_else(inside, data[n, c, h - top, w - left], zero)

        padded = te.compute((batch, in_channels, height + top + bottom, width + left + right), padded_value,
                            name=PAD_NAME)
    else:
        padded = data

    rc = te.reduce_axis((0, in_channels), name="rc")
    ry = te.reduce_axis((0, kernel_h), name="ry")
    rx = te.reduce_axis((0, kernel_w), name="rx")
    acc = te.compute(
        (batch, blocks, out_h, out_w, block),
        lambda n, ob, y, x, oi: te.sum(
            padded[n, rc, y * stride_h + ry * dilation_h, x * stride_w + rx * dilation_w]
            * weight_blocked[ob, rc, ry, rx, oi],
            axis=[rc, ry, rx],
        ),
        name="wrpn_fp32_conv2d",
        attrs={"schedule_rule": FP32_CONV2D_RULE},
    )
    if blocked_output:
        if int(out_channels) != int(blocks) * int(block):
            raise WrpnError(f"a blocked output needs channels in whole blocks of {int(block)}, got {int(out_channels)}")
        return te.compute(
            acc.shape,
            lambda n, ob, y, x, oi: acc[n, ob, y, x, oi] + bias[ob * block + oi],
            name="wrpn_fp32_conv2d_bias",
        )
    return te.compute(
        (batch, out_channels, out_h, out_w),
        lambda n, o, y, x: acc[n, o // block, y, x, o % block] + bias[o],
        name="wrpn_fp32_conv2d_bias",
    )
