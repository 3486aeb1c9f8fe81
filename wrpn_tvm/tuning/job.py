"""A tuning job: tune a model's tasks into a log dir, resuming whatever the dir already holds.

`--trials N` is the job's total: trials already recorded for the model's tasks count toward it,
so re-running an interrupted job finishes it, and a larger N tunes further; `max_minutes` ends the
job earlier, after the batches in flight, as Ctrl-C does (stop.py). Every measured
candidate is appended to the log soon after its batch is measured (MetaSchedule's JSONDatabase
writes line by line), so an interrupted job loses at most the batches in flight. With `estimate`,
candidates for a Raspberry Pi are ranked by their estimated time instead (estimate_runner.py).
A log holds run times taken one way only (log_timing.py).
"""

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import WrpnError
from ..estimate import calibration, calibration_line
from ..kernel_kinds import AUTO
from ..remote.session import DeviceSpec
from ..targets import TargetSpec, resolve
from .database import has_records, open_database
from .log_timing import ESTIMATED, check_timing, mark_estimated, mark_timing
from .estimate_runner import EstimateRunner, board_for, check_tools
from .lock import exclusive
from .progress import ProgressPrinter, TaskProgress, recorded_seconds
from .scheduler import GainScheduler
from .builder import make_builder
from .intrinsics import import_tensor_intrinsics
from .confirm import Confirmation, confirm_leaders
from . import rules  # noqa: F401 - registers rules for TVM's pooling annotations before any design space
from .measure import check_device, make_runner, timing_of
from .search import SkipRecordedSearch, recorded_records
from .stop import StopRequest, stop_on_interrupt
from .tasks import extract_tasks

TRIALS_PER_BATCH = 16  # candidates measured between database writes, and the most an interrupt loses


@dataclass
class TuneResult:
    log_dir: Path
    target: str
    device: str
    trials: int  # the job's total, as asked
    measured: int  # trials measured by this run
    skipped_recorded: int  # generated candidates not measured because the log held them
    seconds: float
    tasks: list[TaskProgress] = field(default_factory=list)
    estimated: bool = False  # run times are estimates (`--estimate`), not measurements
    stopped: str | None = None  # why the job ended before its trials: "interrupted", "time budget spent"
    run_errors: dict = field(default_factory=dict)  # first line of a run error -> candidates it failed
    confirmations: list[Confirmation] = field(default_factory=list)  # tasks whose leading records were timed again


def tune(
    program: "str | os.PathLike",
    target: "str | TargetSpec" = "host",
    trials: int = 64,
    log_dir: "str | os.PathLike" = "tuning_log",
    device: DeviceSpec | None = None,
    seed: int | None = None,
    trials_per_batch: int = TRIALS_PER_BATCH,
    max_minutes: float | None = None,
    stream=None,
    estimate: bool = False,
    kernels: str = "auto",
    confirm_only: bool = False,
) -> TuneResult:
    """Tune a `.pt2` program's tasks (bit-serial, int8-dot where the target has an int8 dot
    product, and FP32) for a target into log_dir, timing the candidates on `device` (this machine
    by default), or, with `estimate`, ranking them by their estimated time on the target's
    Raspberry Pi (no device). With `kernels` "auto" both kernels of a quantized conv are tuned, so
    that a build with the log runs each layer on the faster one; "bit-serial" or "int8-dot" tunes
    the lowering with that kernel wherever it applies. `confirm_only`: no search, only the
    re-timing of each task's leading records that ends a job (`confirm.py`)."""
    from ..pipeline import import_program, kernel_variants, lower_module

    spec = resolve(target)
    device = device if device is not None else DeviceSpec()
    # these two before the slow import of the model
    check_timing(Path(log_dir), has_records(log_dir), _job_timing(spec, estimate))
    _check_device(spec, device, estimate)
    # With "auto", the cost model's own mix as well: an int8 conv followed by a bit-serial one is a
    # function of its own (one followed by an int8 conv computes that conv's input pack too).
    variants = kernel_variants(spec) if kernels == AUTO else (kernels,)
    variants = (*variants, AUTO) if len(variants) > 1 else variants
    imported, _ = import_program(program)
    mods = [lower_module(imported, spec, variant)[0] for variant in variants]
    return tune_module(mods, spec, trials, log_dir, device, seed=seed, trials_per_batch=trials_per_batch,
                       max_minutes=max_minutes, stream=stream, estimate=estimate, confirm_only=confirm_only)


def _job_timing(spec: TargetSpec, estimate: bool) -> str:
    """How the job's run times are taken (log_timing's kinds)."""
    return ESTIMATED if estimate else timing_of(spec)


