"""How far to trust `wrpn-tvm estimate`, and what it says about ResNet-18 on Raspberry Pis.

Calibration: the estimate's method (qemu counting run x llvm-mca, see wrpn_tvm/estimate) applied
to x86-avx2 builds of ResNet-18 (224x224, batch 1) with llvm-mca's znver3 model, against times
measured on this machine at 1 TVM thread: per kernel (VM instrumentation) and end to end. The
x86 clock is measured, not assumed (a chain of dependent adds, 1 cycle each), because this
machine's turbo clock is unknown; the Pis run at fixed stock clocks.
This machine is shared: times are the CPU time of the thread that runs the model (at 1 TVM
thread every kernel runs on the calling thread), so time slices given to other processes do not
count (their cache traffic still does); wall times are recorded beside them, and every
measurement records the CPU share other processes took while it ran. Figures are medians over
rounds that go round-robin over the models.
Then the ARM estimates of the same four models, each built for its board, on rasp3b, rasp4 and
rasp5 at 1 and 4 threads, beside peers' published figures on the same boards.

    python benchmarks/arm_estimate.py [--repeat 20] [--rounds 5] [--work DIR] [--out benchmarks/results/arm_estimate]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGE = 224
VARIANTS = [("tvm fp32 1x", 1.0, 32, 32), ("wrpn 2x a2/w2", 2.0, 2, 2), ("wrpn 2x a4/w2", 2.0, 4, 2),
            ("wrpn 1x a1/w1", 1.0, 1, 1)]
X86_PRESET = "x86-avx2"
BOARD_NAMES = ("rasp3b", "rasp4", "rasp5")
TRUST_LIMIT = 0.35  # an end-to-end x86 error beyond this is reported as such
KERNEL_SHARE = 0.01  # per-kernel errors are reported for kernels with at least this share of the model's time
PEERS = [  # from their papers (see ../shared/REFERENCES.md); all 4 threads unless said
    ("rasp3b", "Riptide ResNet-18 FP32 (TVM)", 385.5, 4),
    ("rasp3b", "Riptide ResNet-18 1-bit act / 2-bit weight", 82.0, 4),
    ("rasp4", "Larq Compute Engine QuickNet (binary)", 45.0, 1),
    ("rasp4", "Larq Compute Engine QuickNet (binary)", 20.8, 4),
]

CLOCK_SOURCE = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
    long n = 100000000, x = 0;
    struct timespec a, b;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);  /* CPU time: immune to time slicing */
    for (long i = 0; i < n; i++)  /* 8 dependent adds: 8 cycles per iteration on any x86 core */
        __asm__ volatile("add $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\t"
                         "add $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0" : "+r"(x));
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    printf("%.4f\n", 8.0 * n / ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9) / 1e9);
    return x == 0;
}
"""


def slug(name: str) -> str:
    return name.replace(" ", "_").replace("/", "")


def build_libraries(work: Path) -> dict:
    """{(variant, target): library path}; existing libraries in `work` are reused."""
    import torch

    from wrpn_tvm.build import compile_model
    from wrpn_tvm.nn import build_model, export_model

    libraries = {}
    for name, width, abits, wbits in VARIANTS:
        program = work / f"{slug(name)}.pt2"
        if not program.is_file():
            torch.manual_seed(0)
            model = build_model("resnet18", width, abits, wbits, num_classes=1000, in_channels=3, image_size=IMAGE).eval()
            torch.export.save(export_model(model, torch.rand(1, 3, IMAGE, IMAGE)), str(program))
        for target in (X86_PRESET, *BOARD_NAMES):
            library = work / f"{slug(name)}-{target}.so"
            if not library.is_file():
                print(f"compiling {name} for {target}", file=sys.stderr, flush=True)
                compile_model(program, target, library)
            libraries[(name, target)] = library
    return libraries


