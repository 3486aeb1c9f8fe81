"""The trained-model file format: a `.pt2` archive (torch.export.save), read safely, and its inputs.

Read by the frontend (which imports it into Relax) and by the runtime's PyTorch baseline alike.
`torch.export.load` may unpickle: tensors stored with `use_pickle`, TorchScript custom objects,
opaque objects, and a silent fallback to `weights_only=False` for sample inputs. A `.pt2` from a
stranger must not run code, so the archive is checked before it is opened: custom and opaque
objects are refused, and every `torch.load` inside the load is forced to `weights_only=True`.
"""

import contextlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import WrpnError, one_line

MAX_PROGRAM_BYTES = 4 << 30
_UNSAFE_PREFIXES = ("custom_obj_", "opaque_obj_")


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str


def check_archive(path: "str | os.PathLike") -> None:
    """Refuse anything that is not a plain torch.export archive of tensors, with one clear line."""
    path = Path(path)
    if not path.is_file():
        raise WrpnError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise WrpnError(f"{path}: empty file, not a torch.export program")
    if size > MAX_PROGRAM_BYTES:
        raise WrpnError(f"{path}: {size} bytes is larger than the {MAX_PROGRAM_BYTES >> 30} GiB limit for a program")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not any(name.endswith("/archive_format") or name == "archive_format" for name in names):
                raise WrpnError(f"{path}: a zip file, but not a torch.export program (.pt2)")
            for name in names:
                if Path(name).name.startswith(_UNSAFE_PREFIXES):
                    raise WrpnError(f"{path}: holds a pickled Python object ({name}); refusing to load it")
                if name.endswith("_constants_config.json"):
                    _check_constants_config(path, archive.read(name))
    except zipfile.BadZipFile:
        raise WrpnError(f"{path}: not a torch.export program (.pt2): not a zip archive") from None
    except (OSError, RuntimeError, ValueError) as err:  # truncated or corrupt members
        raise WrpnError(f"{path}: unreadable .pt2 archive: {err}") from None


def _check_constants_config(path: Path, raw: bytes) -> None:
    try:
        config = json.loads(raw).get("config", {})
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        raise WrpnError(f"{path}: corrupt constants table in the .pt2 archive") from None
    for entry in config.values():
        if str(entry.get("path_name", "")).startswith(_UNSAFE_PREFIXES):
            raise WrpnError(f"{path}: holds a pickled Python object; refusing to load it")


@contextlib.contextmanager
def _weights_only_loads():
    """Force every torch.load in this block to the safe unpickler (torch reads this at call time)."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def load_program(path: "str | os.PathLike"):
    """Load a `.pt2` saved by `torch.export.save`, safely; errors are one-line WrpnErrors."""
    import torch

    check_archive(path)
    try:
        with _weights_only_loads():
            return torch.export.load(str(path))
    except WrpnError:
        raise
    except Exception as err:  # torch raises many types for a damaged archive
        raise WrpnError(f"{path}: cannot load the torch.export program: {one_line(err)}") from None


def input_specs(program) -> list[InputSpec]:
    """The user inputs of an exported program (parameters and buffers excluded)."""
    from torch.export.graph_signature import InputKind

    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    specs = []
    for spec in program.graph_signature.input_specs:
        if spec.kind != InputKind.USER_INPUT:
            continue
        value = placeholders[spec.arg.name].meta.get("val")
        if value is None or not hasattr(value, "shape"):
            raise WrpnError(f"input {spec.arg.name!r} is not a tensor; only tensor inputs are supported")
        if any(not isinstance(dim, int) for dim in value.shape):
            raise WrpnError(f"input {spec.arg.name!r} has a dynamic shape; export with static shapes")
        specs.append(InputSpec(spec.arg.name, tuple(int(d) for d in value.shape), str(value.dtype).replace("torch.", "")))
    return specs
