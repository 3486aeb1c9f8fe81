"""Train a WRPN zoo model (straight-through estimator), checkpoint every epoch, export it.

`train(...)` writes, next to OUTPUT (MODEL.pt2):
- MODEL.pt2: the frozen torch.export program (wrpn_tvm.nn.program), ready for `wrpn-tvm compile`;
- MODEL.json: the WRPN settings, dataset, input shape and test accuracy;
- MODEL.ckpt/epoch-NNNN.pt: model + optimizer state after each epoch, for `resume=True`.

After each epoch the batch-norm running statistics are re-estimated on the training set (see
recalibrate_batch_norm). Shuffling and augmentation are seeded per (seed, epoch), so a resumed run
repeats an uninterrupted one exactly.

Options (all off by default), each measured in benchmarks/results/accuracy_mnist5k.md:
- `teacher`: knowledge distillation from a trained model (Hinton et al. 2015; Apprentice, Mishra &
  Marr 2018): the loss mixes cross-entropy with the KL divergence to the teacher's softened logits.
- `init_from`: start from a trained model's weights (widened and fitted to the grid: nn.transfer).
- `augment_shift`: shift each training image by up to this many pixels.
- `warmup_epochs`: raise the learning rate linearly over these epochs, then decay it by cosine.
- `val_fraction` / `patience`: hold out part of the training split; export the epoch with the best
  validation accuracy, and stop after `patience` epochs without a better one. The test split is
  never used to choose anything.
"""

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .data import Dataset, load_dataset, random_shift, split_validation
from .errors import WrpnError, one_line
from .nn import build_model, check_bits, check_width, load_checkpoint, save_checkpoint, save_program
from .nn.transfer import init_from as load_init, model_from_source, read_source

DEFAULT_BATCH_SIZE = 64
DEFAULT_LR = 3e-2
DEFAULT_KD_WEIGHT = 0.5
DEFAULT_KD_TEMPERATURE = 4.0
EVAL_BATCH_SIZE = 500
# Settings a resumed run must share with the checkpoint it continues.
RESUME_KEYS = ("model", "width", "abits", "wbits", "num_classes", "in_channels", "image_size", "dataset", "seed",
               "batch_size", "lr")
# The training options, with the value a checkpoint written before they existed had.
OPTION_DEFAULTS = {"teacher": None, "kd_weight": 0.0, "kd_temperature": 1.0, "init_from": None, "augment_shift": 0,
                   "warmup_epochs": 0, "val_fraction": 0.0}


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


def _lr_at(epoch: float, epochs: int, base_lr: float, warmup: int = 0) -> float:
    """Linear warm-up over `warmup` epochs (`epoch` is the fractional progress there), then cosine decay towards 0."""
    if epoch < warmup:
        return base_lr * epoch / warmup
    return base_lr * 0.5 * (1 + math.cos(math.pi * (int(epoch) - warmup) / (epochs - warmup)))


def distillation_loss(logits, labels, teacher_logits, weight: float, temperature: float):
    """(1 - weight) x cross-entropy + weight x T^2 x KL(teacher || student) at temperature T (Hinton et al. 2015)."""
    hard = F.cross_entropy(logits, labels)
    if teacher_logits is None or weight == 0:
        return hard
    soft = F.kl_div(F.log_softmax(logits / temperature, dim=1), F.log_softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True)
    return (1 - weight) * hard + weight * temperature**2 * soft


def _train_epoch(model, optimizer, data: Dataset, epoch: int, bar: ProgressBar, options: dict, teacher=None) -> dict:
    model.train()
    seed, batch_size = options["seed"], options["batch_size"]
    order = np.random.default_rng([seed, epoch]).permutation(len(data.y_train))
    shifts = np.random.default_rng([seed, epoch, 1])
    steps = math.ceil(len(order) / batch_size)
    total_loss, correct, seen = 0.0, 0, 0
    for step, start in enumerate(range(0, len(order), batch_size)):
        if epoch < options["warmup_epochs"]:
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(epoch + (step + 1) / steps, options["epochs"], options["lr"], options["warmup_epochs"])
        batch = order[start:start + batch_size]
        x = torch.from_numpy(random_shift(data.x_train[batch], options["augment_shift"], shifts))
        y = torch.from_numpy(data.y_train[batch])
        logits = model(x)
        teacher_logits = None
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(x)
        loss = distillation_loss(logits, y, teacher_logits, options["kd_weight"], options["kd_temperature"])
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


def _check_fraction(value, what, upper_exclusive=True):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 <= value < 1 if upper_exclusive else 0 <= value <= 1):
        raise WrpnError(f"{what} must lie in [0, {'1)' if upper_exclusive else '1]'}, got {value!r}")
    return float(value)


