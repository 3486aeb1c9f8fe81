"""Tuning tasks: the fused TIR functions of a (WRPN-lowered) Relax module, as MetaSchedule sees them.

A database record is keyed by the structural hash of the function it was tuned on, so tasks must
be extracted from exactly the module that `build` hands to MetaScheduleApplyDatabase:
`build.fuse_module` (test_tuning_job checks that compile finds every tuned workload).
"""


def extract_tasks(mod, spec) -> list:
    """MetaSchedule's ExtractedTasks of the module (bit-serial and FP32 alike), already-scheduled ones left out."""
    from tvm.s_tir import meta_schedule as ms

    import schedules  # also registers the bit-serial templates as MetaSchedule custom rules

    from ..build import fuse_module

    tasks = ms.relax_integration.extract_tasks(fuse_module(mod, spec), spec.target)
    return [task for task in tasks if not task.mod.attrs.get(schedules.SCHEDULED_ATTR, False)]
