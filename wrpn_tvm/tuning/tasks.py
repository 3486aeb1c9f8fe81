"""Tuning tasks: the fused TIR functions of a (WRPN-lowered) Relax module, as MetaSchedule sees them.

A database record is keyed by the structural hash of the function it was tuned on, so tasks must
be extracted from exactly the module that the build hands to MetaScheduleApplyDatabase:
`pipeline.tunable_module` (test_tuning_job checks that compile finds every tuned workload).
"""


def extract_tasks(mods, spec) -> list:
    """MetaSchedule's ExtractedTasks of a module, or of several lowerings of one model (one per
    kernel choice) with the tasks they share listed once; bit-serial, int8-dot and FP32 alike,
    already-scheduled ones left out."""
    from tvm.s_tir import meta_schedule as ms
    from tvm_ffi import structural_hash

    from ..pipeline import is_scheduled, tunable_module  # the pipeline registers the templates as custom rules

    tasks, seen = [], set()
    for mod in mods if isinstance(mods, (list, tuple)) else [mods]:
        for task in ms.relax_integration.extract_tasks(tunable_module(mod, spec), spec.target):
            key = structural_hash(task.dispatched[0])
            if key not in seen and not is_scheduled(task.mod["main"]):
                seen.add(key)
                tasks.append(task)
    return tasks
