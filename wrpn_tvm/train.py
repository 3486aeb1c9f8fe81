"""Train a WRPN zoo model from scratch (straight-through estimator), checkpoint every epoch, export it.

`train(...)` writes, next to OUTPUT (MODEL.pt2):
- MODEL.pt2: the frozen torch.export program (wrpn_tvm.nn.program), ready for `wrpn-tvm compile`;
- MODEL.json: the WRPN settings, dataset, input shape and test accuracy;
- MODEL.ckpt/epoch-NNNN.pt: model + optimizer state after each epoch, for `resume=True`.

After each epoch the batch-norm running statistics are re-estimated on the training set (see
recalibrate_batch_norm). Shuffling is seeded per (seed, epoch), so a resumed run repeats an
uninterrupted one exactly.
"""

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .data import Dataset, load_dataset
from .errors import WrpnError, one_line
from .nn import build_model, check_bits, check_width, load_checkpoint, save_checkpoint, save_program

DEFAULT_BATCH_SIZE = 64
DEFAULT_LR = 3e-2
EVAL_BATCH_SIZE = 500
# Settings a resumed run must share with the checkpoint it continues.
RESUME_KEYS = ("model", "width", "abits", "wbits", "num_classes", "in_channels", "image_size", "dataset", "seed",
               "batch_size", "lr")


class ProgressBar:
    """A one-line text progress bar: redrawn in place on a terminal, printed once when done otherwise."""

    def __init__(self, total: int, label: str, enabled: bool = True, stream=None, width: int = 24):
        self.total, self.label, self.enabled, self.width = total, label, enabled, width
        self.stream = stream or sys.stderr
        self.interactive = self.enabled and self.stream.isatty()
        self.count, self.start = 0, time.monotonic()

    def _line(self, fields: dict) -> str:
        filled = int(self.width * self.count / max(self.total, 1))
        status = " ".join(f"{key} {value}" for key, value in fields.items())
        elapsed = time.monotonic() - self.start
        return f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {self.count}/{self.total} {status} {elapsed:.0f}s"

    def update(self, step: int = 1, **fields) -> None:
        self.count += step
        if self.interactive:
            self.stream.write("\r" + self._line(fields))
            self.stream.flush()

    def close(self, **fields) -> None:
        if self.enabled:
            self.stream.write(("\r" if self.interactive else "") + self._line(fields) + "\n")
            self.stream.flush()


def checkpoint_dir(output) -> Path:
    """MODEL.ckpt/ beside MODEL.pt2."""
    output = Path(output)
    return output.with_name(output.stem + ".ckpt")


def latest_checkpoint(output):
    """The newest epoch checkpoint of OUTPUT, or None."""
    found = sorted(checkpoint_dir(output).glob("epoch-*.pt"))
    return found[-1] if found else None


