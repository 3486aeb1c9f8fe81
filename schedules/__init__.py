"""Per-target TIR schedule templates for the WRPN bit-serial ops (x86, arm_cpu, cuda), and the CPU
template of the blocked FP32 conv that the layers left in full precision run on (fp32_conv).

Two ways in:

* ``apply_default_schedules(mod, target)`` schedules every PrimFunc of ``mod`` that holds a WRPN
  block (bit-serial conv2d/dense or bitpack) with the target's template at default decisions, for
  an untuned compile, and on CPUs every PrimFunc holding a blocked FP32 conv; other functions are
  left as they are. It works on PrimFuncs from
  ``relax.BlockBuilder.emit_te`` and after FuseOps/FuseTIR (padding and elementwise epilogues are
  inlined, leftover blocks parallelized or bound to GPU threads).

* ``apply_fixed_schedules(mod, target)`` schedules, before tuning sees them, the functions whose
  template has no decision (packs the CPU templates stage), so that no task is made of them.

* MetaSchedule custom rules. The compute blocks carry ``attrs={"schedule_rule": NAME}`` with NAME
  one of ``wrpn_bitserial_conv2d``, ``wrpn_bitserial_dense``, ``wrpn_bitpack`` (and
  ``wrpn_fp32_conv2d`` and ``wrpn_int8_conv2d`` for the keys ``cpu`` and ``arm_cpu``, ``wrpn_lut_conv2d``
  for ``cpu``); importing this
  package registers ``s_tir.meta_schedule.<key>.<NAME>`` for the target keys ``cpu`` (x86),
  ``arm_cpu`` (aarch64 targets have keys ``arm_cpu, cpu``; the first registered key wins) and
  ``cuda``. MetaSchedule's ApplyCustomRule (in the default rule set of every target) then calls
  the template, which samples its tile sizes (``sample_perfect_tile``) and unroll depth
  (``sample_categorical``) and returns one design space per loop order. Tuning and replaying a
  database's records both need the rules registered: ``wrpn_tvm.pipeline``, which both go
  through, imports this package.
"""

import tvm
from tvm import tirx
from tvm.s_tir import Schedule
from tvm.target import Target

from wrpn_tvm.errors import WrpnError
from wrpn_tvm.ops import BITPACK_RULE, CONV2D_RULE, DENSE_RULE, FP32_CONV2D_RULE, INT8_CONV2D_RULE, LUT_CONV2D_RULE

from . import amx, arm_cpu, cuda, fp32_conv, int8_dot, int8_winograd, lut, prefetch, stack_tiles, x86
from .common import SCHEDULED_ATTR, has_wrpn_block, is_scheduled, with_scheduled

_FAMILIES = {"cpu": x86.TEMPLATES, "arm_cpu": arm_cpu.TEMPLATES, "cuda": cuda}


def family(target: Target):
    """The template module for a target: the first of its keys that has templates."""
    for key in target.keys:
        if key in _FAMILIES:
            return _FAMILIES[key]
    raise WrpnError(f"no WRPN schedule templates for target {target.kind.name} (keys {', '.join(target.keys)})")


def rule_name(key: str, rule: str) -> str:
    return f"s_tir.meta_schedule.{key}.{rule}"


def _schedule_with_template(sch: Schedule, target: Target) -> bool:
    """Schedule sch's "main" with our template for it (bit-serial, or the blocked FP32 conv on a
    CPU, or the int8-dot conv) at default decisions; False when none applies."""
    if has_wrpn_block(sch.mod["main"]):
        family(target).schedule_function(sch, target)
        return True
    if "cpu" in target.keys and int8_winograd.has_winograd_conv(sch):
        int8_winograd.schedule_function(sch, target)
        return True
    if "cpu" in target.keys and int8_dot.has_int8_conv(sch):
        int8_dot.schedule_function(sch, target)
        return True
    if "cpu" in target.keys and lut.has_lut_conv(sch):
        lut.schedule_function(sch, target)
        return True
    if "cpu" in target.keys and lut.has_lut_tables(sch):
        lut.schedule_tables(sch)
        return True
    if "cpu" in target.keys and fp32_conv.has_fp32_conv(sch):
        fp32_conv.schedule_function(sch, target)
        return True
    return False


def _schedule_unscheduled(mod: tvm.IRModule, schedule_in_place) -> tvm.IRModule:
    """A copy of mod with each not-yet-scheduled PrimFunc that `schedule_in_place(sch)` schedules
    (returning True) swapped in and marked (mod itself is left as it is)."""
    updated = {}
    for global_var, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
            continue
        sch = Schedule(func)
        if schedule_in_place(sch):
            updated[global_var] = sch.mod["main"]
    return with_scheduled(mod, updated)


