"""The tuning logs that ship with wrpn-tvm, and the choice of one for a model and a target.

They live in the checkout's `tuning_logs/` (see `resources`). Each folder is named `MODEL-TARGET`, e.g.
`smallcnn-2x-a2w2-x86-avx512`, and tuned for an ISA-level preset, so that it applies to every CPU
with that instruction set; `--tuning-log` takes such a name as well as a path.
"""

import os
from pathlib import Path

from ..errors import WrpnError
from ..resources import shipped_dir
from ..targets import TargetSpec, isa_features
from .database import RECORD_FILE, check_target, read_log


def shipped_logs_dir() -> Path:
    return shipped_dir("tuning_logs")


def shipped_logs(prefix: str = "") -> list[Path]:
    """The shipped log folders whose names start with prefix, by name."""
    root = shipped_logs_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(prefix) and (p / RECORD_FILE).is_file())


def resolve_log(log: "str | os.PathLike") -> Path:
    """A log dir given by path, or by the name of a shipped log (`resnet18-2x-a2w2-x86-avx512`,
    also as `tuning_logs/NAME` from outside a checkout)."""
    path = Path(log)
    if path.exists():
        return path
    shipped = shipped_logs_dir() / path.name
    if (shipped / RECORD_FILE).is_file():
        return shipped
    raise WrpnError(f"{log}: no such tuning log directory (nor a shipped log of that name in {shipped_logs_dir()})")


def find_shipped_log(model: str, spec: TargetSpec) -> "Path | None":
    """The best shipped log for `model` (a folder-name prefix such as `smallcnn-2x-a2w2`) that
    spec's target can use: one tuned for exactly that target, else the applicable one tuned for
    the most instruction-set features (AVX-512 before AVX2). None when none applies."""
    best, best_rank = None, None
    for folder in shipped_logs(f"{model}-"):
        log = read_log(folder)
        try:
            notes = check_target(log, spec)
        except WrpnError:
            continue
        rank = (not notes, max((len(isa_features(t)) for t in log.targets.values()), default=0))
        if best_rank is None or rank > best_rank:
            best, best_rank = folder, rank
    return best
