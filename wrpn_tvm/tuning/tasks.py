"""Tuning tasks: the fused TIR functions of a (WRPN-lowered) Relax module, as MetaSchedule sees them.

A database record is keyed by the structural hash of the function it was tuned on, so tasks must
be extracted from exactly the module that the build hands to MetaScheduleApplyDatabase:
`pipeline.fuse_module` (test_tuning_job checks that compile finds every tuned workload).
"""


def extract_tasks(mod, spec) -> list:
    """MetaSchedule's ExtractedTasks of the module (bit-serial and FP32 alike), already-scheduled ones left out."""
    from tvm.s_tir import meta_schedule as ms

    from ..pipeline import SCHEDULED_ATTR, fuse_module  # the pipeline registers the templates as custom rules

    tasks = ms.relax_integration.extract_tasks(fuse_module(mod, spec), spec.target)
    return [task for task in tasks if not task.mod.attrs.get(SCHEDULED_ATTR, False)]
