"""The paper's compute cost: FMAs x (activation bits + weight bits), full-precision layers at 32 + 32."""

import torch
from torch import nn

from .layers import WRPNConv2d, WRPNLinear
from .quantize import FULL_PRECISION
from .zoo import build_model, default_image_size


def compute_cost(model_name: str, width: float, abits: int, wbits: int, image_size: "int | None" = None,
                 in_channels: int = 1) -> tuple[int, int]:
    """(FMAs per image, FMAs x (activation bits + weight bits)) of a zoo model at these settings."""
    image_size = image_size or default_image_size(model_name)
    model = build_model(model_name, width=width, abits=abits, wbits=wbits, in_channels=in_channels,
                        image_size=image_size).eval()
    totals = {"fmas": 0, "bit_fmas": 0}

    def count(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            fmas = output[0].numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            fmas = output[0].numel() * module.in_features
        # The first and last layers (plain Conv2d/Linear) stay full precision.
        bits = abits + wbits if isinstance(module, (WRPNConv2d, WRPNLinear)) else 2 * FULL_PRECISION
        totals["fmas"] += fmas
        totals["bit_fmas"] += fmas * bits

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, in_channels, image_size, image_size))
    for hook in hooks:
        hook.remove()
    return totals["fmas"], totals["bit_fmas"]


def relative_cost(model_name: str, width: float, abits: int, wbits: int, **kwargs) -> float:
    """The cost relative to the same model in full precision at width 1x (the paper's tables)."""
    baseline = compute_cost(model_name, 1.0, FULL_PRECISION, FULL_PRECISION, **kwargs)[1]
    return compute_cost(model_name, width, abits, wbits, **kwargs)[1] / baseline
