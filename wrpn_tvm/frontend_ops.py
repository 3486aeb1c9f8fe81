"""The torch ops that quantization-aware training leaves in an export and TVM 0.27's importer lacks.

Fake-quant ops become decompositions into plain ATen ops, applied with PyTorch's own core-ATen
table before import; each computes exactly what PyTorch's CPU kernel does, in float32:
`levels = clamp(round(x * (1 / scale)) + zero_point, quant_min, quant_max)` (the reciprocal taken
in float32, round half to even), then `(levels - zero_point) * scale`. The `_cachemask` forms
return the mask too (unused at inference). Reductions TVM's table misses (amax, amin) are converters.
(The learnable `_fake_quantize_learnable_*` ops are not covered: torch 2.13 cannot decompose them in
a program read back from a .pt2, as it has no fake-tensor kernel for them.)
"""

import numpy as np
import torch
from tvm import relax

aten = torch.ops.aten


def _reciprocal(scale):
    """1 / scale in float32, as the kernels compute it (`1.0f / scale`)."""
    if isinstance(scale, torch.Tensor):
        return torch.reciprocal(scale.to(torch.float32))
    return float(np.float32(1.0) / np.float32(scale))


def _as_float32(scale):
    return scale.to(torch.float32) if isinstance(scale, torch.Tensor) else float(np.float32(scale))


def _along(tensor: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[axis] = -1
    return tensor.reshape(shape)


def _fake_quantize(x, scale, zero_point, quant_min, quant_max):
    unclamped = torch.round(x * _reciprocal(scale)) + zero_point
    levels = torch.clamp(unclamped, quant_min, quant_max)
    return (levels - zero_point) * _as_float32(scale), (unclamped >= quant_min) & (unclamped <= quant_max)


def per_tensor(x, scale, zero_point, quant_min, quant_max):
    return _fake_quantize(x, scale, zero_point, quant_min, quant_max)[0]


def per_tensor_cachemask(x, scale, zero_point, quant_min, quant_max):
    return _fake_quantize(x, scale, zero_point, quant_min, quant_max)


def per_tensor_cachemask_tensor_qparams(x, scale, zero_point, fake_quant_enabled, quant_min, quant_max):
    output, mask = _fake_quantize(x, scale, zero_point, quant_min, quant_max)
    enabled = fake_quant_enabled != 0
    return torch.where(enabled, output, x), torch.where(enabled, mask, torch.ones_like(mask))


def _per_channel(x, scale, zero_point, axis, quant_min, quant_max):
    return _fake_quantize(x, _along(scale, axis, x.dim()), _along(zero_point, axis, x.dim()), quant_min, quant_max)


def per_channel(x, scale, zero_point, axis, quant_min, quant_max):
    return _per_channel(x, scale, zero_point, axis, quant_min, quant_max)[0]


def per_channel_cachemask(x, scale, zero_point, axis, quant_min, quant_max):
    return _per_channel(x, scale, zero_point, axis, quant_min, quant_max)


DECOMPOSITIONS = {
    aten.fake_quantize_per_tensor_affine.default: per_tensor,
    aten.fake_quantize_per_tensor_affine.tensor_qparams: per_tensor,
    aten.fake_quantize_per_tensor_affine_cachemask.default: per_tensor_cachemask,
    aten._fake_quantize_per_tensor_affine_cachemask_tensor_qparams.default: per_tensor_cachemask_tensor_qparams,
    aten.fake_quantize_per_channel_affine.default: per_channel,
    aten.fake_quantize_per_channel_affine_cachemask.default: per_channel_cachemask,
}


def _reduction(op):
    def convert(node, importer):
        x = importer.env[node.args[0]]
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", [])
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        return importer.block_builder.emit(op(x, list(dims) or None, keepdims=bool(keepdim)))

    return convert


CONVERTERS = {"amax.default": _reduction(relax.op.max), "amin.default": _reduction(relax.op.min)}
