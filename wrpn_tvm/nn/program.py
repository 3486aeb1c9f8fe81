"""Export a WRPN model as a frozen torch.export program (+ a JSON sidecar): the compiler's input.

The exported graph is what wrpn_tvm.lowering pattern-matches, so its spelling is a contract:

- Every WRPNConv2d / WRPNLinear becomes a plain conv2d / linear whose weight is stored already
  quantized: for k >= 2 bits the values W / (2^(k-1) - 1) with integer W in
  [-(2^(k-1) - 1), 2^(k-1) - 1]; for k = 1 exactly two values +-alpha_o per output channel o
  (never 0). Full-precision (32-bit) layers keep their float weights.
- Every k-bit WRPNAct becomes plain ops, in this order:
  ``clamp(x, 0, 1) -> mul by (2^k - 1) -> round -> div by (2^k - 1)``; for k = 1 just
  ``clamp(x, 0, 1) -> round``. A 32-bit WRPNAct becomes ``relu``.
- No straight-through tricks (custom autograd functions, ``x + (q - x).detach()``) remain.
- Batch norm stays batch norm (eval mode, running statistics); the compiler folds it.
- The program is exported in eval mode with a batch-1 example input of shape (1, C, H, W).

The sidecar MODEL.json (same stem as MODEL.pt2) holds the WRPN settings (model, width, abits,
wbits, num_classes, in_channels, image_size), "input_shape", "dtype" and, for trained models,
the dataset and test accuracy.
"""

import copy
import json
from pathlib import Path

import torch
from torch import nn

from ..errors import WrpnError
from .checkpoint import MODEL_KEYS, load_checkpoint, model_from_checkpoint
from .layers import WRPNAct, WRPNConv2d, WRPNLinear
from .quantize import FULL_PRECISION, activation_forward
from .zoo import build_model, default_image_size


class FrozenActivation(nn.Module):
    """A k-bit activation quantizer as plain ops (clamp, mul, round, div), for export."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits

    def forward(self, x):
        return activation_forward(x, self.bits)

    def extra_repr(self):
        return f"bits={self.bits}"


def _frozen_layer(module: nn.Module) -> nn.Module:
    if isinstance(module, WRPNConv2d):
        plain = nn.Conv2d(
            module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
            padding=module.padding, dilation=module.dilation, groups=module.groups,
            bias=module.bias is not None, padding_mode=module.padding_mode,
        )
    elif isinstance(module, WRPNLinear):
        plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    elif isinstance(module, WRPNAct):
        return nn.ReLU() if module.bits == FULL_PRECISION else FrozenActivation(module.bits)
    else:
        return module
    with torch.no_grad():
        plain.weight.copy_(module.quantized_weight())
        if module.bias is not None:
            plain.bias.copy_(module.bias)
    return plain


def freeze_model(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with every WRPN layer replaced by its plain, pre-quantized equivalent."""
    frozen = copy.deepcopy(model).eval()
    for name, module in list(frozen.named_modules()):
        replacement = _frozen_layer(module)
        if replacement is module:
            continue
        if not name:
            return replacement.eval()
        parent_name, _, child = name.rpartition(".")
        setattr(frozen.get_submodule(parent_name), child, replacement)
    return frozen.eval()


def export_model(model: nn.Module, example_input: torch.Tensor) -> torch.export.ExportedProgram:
    """The frozen, eval-mode torch.export program of `model` (see the module docstring for its spelling)."""
    frozen = freeze_model(model)
    with torch.no_grad():
        return torch.export.export(frozen, (example_input,))


def metadata_path(output) -> Path:
    """MODEL.json beside MODEL.pt2."""
    return Path(output).with_suffix(".json")


def save_program(model: nn.Module, metadata: dict, output) -> dict:
    """Write the exported program to `output` (.pt2) and `metadata` plus its input shape to the JSON sidecar."""
    output = Path(output)
    if output.suffix != ".pt2":
        raise WrpnError(f"output must be a .pt2 file, got {output}")
    if not output.parent.is_dir():
        raise WrpnError(f"output folder {output.parent} does not exist")
    shape = [1, metadata["in_channels"], metadata["image_size"], metadata["image_size"]]
    program = export_model(model, torch.zeros(shape))
    metadata = {**metadata, "input_shape": shape, "dtype": "float32"}
    try:
        torch.export.save(program, str(output))
        metadata_path(output).write_text(json.dumps(metadata, indent=2) + "\n")
    except OSError as err:
        raise WrpnError(f"cannot write {output}: {err.strerror}") from None
    return metadata


def export(model_name, width, abits, wbits, output, checkpoint=None, image_size=None, in_channels=None,
           num_classes=None, seed=0) -> dict:
    """Export a zoo model to `output` (.pt2 + .json): trained weights from `checkpoint`, else a seeded random init."""
    requested = {"model": model_name, "width": width, "abits": abits, "wbits": wbits,
                 "image_size": image_size, "in_channels": in_channels, "num_classes": num_classes}
    if checkpoint is None:
        settings = {**requested, "in_channels": in_channels or 1, "num_classes": num_classes or 10,
                    "image_size": image_size or default_image_size(model_name)}
        torch.manual_seed(seed)
        model = build_model(settings["model"], width=settings["width"], abits=settings["abits"],
                            wbits=settings["wbits"], num_classes=settings["num_classes"],
                            in_channels=settings["in_channels"], image_size=settings["image_size"])
        metadata = {**settings, "width": float(width), "trained": False}
    else:
        payload = load_checkpoint(checkpoint)
        config = payload["config"]
        for key, value in requested.items():
            if value is not None and value != config[key]:
                raise WrpnError(f"checkpoint {checkpoint} has {key}={config[key]!r}, not {value!r}")
        model = model_from_checkpoint(payload, checkpoint)
        metadata = {key: config[key] for key in MODEL_KEYS}
        metadata.update(trained=True, dataset=config.get("dataset"), epochs_trained=payload["epoch"])
        if payload["history"]:
            metadata["test_accuracy"] = payload["history"][-1]["test_accuracy"]
    return save_program(model, metadata, output)
