"""Tuning tasks: the fused TIR functions of a (WRPN-lowered) Relax module, as MetaSchedule sees them.

A database record is keyed by the structural hash of the function it was tuned on, so tasks must
be extracted from exactly the module that `build` hands to MetaScheduleApplyDatabase: the
target's library-dispatch passes, then legalize and fuse, applied under the target (the same list
as build.relax_pipeline; test_tuning_job checks that compile finds every tuned workload).
"""

import importlib


def fused_module(mod, spec):
    """The module after the passes that precede MetaScheduleApplyDatabase in build.relax_pipeline."""
    import tvm
    from tvm import relax

    backend = "cuda" if spec.is_cuda else "cpu_generic"
    pipeline = importlib.import_module(f"tvm.relax.backend.{backend}.pipeline")
    fuse = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
            relax.transform.FuseOps(), relax.transform.FuseTIR()]
    with spec.target:
        return tvm.transform.Sequential(pipeline.library_dispatch_passes(spec.target) + fuse)(mod)


def extract_tasks(mod, spec) -> list:
    """MetaSchedule's ExtractedTasks of the module (bit-serial and FP32 alike), already-scheduled ones left out."""
    from tvm.s_tir import meta_schedule as ms

    import schedules  # noqa: F401  (registers the bit-serial templates as MetaSchedule custom rules)

    tasks = ms.relax_integration.extract_tasks(fused_module(mod, spec), spec.target)
    return [task for task in tasks if not task.mod.attrs.get("tirx.is_scheduled", False)]
