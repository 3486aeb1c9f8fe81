"""Tuning benchmark: latency against trials, untuned template default vs tuned, trials per minute.

Kernel part: one bit-serial conv2d task of ResNet-18 2x wide, 2-bit activations / 2-bit weights
(3x224x224 input, random weights: speed does not depend on their values). It is tuned with
`wrpn_tvm.tuning` to a budget of B trials, timed, then the same search is resumed to FACTOR x B
trials and timed again, so the two budgets share one search, as a longer job would. The baseline
is the same kernel under the schedule template's default decisions (what an untuned compile
runs), timed in the same run.

End-to-end part (optional, --resnet-log DIR): ResNet-18 2x a2w2 compiled untuned and with a
tuning log, both timed here.

  python benchmarks/tuning.py --trials 16 --factor 4 --resnet-log tuning_logs/resnet18-2x-a2w2-host

Writes benchmarks/results/tuning.{json,md,png}.
"""

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _time_module(module, func_name, args, repeat):
    """Seconds of `repeat` time_evaluator runs (each at least 200 ms of calls)."""
    import tvm

    evaluator = module.time_evaluator(func_name, tvm.cpu(), number=1, repeat=repeat, min_repeat_ms=200)
    return [float(x) for x in evaluator(*args).results]


def _random_args(prim_func):
    import tvm
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    rng = np.random.default_rng(0)
    args = []
    for info in ArgInfo.from_prim_func(prim_func):
        shape = [int(x) for x in info.shape]
        dtype = str(info.dtype)
        if dtype.startswith("float"):
            data = rng.standard_normal(shape).astype(dtype)
        else:
            limits = np.iinfo(dtype)
            data = rng.integers(max(limits.min, -8), min(limits.max, 8), size=shape, dtype=dtype)
        args.append(tvm.runtime.tensor(data, tvm.cpu()))
    return args


def time_kernel(mod, spec, repeat):
    import tvm

    return _time_module(tvm.compile(mod, target=spec.target).jit(), "main", _random_args(mod["main"]), repeat)


def export_resnet(directory: Path) -> Path:
    from wrpn_tvm.nn import export

    path = directory / "resnet18-2x-a2w2.pt2"
    export("resnet18", 2.0, 2, 2, path, in_channels=3, num_classes=1000, seed=0)
    return path


def curve_of(log_dir, spec, workload_mod):
    """Best latency so far (ms) after each trial of one workload, in the order the log recorded them."""
    from tvm_ffi import structural_equal

    from wrpn_tvm.tuning.database import read_log
    from wrpn_tvm.tuning.progress import recorded_seconds

    log = read_log(log_dir)
    best, curve = None, []
    for index, record in log.records:
        if not structural_equal(log.workloads[index].mod, workload_mod):
            continue
        seconds = recorded_seconds(record)
        if seconds is not None and (best is None or seconds < best):
            best = seconds
        curve.append(None if best is None else best * 1e3)
    return curve


def bench_kernel(args, spec, program, work):
    import schedules

    from wrpn_tvm.build import prepare_module
    from wrpn_tvm.tuning import load_database
    from wrpn_tvm.tuning.job import tune_tasks
    from wrpn_tvm.tuning.tasks import extract_tasks

    mod = prepare_module(program, spec)[0]
    tasks = [task for task in extract_tasks(mod, spec) if task.task_name == args.kernel]
    if not tasks:
        raise SystemExit(f"no task named {args.kernel}")
    task = tasks[0]
    workload = task.dispatched[0]
    untuned_ms = [x * 1e3 for x in time_kernel(schedules.apply_default_schedules(workload, spec.target), spec, args.repeat)]
    log_dir = work / "kernel-log"
    budgets = {}
    for budget in (args.trials, args.trials * args.factor):
        started = time.monotonic()
        result = tune_tasks([task], spec, budget, log_dir, seed=0, trials_per_batch=args.trials_per_batch)
        database = load_database(log_dir, spec)
        tuned = database.query_ir_module(workload, spec.target, "main")
        tuned_ms = [x * 1e3 for x in time_kernel(tuned, spec, args.repeat)]
        budgets[budget] = {
            "tuning_seconds": time.monotonic() - started,
            "measured_trials": result.measured,
            "trials_per_minute": 60 * result.measured / result.seconds,
            "tuned_ms": tuned_ms,
            "tuned_median_ms": statistics.median(tuned_ms),
        }
    small, large = budgets[args.trials], budgets[args.trials * args.factor]
    return {
        "task": args.kernel,
        "weight_in_model": int(task.weight),
        "untuned_default_ms": untuned_ms,
        "untuned_default_median_ms": statistics.median(untuned_ms),
        "budgets": budgets,
        "speed_at_budget_vs_factor_budget": large["tuned_median_ms"] / small["tuned_median_ms"],
        "curve_best_ms_by_trial": curve_of(log_dir, spec, workload),
    }


