"""Resume without re-measuring: evolutionary search that skips candidates the database already holds.

MetaSchedule's EvolutionarySearch only remembers what it measured in the current run (its own
source says "TODO: add records from the database to avoid re-measuring"), so a resumed job would
spend trials on schedules it already timed. This wrapper replays the task's recorded traces once,
drops any generated candidate whose scheduled module matches one of them, and warms the cost
model with the recorded latencies so a resumed search continues from what it knew.
"""

from tvm_ffi import structural_hash
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.runner import RunnerResult
from tvm.s_tir.meta_schedule.search_strategy import EvolutionarySearch, PySearchStrategy

# Rounds in a row in which every generated candidate was already recorded before the task is
# considered exhausted (the inner search would otherwise keep proposing the same schedules).
MAX_ALL_RECORDED_ROUNDS = 3
FAILED_RUN_SECS = 1e9  # MetaSchedule records a failed build/run as 1e10 seconds


def recorded_records(database, mod) -> list:
    """Every record (failed ones included) of the workload `mod` in the database."""
    workload = database.commit_workload(mod)
    return [record for record in database.get_all_tuning_records() if record.workload.same_as(workload)]


@derived_object
class SkipRecordedSearch(PySearchStrategy):
    """EvolutionarySearch that never sends a recorded candidate to the builder and runner."""

    def __init__(self, inner=None, counts=None):
        self.inner = inner if inner is not None else EvolutionarySearch()
        # Shared with clones (TuneContext clones its strategy), so the job can report the total.
        self.counts = counts if counts is not None else {"skipped": 0}
        self.context = None
        self.recorded: set[int] = set()

    def _initialize_with_tune_context(self, context) -> None:
        self.context = context
        self.inner._initialize_with_tune_context(context)

    def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None) -> None:
        self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)
        candidates, results = [], []
        for record in recorded_records(database, self.context.mod):
            candidate = record.as_measure_candidate()
            self.recorded.add(structural_hash(candidate.sch.mod))
            run_secs = [float(x) for x in (record.run_secs or [])]
            if run_secs and max(run_secs) < FAILED_RUN_SECS:
                candidates.append(candidate)
                results.append(RunnerResult(run_secs, None))
        if candidates and cost_model is not None:
            cost_model.update(self.context, candidates, results)

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self):
        for _ in range(MAX_ALL_RECORDED_ROUNDS):
            batch = self.inner.generate_measure_candidates()
            if batch is None:
                return None
            fresh = []
            for candidate in batch:
                key = structural_hash(candidate.sch.mod)
                if key in self.recorded:
                    self.counts["skipped"] += 1
                else:
                    self.recorded.add(key)
                    fresh.append(candidate)
            if fresh:
                return fresh
        return None

    def notify_runner_results(self, measure_candidates, results) -> None:
        self.inner.notify_runner_results(measure_candidates, results)

    def clone(self):
        return SkipRecordedSearch(self.inner.clone(), self.counts)
