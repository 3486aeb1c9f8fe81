"""Which task gets the next batch of trials: the one expected to cut the model's latency most.

A task's share of the model's time is its weight (calls per inference) times its best latency so
far; each task's first visit measures only its template default (search.SkipRecordedSearch), so
every share is known after one trial per task. From then on a batch goes to the task with the
largest expected gain, share x expected relative improvement per batch, where the improvement is
the larger of what its last batches achieved and an optimistic prior that shrinks as the task
gets trials (Ansor's gradient scheduler, simplified). A resumed job reads the shares and trial
counts from the log, so it continues where it stopped instead of starting again at task 1.

Each batch is joined (measured and written to the log) before the next task is chosen, so an
interrupt loses at most the batch in flight.
"""

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler

from .progress import TaskProgress

WINDOW = 2  # batches over which a task's recent improvement is measured
OPTIMISM = 0.5  # expected relative improvement of a task's first batch after its default


@derived_object
class GainScheduler(PyTaskScheduler):
    def __init__(self, progress: list[TaskProgress], weights: list[float], trials_per_batch: int):
        super().__init__()
        self.progress = progress  # updated by the ProgressPrinter callback as batches are joined
        self.weights = weights
        self.trials_per_batch = trials_per_batch
        self.history: list[list[float]] = [[] for _ in progress]  # best seconds after each batch of this job
        self.running: "int | None" = None

    def next_task_id(self) -> int:
        tasks = self._outer().tasks_
        if self.running is not None:
            if not tasks[self.running].is_terminated:
                self.join_running_task(self.running)
            best = self.progress[self.running].best_seconds
            if best is not None:
                self.history[self.running].append(best)
            self.running = None
        live = [index for index, task in enumerate(tasks) if not task.is_terminated]
        if not live:
            return -1
        untouched = [index for index in live if self.progress[index].recorded + self.progress[index].measured == 0]
        self.running = untouched[0] if untouched else max(live, key=self.expected_gain)
        return self.running

    def expected_gain(self, index: int) -> float:
        """Expected seconds cut from one inference by the task's next batch."""
        task = self.progress[index]
        if task.best_seconds is None:  # every trial failed: nothing to improve on
            return 0.0
        trials = task.recorded + task.measured
        prior = OPTIMISM * self.trials_per_batch / (self.trials_per_batch + trials)
        history = self.history[index]
        recent = 0.0
        if len(history) > 1:
            start = history[max(0, len(history) - 1 - WINDOW)]
            recent = (start - history[-1]) / start / min(WINDOW, len(history) - 1)
        return self.weights[index] * task.best_seconds * max(prior, recent)

