"""Progress of a tuning job: one line per measured batch, with the task's best latency so far, and
one line for each kind of run failure (a device that stopped answering, a timeout) when it first
shows: failed candidates are recorded as failed runs, so a resumed job does not measure them again."""

import statistics
import sys
import time
from dataclasses import dataclass

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

from ..errors import one_line
from .search import run_times


@dataclass
class TaskProgress:
    name: str
    recorded: int = 0  # trials in the log before this job
    measured: int = 0  # trials measured by this job
    failed: int = 0  # of those, failed builds or runs (a device that dropped out, a timeout)
    best_seconds: float | None = None

    def observe(self, seconds: float | None) -> None:
        self.measured += 1
        if seconds is None:
            self.failed += 1
        elif self.best_seconds is None or seconds < self.best_seconds:
            self.best_seconds = seconds

    @property
    def best_ms(self) -> float | None:
        return None if self.best_seconds is None else self.best_seconds * 1e3


def _median_seconds(run_secs) -> float | None:
    seconds = run_times(run_secs)
    return None if seconds is None else statistics.median(seconds)


def result_seconds(builder_result, runner_result) -> float | None:
    """The median run time of a candidate measured now, None when it failed to build or run."""
    if builder_result.error_msg or runner_result.error_msg:
        return None
    return _median_seconds(runner_result.run_secs)


def recorded_seconds(record) -> float | None:
    """The median run time of a database record, None for a recorded failure."""
    return _median_seconds(record.run_secs)


def time_shares(progress: list[TaskProgress], weights: list[float]) -> list["float | None"]:
    """Each task's share of the model's time (weight x best latency), None where unknown."""
    spent = [None if task.best_seconds is None else weight * task.best_seconds for task, weight in zip(progress, weights)]
    total = sum(x for x in spent if x is not None)
    return [None if x is None or not total else x / total for x in spent]


@derived_object
class ProgressPrinter(PyMeasureCallback):
    """Prints `[tune] 48/100 trials, 60 s | task 2/5 fused_conv2d (41% of the model): +16 (3 failed), 32 in log, best 0.123 ms`."""

    def __init__(self, tasks: list[TaskProgress], weights: list[float], budget: int, stream=None, estimated: bool = False):
        self.tasks = tasks
        self.estimated = estimated  # the times are estimates: every best says so
        self.weights = weights
        self.budget = budget
        self.stream = stream if stream is not None else sys.stdout
        self.started = time.monotonic()
        self.run_errors: dict = {}  # first line of a run error -> how many candidates it failed

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        task = self.tasks[task_id]
        failed_before = task.failed
        for built, ran in zip(builder_results, runner_results):
            task.observe(result_seconds(built, ran))
            if ran.error_msg and not built.error_msg:
                self._run_error(one_line(RuntimeError(str(ran.error_msg)), limit=200))
        done = sum(t.measured for t in self.tasks)
        best = "none yet" if task.best_ms is None else f"{task.best_ms:.4f} ms{' (estimated)' if self.estimated else ''}"
        failed = task.failed - failed_before
        share = time_shares(self.tasks, self.weights)[task_id]
        print(
            f"[tune] {done}/{self.budget} trials, {time.monotonic() - self.started:.0f} s | "
            f"task {task_id + 1}/{len(self.tasks)} {task.name}"
            f"{'' if share is None else f' ({100 * share:.0f}% of the model)'}: +{len(runner_results)}"
            f"{f' ({failed} failed)' if failed else ''}, {task.recorded + task.measured} in log, best {best}",
            file=self.stream,
            flush=True,
        )

    def _run_error(self, message: str) -> None:
        if message not in self.run_errors:
            where, goes_on = (("be estimated", "the job goes on") if self.estimated else
                              ("run on the device", "the job goes on, with the other devices if a tracker has several"))
            print(f"[tune] a candidate failed to {where}: {message} (recorded as failed; {goes_on})",
                  file=self.stream, flush=True)
        self.run_errors[message] = self.run_errors.get(message, 0) + 1
