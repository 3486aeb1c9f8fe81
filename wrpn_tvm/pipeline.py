"""The compiler's pipeline from a `.pt2` program to a compiled Relax executable: import, WRPN
lowering, fusion, scheduling (tuning records, then our templates, then generic defaults) and
TVM's own lowering. `build` (compile a model) and `tuning` (extract and measure its tasks) both
go through here, so a tuning record's workload is exactly what a build looks up.

This is the one module that imports `schedules`, whose import registers the bit-serial templates
as MetaSchedule custom rules: tuning, and replaying tuned records, need them registered.
"""

import dataclasses
import importlib
import os
import re

import tvm
from tvm import relax, tirx

import schedules
from schedules.fallback_cpu import apply_fallback_schedules

from . import frontend, ops, pt2
from .errors import WrpnError, one_line
from .lowering import lower_wrpn
from .kernel_kinds import AUTO, BITSERIAL, INT8_DOT, KERNELS
from .lowering.kernel_choice import lut_offered
from .targets import TargetSpec


# What a tuning job needs of the templates: the schedule an untuned compile gives a function (its
# first candidate), and whether a function is scheduled already.
default_schedule = schedules.default_schedule
is_scheduled = schedules.is_scheduled
# What reading a tuning log needs: the intrinsics its records' traces can name, registered.
register_replay_intrinsics = schedules.register_replay_intrinsics
# And on a CPU with AMX: which records a log tuned without it must leave out (they schedule VNNI).
amx_available = schedules.amx.available
holds_tiled_conv = schedules.amx.holds_tiled_conv

# TVM's TIR lowering with the templates' prefetches inserted first (`schedules.prefetch`) and
# their register tiles kept on the stack (`schedules.stack_tiles`): every build of scheduled TIR
# goes through it, tuning candidates too, so that they run as a build would.
TIR_PIPELINE = "wrpn"


def _tir_pipeline():
    lower, finalize_host, finalize_device = tvm.tirx.get_tir_pipeline("default")

    def finalize_host_with_tiles_on_stack():
        return tvm.transform.Sequential([schedules.stack_tiles.KeepTilesOnStack, finalize_host()])

    return (tvm.transform.Sequential([schedules.prefetch.PrefetchNextTile, lower]), finalize_host_with_tiles_on_stack,
            finalize_device)


tvm.tirx.compilation_pipeline.register_tir_pipeline(TIR_PIPELINE, _tir_pipeline)


def prepare_module(program_path: "str | os.PathLike", spec: TargetSpec, kernels: str = AUTO, database=None):
    """Load and import a program, then rewrite its WRPN layers: (Relax module, layer reports, input specs)."""
    imported, inputs = import_program(program_path)
    return (*lower_module(imported, spec, kernels, database), inputs)


def import_program(program_path: "str | os.PathLike"):
    """(The program's Relax module before lowering, its input specs): what `lower_module` lowers,
    once per kernel choice where a caller wants several (loading and importing ResNet-18 takes
    about 3.5 s)."""
    program = pt2.load_program(program_path)
    return frontend.to_relax(program), pt2.input_specs(program)


def lower_module(imported, spec: TargetSpec, kernels: str = AUTO, database=None):
    """Rewrite an imported module's WRPN layers: (Relax module, layer reports). `kernels`: AUTO
    picks the kernel per layer (by `database`'s records where it holds the bit-serial and int8
    kernels' for a layer, else by the cost model); BITSERIAL, INT8_DOT or LUT asks for one."""
    measured = tuned_kernel_seconds(imported, spec, database) if database is not None and kernels == AUTO else None
    return lower_wrpn(imported, spec, kernels, measured and measured.convs, measured and measured.passes)


def kernel_variants(spec: TargetSpec) -> tuple[str, ...]:
    """The kernels a quantized conv can run as on this target (the int8 dot product needs one in the
    ISA; the lookup kernel is offered on AVX2 CPUs without VNNI or AVX-512)."""
    if spec.is_cuda or ops.int8_layout(spec.target) is None:
        return (BITSERIAL,)
    return KERNELS if lut_offered(spec.target) else (BITSERIAL, INT8_DOT)


