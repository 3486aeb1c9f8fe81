"""Build: a `.pt2` program -> Relax (WRPN-lowered) -> tvm.compile -> a deployable shared library + JSON sidecar.

The library is an `export_library` archive that the TVM runtime alone loads
(`tvm.runtime.load_module` + `relax.VirtualMachine`); ARM targets are cross-compiled to aarch64.
The sidecar records what a runner needs without importing torch: inputs, target, versions.
"""

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, frontend
from .errors import WrpnError
from .targets import TargetSpec, resolve

SIDECAR_FORMAT = "wrpn-tvm-compiled/1"


@dataclass
class CompileResult:
    library: Path
    sidecar: Path
    target: TargetSpec
    inputs: list
    layers: list = field(default_factory=list)


def sidecar_path(library: "str | os.PathLike") -> Path:
    return Path(str(library) + ".json")


def prepare_module(program_path: "str | os.PathLike", spec: TargetSpec):
    """Load and import a program, then rewrite its WRPN layers: (Relax module, layer reports, input specs)."""
    from .lowering import lower_wrpn

    program = frontend.load_program(program_path)
    inputs = frontend.input_specs(program)
    mod = frontend.to_relax(program)
    mod, reports = lower_wrpn(mod, spec)
    return mod, reports, inputs


def _backend_pipeline(spec: TargetSpec):
    import importlib

    return importlib.import_module(f"tvm.relax.backend.{'cuda' if spec.is_cuda else 'cpu_generic'}.pipeline")


def fuse_module(mod, spec: TargetSpec):
    """The passes before scheduling: library dispatch, legalize, fuse. Tuning extracts its tasks
    from this very module, so that a database's workloads match what the build looks up."""
    import tvm
    from tvm import relax

    fuse = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
            relax.transform.FuseOps(), relax.transform.FuseTIR()]
    with spec.target:
        return tvm.transform.Sequential(_backend_pipeline(spec).library_dispatch_passes(spec.target) + fuse)(mod)


def relax_pipeline(spec: TargetSpec, database=None):
    """The target's Relax pipeline with our schedules applied to the fused TIR, in this order:

    1. a tuning database's records;
    2. the bit-serial templates at their default decisions, for what the database did not cover;
    3. a generic default for every other function (dlight's GPU rules, or our CPU fallback),
       so an untuned FP32 first layer is not left as single-threaded scalar loops.
    """
    import tvm
    from tvm import relax

    import schedules
    from schedules.fallback_cpu import apply_fallback_schedules

    target = spec.target
    backend = _backend_pipeline(spec)

    def schedule_rest(mod):
        if not spec.is_cuda:
            return apply_fallback_schedules(mod)
        from tvm.s_tir import dlight as dl

        return dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                       dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)

    @tvm.transform.module_pass(opt_level=0, name="WrpnBuildPipeline")
    def _pipeline(mod, _ctx):
        mod = fuse_module(mod, spec)
        with target:
            if database is not None:
                with database:
                    mod = relax.transform.MetaScheduleApplyDatabase()(mod)
            mod = schedule_rest(schedules.apply_default_schedules(mod, target))
            return tvm.transform.Sequential(backend.dataflow_lower_passes(target) + backend.finalize_passes(target))(mod)

    return _pipeline


def build_module(mod, spec: TargetSpec, database=None):
    """Compile a Relax module for the target; returns a tvm Executable."""
    import tvm

    try:
        return tvm.compile(mod, target=spec.target, relax_pipeline=relax_pipeline(spec, database))
    except WrpnError:
        raise
    except Exception as err:  # TVM surfaces codegen problems as assorted error types
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        raise WrpnError(f"TVM could not compile the model for {spec.name}: {lines[-1] if lines else type(err).__name__}") from None


def export_library(executable, spec: TargetSpec, output: "str | os.PathLike") -> Path:
    """Write the shared library atomically: a failed build never clobbers an existing file."""
    from tvm.support import cc

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fcompile = cc.cross_compiler(spec.cross_compiler) if spec.cross_compiler else None
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".wrpn-build-") as tmp:
        staged = Path(tmp) / output.name
        try:
            executable.export_library(str(staged), fcompile=fcompile)
        except Exception as err:  # the C compiler's failure arrives as a RuntimeError with its log
            raise WrpnError(f"linking {output.name} failed: {str(err).strip().splitlines()[0]}") from None
        os.replace(staged, output)
    return output


def write_sidecar(library: Path, spec: TargetSpec, inputs, layers) -> Path:
    import torch
    import tvm

    meta = {
        "format": SIDECAR_FORMAT,
        "library": library.name,
        "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in inputs],
        "target": {"name": spec.name, "json": dict(spec.target.export()), "cross_compiler": spec.cross_compiler},
        "layers": [str(layer) for layer in layers],
        "versions": {"wrpn_tvm": __version__, "tvm": tvm.__version__, "torch": torch.__version__},
    }
    path = sidecar_path(library)
    staged = path.with_name(path.name + ".tmp")
    staged.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    os.replace(staged, path)
    return path


def compile_model(
    program_path: "str | os.PathLike",
    target: "str | TargetSpec" = "host",
    output: "str | os.PathLike" = "model.so",
    tuning_log: "str | os.PathLike | None" = None,
    strict_target: bool = False,
) -> CompileResult:
    """Compile a torch.export program (`.pt2`) into `output` (a shared library) plus `output.json`.

    `tuning_log` is a log dir or the name of a shipped one; it applies when the target's CPU has
    every feature of the CPU it was tuned for (only an exact match with `strict_target`)."""
    spec = resolve(target)
    database = None
    if tuning_log is not None:  # checked before the slow import, so a wrong log fails fast
        from .tuning import load_database
        from .tuning.shipped import resolve_log

        database = load_database(resolve_log(tuning_log), spec, strict_target)
    mod, layers, inputs = prepare_module(program_path, spec)
    executable = build_module(mod, spec, database)
    library = export_library(executable, spec, output)
    sidecar = write_sidecar(library, spec, inputs, layers)
    return CompileResult(library, sidecar, spec, inputs, layers)


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
        try:
            np.dtype(entry.get("dtype"))
        except (TypeError, ValueError):
            return f"input {entry['name']!r} has no valid 'dtype'"
    target = meta.get("target")
    if not isinstance(target, dict) or not isinstance(target.get("name"), str) or not isinstance(target.get("json"), dict):
        return "'target' must hold a 'name' and a 'json' object"
    if not isinstance(target["json"].get("kind"), str) or not isinstance(target.get("cross_compiler"), (str, type(None))):
        return "'target' has no valid 'kind' or 'cross_compiler'"
    return None