class Load:
    """Other processes' share of the CPUs over a span (what measurements on a shared machine need beside them)."""

    def __enter__(self):
        import psutil

        self._own = psutil.Process()
        self._start = (time.monotonic(), self._busy(psutil.cpu_times()), self._own_cpu())
        return self

    def _own_cpu(self) -> float:
        return sum(self._own.cpu_times()[:4])  # user, system, and those of waited-for children (the clock probe)

    @staticmethod
    def _busy(times) -> float:
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    def __exit__(self, *exc):
        import psutil

        wall, busy, own = time.monotonic(), self._busy(psutil.cpu_times()), self._own_cpu()
        others = (busy - self._start[1]) - (own - self._start[2])
        self.share = round(max(0.0, min(1.0, others / ((wall - self._start[0]) * (psutil.cpu_count() or 1)))), 3)


def measure_child(library: str, repeat: int) -> dict:
    """Runs in a child process with TVM_NUM_THREADS=1: end-to-end runs and per-kernel times."""
    import numpy as np
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(library), tvm.cpu())
    x = tvm.runtime.tensor(np.random.default_rng(0).random((1, 3, IMAGE, IMAGE), dtype=np.float32))
    for _ in range(2):
        vm["main"](x)
    with Load() as load:
        runs, cpu_runs = [], []
        for _ in range(repeat):
            start, cpu_start = time.perf_counter(), time.thread_time()
            vm["main"](x)
            runs.append((time.perf_counter() - start) * 1e3)
            cpu_runs.append((time.thread_time() - cpu_start) * 1e3)
    per_run, started = [], {}

    def instrument(func, symbol, before, ret, *args):
        if before:
            started[symbol] = time.thread_time()
        else:
            per_run[-1][symbol] = per_run[-1].get(symbol, 0.0) + (time.thread_time() - started.pop(symbol)) * 1e3
        return 0

    vm.set_instrument(instrument)
    with Load() as kernel_load:
        for _ in range(max(3, repeat // 2)):
            per_run.append({})
            vm["main"](x)
    kernels = {symbol: statistics.median(run.get(symbol, 0.0) for run in per_run) for symbol in per_run[0]}
    return {"runs_ms": runs, "cpu_runs_ms": cpu_runs, "median_ms": statistics.median(cpu_runs),
            "median_wall_ms": statistics.median(runs), "others_cpu_share": load.share,
            "kernel_ms": kernels, "kernel_others_cpu_share": kernel_load.share}


def measure(library: Path, repeat: int) -> dict:
    env = {**os.environ, "TVM_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, __file__, "--child", str(library), "--repeat", str(repeat)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {library} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def clock_probe(folder: Path) -> Path:
    source, binary = folder / "clock.c", folder / "clock"
    source.write_text(CLOCK_SOURCE)
    subprocess.run(["cc", "-O1", "-o", str(binary), str(source)], check=True)
    return binary


def clock_ghz(probe: Path) -> dict:
    with Load() as load:
        ghz = float(subprocess.run([str(probe)], capture_output=True, text=True, check=True).stdout)
    return {"ghz": ghz, "others_cpu_share": load.share}


def calibrate(libraries: dict, repeat: int, rounds: int, probe: Path) -> dict:
    from wrpn_tvm.estimate import estimate_x86

    measured = {name: [] for name, *_ in VARIANTS}
    clocks = []
    for round_index in range(rounds):
        for name, *_ in VARIANTS:
            print(f"measuring {name} on x86, round {round_index + 1}/{rounds}", file=sys.stderr, flush=True)
            clocks.append(clock_ghz(probe))
            measured[name].append(measure(libraries[(name, X86_PRESET)], repeat))
    clock = statistics.median(c["ghz"] for c in clocks)
    report = {"clock_ghz": clock, "clock_probes": clocks, "models": {}}
    for name, *_ in VARIANTS:
        print(f"estimating {name} on x86 (counting run under qemu)", file=sys.stderr, flush=True)
        est = estimate_x86(libraries[(name, X86_PRESET)], clock, 1)
        rounds_of = measured[name]
        measured_total = statistics.median(r["median_ms"] for r in rounds_of)
        kernel_names = set().union(*(r["kernel_ms"] for r in rounds_of))
        measured_kernels = {k: statistics.median(r["kernel_ms"].get(k, 0.0) for r in rounds_of) for k in kernel_names}
        kernels = []
        for kernel in est.kernels:
            if kernel.calls == 0:
                continue
            ms = kernel.latency_ms(clock, 1)
            real = measured_kernels.get(kernel.name)
            kernels.append({"kernel": kernel.name, "calls": kernel.calls, "instructions": kernel.instructions,
                            "estimated_ms": ms, "measured_ms": real,
                            "error": (ms - real) / real if real else None,
                            "share": real / measured_total if real else None})
        estimated_total = est.total_ms(1)
        report["models"][name] = {
            "measured_ms": measured_total, "estimated_ms": estimated_total,
            "measured_wall_ms": statistics.median(r["median_wall_ms"] for r in rounds_of),
            "error": (estimated_total - measured_total) / measured_total,
            "measured_kernels_sum_ms": sum(v for k, v in measured_kernels.items() if not k.startswith("vm.builtin")),
            "others_cpu_share": [r["others_cpu_share"] for r in rounds_of],
            "kernel_others_cpu_share": [r["kernel_others_cpu_share"] for r in rounds_of],
            "rounds": rounds_of, "unmodelled_instructions": est.unmodelled, "kernels": kernels,
        }
    return report


def arm_estimates(libraries: dict) -> dict:
    from wrpn_tvm.estimate import estimate

    out = {}
    for name, *_ in VARIANTS:
        for board in BOARD_NAMES:
            print(f"estimating {name} on {board} (counting run under qemu)", file=sys.stderr, flush=True)
            out.setdefault(name, {})[board] = estimate(libraries[(name, board)], [board]).boards[0].as_dict()
    return out


def summary(calibration: dict) -> dict:
    """What `wrpn-tvm estimate` prints beside its figures."""
    errors = [m["error"] for m in calibration["models"].values()]
    kernel_errors = sorted(abs(k["error"]) for m in calibration["models"].values() for k in m["kernels"]
                           if k["error"] is not None and k["share"] >= KERNEL_SHARE)
    p90 = kernel_errors[min(len(kernel_errors) - 1, int(0.9 * len(kernel_errors)))]
    return {
        "preset": X86_PRESET, "mca_cpu": "znver3", "cpu": machine()["llvm_cpu"], "threads": 1,
        "end_to_end": f"{min(errors):+.0%} to {max(errors):+.0%} over {len(errors)} ResNet-18 models",
        "per_kernel": f"median |error| {statistics.median(kernel_errors):.0%}, 90th percentile {p90:.0%} "
                      f"({len(kernel_errors)} kernels with >= {KERNEL_SHARE:.0%} of their model's time)",
        "within_trust_limit": all(abs(e) <= TRUST_LIMIT for e in errors),
    }


def machine() -> dict:
    import tvm

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {"cpu_model": model, "llvm_cpu": tvm.target.codegen.llvm_get_system_cpu(), "cores": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "tvm": tvm.__version__,
            "llvm_mca": subprocess.run(["llvm-mca", "--version"], capture_output=True, text=True).stdout.split("\n")[0].strip(),
            "qemu": subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True).stdout.split("\n")[0]}


def markdown(report: dict) -> str:
    cal, s = report["calibration"], report["summary"]
    verdict = ("within" if s["within_trust_limit"] else "OUTSIDE") + f" the ±{TRUST_LIMIT:.0%} end-to-end limit"
    lines = [
        "# ARM latency estimates, calibrated on x86",
        "",
        f"Command: `{report['command']}` ({report['date']}, {report['wall_minutes']:.0f} min).",
        f"Machine: {report['machine']['cpu_model']} (LLVM `{report['machine']['llvm_cpu']}`), {report['machine']['cores']} cores, "
        f"TVM {report['machine']['tvm']}, {report['machine']['llvm_mca']}, {report['machine']['qemu']}.",
        "",
        "Method (wrpn_tvm/estimate): a counting run under qemu-user gives the exact number of executions of every "
        "basic block of the library's machine code in one inference; llvm-mca 14 gives each block's steady-state "
        "cycles per iteration on the core's scheduling model; latency = sum(executions x cycles) at the clock, "
        "parallel code divided evenly over the threads. It assumes L1 hits and ignores the TVM runtime between kernels.",
        "",
        "## x86 calibration (how far to trust the estimates)",
        "",
        f"The same method on `{X86_PRESET}` builds (llvm-mca `znver3`, the newest AMD Zen model in LLVM 14; this "
        f"CPU is `{report['machine']['llvm_cpu']}`), against times measured here at 1 TVM thread. Clock: "
        f"{cal['clock_ghz']:.2f} GHz, measured by a chain of dependent adds per CPU second (median of "
        f"{len(cal['clock_probes'])} probes), not the nominal clock in /proc/cpuinfo. The machine was shared with "
        "another engineer's test runs: measured times are the CPU time of the one thread that runs the model (time "
        "slices lost to other processes do not count, their cache traffic does), wall medians beside them; 'others' "
        "is the CPU share other processes took while each model was timed (per round). Figures are medians over "
        f"{report['rounds']} rounds of {report['repeat']} runs, round-robin over the models.",
        "",
        f"**End to end: {s['end_to_end']}, {verdict}. Per kernel: {s['per_kernel']}.**",
        "",
        "| model | measured ms (CPU) | estimated ms | error | wall ms | others' CPU share (rounds) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in cal["models"].items():
        share = ", ".join(f"{x:.0%}" for x in m["others_cpu_share"])
        lines.append(f"| {name} | {m['measured_ms']:.1f} | {m['estimated_ms']:.1f} | {m['error']:+.0%} | "
                     f"{m['measured_wall_ms']:.1f} | {share} |")
    lines += ["", "Per kernel (kernels with at least 1% of their model's measured time; measured: median over runs of "
              "the kernel's CPU time per inference, summed over its calls, under VM instrumentation):", ""]
    for name, m in cal["models"].items():
        lines += [f"### {name}", "", "| kernel | calls | measured ms | estimated ms | error |", "| --- | --- | --- | --- | --- |"]
        for k in sorted(m["kernels"], key=lambda k: -(k["measured_ms"] or 0)):
            if k["share"] is not None and k["share"] >= KERNEL_SHARE:
                lines.append(f"| `{k['kernel']}` | {k['calls']} | {k['measured_ms']:.3f} | {k['estimated_ms']:.3f} | {k['error']:+.0%} |")
        lines.append("")
    lines += ["## Estimated Raspberry Pi latency (ResNet-18 224x224, batch 1): ESTIMATES, not measurements", "",
              "Each model built for its board (`--target rasp3b/rasp4/rasp5`, untuned templates). Stock clocks: "
              "Pi 3B 1.2 GHz (Cortex-A53), Pi 4B 1.5 GHz (Cortex-A72; boards from 2020 on run at 1.8 GHz: "
              "divide by 1.2), Pi 5 2.4 GHz (Cortex-A76, modelled by LLVM 14 with its Cortex-A57 model, so "
              "pessimistic). 4-thread figures assume perfect scaling and no memory stalls, which flatters them most.",
              "", "| model | " + " | ".join(f"{b} 1 thr | {b} 4 thr" for b in BOARD_NAMES) + " |",
              "| --- |" + " --- |" * (2 * len(BOARD_NAMES))]
    for name, boards in report["arm"].items():
        cells = " | ".join(f"{boards[b]['ms_1_thread']:.1f} | {boards[b]['ms_4_threads']:.1f}" for b in BOARD_NAMES)
        lines.append(f"| {name} | {cells} |")
    lines += ["", "Peers' published figures on the same boards (measured, their own models):", "",
              "| board | what | ms | threads |", "| --- | --- | --- | --- |"]
    lines += [f"| {board} | {what} | {ms} | {threads} |" for board, what, ms, threads in PEERS]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "wrpn-arm-estimate"),
                        help="where the models and libraries are built (reused when present)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "arm_estimate"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_child(args.child, args.repeat)))
        return
    started = time.time()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    libraries = build_libraries(work)
    calibration = calibrate(libraries, args.repeat, args.rounds, clock_probe(work))
    report = {"command": "python benchmarks/arm_estimate.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "repeat": args.repeat, "rounds": args.rounds,
              "calibration": calibration, "summary": summary(calibration), "arm": arm_estimates(libraries), "peers": PEERS}
    report["wall_minutes"] = (time.time() - started) / 60
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