@torch.no_grad()
def evaluate(model, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy (0..1) of `model` in eval mode."""
    model.eval()
    correct = 0
    for start in range(0, len(x), EVAL_BATCH_SIZE):
        logits = model(torch.from_numpy(x[start:start + EVAL_BATCH_SIZE]))
        correct += (logits.argmax(1).numpy() == y[start:start + EVAL_BATCH_SIZE]).sum()
    return float(correct) / len(x)


@torch.no_grad()
def recalibrate_batch_norm(model, x: np.ndarray) -> None:
    """Replace every batch norm's running statistics by their plain average over `x` under the current weights.

    The momentum averages mix statistics of weights from the whole epoch; behind a k-bit activation
    quantizer (a clip and a rounding) that drift moves eval-mode outputs across quantization steps
    and made held-out accuracy jump by 10 points from epoch to epoch. Training itself never reads
    the running statistics, so this changes evaluation and export only.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    model.train()
    for start in range(0, len(x), EVAL_BATCH_SIZE):
        model(torch.from_numpy(x[start:start + EVAL_BATCH_SIZE]))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


def _lr_at(epoch: int, epochs: int, base_lr: float) -> float:
    # cosine decay per epoch, from base_lr at epoch 0 towards 0 at the last epoch
    return base_lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def _train_epoch(model, optimizer, data: Dataset, batch_size: int, seed: int, epoch: int, bar: ProgressBar) -> dict:
    model.train()
    order = np.random.default_rng([seed, epoch]).permutation(len(data.y_train))
    total_loss, correct, seen = 0.0, 0, 0
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        x, y = torch.from_numpy(data.x_train[batch]), torch.from_numpy(data.y_train[batch])
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(batch)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(batch)
        bar.update(len(batch), loss=f"{total_loss / seen:.4f}", acc=f"{100 * correct / seen:.1f}%")
    return {"train_loss": total_loss / seen, "train_accuracy": correct / seen}


def _check_positive(value, what, kinds=(int, float)):
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        raise WrpnError(f"{what} must be a positive {'integer' if kinds is int else 'number'}, got {value!r}")
    return value


def train(model_name, width, abits, wbits, dataset, epochs, output, seed=0, resume=False,
          batch_size=DEFAULT_BATCH_SIZE, lr=DEFAULT_LR, progress=True) -> dict:
    """Train `model_name` on `dataset` (a name, path or loaded Dataset) and write OUTPUT (.pt2 + .json + checkpoints).

    Returns the JSON metadata plus "history" (one dict per epoch: losses, accuracies, learning rate).
    """
    check_width(width)
    check_bits(abits, "activation bits")
    check_bits(wbits, "weight bits")
    _check_positive(epochs, "epochs", int)
    _check_positive(batch_size, "batch size", int)
    _check_positive(lr, "learning rate")
    output = Path(output)
    if output.suffix != ".pt2":
        raise WrpnError(f"output must be a .pt2 file, got {output}")
    if not output.parent.is_dir():
        raise WrpnError(f"output folder {output.parent} does not exist")
    data = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, seed=seed)
    config = {"model": model_name, "width": float(width), "abits": abits, "wbits": wbits,
              "num_classes": data.num_classes, "in_channels": data.in_channels, "image_size": data.image_size,
              "dataset": data.name, "seed": seed, "batch_size": batch_size, "lr": float(lr)}

    torch.manual_seed(seed)
    model = build_model(model_name, width=width, abits=abits, wbits=wbits, num_classes=data.num_classes,
                        in_channels=data.in_channels, image_size=data.image_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    start_epoch, history = 0, []
    ckpt_dir = checkpoint_dir(output)
    previous = latest_checkpoint(output) if resume else None
    if previous is not None:
        payload = load_checkpoint(previous)
        for key in RESUME_KEYS:
            if payload["config"].get(key) != config[key]:
                raise WrpnError(f"cannot resume from {previous}: it has {key}={payload['config'].get(key)!r}, "
                                f"this run {config[key]!r}")
        try:
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise WrpnError(f"cannot resume from {previous}: {one_line(err)}") from None
        start_epoch, history = payload["epoch"], payload["history"]
        if progress:
            print(f"resuming from {previous} (epoch {start_epoch})", file=sys.stderr)
    else:
        if resume and progress:
            print(f"no checkpoint in {ckpt_dir}; training from scratch", file=sys.stderr)
        ckpt_dir.mkdir(exist_ok=True)
        for stale in ckpt_dir.glob("epoch-*.pt"):
            stale.unlink()

    for epoch in range(start_epoch, epochs):
        lr_now = _lr_at(epoch, epochs, lr)
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        bar = ProgressBar(len(data.y_train), f"epoch {epoch + 1}/{epochs}", enabled=progress)
        stats = _train_epoch(model, optimizer, data, batch_size, seed, epoch, bar)
        recalibrate_batch_norm(model, data.x_train)
        stats.update(epoch=epoch + 1, lr=lr_now, test_accuracy=evaluate(model, data.x_test, data.y_test))
        history.append(stats)
        bar.close(loss=f"{stats['train_loss']:.4f}", acc=f"{100 * stats['train_accuracy']:.1f}%",
                  test=f"{100 * stats['test_accuracy']:.2f}%")
        save_checkpoint(ckpt_dir / f"epoch-{epoch + 1:04d}.pt", config={**config, "epochs": epochs},
                        epoch=epoch + 1, model=model, optimizer=optimizer, history=history)

    metadata = {**config, "trained": True, "epochs_trained": len(history), "classes": data.classes,
                "test_accuracy": history[-1]["test_accuracy"]}
    metadata = save_program(model, metadata, output)
    return {**metadata, "history": history}
