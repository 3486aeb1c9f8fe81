"""Tuning benchmark: ResNet-18 2x a2w2 tuned for a time budget, then by the same search to FACTOR x
its trials; per-kernel and end-to-end latency against the untuned template defaults.

Two steps, so the long one survives an interrupted session (each phase resumes from its log):

  python benchmarks/tuning.py run --minutes 30 --factor 4 --work /var/tmp/wrpn-tuning-bench
  python benchmarks/tuning.py report --work /var/tmp/wrpn-tuning-bench

`run`: phase "budget" tunes every task of ResNet-18 (2x wide, 2-bit activations and weights,
3x224x224, batch 1) on this host for --minutes of tuning time and records its N trials; phase
"long" copies that log and resumes the same search to FACTOR x N trials in total (a budget in
trials, so the comparison does not depend on how loaded the machine was during the long phase).
`report`: compiles the model untuned, with the budget log and with the long log, times each
(medians of repeated runs, in one process, one after another), and reads per-kernel results
from the logs: every task's first record is its template default (the tuner measures it first),
so each kernel's tuned-vs-default gain comes from the same measurement harness.

Writes benchmarks/results/tuning.{json,md,png}.

A third step measures what a short job reaches with the task scheduler (wrpn_tvm/tuning/scheduler.py):

  python benchmarks/tuning.py short --trials 60 --minutes 30 --work /var/tmp/wrpn-tuning-short

tunes ResNet-18 2x a2w2 for exactly --trials trials from an empty log (and, with --minutes, for that
much tuning time from another), then times untuned, those builds and the build with the full search's
log round-robin, and reports the share of the full search's end-to-end gain each short job reached
(benchmarks/results/tuning_short.{json,md}). The full search is the shipped log (over 4x the
30-minute budget, tuned on the CPU its README names), or --full: a longer search of the same model
on this machine (e.g. the 30-minute job's log copied and resumed with `wrpn-tvm tune`).
"""

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
PROGRAM = "resnet18-2x-a2w2.pt2"
EXPORT = dict(model_name="resnet18", width=2.0, abits=2, wbits=2, in_channels=3, num_classes=1000, seed=0)
# A log, as a resumed copy needs it: MetaSchedule's database and how its times were taken.
LOG_FILES = ("database_workload.json", "database_tuning_record.json", "timing.json")
# Every conv bit-serial, in tuning and timing alike: the benchmark measures how a search spends its
# trials on one lowering, and the shipped full search it compares with was tuned on this one.
KERNELS = "bit-serial"


def _loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def run_phases(args) -> None:
    from wrpn_tvm.nn import export
    from wrpn_tvm.tuning import tune

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    program = work / PROGRAM
    if not program.exists():
        export(output=program, **EXPORT)
    phases_path = work / "phases.json"
    phases = json.loads(phases_path.read_text()) if phases_path.exists() else {}

    if "budget" not in phases:
        result = tune(program, "host", trials=10**6, log_dir=work / "budget", seed=0,
                      trials_per_batch=args.trials_per_batch, kernels=KERNELS, max_minutes=args.minutes)
        phases["budget"] = {"minutes": args.minutes, "measured": result.measured, "seconds": result.seconds,
                            "stopped": result.stopped, "load_average_after": _loadavg()}
        phases_path.write_text(json.dumps(phases, indent=2))

    long_dir = work / "long"
    if not long_dir.exists():
        long_dir.mkdir()
        for name in LOG_FILES:
            shutil.copy(work / "budget" / name, long_dir / name)
    trials = args.factor * phases["budget"]["measured"]
    started = time.monotonic()
    result = tune(program, "host", trials=trials, log_dir=long_dir, seed=1, trials_per_batch=args.trials_per_batch,
                  kernels=KERNELS)
    previous = phases.get("long", {"measured": 0, "seconds": 0.0})
    phases["long"] = {"factor": args.factor, "trials": trials, "measured": previous["measured"] + result.measured,
                      "seconds": previous["seconds"] + (time.monotonic() - started), "stopped": result.stopped,
                      "load_average_after": _loadavg()}
    phases_path.write_text(json.dumps(phases, indent=2))


