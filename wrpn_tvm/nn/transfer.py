"""Start a WRPN model from a trained one (usually its FP32 1x twin): `wrpn-tvm train --init-from`.

Widening. A 2x model has twice the filters of the 1x model in every layer but the classifier's
outputs. Filter j of a wider layer copies source filter j mod C (C the source's filter count),
and a layer that reads a widened input divides each input channel's weights by the number of
copies of its source channel, so the wider network computes what the source computes (Net2Net's
function-preserving widening, Chen et al. 2016). The copies would get identical gradients
forever, so a little noise breaks their symmetry. A narrower model cannot be made from a wider
one without dropping filters: that, and any other mismatch, is refused.

Quantizing. FP32 weights are Kaiming-sized (|w| ~ 0.05) and would all round to level 0 on the
2-bit grid {-1, 0, 1}; every quantized layer is followed by batch norm (the zoo's contract), so
each output channel's scale is free: it is chosen to make the quantized weights the closest
approximation of the source's on the grid.
"""

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import WrpnError, one_line
from .checkpoint import MODEL_KEYS, load_checkpoint
from .zoo import build_model
from .layers import WRPNConv2d, WRPNLinear
from .quantize import FULL_PRECISION, weight_forward

# Symmetry-breaking noise on copied filters, relative to the source tensor's standard deviation.
COPY_NOISE = 0.1
# Clipping thresholds tried per output channel, as fractions of its largest |w|.
_CLIP_FRACTIONS = torch.linspace(0.05, 1.0, 39)


def read_source(path) -> "tuple[dict, dict]":
    """(config, state dict) of a trained model: a training checkpoint, or a .pt2 with its JSON sidecar."""
    path = Path(path)
    if not path.is_file():
        raise WrpnError(f"{path}: no such file")
    if path.suffix == ".pt2":
        from ..pt2 import load_program

        sidecar = path.with_suffix(".json")
        if not sidecar.is_file():
            raise WrpnError(f"{path} has no sidecar {sidecar.name} saying which model it is")
        try:
            config = json.loads(sidecar.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise WrpnError(f"cannot read {sidecar}: {type(err).__name__}") from None
        missing = [key for key in MODEL_KEYS if key not in config] if isinstance(config, dict) else list(MODEL_KEYS)
        if missing:
            raise WrpnError(f"{sidecar} lacks {', '.join(missing)}")
        state = dict(load_program(path).state_dict)
    else:
        payload = load_checkpoint(path)
        config, state = payload["config"], payload["model"]
    return config, state


def _widen_tensor(source: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    out = source
    for dim, (have, want) in enumerate(zip(source.shape, shape)):
        if have == want:
            continue
        index = torch.arange(want) % have
        out = out.index_select(dim, index)
        if dim == 1:  # an input-channel dimension: the copies share the source channel's contribution
            copies = torch.bincount(index, minlength=have)[index].to(out.dtype)
            out = out / copies.view(1, -1, *([1] * (out.dim() - 2)))
    if out.is_floating_point() and out.dim() >= 2 and out.shape[0] > source.shape[0]:
        noise = torch.randn(out.shape) * COPY_NOISE * source.float().std()
        noise[:source.shape[0]] = 0  # the originals stay exact
        out = out + noise
    return out


def _fit_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per output channel, weight / threshold with the threshold whose quantization best approximates `weight`."""
    flat = weight.reshape(weight.shape[0], -1)
    peak = flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    if bits == 1:  # sign * mean|w| needs no threshold; keep every weight inside the STE's clip range
        return (flat / peak).reshape(weight.shape)
    best, best_error = None, None
    for fraction in _CLIP_FRACTIONS:
        threshold = peak * fraction
        error = ((weight_forward(flat / threshold, bits) * threshold - flat) ** 2).sum(dim=1)
        if best is None:
            best, best_error = threshold.clone(), error
        else:
            better = error < best_error
            best[better] = threshold[better]
            best_error = torch.minimum(error, best_error)
    return (flat / best).reshape(weight.shape)


def init_from(model: nn.Module, config: dict, source_config: dict, state: dict, what="the source") -> None:
    """Load `state` (a trained model's weights, settings `source_config`) into `model` (settings `config`), in place."""
    for key in ("model", "num_classes", "in_channels"):
        if source_config.get(key) != config[key]:
            raise WrpnError(f"cannot initialise from {what}: it has {key}={source_config.get(key)!r}, "
                            f"this model {config[key]!r}")
    if float(source_config["width"]) > float(config["width"]):
        raise WrpnError(f"cannot initialise a {float(config['width']):g}x model from {what}, which is "
                        f"{float(source_config['width']):g}x: widening only adds filters, it never drops them")
    target = model.state_dict()
    missing = sorted(set(target) - set(state))
    if missing:
        raise WrpnError(f"cannot initialise from {what}: it lacks {missing[0]}"
                        + (f" and {len(missing) - 1} more tensors" if len(missing) > 1 else ""))
    loaded = {}
    for name, tensor in target.items():
        source = state[name]
        if not isinstance(source, torch.Tensor) or source.dim() != tensor.dim() or any(
                have > want for have, want in zip(source.shape, tensor.shape)):
            raise WrpnError(f"cannot initialise from {what}: {name} has shape "
                            f"{tuple(getattr(source, 'shape', ()))}, this model {tuple(tensor.shape)}")
        loaded[name] = _widen_tensor(source, tensor.shape).to(tensor.dtype)
    model.load_state_dict(loaded)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (WRPNConv2d, WRPNLinear)) and module.wbits != FULL_PRECISION:
                module.weight.copy_(_fit_scale(module.weight, module.wbits))


def model_from_source(path) -> "tuple[nn.Module, dict]":
    """The zoo model a checkpoint or a .pt2 (with its sidecar) holds, in eval mode, and its settings.

    A .pt2 stores quantized layers' weights already on their grid, and quantizing an on-grid
    weight again gives it back, so the rebuilt model computes what the program computes, at any
    batch size (the program itself is exported for batch 1).
    """
    config, state = read_source(path)
    try:
        model = build_model(config["model"], width=config["width"], abits=config["abits"], wbits=config["wbits"],
                            num_classes=config["num_classes"], in_channels=config["in_channels"],
                            image_size=config["image_size"])
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as err:
        raise WrpnError(f"{path} does not hold the weights of the model it describes: {one_line(err)}") from None
    return model.eval(), config
