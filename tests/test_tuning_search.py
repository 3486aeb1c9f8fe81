"""Resume without re-measuring: a recorded candidate is never sent to be measured again."""

import pytest
import tvm
from tvm import te
from tvm.s_tir import meta_schedule as ms
from tvm_ffi import structural_hash

from wrpn_tvm.targets import resolve
from wrpn_tvm.tuning.search import SkipRecordedSearch


def _matmul():
    a = te.placeholder((16, 16), name="A")
    k = te.reduce_axis((0, 16), name="k")
    c = te.compute((16, 16), lambda i, j: te.sum(a[i, k] * a[k, j], axis=k), name="C")
    return tvm.IRModule({"main": te.create_prim_func([a, c])})


def _search(mod, target, counts):
    """A fresh search with a fixed seed: it proposes the same candidates first every time."""
    context = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply",
                             search_strategy=SkipRecordedSearch(ms.search_strategy.ReplayTrace(), counts),
                             task_name="matmul", rand_state=7, num_threads=1)
    return context, context.generate_design_space()


@pytest.mark.usefixtures("tensor_intrinsics")
def test_a_resumed_search_skips_what_the_database_holds():
    mod, target = _matmul(), resolve("host").target
    database = ms.database.MemoryDatabase()
    counts = {"skipped": 0}
    context, spaces = _search(mod, target, counts)
    context.search_strategy.pre_tuning(64, 8, spaces, database, ms.cost_model.RandomModel())
    first = context.search_strategy.generate_measure_candidates()
    workload = database.commit_workload(mod)
    for candidate in first:
        database.commit_tuning_record(ms.database.TuningRecord(candidate.sch.trace, workload, [1e-3], target,
                                                               candidate.args_info))
    context.search_strategy.post_tuning()
    recorded = {structural_hash(candidate.sch.mod) for candidate in first}

    resumed, spaces = _search(mod, target, counts)
    resumed.search_strategy.pre_tuning(64, 8, spaces, database, ms.cost_model.RandomModel())
    second = resumed.search_strategy.generate_measure_candidates() or []
    assert counts["skipped"] > 0  # the same seed proposed recorded candidates again...
    assert not recorded & {structural_hash(candidate.sch.mod) for candidate in second}  # ...and none was sent
