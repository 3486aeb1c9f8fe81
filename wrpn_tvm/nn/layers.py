"""WRPN layers: convolution / linear layers with quantized weights, the quantized activation, widening."""

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import WrpnError
from .quantize import FULL_PRECISION, check_bits, quantize_activation, quantize_weight


def check_width(width) -> float:
    """Return `width` as a float if it is a positive finite multiplier, else raise WrpnError."""
    try:
        value = float(width)
    except (TypeError, ValueError):
        raise WrpnError(f"width must be a positive number, got {width!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise WrpnError(f"width must be a positive number, got {width!r}")
    return value


def widen(channels: int, width: float) -> int:
    """The filter count of a layer with `channels` filters at width multiplier `width`."""
    return max(1, int(round(channels * width)))


def _init_quantized(weight: torch.Tensor) -> None:
    # Kaiming-sized weights (|w| ~ 0.05) would all round to level 0 on a coarse grid such as
    # 2-bit {-1, 0, 1}; a batch norm follows every quantized layer, so the scale is free and
    # U(-1, 1) spreads the weights over the whole grid from the first step.
    nn.init.uniform_(weight, -1.0, 1.0)


class _QuantizedWeight:
    """What WRPNConv2d and WRPNLinear share: a weight quantized to `wbits` in the forward pass."""

    def _set_wbits(self, wbits: int) -> None:
        self.wbits = check_bits(wbits, "weight bits")
        if self.wbits != FULL_PRECISION:
            _init_quantized(self.weight)

    def quantized_weight(self) -> torch.Tensor:
        return quantize_weight(self.weight, self.wbits)

    def extra_repr(self):
        return super().extra_repr() + f", wbits={self.wbits}"


class WRPNConv2d(_QuantizedWeight, nn.Conv2d):
    """A Conv2d whose weight is quantized to `wbits` in the forward pass (32 = full precision)."""

    def __init__(self, *args, wbits: int = FULL_PRECISION, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_wbits(wbits)

    def forward(self, x):
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class WRPNLinear(_QuantizedWeight, nn.Linear):
    """A Linear layer whose weight is quantized to `wbits` in the forward pass (32 = full precision)."""

    def __init__(self, *args, wbits: int = FULL_PRECISION, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_wbits(wbits)

    def forward(self, x):
        return F.linear(x, self.quantized_weight(), self.bias)


class WRPNAct(nn.Module):
    """The nonlinearity of a WRPN network: the k-bit clipped activation quantizer, or ReLU at 32 bits."""

    def __init__(self, bits: int = FULL_PRECISION):
        super().__init__()
        self.bits = check_bits(bits, "activation bits")

    def forward(self, x):
        if self.bits == FULL_PRECISION:
            return F.relu(x)
        return quantize_activation(x, self.bits)

    def extra_repr(self):
        return f"bits={self.bits}"
