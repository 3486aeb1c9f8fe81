"""Bit-serial conv2d kernels against FP32 and int8 on this CPU, and against its popcount roofline.

ResNet-18's 3x3 stride-1 convs (56x56x64, 28x28x128, 14x14x256, 7x7x512; batch 1; 1 and 2 threads)
at width 1x and 2x, activation/weight bits 1/1, 2/2, 4/2, 4/4, each timed as:
  * the WRPN bit-serial conv (packed activations in, int32 NHWC out) under the schedule
    template's default decisions, and, for the configurations the targets name (1x 1/1, 2x 2/2),
    also tuned by MetaSchedule with --trials trials per kernel (off by default: see --trials);
  * the activation bitpack (quantize + pack, float NCHW in) of its input, timed separately;
  * PyTorch FP32 conv (1x and 2x), PyTorch int8 quantized conv (x86 engine, 1x), and TVM FP32
    conv tuned by MetaSchedule with the same --trials budget (1x);
  * the peers (benchmarks/peers.py, in their own venvs; --no-peers leaves them out): the same conv
    (1x) in ONNX Runtime FP32 and static int8 (QDQ, per-channel weights) and OpenVINO, and a binary
    conv (larq QuantConv2D, 1-bit input and weights) in Larq Compute Engine;
  * the roofline: benchmarks/popcount_roofline.c (gcc -O3 -march=native, OpenMP, same thread
    count): an upper bound on binary MAC/s from the CPU's documented per-instruction throughput
    (AND + VPOPCNTQ + ADD, or Harley-Seal VPTERNLOG adders) at its measured clock, with the loops
    that reach it; highest bound of its repeats.
All numbers are medians over repeats measured in this one run, taken in ROUNDS round-robin rounds
over every kernel and baseline of a thread count (a burst of load from another tenant of the host
then lands on a few samples of each rather than on all of one); binary MAC/s counts one AND +
popcount bit per activation-bit x weight-bit x MAC.

  python benchmarks/kernels.py                    # writes benchmarks/results/kernels.{json,md,png}
  python benchmarks/kernels.py --trials 16        # also tune (about 30 s per trial on a loaded 2-core box)
  python benchmarks/kernels.py --roofline         # only the roofline: benchmarks/results/popcount_roofline.{json,md}
  python benchmarks/kernels.py --out benchmarks/results/kernels_znver5   # another machine's results beside these
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
LAYERS = [(56, 64), (28, 128), (14, 256), (7, 512)]  # (image size, channels) at 1x width
BITS = [(1, 1), (2, 2), (4, 2), (4, 4)]
TUNED_CONFIGS = {(1, 1, 1), (2, 2, 2)}  # (width, abits, wbits) tuned by MetaSchedule
THREADS = 2
# Words as the lowering packs and reads them: 64-bit packs, which a shift-group conv (multi-bit
# weights on AVX-512) reads as 32-bit halves (`rewrite.conv_words`).
WORDS = "as the lowering packs and reads them (64-bit packs; 32-bit halves where a conv sums shift groups apart)"
ROUNDS = 5  # the repeats of each kernel are split over this many round-robin rounds
ROOFLINE_REPEAT = 5  # each run is the best of many short windows already
# column -> (peers venv, peers.py peer): the same 1x conv layers, or for LCE a binary one
LAYER_PEERS = {"ORT FP32 1x": ("ort", "ort-fp32"), "ORT int8 1x": ("ort", "ort-int8"),
               "OpenVINO 1x": ("ort", "openvino"), "LCE 1-bit 1x": ("lce", "lce")}


def tvm_seconds(executable, args, repeat):
    return tvm_timer(executable, args)(repeat)


def tvm_timer(executable, args):
    """repeat -> that many seconds-per-call samples of the executable on args (each at least 50 ms of calls)."""
    import tvm

    def samples(repeat):
        evaluator = executable.mod.time_evaluator("main", tvm.cpu(), number=1, repeat=repeat, min_repeat_ms=50)
        return [float(x) for x in evaluator(*args).results]

    return samples


def torch_seconds(fn, repeat):
    times = []
    for _ in range(repeat):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed > 0.05:
                break
        times.append(elapsed / calls)
    return times


def _kernel(tensors):
    """(PrimFunc, [(shape, dtype) of each argument]) for TE tensors: inputs, then the output."""
    from tvm import te

    return te.create_prim_func(tensors), [([int(d) for d in t.shape], str(t.dtype)) for t in tensors]


def bitserial_func(size, channels, abits, wbits, target):
    """A 3x3 stride-1 layer's conv in the form the lowering gives it for `target`."""
    from wrpn_tvm.targets import resolve

    return lowered_conv_func(size, channels, channels, 3, 1, 1, abits, wbits, resolve(target))