def apply_default_schedules(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    """A copy of mod with every not-yet-scheduled PrimFunc that holds a WRPN block or a blocked
    FP32 conv scheduled and marked (mod itself is left as it is)."""
    target = target if isinstance(target, Target) else Target(target)
    return _schedule_unscheduled(mod, lambda sch: _schedule_with_template(sch, target))


def apply_fixed_schedules(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    """A copy of mod with every PrimFunc that has nothing to tune scheduled by its template and
    marked, so that tuning makes no task of it and a database cannot replace it: those whose WRPN
    kernels are all packs the template stages (levels computed once, packed by an intrinsic), the
    lookup convs' tables passes, and the Winograd int8 convs (their template samples nothing). The
    tuning rule's only alternative for them, the generic inlined pack, can time faster alone and
    slower among the model's calls: two of ResNet-18 2x 2/2's packs tuned so took 0.41 and 0.14 ms
    in the model against their staged default's 0.22 and 0.04
    (benchmarks/results/tuning_short_shipped_log.md)."""
    target = target if isinstance(target, Target) else Target(target)
    if not any(key in _FAMILIES for key in target.keys):
        return mod
    templates = family(target)

    def schedule_if_fixed(sch: Schedule) -> bool:
        if "cpu" in target.keys and lut.has_lut_tables(sch):
            lut.schedule_tables(sch)
            return True
        if "cpu" in target.keys and int8_winograd.has_winograd_conv(sch):
            int8_winograd.schedule_function(sch, target)
            return True
        if not templates.has_no_decisions(sch, target):
            return False
        templates.schedule_function(sch, target)
        return True

    return _schedule_unscheduled(mod, schedule_if_fixed)


def register_replay_intrinsics(mod: tvm.IRModule, target: "Target | str") -> None:
    """Register the tensor intrinsics that a tuning record for `target` of one of mod's functions
    can name, so that its trace replays in any process: the lookup convs' tiles and the CPU
    families' staged packs make theirs per shape, on first use."""
    target = target if isinstance(target, Target) else Target(target)
    templates = family(target) if any(key in _FAMILIES for key in target.keys) else None
    for func in mod.functions.values():
        if isinstance(func, tirx.PrimFunc):
            sch = Schedule(func)
            if lut.has_lut_conv(sch):
                lut.register_tile_intrinsics(sch)
            # Whatever the record's target (a log's target strings are untrusted: LLVM is not asked).
            amx.register_replay_intrinsics(sch)
            if templates is not None:
                templates.register_replay_intrinsics(sch)


def default_schedule(mod: tvm.IRModule, target: Target) -> "Schedule | None":
    """The schedule an untuned compile gives mod's "main" (bit-serial template defaults, or the
    generic CPU fallback for other functions), as a traced Schedule that a tuning database can
    record; None where the compile would leave it to another pass (dlight on CUDA)."""
    from . import fallback_cpu

    target = target if isinstance(target, Target) else Target(target)
    sch = Schedule(mod)
    if _schedule_with_template(sch, target):
        return sch
    if "cpu" in target.keys and fallback_cpu.schedule_in_place(sch):
        return sch
    return None


def _register_rules() -> None:
    for key, templates in _FAMILIES.items():
        for rule, template in (
            (CONV2D_RULE, templates.conv2d_rule),
            (DENSE_RULE, templates.dense_rule),
            (BITPACK_RULE, templates.bitpack_rule),
        ):
            tvm.register_global_func(rule_name(key, rule), template, override=True)
    for key, registers in (("cpu", fp32_conv.X86_TUNING_REGISTERS), ("arm_cpu", fp32_conv.ARM_REGISTERS)):
        tvm.register_global_func(rule_name(key, FP32_CONV2D_RULE), fp32_conv.rule(registers), override=True)
        tvm.register_global_func(rule_name(key, INT8_CONV2D_RULE), int8_dot.conv2d_rule, override=True)
    tvm.register_global_func(rule_name("cpu", LUT_CONV2D_RULE), lut.conv2d_rule, override=True)


_register_rules()

__all__ = ["SCHEDULED_ATTR", "apply_default_schedules", "apply_fixed_schedules", "default_schedule", "family",
           "is_scheduled", "register_replay_intrinsics", "rule_name"]
