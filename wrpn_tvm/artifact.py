"""The compiled-artifact format: a shared library from `export_library` plus a JSON sidecar
(`LIB.so.json`) recording what a runtime needs without importing the compiler or torch: the
inputs, the target, the layer report, the activation memory at the compiled batch (`memory`;
absent from sidecars written before it, null where a shape was not static) and the versions.
Written by `build`, read by `runtime`; a sidecar may come from a stranger, so reading checks
every field a runtime relies on.
"""

import json
import os
from pathlib import Path

from . import __version__
from .errors import WrpnError, one_line
from .fileio import write_text_atomic

SIDECAR_FORMAT = "wrpn-tvm-compiled/1"
# The byte counts and counts of `memory.Footprint`, beside its "batch".
MEMORY_COUNTS = ("activation_bytes", "kernel_calls", "workspace_bytes", "storages", "output_bytes")


def sidecar_path(library: "str | os.PathLike") -> Path:
    return Path(str(library) + ".json")


def write_sidecar(library: Path, spec, inputs, layers, memory=None) -> Path:
    """Write LIB.so.json for a library compiled for spec (a TargetSpec) with these inputs, layer
    reports and memory figures (a `memory.Footprint`, or None)."""
    import torch
    import tvm

    meta = {
        "format": SIDECAR_FORMAT,
        "library": library.name,
        "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in inputs],
        "target": {"name": spec.name, "json": dict(spec.target.export()), "cross_compiler": spec.cross_compiler},
        "layers": [str(layer) for layer in layers],
        "memory": None if memory is None else memory.to_json(),
        "versions": {"wrpn_tvm": __version__, "tvm": tvm.__version__, "torch": torch.__version__},
    }
    path = sidecar_path(library)
    write_text_atomic(path, json.dumps(meta, indent=2, default=str) + "\n")
    return path


def read_sidecar(library: "str | os.PathLike") -> dict:
    """The JSON written next to a compiled library; a clear error when it is missing or damaged."""
    path = sidecar_path(library)
    if not Path(library).is_file():
        raise WrpnError(f"{library}: no such file")
    if not path.is_file():
        raise WrpnError(f"{path}: missing; it is written by `wrpn-tvm compile` next to the library")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise WrpnError(f"{path}: not a valid sidecar JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise WrpnError(f"{path}: not a wrpn-tvm sidecar (format {SIDECAR_FORMAT} expected)")
    problem = _sidecar_problem(meta)
    if problem:
        raise WrpnError(f"{path}: damaged sidecar: {problem}")
    return meta


def built_for_target(library, target: dict):
    """The llvm Target a library was compiled for, from its sidecar's "target" (name and JSON): a
    preset's by its name, else (host, a custom target) from the triple, CPU and attributes, which
    the JSON holds as text (a TVM array written as a Python tuple: read with literal_eval, never
    executed)."""
    import ast

    from tvm.target import Target

    from .targets import PRESET_NAMES, resolve

    name, config = target["name"], target["json"]
    if name in PRESET_NAMES and name != "host":
        return resolve(name).target
    mattr = config.get("mattr", [])
    try:
        mattr = list(ast.literal_eval(mattr) if isinstance(mattr, str) else mattr)
        return Target({"kind": "llvm", "mtriple": str(config.get("mtriple", "")),
                       "mcpu": str(config.get("mcpu", "generic")), **({"mattr": [str(a) for a in mattr]} if mattr else {})})
    except Exception as err:  # a sidecar from elsewhere may hold what this TVM does not know
        raise WrpnError(f"{library}: its sidecar's target is not one this TVM knows ({one_line(err, last=True)})") from None


def _sidecar_problem(meta: dict) -> "str | None":
    """What is wrong with the fields a runner relies on, or None. The file may come from a stranger."""
    import numpy as np

    inputs = meta.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        return "'inputs' must be a non-empty list"
    for entry in inputs:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            return "each input needs a 'name'"
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d < 1 << 31 for d in shape):
            return f"input {entry['name']!r} has no valid 'shape'"
        try:  # np.dtype(None) is float64: a missing dtype must not pass as one
            if not isinstance(entry.get("dtype"), str):
                raise TypeError
            np.dtype(entry["dtype"])
        except (TypeError, ValueError):
            return f"input {entry['name']!r} has no valid 'dtype'"
    target = meta.get("target")
    if not isinstance(target, dict) or not isinstance(target.get("name"), str) or not isinstance(target.get("json"), dict):
        return "'target' must hold a 'name' and a 'json' object"
    if not isinstance(target["json"].get("kind"), str) or not isinstance(target.get("cross_compiler"), (str, type(None))):
        return "'target' has no valid 'kind' or 'cross_compiler'"
    return _memory_problem(meta.get("memory"))


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _memory_problem(memory) -> "str | None":
    if memory is None:
        return None
    if not isinstance(memory, dict) or not all(_count(memory.get(key)) for key in MEMORY_COUNTS):
        return f"'memory' must hold non-negative integers {', '.join(MEMORY_COUNTS)}"
    if memory.get("batch") is not None and not (_count(memory["batch"]) and memory["batch"] > 0):
        return "'memory' has no valid 'batch'"
    return None