def lowered_conv_func(size, cin, cout, kernel, stride, padding, abits, wbits, spec):
    """The bit-serial conv in the form the lowering gives it for `spec` (`splits_shift_groups`, in
    the words `conv_words` says it reads, weights blocked by output channels where
    `conv_weight_block` says)."""
    from tvm import te

    from wrpn_tvm import ops
    from wrpn_tvm.lowering.rewrite import conv_weight_block, conv_words, splits_shift_groups

    dtype, words = conv_words(spec, wbits, cin)
    data = te.placeholder((1, size, size, abits, words), dtype, name="data")
    block = conv_weight_block(spec, wbits, cout)
    shape = (kernel, kernel, wbits, words, cout) if block is None else (cout // block, kernel, kernel, wbits, words, block)
    weight = te.placeholder(shape, dtype, name="weight")
    return _kernel([data, weight, ops.bitserial_conv2d(data, weight, abits, wbits, stride, padding,
                                                       split_shift_groups=splits_shift_groups(spec, wbits))])


def bitpack_func(size, channels, abits, target):
    from tvm import te

    from wrpn_tvm import ops
    from wrpn_tvm.lowering.rewrite import word_bits_for
    from wrpn_tvm.targets import resolve

    x = te.placeholder((1, channels, size, size), "float32", name="x")
    return _kernel([x, ops.pack_activation(x, abits, word_bits_for(resolve(target)))])


def fp32_conv_func(size, channels):
    from tvm import te, topi

    x = te.placeholder((1, channels, size, size), "float32", name="x")
    w = te.placeholder((channels, channels, 3, 3), "float32", name="w")
    return _kernel([x, w, topi.nn.conv2d_nchw(x, w, 1, 1, 1)])


def random_args(kernel, rng):
    import tvm

    args = []
    for shape, dtype in kernel[1]:
        if dtype.startswith("float"):
            data = rng.random(shape, dtype=np.float32)
        else:
            data = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
        args.append(tvm.runtime.tensor(data, tvm.cpu()))
    return args


def default_executable(kernel, target):
    from wrpn_tvm.pipeline import compile_prim_func
    from wrpn_tvm.targets import resolve

    return compile_prim_func(kernel[0], resolve(target))


def tune(funcs: dict, target, trials: int, work_dir: str) -> dict:
    """Tune every function with `trials` trials each (one wrpn-tvm tuning job); name -> executable.

    Through wrpn_tvm.tuning, as `wrpn-tvm tune` does: candidates are built in-process (MetaSchedule's
    LocalBuilder workers each re-import TVM's tensor intrinsics and time out on 2 cores), and each
    kernel's template default is among its measured candidates."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from wrpn_tvm.pipeline import TIR_PIPELINE
    from wrpn_tvm.targets import resolve
    from wrpn_tvm.tuning import load_database
    from wrpn_tvm.tuning.job import tune_tasks

    spec = resolve("host")
    modules = {name: tvm.IRModule({"main": kernel[0]}) for name, kernel in funcs.items()}
    tasks = [ms.ExtractedTask(name, mod, target, [mod], 1) for name, mod in modules.items()]
    tune_tasks(tasks, spec, trials * len(tasks), work_dir, seed=0, trials_per_batch=min(trials, 8))
    database = load_database(work_dir, spec)
    executables = {}
    for name, mod in modules.items():
        tuned = database.query_ir_module(mod, target, "main")
        executables[name] = None if tuned is None else tvm.compile(tuned, target=target, tir_pipeline=TIR_PIPELINE)
    return executables


def roofline(repeat, threads):
    """popcount_roofline.c's reports at `threads` threads, `repeat` runs: the bound, and its loops' rates."""
    from tvm.target import codegen

    binary = Path(tempfile.mkdtemp()) / "roofline"
    subprocess.run(["gcc", "-O3", "-march=native", "-fopenmp", str(HERE / "popcount_roofline.c"), "-o", str(binary),
                    "-lm"], check=True)
    cpu = codegen.llvm_get_system_cpu()  # names the row of the C file's throughput table
    return [json.loads(subprocess.run([str(binary), cpu], check=True, capture_output=True, text=True,
                                      env=dict(os.environ, OMP_NUM_THREADS=str(threads))).stdout)
            for _ in range(repeat)]


def _roof(run):
    """(binary MAC/s, what it is) of one thread count's roofline. Runs before the bound existed
    (kernels.json of 2026-11 and earlier) carry only the measured AND + popcount loop."""
    if "roofline" in run:
        bound = max(r["bound_binary_macs_per_s"] for r in run["roofline"])
        best = max(r["best_binary_macs_per_s"] for r in run["roofline"])
        return bound, (f"instruction-throughput bound (popcount_roofline.c, highest of {len(run['roofline'])} runs; "
                       f"its fastest loop reached {100 * best / bound:.0f}% of it)")
    rates = run["roofline_binary_macs_per_s"]
    return max(rates), (f"measured AND + popcount loop, best of {len(rates)} (median {_median(rates) / 1e12:.3f} T): "
                        "not a true bound, from before popcount_roofline.c derived one")


def prepare_layer_peers(folder: Path) -> tuple[dict, dict]:
    """(venv -> JSON map of its per-layer models, column -> why it is missing)."""
    from end_to_end import _peer_command, _run_json, peers_env

    maps, missing = {}, {}
    for venv, command in (("ort", "prepare-layers"), ("lce", "prepare-lce-layers")):
        reason = peers_env(venv)
        if reason is None:
            try:
                path = folder / f"{venv}.json"
                path.write_text(json.dumps(_run_json(_peer_command(venv, command, str(folder / venv)))))
                maps[venv] = path
            except RuntimeError as error:
                reason = str(error).strip().splitlines()[-1]
        if reason:
            missing.update({name: reason for name, (v, _) in LAYER_PEERS.items() if v == venv})
    return maps, missing


def time_layer_peers(maps: dict, threads: int, repeat: int, missing: dict) -> dict:
    """column -> {"s": {layer: seconds per run}, "versions", "settings"}; failures go to `missing`."""
    from end_to_end import _peer_command, _run_json

    timed = {}
    for name, (venv, peer) in LAYER_PEERS.items():
        if venv not in maps or name in missing:
            continue
        try:
            out = _run_json(_peer_command(venv, "time-layers", peer, str(maps[venv]), "--repeat", str(repeat),
                                          "--threads", str(threads)))
        except RuntimeError as error:
            missing[name] = str(error).strip().splitlines()[-1]
            continue
        timed[name] = {"s": {layer: [ms / 1e3 for ms in runs] for layer, runs in out["runs_ms"].items()},
                       "versions": out["versions"], "settings": out["settings"]}
    return timed


def torch_baselines(size, channels, rng, with_int8) -> dict:
    """name -> (repeat -> seconds-per-call samples) of the PyTorch convs of a layer."""
    import torch

    x = torch.tensor(rng.random((1, channels, size, size), dtype=np.float32))
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()

    def fp32(repeat):
        with torch.no_grad():
            return torch_seconds(lambda: conv(x), repeat)

    timers = {"torch_fp32": fp32}
    if with_int8:
        torch.backends.quantized.engine = "x86"
        qconv = torch.ao.nn.quantized.Conv2d(channels, channels, 3, padding=1, bias=False)
        qconv.set_weight_bias(torch.quantize_per_tensor(conv.weight.detach(), 0.01, 0, torch.qint8), None)
        qx = torch.quantize_per_tensor(x, 1 / 255, 0, torch.quint8)
        timers["torch_int8"] = lambda repeat: torch_seconds(lambda: qconv(qx), repeat)
    return timers


def measure(threads, target, rng, repeat):
    """Default-schedule bit-serial kernels, bitpacks and the PyTorch baselines at `threads`: each
    compiled first, then timed round-robin, `repeat` samples each over ROUNDS rounds."""
    import torch
    import tvm

    torch.set_num_threads(threads)
    tvm.get_global_func("runtime.config_threadpool")(0, threads)
    rows, to_tune, timers = [], {}, []  # timers: (the sample list a row holds, its timer)
    for width in (1, 2):
        for size, base in LAYERS:
            channels = base * width
            for abits, wbits in BITS:
                kernel = bitserial_func(size, channels, abits, wbits, target)
                name = f"bitserial_{size}x{channels}_a{abits}w{wbits}"
                run_args = random_args(kernel, rng)
                pack = bitpack_func(size, channels, abits, target)
                row = {"kind": "bitserial", "layer": f"{size}x{size}x{base}", "width": width, "channels": channels,
                       "abits": abits, "wbits": wbits, "macs": size * size * channels * channels * 9,
                       "default_s": [], "bitpack_s": [], "name": name}
                timers += [(row["default_s"], tvm_timer(default_executable(kernel, target), run_args)),
                           (row["bitpack_s"], tvm_timer(default_executable(pack, target), random_args(pack, rng)))]
                rows.append(row)
                if (width, abits, wbits) in TUNED_CONFIGS:
                    to_tune[name] = (kernel, run_args)
            if width == 1:
                kernel = fp32_conv_func(size, channels)
                to_tune[f"fp32_{size}x{channels}"] = (kernel, random_args(kernel, rng))
            baselines = torch_baselines(size, channels, rng, with_int8=width == 1)
            row = {"kind": "torch", "layer": f"{size}x{size}x{base}", "width": width, "channels": channels,
                   "macs": size * size * channels * channels * 9, **{key: [] for key in baselines}}
            timers += [(row[key], timer) for key, timer in baselines.items()]
            rows.append(row)
    per_round = -(-repeat // ROUNDS)
    for _ in range(ROUNDS):
        for samples, timer in timers:
            samples += timer(per_round)
    return {"rows": rows, "roofline": roofline(ROOFLINE_REPEAT, threads)}, to_tune


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=0,
                        help="MetaSchedule trials per tuned kernel, at the last thread count (0: no tuning)")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, THREADS])
    parser.add_argument("--no-peers", action="store_true", help="leave out ONNX Runtime, OpenVINO and LCE")
    parser.add_argument("--render", action="store_true", help="only rewrite the .md/.png from results/kernels.json")
    parser.add_argument("--roofline", action="store_true",
                        help="only the roofline, at each --threads")
    parser.add_argument("--out", type=Path,
                        help="results without the suffix (default: results/kernels, with --roofline "
                             "results/popcount_roofline); one set per machine")
    args = parser.parse_args()
    if args.roofline:
        roofline_report(args.threads, args.out or RESULTS / "popcount_roofline")
        return
    out = args.out or RESULTS / "kernels"
    if args.render:
        write_reports(json.loads(out.with_suffix(".json").read_text()), out)
        return
    import torch
    from wrpn_tvm.runtime import machine_info
    from wrpn_tvm.targets import resolve

    target = resolve("host").target
    rng = np.random.default_rng(0)
    started = time.time()
    load_before = os.getloadavg()
    runs, to_tune, peers_missing = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="wrpn-kernels-peers-") as peer_dir:
        maps = {}
        if not args.no_peers:
            maps, peers_missing = prepare_layer_peers(Path(peer_dir))
        for threads in args.threads:
            runs[str(threads)], to_tune = measure(threads, target, rng, args.repeat)
            runs[str(threads)]["peers"] = time_layer_peers(maps, threads, args.repeat, peers_missing)
            print(f"{threads} thread(s) measured ({time.time() - started:.0f} s)", flush=True)
    tuned = {}
    if args.trials > 0:
        with tempfile.TemporaryDirectory() as work_dir:
            tuned = tune({name: kernel for name, (kernel, _) in to_tune.items()}, target, args.trials, work_dir)
    runs[str(args.threads[-1])]["tuned_s"] = {
        name: (None if tuned.get(name) is None else tvm_seconds(tuned[name], run_args, args.repeat))
        for name, (_, run_args) in to_tune.items()}
    result = {
        "machine": {**machine_info(), "torch": torch.__version__, "target": str(target),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "trials_per_tuned_kernel": args.trials, "repeat": args.repeat, "rounds": ROUNDS, "words": WORDS,
        "runs": runs, "peers_missing": peers_missing, "wall_s": time.time() - started,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    write_reports(result, out)


def roofline_report(thread_counts, out: Path):
    from wrpn_tvm.runtime import machine_info

    load_before = os.getloadavg()
    runs = {str(threads): roofline(ROOFLINE_REPEAT, threads) for threads in thread_counts}
    result = {"machine": {**machine_info(), "gcc": subprocess.run(["gcc", "-dumpfullversion"], capture_output=True,
                                                                   text=True).stdout.strip()},
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "command": "python benchmarks/kernels.py --roofline --threads " + " ".join(map(str, thread_counts))
              + ("" if out == RESULTS / "popcount_roofline" else f" --out {out}"),
              "runs": runs}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(roofline_markdown(result))
    print(out.with_suffix(".md").read_text())


def roofline_markdown(result):
    m = result["machine"]
    first = next(iter(result["runs"].values()))[0]
    table = first["table_per_cycle"]
    lines = [
        "# Popcount roofline: the binary-MAC bound of this CPU, and the loops that reach it", "",
        f"CPU: {m['cpu']} (LLVM CPU {m['llvm_cpu']}, {m['cores']} cores), gcc {m['gcc']}. Command: "
        f"`{result['command']}` ({ROOFLINE_REPEAT} runs of benchmarks/popcount_roofline.c per thread count; each "
        "figure inside a run is the best of many short windows, so a run on a shared machine reads low, never high). "
        f"Load average before/after: {_loads(result['load_average_before'])} / {_loads(result['load_average_after'])}"
        + (": other jobs shared the machine." if result["load_average_before"][0] > 1.5 else "."), "",
        "The bound: per 512 binary MACs a bit-serial kernel issues 3 vector ops, AND + VPOPCNTQ + ADD, or, in a "
        "Harley-Seal tree of VPTERNLOG full adders, AND + two VPTERNLOG per input + a popcount per 16 inputs. "
        "Cycles per 512 MACs = max(3 / (512-bit vector ops per cycle), popcounts / (VPOPCNTQ per cycle), "
        "3 / dispatch width), for the cheaper mix; bound = 512 x clock / that x physical cores. "
        + (f"Throughput per cycle from the C file's table for {first['llvm_cpu']} ({first['source']}): "
           f"{table['simple_zmm']:g} simple 512-bit ops, {table['vpopcntq_zmm']:g} VPOPCNTQ, dispatch "
           f"{table['dispatch']:g}." if first["table_entry"] else
           f"The C file's table has no row for {first['llvm_cpu']}: the bound uses the per-instruction "
           "throughput measured here, which can only make it too high."), "",
        "The table, and the bound each row gives per core and GHz (the cheaper mix):", "",
        "| LLVM cpu | simple 512-bit ops / cycle | VPOPCNTQ zmm / cycle | dispatch / cycle | cycles per 512 MACs | "
        "T binary MAC/s per core per GHz |", "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in first["table"]:
        cycles = max(3 / row["simple_zmm"], min(1 / row["vpopcntq_zmm"], 1 / 16 / row["vpopcntq_zmm"]),
                     3 / row["dispatch"])
        lines.append(f"| {row['cpu']} | {row['simple_zmm']:g} | {row['vpopcntq_zmm']:g} | {row['dispatch']:g} | "
                     f"{cycles:.3f} | {512 / cycles / 1e3:.3f} |")
    lines += [
        "",
        "Measured here:",
        "",
        "| threads | cores | clock GHz | measured per cycle: VPANDQ / VPADDQ / VPTERNLOGQ / VPOPCNTQ | "
        "cycles per 512 MACs "
        "(plain / Harley-Seal) | bound T binary MAC/s | fastest loop T | % of bound |",
        "| ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for threads, runs in result["runs"].items():
        top = max(runs, key=lambda r: r["bound_binary_macs_per_s"])
        measured = top["measured_zmm_per_cycle"]
        best = max(r["best_binary_macs_per_s"] for r in runs)
        lines.append(f"| {threads} | {top['physical_cores']} | {top['clock_hz_mean'] / 1e9:.2f} | "
                     f"{measured['vpandq']:.2f} / {measured['vpaddq']:.2f} / {measured['vpternlogq']:.2f} / "
                     f"{measured['vpopcntq']:.2f} | {top['cycles_per_512_macs']['plain']:.3f} / "
                     f"{top['cycles_per_512_macs']['harley_seal']:.3f} | {top['bound_binary_macs_per_s'] / 1e12:.3f} | "
                     f"{best / 1e12:.3f} | {100 * best / top['bound_binary_macs_per_s']:.1f}% |")
    lines += ["", "Every loop, best over the runs, as a share of the bound:", "",
              "| loop | " + " | ".join(f"{t} thread(s)" for t in result["runs"]) + " |",
              "| --- |" + " ---: |" * len(result["runs"])]
    for name in first["variants"]:
        cells = []
        for runs in result["runs"].values():
            bound = max(r["bound_binary_macs_per_s"] for r in runs)
            rate = max(r["variants"][name] for r in runs)
            cells.append(f"{rate / 1e12:.3f} T ({100 * rate / bound:.0f}%)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "The measured per-instruction rates check the table on this CPU (12 independent chains of one "
              "instruction, uops.info's method): a rate above the table's would replace it in the bound; one a few "
              "percent under it is the timing window's own overhead."]
    return "\n".join(lines) + "\n"


def write_reports(result, out: Path):
    sections = [summarize(result, threads) for threads in result["runs"]]
    header = [
        "# Bit-serial conv2d kernels (ResNet-18 3x3 layers, batch 1)",
        "",
        f"CPU: {result['machine']['cpu']} (LLVM CPU {result['machine']['llvm_cpu']}, {result['machine']['cores']} cores); TVM {result['machine']['tvm']}, "
        f"torch {result['machine']['torch']}; {_words(result)}; medians (and minima) of "
        f"{result['repeat']} repeats{_rounds(result)}, ms. Load average before/after the run: "
        f"{_loads(result['machine']['load_average_before'])} / {_loads(result['machine']['load_average_after'])}"
        # Only the load before counts: the run's own 2-thread work raises the one after.
        + (": the machine was shared with other jobs, so every number here was measured under contention; "
           "the minima are the closer estimate of an idle machine." if result["machine"]["load_average_before"][0] > 1.5
           else " (otherwise idle before the run)."),
        "",
    ]
    header += _roofline_scaling_note(result) + _thread_scaling_note(result)
    out.with_suffix(".md").write_text("\n".join(header + [section["markdown"] for section in sections]))
    plot(sections, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())


def _rounds(result) -> str:
    return f" taken in {result['rounds']} round-robin rounds over every kernel" if "rounds" in result else ""


def _words(result) -> str:
    """How the run's kernels held their bits (runs before 2026-12-03 used one word size throughout)."""
    return f"words {result['words']}" if "words" in result else f"word size {result['word_bits']} bits"


def _roofline_scaling_note(result):
    """Say so when more threads bring no more popcount throughput (e.g. vCPUs that share a core)."""
    peaks = {int(t): _roof(run)[0] for t, run in result["runs"].items()}
    if len(peaks) < 2:
        return []
    low, high = min(peaks), max(peaks)
    if peaks[high] >= 1.3 * peaks[low]:
        return []
    return [f"The popcount roofline does not scale with threads on this machine ({peaks[low] / 1e12:.2f} T binary "
            f"MAC/s at {low} thread(s), {peaks[high] / 1e12:.2f} T at {high}), and neither do the bit-serial kernels: "
            f"its {high} vCPUs share one core's vector units (or the host throttles the others). The "
            f"{low}-thread section is the one to read; '% roofline' is against the roofline at the same thread count.", ""]


def _thread_scaling_note(result):
    """Flag runs where PyTorch got slower with more threads: its OpenMP team then waited on
    descheduled threads, and ratios against it at that thread count measure contention."""
    if not {"1", str(THREADS)} <= set(result["runs"]):
        return []

    def fp32(threads):
        return {(r["layer"], r["width"]): _median(r["torch_fp32"])
                for r in result["runs"][threads]["rows"] if r["kind"] == "torch"}

    one, many = fp32("1"), fp32(str(THREADS))
    slowdowns = [many[key] / one[key] for key in one]
    if max(slowdowns) <= 1:
        return []
    return [f"PyTorch FP32 at {THREADS} threads took {min(slowdowns):.1f}-{max(slowdowns):.1f}x its 1-thread time "
            f"in this run: under contention its threads wait on each other, so the {THREADS}-thread ratios "
            "against PyTorch overstate the bit-serial speedups; the 1-thread section is the fairer comparison.", ""]


def _loads(loads):
    return "/".join(f"{value:.1f}" for value in loads)



def _median(values):
    return None if values is None else statistics.median(values)


def summarize(result, threads):
    run = result["runs"][threads]
    roof, roof_what = _roof(run)
    tuned = {name: _median(times) for name, times in run.get("tuned_s", {}).items()}
    torch_rows = {(r["layer"], r["width"]): r for r in run["rows"] if r["kind"] == "torch"}
    fp32_1x = {layer: _median(r["torch_fp32"]) for (layer, width), r in torch_rows.items() if width == 1}
    int8_1x = {layer: _median(r["torch_int8"]) for (layer, width), r in torch_rows.items() if width == 1}
    tvm_fp32 = {r["layer"]: tuned.get(f"fp32_{r['layer'].split('x')[0]}x{r['channels']}")
                for r in torch_rows.values() if r["width"] == 1}
    peers = run.get("peers", {})
    lines = [
        f"## {threads} thread(s)",
        "",
        f"Roofline at {threads} thread(s): {roof / 1e12:.3f} T binary MAC/s, {roof_what}.",
        "",
        "| layer | PyTorch FP32 1x | PyTorch FP32 2x | PyTorch int8 1x | TVM FP32 1x (tuned) | "
        + "".join(f"{name} | " for name in peers),
        "| --- | --- | --- | --- | --- |" + " --- |" * len(peers),
    ]
    for size, base in LAYERS:
        layer = f"{size}x{size}x{base}"
        lines.append(f"| {layer} | {_ms(torch_rows[(layer, 1)]['torch_fp32'])} | "
                     f"{_ms(torch_rows[(layer, 2)]['torch_fp32'])} | {_ms(torch_rows[(layer, 1)]['torch_int8'])} | "
                     f"{_fmt_ms(tvm_fp32[layer])} | " + "".join(f"{_ms(p['s'][layer])} | " for p in peers.values()))
    lines += ["",
              "| layer | width | a/w bits | bit-serial ms | tuned ms | bitpack ms | T binary MAC/s | % roofline | "
              "x PyTorch FP32 1x | x PyTorch int8 1x | x TVM FP32 1x |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    table = []
    for r in (r for r in run["rows"] if r["kind"] == "bitserial"):
        best = min(t for t in (_median(r["default_s"]), tuned.get(r["name"])) if t is not None)
        rate = r["macs"] * r["abits"] * r["wbits"] / best
        entry = dict(r, best_s=best, rate=rate, roof_pct=100 * rate / roof,
                     vs_fp32=fp32_1x[r["layer"]] / best, vs_int8=int8_1x[r["layer"]] / best,
                     vs_tvm_fp32=None if tvm_fp32[r["layer"]] is None else tvm_fp32[r["layer"]] / best)
        table.append(entry)
        lines.append(
            f"| {r['layer']} | {r['width']}x | {r['abits']}/{r['wbits']} | {_ms(r['default_s'])} | "
            f"{_fmt_ms(tuned.get(r['name']))} | {_ms(r['bitpack_s'])} | {rate / 1e12:.3f} | "
            f"{entry['roof_pct']:.0f}% | {entry['vs_fp32']:.2f} | {entry['vs_int8']:.2f} | "
            f"{_fmt_ratio(entry['vs_tvm_fp32'])} |")

    def pick(width, abits, wbits):
        return [e for e in table if (e["width"], e["abits"], e["wbits"]) == (width, abits, wbits)]

    geo_2x22 = _geomean([e["vs_fp32"] for e in pick(2, 2, 2)])
    int8_11 = [e["vs_int8"] for e in pick(1, 1, 1)]
    largest = [e for e in pick(2, 2, 2) if e["layer"] in ("56x56x64", "28x28x128")]
    lines += [
        "",
        f"Targets at {threads} thread(s), on medians:",
        f"* 2x-wide 2/2 vs PyTorch FP32 1x, geometric mean speedup over the four layers: {geo_2x22:.2f}x "
        f"({'met' if geo_2x22 >= 1 else 'missed'}; target >= 1).",
        f"* 1x-wide 1/1 vs PyTorch int8 1x: {', '.join(f'{v:.2f}x' for v in int8_11)} "
        f"({sum(v >= 2 for v in int8_11)}/4 layers meet the target >= 2x).",
        f"* Two largest layers (56x56x64, 28x28x128), 2x-wide 2/2, share of the roofline: "
        f"{_percentages(largest)} (target >= 85% of a true bound); 1x 1/1: {_percentages(pick(1, 1, 1)[:2])}.",
    ]
    if peers:
        def against(config):
            return ", ".join(
                f"{name} {_geomean([_median(p['s'][e['layer']]) / e['best_s'] for e in pick(*config)]):.2f}x"
                for name, p in peers.items())
        lines += [f"* Against the peers (their median / ours, geometric mean over the four layers; above 1: ours "
                  f"faster): 2x-wide 2/2: {against((2, 2, 2))}; 1x-wide 1/1: {against((1, 1, 1))}. The peers run "
                  "a standalone layer: ORT int8 includes quantizing its float input and dequantizing its output, "
                  "LCE binarizing its input (as the bit-serial rows' bitpack column does).",
                  "* Peers: " + "; ".join(f"{name}: " + ", ".join(f"{k} {v}" for k, v in {**p["versions"],
                                                                                       **p['settings']}.items())
                                        for name, p in peers.items()) + "."]
    lines += [f"* Missing peer {name}: {reason}" for name, reason in result.get("peers_missing", {}).items()] + [""]
    return {"markdown": "\n".join(lines), "table": table, "fp32_1x": fp32_1x, "int8_1x": int8_1x,
            "threads": threads}


def _geomean(values):
    return float(np.exp(np.mean(np.log(values))))


def _ms(times):
    return f"{statistics.median(times) * 1e3:.3f} ({min(times) * 1e3:.3f})"


def _fmt_ratio(ratio):
    return "-" if ratio is None else f"{ratio:.2f}"


def _percentages(entries):
    return ", ".join(f"{e['roof_pct']:.0f}%" for e in entries)


def _fmt_ms(seconds):
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def plot(sections, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(sections), 2, figsize=(13, 4.5 * len(sections)), squeeze=False)
    layers = [f"{s}x{s}x{c}" for s, c in LAYERS]
    for row, summary in zip(axes, sections):
        for ax, width in zip(row, (1, 2)):
            positions = np.arange(len(layers))
            bars = [("PyTorch FP32 1x", [summary["fp32_1x"][layer] for layer in layers]),
                    ("PyTorch int8 1x", [summary["int8_1x"][layer] for layer in layers])]
            for abits, wbits in BITS:
                times = {e["layer"]: e["best_s"] for e in summary["table"]
                         if (e["width"], e["abits"], e["wbits"]) == (width, abits, wbits)}
                bars.append((f"bit-serial {width}x {abits}/{wbits}", [times[layer] for layer in layers]))
            step = 0.8 / len(bars)
            for i, (label, seconds) in enumerate(bars):
                ax.bar(positions + i * step, np.array(seconds) * 1e3, step, label=label)
            ax.set_xticks(positions + 0.4 - step / 2, layers)
            ax.set_yscale("log")
            ax.set_ylabel("ms (median, log scale)")
            ax.set_title(f"{summary['threads']} thread(s): bit-serial at {width}x width vs 1x baselines")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