def bench_end_to_end(args, spec, program):
    import tvm
    from tvm import relax

    from wrpn_tvm.build import build_module, prepare_module
    from wrpn_tvm.tuning import load_database

    mod, _layers, inputs = prepare_module(program, spec)
    data = np.random.default_rng(0).standard_normal(inputs[0].shape).astype("float32")
    timings = {}
    for name, database in (("untuned", None), ("tuned", load_database(args.resnet_log, spec))):
        vm = relax.VirtualMachine(build_module(mod, spec, database), tvm.cpu())
        x = tvm.runtime.tensor(data, tvm.cpu())
        vm.set_input("main", x)
        results = [t * 1e3 for t in _time_module(vm, "invoke_stateful", ["main"], args.repeat)]
        timings[name] = {"ms": results, "median_ms": statistics.median(results)}
    return {"log": str(args.resnet_log), **timings, "speedup": timings["untuned"]["median_ms"] / timings["tuned"]["median_ms"]}


def machine():
    import torch
    import tvm

    from wrpn_tvm.targets import host_cpu

    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    return {
        "cpu": host_cpu(),
        "cores": __import__("os").cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tvm": tvm.__version__,
        "torch": torch.__version__,
        "load_average_at_end": load,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


def write_outputs(result, out: Path):
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    kernel = result["kernel"]
    small, large = (kernel["budgets"][b] for b in sorted(kernel["budgets"], key=int))
    lines = [
        "# Tuning benchmark",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; TVM {result['machine']['tvm']}; "
        f"{result['machine']['date_utc']} UTC; load average at the end {' '.join(result['machine']['load_average_at_end'])} "
        "(the machine was shared with other jobs: absolute times are noisy).",
        "",
        f"Command: `{result['command']}`",
        "",
        f"## Kernel: {kernel['task']} (ResNet-18 2x, a2/w2, 3x224x224)",
        "",
        "| schedule | trials measured | tuning time (s) | trials/min | median latency (ms) |",
        "| --- | --- | --- | --- | --- |",
        f"| template default (untuned) | 0 | 0 | - | {kernel['untuned_default_median_ms']:.4f} |",
    ]
    for budget in sorted(kernel["budgets"], key=int):
        entry = kernel["budgets"][budget]
        lines.append(f"| tuned, budget {budget} | {entry['measured_trials']} | {entry['tuning_seconds']:.0f} | "
                     f"{entry['trials_per_minute']:.1f} | {entry['tuned_median_ms']:.4f} |")
    lines += [
        "",
        f"Speed at budget {min(kernel['budgets'], key=int)} relative to {max(kernel['budgets'], key=int)} trials: "
        f"{kernel['speed_at_budget_vs_factor_budget']:.2f} (target: at least 0.90). Latencies are medians over "
        f"{result['repeat']} timed repeats; the curve (PNG) is the tuner's own best-so-far measurement per trial.",
    ]
    if "end_to_end" in result:
        e2e = result["end_to_end"]
        lines += [
            "",
            "## ResNet-18 2x a2w2 end to end (batch 1, 3x224x224)",
            "",
            "| build | median latency (ms) |",
            "| --- | --- |",
            f"| untuned (template defaults) | {e2e['untuned']['median_ms']:.2f} |",
            f"| tuned with {e2e['log']} | {e2e['tuned']['median_ms']:.2f} |",
            "",
            f"Speedup from tuning: {e2e['speedup']:.2f}x.",
        ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = kernel["curve_best_ms_by_trial"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(curve) + 1), [np.nan if c is None else c for c in curve], label="tuned, best so far")
    ax.axhline(kernel["untuned_default_median_ms"], color="gray", linestyle="--", label="template default")
    ax.set_xlabel("trials")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{kernel['task']}: latency against trials")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


def main():
    import sys

    from wrpn_tvm.targets import resolve

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default="wrpn_conv2d_a2w2", help="task name of the kernel to tune")
    parser.add_argument("--trials", type=int, default=16, help="the smaller budget B")
    parser.add_argument("--factor", type=int, default=4, help="the larger budget is FACTOR x B")
    parser.add_argument("--trials-per-batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5, help="timed repeats per latency")
    parser.add_argument("--resnet-log", type=Path, help="a tuning log dir for the end-to-end comparison")
    parser.add_argument("--out", type=Path, default=RESULTS / "tuning")
    args = parser.parse_args()
    spec = resolve("host")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        program = export_resnet(work)
        result = {"command": "python benchmarks/tuning.py " + " ".join(sys.argv[1:]), "repeat": args.repeat,
                  "kernel": bench_kernel(args, spec, program, work)}
        if args.resnet_log is not None:
            result["end_to_end"] = bench_end_to_end(args, spec, program)
    result["machine"] = machine()
    write_outputs(result, args.out)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