def _check_device(spec: TargetSpec, device: DeviceSpec, estimate: bool) -> None:
    """Refuse what cannot time spec's candidates: a host that cannot run them, an estimate with a device named."""
    if not estimate:
        check_device(spec, device)
        return
    if not device.is_local:
        raise WrpnError("--estimate runs nothing on a device: drop --rpc/--tracker, or drop --estimate to measure on it")
    board_for(spec)
    check_tools()


def tune_module(
    mod,
    spec: TargetSpec,
    trials: int,
    log_dir: "str | os.PathLike",
    device: DeviceSpec | None = None,
    *,
    seed: int | None = None,
    trials_per_batch: int = TRIALS_PER_BATCH,
    max_minutes: float | None = None,
    stream=None,
    estimate: bool = False,
    confirm_only: bool = False,
) -> TuneResult:
    """Tune the tasks of a Relax module (or of several lowerings of one model); the library function under `tune`."""
    return tune_tasks(extract_tasks(mod, spec), spec, trials, log_dir, device, seed=seed,
                      trials_per_batch=trials_per_batch, max_minutes=max_minutes, stream=stream, estimate=estimate,
                      confirm_only=confirm_only)


def tune_tasks(
    tasks: list,
    spec: TargetSpec,
    trials: int,
    log_dir: "str | os.PathLike",
    device: DeviceSpec | None = None,
    *,
    seed: int | None = None,
    trials_per_batch: int = TRIALS_PER_BATCH,
    max_minutes: float | None = None,
    stream=None,
    estimate: bool = False,
    confirm_only: bool = False,
) -> TuneResult:
    """Tune MetaSchedule ExtractedTasks (from tasks.extract_tasks, or a chosen few of them); with
    `confirm_only`, only time each task's leading records in the log again."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.utils import fork_seed

    if trials < 1:
        raise WrpnError(f"--trials must be at least 1, got {trials}")
    if trials_per_batch < 1:
        raise WrpnError(f"--trials-per-batch must be at least 1, got {trials_per_batch}")
    if max_minutes is not None and max_minutes <= 0:
        raise WrpnError(f"--max-minutes must be positive, got {max_minutes}")
    if confirm_only and estimate:
        raise WrpnError("--confirm-only times records again on a device; estimates do not vary: drop --estimate")
    device = device if device is not None else DeviceSpec()
    if estimate:  # (make_runner checks a device itself)
        _check_device(spec, device, estimate)
        board = board_for(spec)
        runner = EstimateRunner(board, board.cores)
        timed_on = runner.describe()
    else:
        runner, timed_on = make_runner(spec, device), device.describe()
    stream = stream if stream is not None else sys.stdout
    log_dir = Path(log_dir)
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WrpnError(f"cannot create the log dir {log_dir}: {err.strerror}") from None
    started = time.monotonic()
    with exclusive(log_dir):
        timing = _job_timing(spec, estimate)
        database = open_database(log_dir, spec, timing)
        if not tasks:
            raise WrpnError("the model has no tunable tasks")
        if estimate:
            mark_estimated(log_dir, board, runner.threads, calibration_line(calibration()))
        else:
            mark_timing(log_dir, timing)
        progress = [_task_progress(task.task_name, recorded_records(database, task.dispatched[0])) for task in tasks]
        already = sum(task.recorded for task in progress)
        budget = trials - already
        result = TuneResult(log_dir, spec.name, timed_on, trials, 0, 0, 0.0, progress, estimated=estimate)
        if confirm_only:
            print(f"[tune] {len(tasks)} tasks for {spec.name} on {timed_on}: timing the leading records in "
                  f"{log_dir} again, no new trials", file=stream, flush=True)
            with spec.target:
                result.confirmations = _confirm(log_dir, tasks, make_builder(spec), runner, spec, progress, stream)
            if not result.confirmations:
                print(f"[tune] no task has two valid records in {log_dir}: nothing to time again", file=stream, flush=True)
            result.seconds = time.monotonic() - started
            return result
        if budget <= 0:
            print(f"[tune] {log_dir} already holds {already} trials for these {len(tasks)} tasks (asked {trials}); "
                  "nothing to do", file=stream, flush=True)
            result.seconds = time.monotonic() - started
            return result
        print(f"[tune] {len(tasks)} tasks for {spec.name} on {timed_on}: {budget} trials "
              f"({already} already in {log_dir})", file=stream, flush=True)
        skip_counts = {"skipped": 0, "left": budget}  # shared by the tasks' search strategies
        stop = StopRequest(None if max_minutes is None else max_minutes * 60)
        weights = [float(task.weight) for task in tasks]
        printer = ProgressPrinter(progress, weights, budget, stream, estimated=estimate)
        builder = make_builder(spec)
        import_tensor_intrinsics()  # before the TuneContexts below, which would import them slowly
        # Under the target, so that a template's tuning rule (which MetaSchedule hands only a schedule
        # and a block) can read the ISA off Target.current().
        with spec.target, task_loggers(log_dir, [task.task_name for task in tasks]) as loggers, \
                stop_on_interrupt(stop, stream):
            contexts = [
                ms.TuneContext(
                    mod=task.dispatched[0],
                    target=spec.target,
                    space_generator="post-order-apply",
                    search_strategy=SkipRecordedSearch(counts=skip_counts, stop=stop),
                    task_name=task.task_name,
                    logger=logger,
                    rand_state=rand_state,
                    num_threads="physical",
                ).clone()
                for task, logger, rand_state in zip(tasks, loggers, fork_seed(seed, n=len(tasks)))
            ]
            ms.tune_tasks(
                tasks=contexts,
                task_weights=weights,
                work_dir=str(log_dir),
                max_trials_global=budget,
                num_trials_per_iter=min(trials_per_batch, budget),
                builder=builder,
                runner=runner,
                database=database,
                cost_model="xgb",
                measure_callbacks=ms.MeasureCallback.create("default") + [printer],
                task_scheduler=GainScheduler(progress, weights, min(trials_per_batch, budget)),
            )
            if not estimate and stop.reason != "interrupted":
                result.confirmations = _confirm(log_dir, tasks, builder, runner, spec, progress, stream)
        result.measured = sum(task.measured for task in progress)
        result.skipped_recorded = skip_counts["skipped"]
        result.stopped = stop.reason
        result.run_errors = dict(printer.run_errors)
        result.seconds = time.monotonic() - started
        return result


@contextlib.contextmanager
def task_loggers(log_dir: Path, names: list[str]):
    """One DEBUG file logger per task in DIR/logs/ for MetaSchedule's detailed log; nothing on the console.

    (MetaSchedule's own get_loggers_from_work_dir reconfigures global logging and fails when
    called a second time in a process that has an unnamed handler, e.g. under pytest.)
    """
    directory = log_dir / "logs"
    directory.mkdir(exist_ok=True)
    attached = []
    formatter = logging.Formatter("%(asctime)s [%(levelname)s] %(message)s")
    try:
        for index, name in enumerate(names):
            label = f"task_{index:02d}_{name[:100]}"
            logger = logging.getLogger(f"wrpn_tvm.tuning.{label}")
            handler = logging.FileHandler(directory / f"{label}.log")
            handler.setFormatter(formatter)
            logger.addHandler(handler)
            logger.setLevel(logging.DEBUG)
            logger.propagate = False
            attached.append((logger, handler))
        yield [logger for logger, _ in attached]
    finally:
        for logger, handler in attached:
            logger.removeHandler(handler)
            handler.close()


def _confirm(log_dir: Path, tasks: list, builder, runner, spec: TargetSpec, progress: list[TaskProgress], stream):
    """Time each task's leading records again (confirm.py) and report what changed."""
    started = time.monotonic()
    confirmations = confirm_leaders(log_dir, tasks, builder, runner, "cuda" if spec.is_cuda else "cpu")
    if not confirmations:
        return confirmations
    confirmed = {confirmation.task: confirmation for confirmation in confirmations}
    for task in progress:
        if task.name in confirmed:
            task.best_seconds = confirmed[task.name].after_ms / 1e3
    print(f"[tune] timed the leading records of {len(confirmations)} tasks again "
          f"({sum(c.retimed for c in confirmations)} records, {time.monotonic() - started:.0f} s)", file=stream, flush=True)
    for confirmation in confirmations:
        print(f"[tune]   {confirmation.task}: best {confirmation.before_ms:.4f} -> {confirmation.after_ms:.4f} ms"
              f"{' (another record leads)' if confirmation.leader_changed else ''}"
              f"{'' if confirmation.confirmed else ' (led by a record not timed again: its re-timing failed or passes ran out)'}",
              file=stream, flush=True)
    return confirmations


def _task_progress(name: str, records) -> TaskProgress:
    task = TaskProgress(name, recorded=len(records))
    times = [seconds for seconds in map(recorded_seconds, records) if seconds is not None]
    task.best_seconds = min(times, default=None)
    return task