def _check_options(epochs, batch_size, lr, kd_weight, kd_temperature, augment_shift, warmup_epochs, val_fraction,
                   patience) -> None:
    _check_positive(epochs, "epochs", int)
    _check_positive(batch_size, "batch size", int)
    _check_positive(lr, "learning rate")
    _check_fraction(kd_weight, "distillation loss weight", upper_exclusive=False)
    _check_positive(kd_temperature, "distillation temperature")
    _check_fraction(val_fraction, "validation fraction")
    if patience is not None:
        _check_positive(patience, "patience", int)
        if not val_fraction:
            raise WrpnError("early stopping (patience) needs a validation split: give a validation fraction")
    for value, what in ((augment_shift, "augmentation shift"), (warmup_epochs, "warm-up epochs")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise WrpnError(f"{what} must be a whole number >= 0, got {value!r}")
    if warmup_epochs >= epochs:
        raise WrpnError(f"warm-up ({warmup_epochs} epochs) must be shorter than training ({epochs} epochs)")


def _best_epoch(history: list) -> int:
    """The (1-based) epoch with the highest validation accuracy; the earliest on a tie."""
    return max(range(len(history)), key=lambda i: (history[i]["val_accuracy"], -i)) + 1


def train(model_name, width, abits, wbits, dataset, epochs, output, seed=0, resume=False,
          batch_size=DEFAULT_BATCH_SIZE, lr=DEFAULT_LR, progress=True, teacher=None, kd_weight=DEFAULT_KD_WEIGHT,
          kd_temperature=DEFAULT_KD_TEMPERATURE, init_from=None, augment_shift=0, warmup_epochs=0, val_fraction=0.0,
          patience=None) -> dict:
    """Train `model_name` on `dataset` (a name, path or loaded Dataset) and write OUTPUT (.pt2 + .json + checkpoints).

    `teacher` and `init_from` are trained models (a .pt2 with its sidecar, or a training checkpoint);
    the module docstring describes every option. Returns the JSON metadata plus "history" (one
    dict per epoch: losses, accuracies, learning rate).
    """
    check_width(width)
    check_bits(abits, "activation bits")
    check_bits(wbits, "weight bits")
    _check_options(epochs, batch_size, lr, kd_weight, kd_temperature, augment_shift, warmup_epochs, val_fraction,
                   patience)
    output = Path(output)
    if output.suffix != ".pt2":
        raise WrpnError(f"output must be a .pt2 file, got {output}")
    if not output.parent.is_dir():
        raise WrpnError(f"output folder {output.parent} does not exist")
    data = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, seed=seed)
    x_val = y_val = None
    if val_fraction:
        data, x_val, y_val = split_validation(data, val_fraction, seed)
    options = {"teacher": None if teacher is None else str(teacher),
               "kd_weight": float(kd_weight) if teacher is not None else 0.0,
               "kd_temperature": float(kd_temperature) if teacher is not None else 1.0,
               "init_from": None if init_from is None else str(init_from), "augment_shift": augment_shift,
               "warmup_epochs": warmup_epochs, "val_fraction": float(val_fraction)}
    config = {"model": model_name, "width": float(width), "abits": abits, "wbits": wbits,
              "num_classes": data.num_classes, "in_channels": data.in_channels, "image_size": data.image_size,
              "dataset": data.name, "seed": seed, "batch_size": batch_size, "lr": float(lr), **options}

    torch.manual_seed(seed)
    model = build_model(model_name, width=width, abits=abits, wbits=wbits, num_classes=data.num_classes,
                        in_channels=data.in_channels, image_size=data.image_size)
    teacher_model = None
    if teacher is not None:
        teacher_model, teacher_config = model_from_source(teacher)
        for key in ("num_classes", "in_channels", "image_size"):
            if teacher_config[key] != config[key]:
                raise WrpnError(f"teacher {teacher} has {key}={teacher_config[key]!r}, this model {config[key]!r}")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    start_epoch, history = 0, []
    ckpt_dir = checkpoint_dir(output)
    previous = latest_checkpoint(output) if resume else None
    if previous is not None:
        payload = load_checkpoint(previous)
        saved = {**OPTION_DEFAULTS, **payload["config"]}
        for key in RESUME_KEYS + tuple(OPTION_DEFAULTS):
            if saved.get(key) != config[key]:
                raise WrpnError(f"cannot resume from {previous}: it has {key}={saved.get(key)!r}, "
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
        if init_from is not None:
            source_config, state = read_source(init_from)
            load_init(model, config, source_config, state, what=str(init_from))
        ckpt_dir.mkdir(exist_ok=True)
        for stale in ckpt_dir.glob("epoch-*.pt"):
            stale.unlink()

    run = {**options, "seed": seed, "batch_size": batch_size, "lr": float(lr), "epochs": epochs}
    for epoch in range(start_epoch, epochs):
        if patience is not None and history and len(history) - _best_epoch(history) >= patience:
            break
        # inside the warm-up the steps set their own rate; the epoch records where it ends
        lr_now = _lr_at(epoch + 1 if epoch < warmup_epochs else epoch, epochs, lr, warmup_epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        bar = ProgressBar(len(data.y_train), f"epoch {epoch + 1}/{epochs}", enabled=progress)
        stats = _train_epoch(model, optimizer, data, epoch, bar, run, teacher_model)
        recalibrate_batch_norm(model, data.x_train)
        stats.update(epoch=epoch + 1, lr=lr_now, test_accuracy=evaluate(model, data.x_test, data.y_test))
        shown = {"loss": f"{stats['train_loss']:.4f}", "acc": f"{100 * stats['train_accuracy']:.1f}%"}
        if x_val is not None:
            stats["val_accuracy"] = evaluate(model, x_val, y_val)
            shown["val"] = f"{100 * stats['val_accuracy']:.2f}%"
        history.append(stats)
        bar.close(**shown, test=f"{100 * stats['test_accuracy']:.2f}%")
        save_checkpoint(ckpt_dir / f"epoch-{epoch + 1:04d}.pt", config={**config, "epochs": epochs},
                        epoch=epoch + 1, model=model, optimizer=optimizer, history=history)

    chosen = len(history)
    if x_val is not None:
        chosen = _best_epoch(history)
        if chosen != len(history):
            model.load_state_dict(load_checkpoint(ckpt_dir / f"epoch-{chosen:04d}.pt")["model"])
    metadata = {**config, "trained": True, "epochs_trained": len(history), "exported_epoch": chosen,
                "classes": data.classes, "test_accuracy": history[chosen - 1]["test_accuracy"]}
    if x_val is not None:
        metadata["val_accuracy"] = history[chosen - 1]["val_accuracy"]
    metadata = save_program(model, metadata, output)
    return {**metadata, "history": history}