def task_table(work: Path, spec, budget_records: int) -> tuple[list[dict], list]:
    """Per task: name, weight, template default, best within the budget, best after the long phase.

    Also returns the estimated model latency (sum of weight x best so far, ms) after each trial of
    the long log, once every task has a record (None before)."""
    from tvm_ffi import structural_equal, structural_hash

    from wrpn_tvm.pipeline import prepare_module
    from wrpn_tvm.tuning.database import read_log
    from wrpn_tvm.tuning.progress import recorded_seconds
    from wrpn_tvm.tuning.search import default_candidate
    from wrpn_tvm.tuning.tasks import extract_tasks

    tasks = extract_tasks(prepare_module(work / PROGRAM, spec, KERNELS)[0], spec)
    log = read_log(work / "long")
    owner = {}  # workload index in the log -> task index
    for index, workload in enumerate(log.workloads):
        for task_index, task in enumerate(tasks):
            if structural_equal(workload.mod, task.dispatched[0]):
                owner[index] = task_index
    rows = [{"task": task.task_name, "weight": int(task.weight), "default_ms": None, "trials_budget": 0,
             "trials_long": 0, "best_budget_ms": None, "best_long_ms": None} for task in tasks]
    defaults = {}
    for task_index, task in enumerate(tasks):
        candidate = default_candidate(task.dispatched[0], spec.target)
        defaults[task_index] = None if candidate is None else structural_hash(candidate.sch.mod)
    best = [None] * len(tasks)
    curve = []
    for position, (index, record) in enumerate(log.records):
        task_index = owner[index]
        row = rows[task_index]
        seconds = recorded_seconds(record)
        ms = None if seconds is None else seconds * 1e3
        if row["trials_long"] == 0 and defaults[task_index] is not None:
            if structural_hash(record.as_measure_candidate().sch.mod) == defaults[task_index]:
                row["default_ms"] = ms
        row["trials_long"] += 1
        if ms is not None and (best[task_index] is None or ms < best[task_index]):
            best[task_index] = ms
        row["best_long_ms"] = best[task_index]
        if position < budget_records:
            row["trials_budget"] += 1
            row["best_budget_ms"] = best[task_index]
        complete = all(value is not None for value in best)
        curve.append(sum(r["weight"] * b for r, b in zip(rows, best)) if complete else None)
    return rows, curve


def time_builds(work: Path, spec, repeat: int, logs=None, processes: int = 1) -> dict:
    """End-to-end times (ms) of the untuned and tuned builds (name -> log dir).

    Each build is compiled once into WORK/builds/, then timed in `processes` fresh processes, each
    loading every build (in a rotated order) and timing `repeat` rounds of one run (at least 200 ms
    of inferences) per build, round-robin, so that another virtual machine's bursts slow every build
    alike. Several processes, because where a process's allocator happens to put a model's weights
    moves its time by more than tuning gains on this VM: three processes timing the same four
    ResNet-18 builds gave untuned 38.9, 35.6 and 38.9 ms. A build's median_ms is the median of all its
    runs; process_medians keep each process's own."""
    from wrpn_tvm.pipeline import build_module, prepare_module
    from wrpn_tvm.tuning import load_database

    mod, _layers, inputs = prepare_module(work / PROGRAM, spec, KERNELS)
    libraries = {}
    logs = logs if logs is not None else {"budget": work / "budget", "long": work / "long"}
    (work / "builds").mkdir(exist_ok=True)
    for name, log in (("untuned", None), *logs.items()):
        libraries[name] = str(work / "builds" / f"{''.join(c if c.isalnum() else '-' for c in name)}.so")
        build_module(mod, spec, None if log is None else load_database(log, spec)).export_library(libraries[name])
    runs = {name: [] for name in libraries}
    process_medians = {name: [] for name in libraries}
    names = list(libraries)
    for process in range(processes):
        order = names[process % len(names):] + names[:process % len(names)]
        request = json.dumps({"libraries": {name: libraries[name] for name in order}, "repeat": repeat,
                              "shape": [int(x) for x in inputs[0].shape]})
        done = subprocess.run([sys.executable, __file__, "time-libraries", request], check=True,
                              capture_output=True, text=True)
        timed = json.loads(done.stdout.strip().splitlines()[-1])
        for name, values in timed.items():
            runs[name] += values
            process_medians[name].append(statistics.median(values))
    return {name: {"ms": values, "median_ms": statistics.median(values), "process_medians": process_medians[name]}
            for name, values in runs.items()}


