"""Training checkpoints: plain dicts of tensors, numbers and strings, loaded with weights_only=True."""

from pathlib import Path

import torch

from ..errors import WrpnError, one_line
from ..fileio import atomic_path
from .zoo import build_model

FORMAT = "wrpn-tvm-checkpoint/1"
# The build_model arguments stored in every checkpoint's "config".
MODEL_KEYS = ("model", "width", "abits", "wbits", "num_classes", "in_channels", "image_size")


def save_checkpoint(path, *, config: dict, epoch: int, model, optimizer, history: list) -> None:
    """Write the state after `epoch` completed epochs (atomically: a crash never leaves half a file)."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "config": dict(config),
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": list(history),
    }
    with atomic_path(path) as staged:
        torch.save(payload, staged)


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by save_checkpoint; anything else raises WrpnError."""
    path = Path(path)
    if not path.is_file():
        raise WrpnError(f"checkpoint {path} does not exist or is not a file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged or foreign file
        raise WrpnError(f"checkpoint {path} is corrupt or not a wrpn-tvm checkpoint ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise WrpnError(f"checkpoint {path} is not a wrpn-tvm checkpoint")
    problem = _payload_problem(payload)
    if problem:
        raise WrpnError(f"checkpoint {path} is damaged: {problem}")
    return payload


def _payload_problem(payload: dict) -> "str | None":
    """What is wrong with the fields training and export rely on, or None. The file may come from a stranger."""
    config = payload.get("config")
    if not isinstance(config, dict):
        return "no 'config' table"
    missing = [key for key in MODEL_KEYS if key not in config]
    if missing:
        return f"its config lacks {', '.join(missing)}"
    if not isinstance(config["model"], str):
        return "config 'model' is not a name"
    for key in ("abits", "wbits", "num_classes", "in_channels", "image_size"):
        if not isinstance(config[key], int) or isinstance(config[key], bool) or config[key] <= 0:
            return f"config {key!r} is not a positive whole number"
    if not isinstance(config["width"], (int, float)) or isinstance(config["width"], bool):
        return "config 'width' is not a number"
    if not isinstance(payload.get("epoch"), int) or payload["epoch"] < 0:
        return "'epoch' is not a count"
    if not isinstance(payload.get("model"), dict) or not isinstance(payload.get("optimizer", {}), dict):
        return "'model' or 'optimizer' is not a state dict"
    history = payload.get("history")
    if not isinstance(history, list) or not all(
            isinstance(h, dict) and isinstance(h.get("test_accuracy"), (int, float)) for h in history):
        return "'history' is not a list of per-epoch records"
    return None


def model_from_checkpoint(payload: dict, path="checkpoint"):
    """The zoo model described by a checkpoint's config, with its trained weights loaded."""
    config = payload["config"]
    model = build_model(
        config["model"],
        width=config["width"],
        abits=config["abits"],
        wbits=config["wbits"],
        num_classes=config["num_classes"],
        in_channels=config["in_channels"],
        image_size=config["image_size"],
    )
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, KeyError) as err:
        raise WrpnError(f"{path} does not hold the weights of the model it describes: {one_line(err)}") from None
    return model