_LAYER_IN_NAME = re.compile(r"_layer(\d+)_")


def tuned_kernel_seconds(imported, spec: TargetSpec, database) -> "TunedTimes":
    """The database's best times for choosing kernels: per quantized conv whose bit-serial and int8
    kernels both have records, each kernel's (the lookup kernel's too, where it has some), and the
    pass that packs its input for the int8 kernel. `imported`: the module before lowering."""
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    variants = kernel_variants(spec)
    if len(variants) < 2:
        return TunedTimes({}, {})
    lowerings = {kernel: lower_wrpn(imported, spec, kernel) for kernel in variants}
    # Layers of one geometry share one kernel function (the block builder dedups structurally equal
    # functions), named after the first of them: its records time all of them.
    geometry = {report.index: (report.op, report.detail, report.input_shape, report.output_shape, report.bits)
                for report in lowerings[BITSERIAL][1] if report.is_bitserial}
    lowered_layers = list(geometry)  # in program order

    def best(module, global_var) -> "float | None":
        record = database.query_tuning_record(_normalize_mod(module[global_var]), spec.target, global_var.name_hint)
        return sum(float(x) for x in record.run_secs) / len(record.run_secs) if record and record.run_secs else None

    seconds: dict = {}
    passes: dict = {}
    for kernel, (lowered, _) in lowerings.items():
        module = tunable_module(lowered, spec)
        for global_var, func in module.functions.items():
            layer = _LAYER_IN_NAME.search(global_var.name_hint)
            if layer is None or not isinstance(func, tirx.PrimFunc):
                continue
            mean = best(module, global_var)
            if mean is not None:
                seconds.setdefault(geometry[int(layer.group(1))], {})[kernel] = mean
        if kernel == INT8_DOT:  # its packs are tuned; the bit-serial and lookup ones are fixed schedules
            calls = _layer_calls(module)
            if len(calls) == len(lowered_layers):
                for index, (_, producer) in zip(lowered_layers, calls):
                    # An int8 conv whose output pack is fused into it times the conv, not a pass.
                    is_pass = producer is not None and not _LAYER_IN_NAME.search(producer.name_hint)
                    mean = best(module, producer) if is_pass else None
                    if mean is not None:
                        passes[index] = mean
    convs = {index: dict(seconds[shape]) for index, shape in geometry.items()
             if {BITSERIAL, INT8_DOT} <= set(seconds.get(shape, {}))}
    return TunedTimes(convs, {index: passes[index] for index in convs if index in passes})


@dataclasses.dataclass(frozen=True)
class TunedTimes:
    """convs: layer index -> {kernel: best tuned seconds}; passes: layer index -> best tuned seconds
    of the function that computes its int8 input (its producer's epilogue and the int8 pack)."""

    convs: dict
    passes: dict


def _layer_calls(module) -> list:
    """(kernel function, function computing its first tensor argument or None) for each call of a
    WRPN layer's kernel in `main`, in program order: the order of the lowered layers' reports."""
    producer_of: dict = {}
    calls = []
    for block in module["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if not (isinstance(value, relax.Call) and value.op.name == "relax.call_tir"):
                continue
            callee = value.args[0]
            producer_of[binding.var] = callee
            if _LAYER_IN_NAME.search(callee.name_hint):
                data = next((arg for arg in value.args[1].fields if isinstance(arg, relax.Var)), None)
                calls.append((callee, producer_of.get(data)))
    return calls


def _backend_pipeline(spec: TargetSpec):
    return importlib.import_module(f"tvm.relax.backend.{'cuda' if spec.is_cuda else 'cpu_generic'}.pipeline")


def fuse_module(mod, spec: TargetSpec):
    """The passes before scheduling: library dispatch, legalize, fuse."""
    fuse = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
            relax.transform.FuseOps(), relax.transform.FuseTIR()]
    with spec.target:
        return tvm.transform.Sequential(_backend_pipeline(spec).library_dispatch_passes(spec.target) + fuse)(mod)


