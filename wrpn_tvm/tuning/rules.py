"""MetaSchedule custom rules for the annotations TVM's own pooling computes carry.

TOPI's pooling (C++) tags its blocks `schedule_rule = "meta_schedule.pool_max"` (and `pool_avg`,
`adaptive_pool_max`, `adaptive_pool_avg`), but TVM 0.27 registers no rule of that name, so
ApplyCustomRule warned `Unknown schedule rule "meta_schedule.pool_max"` on every tune of a model
with a max-pool, then dropped the annotation and left the block to the default rules. These rules
do exactly that (the annotation is removed, so the rules after ApplyCustomRule schedule the block,
with the same trace as before), without the warning. A rule TVM itself registers is left alone.
"""

import tvm

POOL_RULES = ("pool_max", "pool_avg", "adaptive_pool_max", "adaptive_pool_avg")
# ApplyCustomRule tries the target's keys in order: aarch64 targets have ("arm_cpu", "cpu").
TARGET_KEYS = ("cpu", "cuda")


def _to_default_rules(sch, block):
    sch.unannotate(block, "schedule_rule")
    return [sch]


def register() -> None:
    for key in TARGET_KEYS:
        for rule in POOL_RULES:
            name = f"s_tir.meta_schedule.{key}.meta_schedule.{rule}"
            if tvm.get_global_func(name, allow_missing=True) is None:
                tvm.register_global_func(name, _to_default_rules)


register()
