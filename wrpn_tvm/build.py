"""Build: a `.pt2` program -> the pipeline -> a deployable shared library + its sidecar (`artifact`).

The library is an `export_library` archive that the TVM runtime alone loads
(`tvm.runtime.load_module` + `relax.VirtualMachine`); ARM targets are cross-compiled to aarch64.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

from .artifact import write_sidecar
from .errors import WrpnError, one_line
from .fileio import atomic_path
from .lowering import program_warnings, summary
from .memory import Footprint, recording
from .pipeline import LogCoverage, build_module, prepare_module
from .targets import TargetSpec, resolve


@dataclass
class CompileResult:
    library: Path
    sidecar: Path
    target: TargetSpec
    inputs: list
    layers: list = field(default_factory=list)
    warnings: list = field(default_factory=list)  # what makes the compiled model differ from the trained one
    memory: "Footprint | None" = None  # activation bytes and planned workspace at the compiled batch
    log_coverage: "LogCoverage | None" = None  # with a tuning log: which kernels its records scheduled

    @property
    def summary(self) -> str:
        """E.g. "7 of 9 conv/dense layers quantized (a2/w2 x6, a4/w2 x1; bit-serial x7); 2 fp32"."""
        return summary(self.layers)


def export_library(executable, spec: TargetSpec, output: "str | os.PathLike") -> Path:
    """Write the shared library atomically: a failed build never clobbers an existing file."""
    from tvm.support import cc

    output = Path(output)
    fcompile = cc.cross_compiler(spec.cross_compiler) if spec.cross_compiler else None
    with atomic_path(output) as staged:
        try:
            executable.export_library(str(staged), fcompile=fcompile)
        except Exception as err:  # the C compiler's failure arrives as a RuntimeError with its log
            raise WrpnError(f"linking {output.name} failed: {one_line(err)}") from None
    return output


def compile_model(
    program_path: "str | os.PathLike",
    target: "str | TargetSpec" = "host",
    output: "str | os.PathLike" = "model.so",
    tuning_log: "str | os.PathLike | None" = None,
    strict_target: bool = False,
    kernels: str = "auto",
) -> CompileResult:
    """Compile a torch.export program (`.pt2`) into `output` (a shared library) plus `output.json`.

    `tuning_log` is a log dir or the name of a shipped one; it applies when the target's CPU has
    every feature of the CPU it was tuned for (only an exact match with `strict_target`). The
    sidecar records the compiled batch's activation memory (`memory.Footprint`). `kernels`: "auto"
    runs each quantized conv on the faster of bit-serial and int8 dot (by the log's records of both,
    else by the cost model); "bit-serial" or "int8-dot" asks for one wherever it applies."""
    spec = resolve(target)
    database = None
    if tuning_log is not None:  # checked before the slow import, so a wrong log fails fast
        from .tuning import load_database
        from .tuning.shipped import resolve_log

        database = load_database(resolve_log(tuning_log), spec, strict_target)
    mod, layers, inputs = prepare_module(program_path, spec, kernels, database)
    coverage = LogCoverage() if database is not None else None
    with recording(inputs) as recorded:  # read off the very pipeline run that compiles the library
        executable = build_module(mod, spec, database, coverage)
    footprint = recorded.footprint()
    library = export_library(executable, spec, output)
    sidecar = write_sidecar(library, spec, inputs, layers, footprint)
    return CompileResult(library, sidecar, spec, inputs, layers, program_warnings(mod, layers), footprint, coverage)
