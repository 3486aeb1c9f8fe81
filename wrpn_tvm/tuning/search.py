"""Resume without re-measuring: evolutionary search that skips candidates the database already holds.

MetaSchedule's EvolutionarySearch only remembers what it measured in the current run (its own
source says "TODO: add records from the database to avoid re-measuring"), so a resumed job would
spend trials on schedules it already timed. This wrapper replays the task's recorded traces once,
drops any generated candidate whose scheduled module matches one of them, and warms the cost
model with the recorded latencies so a resumed search continues from what it knew.

Each task's first batch also carries the schedule an untuned compile would run (the template
default), so a task's best record is never one that is slower than not tuning at all, and the
log itself says how much tuning gained. A task with nothing in the log measures its default
alone first: one trial that tells the task scheduler the task's share of the model's time.
"""

from tvm_ffi import structural_hash
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.arg_info import ArgInfo
from tvm.s_tir.meta_schedule.runner import RunnerResult
from tvm.s_tir.meta_schedule.search_strategy import MeasureCandidate
from tvm.s_tir.meta_schedule.search_strategy import EvolutionarySearch, PySearchStrategy

# Rounds in a row in which every generated candidate was already recorded before the task is
# considered exhausted (the inner search would otherwise keep proposing the same schedules).
MAX_ALL_RECORDED_ROUNDS = 3
FAILED_RUN_SECS = 1e9  # MetaSchedule records a failed build/run as 1e10 seconds


def run_times(run_secs) -> "list[float] | None":
    """A candidate's run times in seconds, None when there are none or they record a failure."""
    seconds = [float(x) for x in (run_secs or [])]
    return None if not seconds or max(seconds) >= FAILED_RUN_SECS else seconds


def recorded_records(database, mod) -> list:
    """Every record (failed ones included) of the workload `mod` in the database."""
    workload = database.commit_workload(mod)
    return [record for record in database.get_all_tuning_records() if record.workload.same_as(workload)]


@derived_object
class SkipRecordedSearch(PySearchStrategy):
    """EvolutionarySearch that never sends a recorded candidate to the builder and runner."""

    def __init__(self, inner=None, counts=None, stop=None):
        self.inner = inner if inner is not None else EvolutionarySearch()
        self.stop = stop  # a StopRequest: when set, the task ends at its next turn
        # Shared with clones (TuneContext clones its strategy), so the job can report the total;
        # "left", where set, is the job's remaining trials: no batch is cut past it.
        self.counts = counts if counts is not None else {"skipped": 0}
        self.context = None
        self.recorded: set[int] = set()
        self.default = None  # the untuned default, until it is sent for measurement
        self.default_alone = False  # the task has no record: its first batch is the default alone
        self.inner_batch = False  # whether the batch out for measurement came from the inner search

    def _initialize_with_tune_context(self, context) -> None:
        self.context = context
        self.inner._initialize_with_tune_context(context)

    def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None) -> None:
        self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)
        candidates, results = [], []
        for record in recorded_records(database, self.context.mod):
            candidate = record.as_measure_candidate()
            self.recorded.add(structural_hash(candidate.sch.mod))
            run_secs = run_times(record.run_secs)
            if run_secs is not None:
                candidates.append(candidate)
                results.append(RunnerResult(run_secs, None))
        if candidates and cost_model is not None:
            cost_model.update(self.context, candidates, results)
        self.default = default_candidate(self.context.mod, self.context.target)
        if self.default is not None and structural_hash(self.default.sch.mod) in self.recorded:
            self.default = None
        self.default_alone = not self.recorded

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self):
        if self.stop is not None and self.stop.requested() or self.counts.get("left", 1) <= 0:
            return None
        if self.default is not None and self.default_alone:
            self.recorded.add(structural_hash(self.default.sch.mod))
            alone, self.default, self.inner_batch = [self.default], None, False
            return self._spend(alone)
        self.inner_batch = True
        for _ in range(MAX_ALL_RECORDED_ROUNDS):
            batch = self.inner.generate_measure_candidates()
            if batch is None:
                return None
            fresh = []
            if self.default is not None:
                # It takes the place of the batch's last candidate, so a batch keeps its size.
                fresh.append(self.default)
                self.recorded.add(structural_hash(self.default.sch.mod))
                self.default = None
                batch = list(batch)[:-1]
            for candidate in batch:
                key = structural_hash(candidate.sch.mod)
                if key in self.recorded:
                    self.counts["skipped"] += 1
                else:
                    self.recorded.add(key)
                    fresh.append(candidate)
            if fresh:
                return self._spend(fresh)
        return None

    def _spend(self, batch: list) -> list:
        if "left" in self.counts:
            batch = batch[: self.counts["left"]]
            self.counts["left"] -= len(batch)
        return batch

    def notify_runner_results(self, measure_candidates, results) -> None:
        if self.inner_batch:  # the inner search learns only from batches it proposed
            self.inner.notify_runner_results(measure_candidates, results)

    def clone(self):
        return SkipRecordedSearch(self.inner.clone(), self.counts, self.stop)


def default_candidate(mod, target):
    """The template default of a task as a MeasureCandidate; None where there is none to offer."""
    from ..pipeline import default_schedule

    try:
        sch = default_schedule(mod, target)
    except (RuntimeError, ValueError):  # the default does not fit this function's structure
        return None
    if sch is None:
        return None
    return MeasureCandidate(sch, ArgInfo.from_entry_func(sch.mod, remove_preproc=True))
