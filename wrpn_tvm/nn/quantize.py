"""WRPN quantizers (Mishra et al. 2017, Eq. 2) with straight-through gradients.

Forward values are exactly the paper's Eq. 2 (below), computed with the
same op sequence the exported graph uses, so a frozen model reproduces training-time eval bits:

- activation, k > 1: ``round(clamp(a, 0, 1) * (2^k - 1)) / (2^k - 1)``; k = 1: ``round(clamp(a, 0, 1))``.
- weight, k > 1: ``round(clamp(w, -1, 1) * (2^(k-1) - 1)) / (2^(k-1) - 1)``;
  k = 1: ``sign(w) * mean(|w|)`` per output channel, with sign(0) = +1 so every weight is +-alpha.
- k = 32: full precision (identity).

Backward is the straight-through estimator: rounding passes the gradient unchanged and the clip
keeps its own gradient (1 inside the clip range, 0 outside); 1-bit weights use the clip range
[-1, 1] as well, as in binary-weight networks.
"""

import torch

from ..bits import FULL_PRECISION, VALID_BITS, check_bit_width


def check_bits(bits, what: str = "bits") -> int:
    """`bits` if it is a precision a WRPN layer can have (1..8, or 32 for full precision)."""
    return check_bit_width(bits, what, full_precision=True)


def activation_levels(bits: int) -> int:
    """The largest integer activation level, 2^k - 1."""
    return 2**bits - 1


def weight_levels(bits: int) -> int:
    """The largest integer weight magnitude for k > 1, 2^(k-1) - 1."""
    return 2 ** (bits - 1) - 1


def activation_forward(x: torch.Tensor, bits: int) -> torch.Tensor:
    """The quantized activation value, in the exact op spelling of the exported graph."""
    x = torch.clamp(x, 0.0, 1.0)
    if bits == 1:
        return torch.round(x)
    n = float(activation_levels(bits))
    return torch.round(x * n) / n


def weight_forward(w: torch.Tensor, bits: int) -> torch.Tensor:
    """The quantized weight value (on the grid W/(2^(k-1)-1), or +-alpha per channel for k = 1)."""
    if bits == 1:
        alpha = w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
        return torch.where(w >= 0, alpha, -alpha)
    n = float(weight_levels(bits))
    return torch.round(torch.clamp(w, -1.0, 1.0) * n) / n


class _QuantizeActivation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bits):
        ctx.save_for_backward(x)
        return activation_forward(x, bits)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ((x >= 0) & (x <= 1)).to(grad.dtype), None


class _QuantizeWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, bits):
        ctx.save_for_backward(w)
        return weight_forward(w, bits)

    @staticmethod
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        return grad * ((w >= -1) & (w <= 1)).to(grad.dtype), None


def quantize_activation(x: torch.Tensor, bits: int) -> torch.Tensor:
    """WRPN activation quantizer with a straight-through gradient; bits=32 returns x."""
    check_bits(bits)
    if bits == FULL_PRECISION:
        return x
    return _QuantizeActivation.apply(x, bits)


def quantize_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """WRPN weight quantizer with a straight-through gradient; bits=32 returns w."""
    check_bits(bits)
    if bits == FULL_PRECISION:
        return w
    return _QuantizeWeight.apply(w, bits)