def tunable_module(mod, spec: TargetSpec):
    """fuse_module's, with the functions that have nothing to tune already scheduled
    (`schedules.apply_fixed_schedules`). Tuning extracts its tasks from this very module, so that a
    database's workloads match what the build looks up. The intrinsics its tasks' records can
    name are registered (`register_replay_intrinsics`)."""
    fused = fuse_module(mod, spec)
    register_replay_intrinsics(fused, spec.target)
    return schedules.apply_fixed_schedules(fused, spec.target)


@dataclasses.dataclass
class LogCoverage:
    """Which of a build's tunable functions (those a tuning job would make tasks of) a tuning log
    scheduled, and which it left to the templates' defaults: a log tuned for other workloads (an
    older lowering, other shapes or bits) applies partly or not at all, without an error."""

    tuned: list = dataclasses.field(default_factory=list)
    untuned: list = dataclasses.field(default_factory=list)

    def line(self, shown: int = 4) -> str:
        total = len(self.tuned) + len(self.untuned)
        if not self.untuned:
            return f"tuning log: records for all {total} tunable kernels"
        more = len(self.untuned) - shown
        names = ", ".join(self.untuned[:shown]) + (f" and {more} more" if more > 0 else "")
        return (f"tuning log: records for {len(self.tuned)} of {total} tunable kernels; at template defaults "
                f"(no record matches them: tune the model to cover them): {names}")


def _unscheduled(mod) -> list:
    return sorted(gvar.name_hint for gvar, func in mod.functions_items()
                  if isinstance(func, tirx.PrimFunc) and not is_scheduled(func))


def relax_pipeline(spec: TargetSpec, database=None, coverage: "LogCoverage | None" = None):
    """The target's Relax pipeline with our schedules applied to the fused TIR, in this order:

    1. a tuning database's records;
    2. the bit-serial templates at their default decisions, for what the database did not cover;
    3. a generic default for every other function (dlight's GPU rules, or our CPU fallback),
       so an untuned FP32 first layer is not left as single-threaded scalar loops.

    `coverage` (with a database) is filled with the functions the records scheduled and those they left.
    """
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
        mod = tunable_module(mod, spec)
        with target:
            if database is not None:
                tunable = _unscheduled(mod)
                with database:
                    mod = relax.transform.MetaScheduleApplyDatabase()(mod)
                if coverage is not None:
                    left = set(_unscheduled(mod))
                    coverage.tuned = [name for name in tunable if name not in left]
                    coverage.untuned = [name for name in tunable if name in left]
            mod = schedule_rest(schedules.apply_default_schedules(mod, target))
            return tvm.transform.Sequential(backend.dataflow_lower_passes(target) + backend.finalize_passes(target))(mod)

    return _pipeline


def build_module(mod, spec: TargetSpec, database=None, coverage: "LogCoverage | None" = None):
    """Compile a Relax module for the target; returns a tvm Executable (`coverage`: see relax_pipeline)."""
    try:
        return tvm.compile(mod, target=spec.target, tir_pipeline=TIR_PIPELINE,
                           relax_pipeline=relax_pipeline(spec, database, coverage))
    except WrpnError:
        raise
    except Exception as err:  # TVM surfaces codegen problems as assorted error types
        raise WrpnError(f"TVM could not compile the model for {spec.name}: {one_line(err, last=True)}") from None


def compile_prim_func(func, spec: TargetSpec):
    """Compile one PrimFunc (a kernel alone, outside a model) with the templates at their defaults."""
    mod = schedules.apply_default_schedules(tvm.IRModule({"main": func}), spec.target)
    return tvm.compile(mod, target=tvm.target.Target(spec.target, host="llvm") if spec.is_cuda else spec.target,
                       tir_pipeline=TIR_PIPELINE)