def time_libraries(request: str) -> None:
    """One timing process of time_builds: prints {name: [ms per run]} as its last line."""
    import tvm
    from tvm import relax

    request = json.loads(request)
    data = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(request["shape"]).astype("float32"))
    evaluators = {}
    for name, library in request["libraries"].items():
        vm = relax.VirtualMachine(tvm.runtime.load_module(library), tvm.cpu())
        vm.set_input("main", data)
        vm["invoke_stateful"]("main")  # warm-up
        evaluators[name] = vm.time_evaluator("invoke_stateful", tvm.cpu(), number=1, repeat=1, min_repeat_ms=200)
    runs = {name: [] for name in evaluators}
    for _ in range(request["repeat"]):
        for name, evaluator in evaluators.items():
            runs[name] += [float(x) * 1e3 for x in evaluator("main").results]
    print(json.dumps(runs))


def machine() -> dict:
    import torch
    import tvm

    from wrpn_tvm.targets import host_cpu

    return {"cpu": host_cpu(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "tvm": tvm.__version__, "torch": torch.__version__,
            "load_average_at_end": _loadavg(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def write_report(args) -> None:
    from wrpn_tvm.targets import resolve

    spec = resolve("host")
    phases = json.loads((args.work / "phases.json").read_text())
    budget, long = phases["budget"], phases["long"]
    rows, curve = task_table(args.work, spec, budget["measured"])
    timings = time_builds(args.work, spec, args.repeat, processes=args.processes)
    result = {
        "command": "python benchmarks/tuning.py " + " ".join(sys.argv[1:]),
        "model": "resnet18 2x a2/w2, 3x224x224, batch 1, target host",
        "phases": phases,
        "trials_per_minute": {name: 60 * p["measured"] / p["seconds"] for name, p in phases.items()},
        "end_to_end": timings,
        "budget_speed_vs_long": timings["long"]["median_ms"] / timings["budget"]["median_ms"],
        "tasks": rows,
        "estimated_model_ms_by_trial": curve,
        "machine": machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    plot(result, args.out.with_suffix(".png"))
    print(args.out.with_suffix(".md").read_text())


def _ms(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(result: dict) -> str:
    phases, timings, m = result["phases"], result["end_to_end"], result["machine"]
    budget, long = phases["budget"], phases["long"]
    reached = budget["measured"] + long["measured"]
    multiple = f"{reached / budget['measured']:.1f}x"
    ratio = result["budget_speed_vs_long"]
    lines = [
        "# Tuning benchmark: ResNet-18 2x a2/w2 on the host",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores; TVM {m['tvm']}; {m['date_utc']} UTC. Command: `{result['command']}` "
        "(after `python benchmarks/tuning.py run ...`, see the script's docstring).",
        "",
        "## Budget against 4x the budget",
        "",
        "| search | trials | tuning time (min) | trials/min | end-to-end median (ms) |",
        "| --- | --- | --- | --- | --- |",
        f"| untuned (template defaults) | 0 | 0 | - | {timings['untuned']['median_ms']:.2f} |",
        f"| {budget['minutes']:g}-minute budget | {budget['measured']} | {budget['seconds'] / 60:.1f} | "
        f"{result['trials_per_minute']['budget']:.1f} | {timings['budget']['median_ms']:.2f} |",
        f"| same search to {reached / budget['measured']:.1f}x the trials | {reached} | "
        f"{(budget['seconds'] + long['seconds']) / 60:.1f} | {result['trials_per_minute']['long']:.1f} | "
        f"{timings['long']['median_ms']:.2f} |",
        "",
        f"Speed within the budget relative to {multiple} its trials: **{ratio:.2f}** (target, against 4x: at least 0.90: "
        f"{'met' if ratio >= 0.9 else 'missed'}). Speedup over untuned: {timings['untuned']['median_ms'] / timings['budget']['median_ms']:.2f}x "
        f"after the budget, {timings['untuned']['median_ms'] / timings['long']['median_ms']:.2f}x after {multiple}. "
        + (f"The long phase was stopped ({long['stopped']}) at {multiple} of the budget's trials, short of the "
           f"{long['factor']}x asked. " if long.get("stopped") else "") +
        f"End-to-end times are medians of {len(timings['long']['ms'])} timed runs per build, in "
        f"{len(timings['long']['process_medians'])} fresh processes that each time the three builds round-robin. "
        "Load average after the budget phase: "
        f"{' '.join(budget['load_average_after'])}; after the long phase: {' '.join(long['load_average_after'])}; "
        f"at the end of the report: {' '.join(m['load_average_at_end'])}.",
        "",
        "## Per kernel (the tuner's own measurements)",
        "",
        "Each task's template default is the first candidate the tuner measures, so default and tuned "
        "come from the same harness. Weight: how many times the model calls the kernel.",
        "",
        f"| task | weight | default (ms) | trials (budget) | best in budget (ms) | trials ({multiple}) | best at {multiple} (ms) | gain at {multiple} |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in sorted(result["tasks"], key=lambda r: -(r["weight"] * (r["default_ms"] or 0))):
        gain = "-" if not row["default_ms"] or not row["best_long_ms"] else f"{row['default_ms'] / row['best_long_ms']:.2f}x"
        lines.append(f"| {row['task']} | {row['weight']} | {_ms(row['default_ms'])} | {row['trials_budget']} | "
                     f"{_ms(row['best_budget_ms'])} | {row['trials_long']} | {_ms(row['best_long_ms'])} | {gain} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = result["estimated_model_ms_by_trial"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(curve) + 1), [np.nan if c is None else c for c in curve],
            label="sum over kernels of weight x best so far")
    default_total = sum(r["weight"] * r["default_ms"] for r in result["tasks"] if r["default_ms"] is not None)
    ax.axhline(default_total, color="gray", linestyle="--", label="template defaults (same sum)")
    ax.axvline(result["phases"]["budget"]["measured"], color="tab:red", linestyle=":",
               label=f"end of the {result['phases']['budget']['minutes']:g}-minute budget")
    ax.set_xlabel("trials")
    ax.set_ylabel("estimated model latency (ms)")
    ax.set_title("ResNet-18 2x a2/w2: tuning progress (tuner's measurements)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def short_job(args) -> None:
    """Tune exactly --trials from an empty log, and (with --minutes) for that much tuning time from another
    empty log; then time untuned, those builds and the full search (--full, or the shipped log) round-robin in one process."""
    from wrpn_tvm.nn import export
    from wrpn_tvm.runtime import MachineLoad
    from wrpn_tvm.targets import resolve
    from wrpn_tvm.tuning import tune
    from wrpn_tvm.tuning.shipped import resolve_log

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    program = work / PROGRAM
    if not program.exists():
        export(output=program, **EXPORT)
    jobs = {f"{args.trials} trials": (work / f"short-{args.trials}", dict(trials=args.trials), 0.7)}
    if args.minutes:
        jobs[f"{args.minutes:g} minutes"] = (work / f"short-{args.minutes:g}min",
                                             dict(trials=10**6, max_minutes=args.minutes), 0.95)
    # A finished job is not tuned again: re-running the step only times the builds again (e.g. on a
    # quieter machine), from the job summaries kept beside the logs.
    summaries_path = work / "short-jobs.json"
    tuned = json.loads(summaries_path.read_text()) if summaries_path.exists() else {}
    for name, (log_dir, budget, _target) in jobs.items():
        if name in tuned:
            continue
        with MachineLoad() as tuning_load:
            result = tune(program, "host", log_dir=log_dir, seed=0, trials_per_batch=args.trials_per_batch,
                          kernels=KERNELS, **budget)
        tuned[name] = {"trials": sum(t.recorded + t.measured for t in result.tasks),
                       "tuning_seconds": result.seconds, "tuning_load": tuning_load.result,
                       "tasks": [{"task": t.name, "trials": t.recorded + t.measured, "best_ms": t.best_ms}
                                 for t in result.tasks],
                       "confirmed": [dataclasses.asdict(c) for c in result.confirmations]}
        summaries_path.write_text(json.dumps(tuned, indent=2))
    for name in list(tuned):
        if name not in jobs:
            del tuned[name]
    full = args.full or resolve_log("resnet18-2x-a2w2-x86-avx512")
    full_trials = len(Path(full, "database_tuning_record.json").read_text().splitlines())
    full_search = (f"{full}: a longer search on this machine" if args.full else
                   f"{full.name}: the shipped log, round-robin scheduler then gain-scheduler top-ups")
    with MachineLoad() as timing_load:
        timings = time_builds(work, resolve("host"), args.repeat,
                              {**{name: log_dir for name, (log_dir, _b, _t) in jobs.items()}, "full": full},
                              processes=args.processes)
    untuned, full_ms = timings["untuned"]["median_ms"], timings["full"]["median_ms"]
    for name, (_log, _budget, target) in jobs.items():
        tuned[name]["median_ms"] = timings[name]["median_ms"]
        tuned[name]["share_of_full_gain"] = ((untuned - timings[name]["median_ms"]) / (untuned - full_ms)
                                             if untuned > full_ms else None)
        tuned[name]["target_share"] = target
        tuned[name]["share_by_process"] = [
            (u - job) / (u - f) if u > f else None
            for u, job, f in zip(*(timings[build]["process_medians"] for build in ("untuned", name, "full")))]
    report = {
        "command": "python benchmarks/tuning.py " + " ".join(sys.argv[1:]),
        "model": "resnet18 2x a2/w2, 3x224x224, batch 1, target host",
        "trials_per_batch": args.trials_per_batch,
        "full_search": full_search,
        "end_to_end": timings, "jobs": tuned,
        "timing_load": timing_load.result, "machine": machine(),
    }
    out = args.out
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(short_markdown(report, untuned, full_ms, full_trials))
    print(out.with_suffix(".md").read_text())


def short_markdown(report: dict, untuned: float, full_ms: float, full_trials: int) -> str:
    m, timing = report["machine"], report["timing_load"]
    tuning = [job["tuning_load"] for job in report["jobs"].values()]
    loaded = timing["loaded"] or any(load["loaded"] for load in tuning)
    lines = ["# Short tuning jobs against the full search: ResNet-18 2x a2/w2 on the host", "",
             f"Machine: LLVM CPU {m['cpu']}, {m['cores']} cores; TVM {m['tvm']}; {m['date_utc']} UTC. "
             f"Command: `{report['command']}`. Other processes' CPU share while tuning "
             + ", ".join(f"{100 * load['others_cpu_share']:.0f}%" for load in tuning)
             + f" (per job), while timing {100 * timing['others_cpu_share']:.0f}%"
             + (" (a loaded machine: the figures are not clean)." if loaded else "."),
             "", "| build | trials | tuning (min) | end-to-end median (ms) | per process (ms) | share of the full search's gain "
             "| per process | target |",
             "| --- | ---: | ---: | ---: | --- | ---: | --- | --- |",
             f"| untuned (template defaults) | 0 | | {untuned:.2f} | {_per_process(report, 'untuned')} | | | |"]
    for name, job in report["jobs"].items():
        share = job["share_of_full_gain"]
        verdict = "" if share is None else ("met" if share >= job["target_share"] else "missed")
        shares = " ".join("-" if x is None else f"{100 * x:.0f}%" for x in job["share_by_process"])
        lines.append(f"| {name} from an empty log (gain scheduler) | {job['trials']} | {job['tuning_seconds'] / 60:.1f} | "
                     f"{job['median_ms']:.2f} | {_per_process(report, name)} | {'' if share is None else f'{100 * share:.0f}%'} | "
                     f"{shares} | >= {100 * job['target_share']:.0f}%: {verdict} |")
    lines += [f"| full search ({report['full_search']}) | {full_trials} | | {full_ms:.2f} | {_per_process(report, 'full')} "
              "| 100% | | |", ""]
    if untuned <= full_ms:
        lines += ["The full search is not faster than untuned in this run: no gain to share.", ""]
    runs = len(report["end_to_end"]["untuned"]["ms"])
    processes = len(report["end_to_end"]["untuned"]["process_medians"])
    lines += [f"End-to-end times: medians of {runs} timed runs per build (each at least 200 ms of inferences) in "
              f"{processes} fresh processes, each loading every build and timing them round-robin, a run each per "
              "round; the verdict is on the median of all runs, and each process's own medians and shares show the "
              "spread between processes.", ""]
    for name, job in report["jobs"].items():
        lines += [f"## Where the {name} went", "", "| task | trials | best (ms) |", "| --- | ---: | ---: |"]
        lines += [f"| {t['task']} | {t['trials']} | {_ms(t['best_ms'])} |" for t in job["tasks"]]
        lines.append("")
    return "\n".join(lines)


def _per_process(report: dict, build: str) -> str:
    return " ".join(f"{x:.1f}" for x in report["end_to_end"][build]["process_medians"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    run = sub.add_parser("run", help="tune: the time-budget phase, then the FACTOR x trials phase (resumable)")
    run.add_argument("--minutes", type=float, default=30.0)
    run.add_argument("--factor", type=int, default=4)
    run.add_argument("--trials-per-batch", type=int, default=8)
    run.add_argument("--work", type=Path, required=True)
    report = sub.add_parser("report", help="time untuned / budget / long builds and write the results")
    report.add_argument("--work", type=Path, required=True)
    report.add_argument("--repeat", type=int, default=15, help="timed repeats per build and process")
    report.add_argument("--processes", type=int, default=5, help="fresh timing processes (each times every build)")
    report.add_argument("--out", type=Path, default=RESULTS / "tuning")
    short = sub.add_parser("short", help="a job of exactly --trials against untuned and the shipped full search")
    short.add_argument("--trials", type=int, default=60)
    short.add_argument("--minutes", type=float, default=0.0,
                       help="also a job of this much tuning time from an empty log (0: none)")
    short.add_argument("--trials-per-batch", type=int, default=8)
    short.add_argument("--repeat", type=int, default=15, help="timed repeats per build and process")
    short.add_argument("--processes", type=int, default=5, help="fresh timing processes (each times every build)")
    short.add_argument("--work", type=Path, required=True)
    short.add_argument("--full", type=Path, help="the full search's log: a longer search of the same model on "
                       "this machine (default: the shipped log)")
    short.add_argument("--out", type=Path, default=RESULTS / "tuning_short")
    timing = sub.add_parser("time-libraries", help="(internal) one timing process of time_builds")
    timing.add_argument("request", help="JSON: libraries (name -> .so), repeat, input shape")
    args = parser.parse_args()
    if args.step == "time-libraries":
        time_libraries(args.request)
        return
    {"run": run_phases, "report": write_report, "short": short_job}[args.step](args)


if __name__ == "__main__":
    main()
