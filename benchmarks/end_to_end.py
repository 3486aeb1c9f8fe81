"""End-to-end ResNet-18 (224x224, batch 1, 2 threads) on the host: WRPN models compiled by wrpn-tvm
against the FP32 1x ResNet-18 in PyTorch eager and compiled by TVM, and against what a user would
deploy instead (the peers, benchmarks/peers.py): ONNX Runtime FP32 and static int8 and OpenVINO on
the same FP32 ResNet-18 (the TVM FP32 row's program, same weights, exported with torch's ONNX
exporter), and Larq Compute Engine on larq_zoo's binary QuickNet, all measured in one run.
The peers run in their own venvs under benchmarks/.peers, made by benchmarks/peers_env.sh (run
here first; quick when they exist); a peer that cannot be installed or run is reported as missing.

Every model is measured in its own fresh process (so peak RSS belongs to that model alone): the
TVM ones load the compiled library with the TVM runtime only; PyTorch runs the eager nn.Module.
The measurements go round-robin over the models in ROUNDS rounds, so a busy spell on a shared
machine does not land on one model only.
Latency: median of REPEAT single-inference timings after warm-up (at least 3, fewer than REPEAT
only for a model whose runs would exceed a minute in all). Peak memory: the process's
peak RSS (VmHWM) and its growth over the RSS measured after imports. For the target model
(WRPN 2x 2/2) and every TVM model slower than PyTorch FP32 1x, a per-call profile (VM
instrumentation, one run) says where the time goes. Activation memory (bytes written per inference
and the planned workspace, batch 1 and 32) is read off each compiled program (wrpn_tvm.memory).
Each WRPN model's floor (`floor_ms`) says how close it is to this CPU's limit: its quantized convs at
their kernel's instruction bound (popcount_roofline.c, int8_roofline.c, run here), the rest as profiled.
On a CPU with AMX tiles, 2x 2/2 and 2x 4/2 are also compiled for the x86-avx512 preset, which leaves
AMX out: what an AVX-512 CPU without it (AMD Zen 4/5, Intel Ice Lake) runs, timed on this one. On
CPUs without AMX (or for that preset) the int8 convs that the Winograd transforms take run in that
domain; the same models with every int8 conv direct (`--kernels int8-dot`) say what it gains.

    python benchmarks/end_to_end.py [--repeat 30] [--rounds 3] [--no-peers] [--out benchmarks/results/end_to_end]
"""

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREADS = 2
IMAGE = 224
WRPN_VARIANTS = [(2.0, 2, 2), (2.0, 4, 2), (2.0, 4, 4), (1.0, 1, 1)]  # (width, abits, wbits)
# The same models with every quantized conv on the bit-serial kernel (`compile --kernels bit-serial`):
# what the per-layer choice of the int8 dot product gains.
BITSERIAL_VARIANTS = [(2.0, 2, 2), (2.0, 4, 2)]
# Compiled for this preset too where the host has AMX (the int8 convs then run on VNNI).
WITHOUT_AMX_VARIANTS = [(2.0, 2, 2), (2.0, 4, 2)]
WITHOUT_AMX_TARGET = "x86-avx512"
WITHOUT_AMX = f"without AMX ({WITHOUT_AMX_TARGET})"
# `compile --kernels int8-dot`: every int8 conv direct, none in the Winograd domain (on a CPU
# without AMX; for the x86-avx512 preset on AMX hosts).
DIRECT_VARIANTS = [(2.0, 2, 2), (2.0, 4, 2)]
DIRECT = "int8-dot"
TARGET_VARIANT = "wrpn 2x a2/w2"
TUNED_VARIANT = "wrpn 2x a2/w2 tuned"  # compiled with the shipped tuning log, as `compile --tuning-log` does
TUNED_LOG = Path(__file__).resolve().parent.parent / "tuning_logs" / "resnet18-2x-a2w2-x86-avx512"
BASELINE = "pytorch fp32 1x"
HERE = Path(__file__).resolve().parent
PEERS_VENVS = HERE / ".peers"
# name -> (venv under PEERS_VENVS, peers.py peer, which prepared model it runs)
PEERS = {
    "onnxruntime fp32": ("ort", "ort-fp32", "fp32"),
    "onnxruntime int8 (static, QDQ)": ("ort", "ort-int8", "int8"),
    "openvino (default precision)": ("ort", "openvino", "fp32"),
    "lce binary quicknet": ("lce", "lce", "lce"),
}
MEMORY_BATCHES = (1, 32)
MEMORY_BASELINE = "tvm fp32 1x"
TIME_BUDGET_S = 60  # per model: unscheduled FP32 TVM runs take seconds each
MIN_REPEAT = 3
NOISY_SPREAD = 1.15  # a median this many times the fastest run on an idle machine: another VM took the cores


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    """VmHWM: this process image's peak RSS. (ru_maxrss would carry over the forking parent's peak.)"""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


INT8_CONV, BITSERIAL_CONV = "int8-dot conv", "bit-serial conv/dense"
QUANTIZED_KINDS = (INT8_CONV, BITSERIAL_CONV)
ROOFLINE_RUNS = 3


def _call_kind(symbol: str) -> str:
    if "wrpn_int8_conv2d" in symbol or "wrpn_int8_winograd" in symbol:
        return INT8_CONV
    if "wrpn_conv2d" in symbol or "wrpn_dense" in symbol:
        return BITSERIAL_CONV
    if "int8_levels" in symbol:
        return "int8 levels (+ fused epilogue)" if "epilogue" in symbol else "int8 levels"
    if "bitpack" in symbol:
        return "bitpack (+ fused epilogue)" if "epilogue" in symbol else "bitpack"
    if "wrpn_epilogue" in symbol:
        return "epilogue + glue (residual, quantizer)"
    if "conv2d" in symbol:
        return "fp32 conv2d"
    return "other fp32 ops (pool, bn, dense, mean)"


def _timed(run_once, repeat: int) -> list[float]:
    """Milliseconds of `repeat` runs after warm-up; a model slower than the budget gets MIN_REPEAT runs."""
    start = time.perf_counter()
    run_once()
    first = time.perf_counter() - start
    for _ in range(2 if first < 1.0 else 0):
        run_once()
    repeat = max(MIN_REPEAT, min(repeat, int(TIME_BUDGET_S / max(first, 1e-6))))
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        run_once()
        runs.append((time.perf_counter() - start) * 1e3)
    return runs


def measure_tvm(library: str, repeat: int) -> dict:
    """Runs in a child process: TVM runtime only."""
    import numpy as np
    import tvm
    from tvm import relax

    base = _rss_mib()
    vm = relax.VirtualMachine(tvm.runtime.load_module(library), tvm.cpu())
    x = tvm.runtime.tensor(np.random.default_rng(0).random((1, 3, IMAGE, IMAGE), dtype=np.float32))
    runs = _timed(lambda: vm["main"](x), repeat)
    peak = _peak_mib()
    profile, started = collections.defaultdict(float), {}

    def instrument(func, symbol, before, ret, *args):
        if before:
            started[symbol] = time.perf_counter()
        else:
            profile[symbol] += (time.perf_counter() - started.pop(symbol)) * 1e3
        return 0

    vm.set_instrument(instrument)
    vm["main"](x)
    return {"runs_ms": runs, "peak_rss_mib": peak, "rss_after_imports_mib": base, "profile_ms": dict(profile)}


def measure_torch(repeat: int) -> dict:
    """Runs in a child process: PyTorch eager FP32 ResNet-18 1x (the WRPN zoo's, full precision)."""
    import torch

    from wrpn_tvm.nn import build_model

    torch.set_num_threads(THREADS)
    base = _rss_mib()
    model = build_model("resnet18", 1.0, 32, 32, num_classes=1000, in_channels=3, image_size=IMAGE).eval()
    x = torch.rand(1, 3, IMAGE, IMAGE)
    with torch.inference_mode():
        runs = _timed(lambda: model(x), repeat)
    return {"runs_ms": runs, "peak_rss_mib": _peak_mib(), "rss_after_imports_mib": base}


def _run_json(command: list) -> dict:
    env = {**os.environ, "TVM_NUM_THREADS": str(THREADS), "OMP_NUM_THREADS": str(THREADS), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:4])} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child(kind: str, arg: str, repeat: int) -> dict:
    return _run_json([sys.executable, __file__, "--child", kind, "--child-arg", arg, "--repeat", str(repeat)])


def _peer_command(venv: str, *args) -> list:
    return [str(PEERS_VENVS / venv / "bin" / "python"), str(HERE / "peers.py"), *args]


def peers_env(venv: str) -> str | None:
    """Make (or find) a peers venv with benchmarks/peers_env.sh; None, or why it could not."""
    print(f"[{time.strftime('%H:%M:%S')}] peers: venv {venv}", flush=True)
    done = subprocess.run(["bash", str(HERE / "peers_env.sh"), venv], capture_output=True, text=True, check=False)
    return None if done.returncode == 0 else f"benchmarks/peers_env.sh {venv} failed: {done.stderr.strip()[-500:]}"


def prepare_peers(folder: Path, fp32_program: Path) -> tuple[dict, dict]:
    """(name -> command that times it, name -> why it is missing): venvs, ONNX models, QuickNet."""
    ready, missing, models = {}, {}, {}
    for venv in sorted({venv for venv, _, _ in PEERS.values()}):
        reason = peers_env(venv)
        if reason:
            missing.update({name: reason for name, (v, _, _) in PEERS.items() if v == venv})
            continue
        try:
            if venv == "ort":
                models.update(_run_json(_peer_command("ort", "prepare-onnx", str(fp32_program), str(folder / "onnx"))))
            else:
                models.update(_run_json(_peer_command("lce", "prepare-lce", str(folder / "lce"))))
        except RuntimeError as error:
            reason = str(error).strip().splitlines()[-1]
            missing.update({name: reason for name, (v, _, _) in PEERS.items() if v == venv})
    for name, (venv, peer, model) in PEERS.items():
        if name not in missing:
            ready[name] = _peer_command(venv, "time", peer, models[model])
    return ready, missing


def compile_variant(folder: Path, name: str, width: float, abits: int, wbits: int,
                    tuning_log: Path | None = None, kernels: str = "auto",
                    target: str = "host") -> tuple[str, float, list, dict, list]:
    """(library, compile seconds, layer reports, activation memory at MEMORY_BATCHES read off the
    compiled program: bytes written per inference and planned workspace, the quantized layers' work
    for `floor_ms`)."""
    import torch

    from wrpn_tvm import build
    from wrpn_tvm.memory import program_footprints
    from wrpn_tvm.nn import build_model, export_model

    torch.manual_seed(0)
    model = build_model("resnet18", width, abits, wbits, num_classes=1000, in_channels=3, image_size=IMAGE).eval()
    program = folder / f"{name.replace(' ', '_').replace('/', '')}.pt2"
    torch.export.save(export_model(model, torch.rand(1, 3, IMAGE, IMAGE)), str(program))
    start = time.perf_counter()
    result = build.compile_model(program, target, program.with_suffix(".so"), tuning_log=tuning_log, kernels=kernels)
    seconds = time.perf_counter() - start
    # The build recorded its own batch (the program is exported at batch 1); the others are the
    # program traced again at that batch.
    others = tuple(batch for batch in MEMORY_BATCHES if batch != 1)
    footprints = {1: result.memory, **program_footprints(program, batches=others, target=target,
                                                               kernels=kernels)}
    memory = {str(batch): footprint.to_json() for batch, footprint in footprints.items()
              if footprint is not None}  # None: a shape that is not static
    quantized = [{"kernel": layer.lowered_to.split(" ", 1)[0], "bits": layer.bits, "macs": _multiplies(layer),
                  "in_channels": layer.input_shape[1], "kernel_size": layer.weight_shape[-1] if layer.op == "conv2d" else 1,
                  "out_width": layer.output_shape[-1], "target": target}
                 for layer in result.layers if layer.is_bitserial]
    return str(result.library), seconds, [str(layer) for layer in result.layers], memory, quantized


def _multiplies(layer) -> int:
    """The layer's MACs, or in the Winograd domain its dot products' (16 per 2x2 tile, input and
    output channel): what its instruction bound counts."""
    from wrpn_tvm.lowering.report import WINOGRAD

    if layer.kernel != WINOGRAD:
        return layer.macs
    batch, out_channels, height, width = layer.output_shape
    return batch * -(-height // 2) * -(-width // 2) * 16 * layer.weight_shape[1] * out_channels


def instruction_bounds() -> dict:
    """This CPU's MAC/s bounds at THREADS threads for the quantized kernels: bit-serial in binary
    MAC/s (popcount_roofline.c's instruction-throughput bound, the highest of ROOFLINE_RUNS runs), the
    int8 dot product per instruction mix (int8_roofline.c's register-only rate on one core, times
    THREADS: all-core clocks can only be lower, so this stays a bound)."""
    import int8_roofline
    from kernels import roofline

    popcount = max(run["bound_binary_macs_per_s"] for run in roofline(ROOFLINE_RUNS, THREADS))
    int8 = {mix: rate["gmac_per_s"] * 1e9 * THREADS for mix, rate in int8_roofline.roofline()["mixes"].items()}
    return {"bitserial_binary_macs_per_s": popcount, "int8_macs_per_s": int8}


def _bound_seconds(layer: dict, bounds: dict) -> "float | None":
    """A quantized layer's time at its kernel's instruction bound on this CPU (None: no bound for it)."""
    import int8_roofline
    from wrpn_tvm.targets import resolve

    abits, wbits = (int(part[1:]) for part in layer["bits"].split("/"))
    if layer["kernel"] == "bit-serial":
        return layer["macs"] * abits * wbits / bounds["bitserial_binary_macs_per_s"]
    if layer["kernel"] == "int8-dot":
        mix = int8_roofline._expected_mix(resolve(layer.get("target", "host")), (abits, wbits), layer["in_channels"], layer["kernel_size"],
                                          layer.get("out_width"))
        rate = bounds["int8_macs_per_s"].get(mix)
        return None if rate is None else layer["macs"] / rate
    return None


def floor_ms(entry: dict, bounds: dict) -> "dict | None":
    """How close a compiled model is to this CPU's limit: its quantized convs at their instruction
    bound, everything else at its share of the median in the profiled run. None without a profile or
    where a kernel has no bound."""
    seconds = [_bound_seconds(layer, bounds) for layer in entry.get("quantized", [])]
    profile = entry.get("profile_grouped_ms")
    if not seconds or profile is None or any(s is None for s in seconds):
        return None
    total = sum(profile.values())
    quantized_share = sum(ms for kind, ms in profile.items() if kind in QUANTIZED_KINDS) / total
    bound = 1e3 * sum(seconds)
    rest = (1 - quantized_share) * entry["median_ms"]
    return {"quantized_at_bound_ms": bound, "quantized_ms": quantized_share * entry["median_ms"], "rest_ms": rest,
            "floor_ms": bound + rest}


def _median(values):
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def _grouped_profile(profile_ms: dict) -> dict:
    groups = collections.defaultdict(float)
    for symbol, ms in profile_ms.items():
        groups[_call_kind(symbol)] += ms
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]))


def _merge(rounds: list[dict]) -> dict:
    merged = {key: value for key, value in rounds[-1].items() if key not in ("runs_ms", "peak_rss_mib")}
    merged["runs_ms"] = [ms for r in rounds for ms in r["runs_ms"]]
    merged["peak_rss_mib"] = max(r["peak_rss_mib"] for r in rounds)
    merged["rss_after_imports_mib"] = min(r["rss_after_imports_mib"] for r in rounds)
    return merged


def _host_has_amx() -> bool:
    from wrpn_tvm.pipeline import amx_available
    from wrpn_tvm.targets import resolve

    return amx_available(resolve("host").target)


def run(repeat: int, rounds: int, out: Path, with_peers: bool = True) -> dict:
    import torch

    from wrpn_tvm.runtime import machine_info

    load_before = os.getloadavg()
    load_per_round = []
    variants = [("tvm fp32 1x", 1.0, 32, 32, None, "auto", "host")]
    variants += [(f"wrpn {w:g}x a{a}/w{b}", w, a, b, None, "auto", "host") for w, a, b in WRPN_VARIANTS]
    variants += [(f"wrpn {w:g}x a{a}/w{b} bit-serial", w, a, b, None, "bit-serial", "host")
                 for w, a, b in BITSERIAL_VARIANTS]
    variants.append((TUNED_VARIANT, 2.0, 2, 2, TUNED_LOG, "auto", "host"))
    on_tiles = _host_has_amx()
    if on_tiles:
        variants += [(f"wrpn {w:g}x a{a}/w{b} {WITHOUT_AMX}", w, a, b, None, "auto", WITHOUT_AMX_TARGET)
                     for w, a, b in WITHOUT_AMX_VARIANTS]
        variants.append((f"{TUNED_VARIANT} {WITHOUT_AMX}", 2.0, 2, 2, TUNED_LOG, "auto", WITHOUT_AMX_TARGET))
    direct_suffix, direct_target = (f" {WITHOUT_AMX}", WITHOUT_AMX_TARGET) if on_tiles else ("", "host")
    variants += [(f"wrpn {w:g}x a{a}/w{b} {DIRECT}{direct_suffix}", w, a, b, None, DIRECT, direct_target)
                 for w, a, b in DIRECT_VARIANTS]
    compiled = {}
    with tempfile.TemporaryDirectory(prefix="wrpn-e2e-") as tmp:
        folder = Path(tmp)
        for name, width, abits, wbits, log, kernels, target in variants:
            print(f"[{time.strftime('%H:%M:%S')}] compiling {name}", flush=True)
            compiled[name] = compile_variant(folder, name, width, abits, wbits, log, kernels, target)
        peers, peers_missing = {}, {}
        if with_peers:
            peers, peers_missing = prepare_peers(folder, Path(compiled["tvm fp32 1x"][0]).with_suffix(".pt2"))
        # Round-robin over the models, so load from other jobs on a shared machine hits them alike.
        measured = collections.defaultdict(list)
        per_round = max(1, repeat // rounds)
        for index in range(rounds):
            print(f"[{time.strftime('%H:%M:%S')}] round {index + 1}/{rounds}", flush=True)
            load_per_round.append(os.getloadavg())
            measured[BASELINE].append(_child("torch", "", per_round))
            for name, (library, *_) in compiled.items():
                measured[name].append(_child("tvm", library, per_round))
            for name, command in list(peers.items()):
                try:
                    measured[name].append(_run_json(command + ["--repeat", str(per_round)]))
                except RuntimeError as error:
                    peers_missing[name] = str(error).strip().splitlines()[-1]
                    del peers[name]
                    measured.pop(name, None)
    print(f"[{time.strftime('%H:%M:%S')}] instruction bounds", flush=True)
    bounds = instruction_bounds()
    results = {name: _merge(rounds_of) for name, rounds_of in measured.items()}
    for name, (_, seconds, layers, memory, quantized) in compiled.items():
        results[name].update(compile_s=seconds, layers=layers, memory=memory, quantized=quantized)
    baseline_ms = _median(results[BASELINE]["runs_ms"])
    for name in peers:
        results[name]["peer"] = True
    for entry in results.values():
        entry["median_ms"] = _median(entry["runs_ms"])
        entry["speedup_vs_pytorch_fp32_1x"] = baseline_ms / entry["median_ms"]
        if "profile_ms" in entry:
            entry["profile_grouped_ms"] = _grouped_profile(entry["profile_ms"])
        floor = floor_ms(entry, bounds)
        if floor is not None:
            entry["floor"] = floor
    report = {
        "benchmark": "end_to_end",
        "model": "resnet18", "image": IMAGE, "batch": 1, "threads": THREADS, "repeat": repeat, "rounds": rounds,
        "machine": {**machine_info(), "platform": platform.platform(), "torch": torch.__version__},
        "instruction_bounds": bounds,
        "load_average_1_5_15min": {"start": load_before, "end": os.getloadavg(), "per_round": load_per_round},
        "git": subprocess.run(["git", "-C", str(HERE), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, check=False).stdout.strip(),
        "command": "python benchmarks/end_to_end.py" + (f" --repeat {repeat}" if repeat != 30 else "")
                   + (f" --rounds {rounds}" if rounds != 3 else "") + ("" if with_peers else " --no-peers"),
        "peers": {name: {"what": PEERS[name][1], "versions": results[name]["versions"],
                         "settings": results[name]["settings"]} for name in peers},
        "peers_missing": peers_missing,
        "note": "untuned compile: each quantized conv on the kernel the cost model picks (bit-serial or int8 dot; "
                "without AMX the int8 3x3 stride-1 convs in the Winograd F(2x2, 3x3) domain), templates at their "
                "default decisions, other TIR under the build's generic parallel fallback schedule; "
                "'... bit-serial': every quantized conv bit-serial; '... int8-dot': every quantized conv a direct "
                "int8 dot product (compile --kernels int8-dot); "
                f"'{TUNED_VARIANT}': compiled with {TUNED_LOG.relative_to(TUNED_LOG.parent.parent)}",
        "target": f"{TARGET_VARIANT} no slower than {BASELINE}",
        "target_met": results[TARGET_VARIANT]["median_ms"] <= baseline_ms,
        "target_met_tuned": results[TUNED_VARIANT]["median_ms"] <= baseline_ms,
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    plot(report, out.with_suffix(".png"))
    return report


def _loaded(report) -> bool:
    """Whether other jobs shared the CPU during the run (a 1-minute load above one core's worth)."""
    return max(report["load_average_1_5_15min"]["start"][0], report["load_average_1_5_15min"]["end"][0]) > 1.5


def _spread(report) -> float:
    """The largest median / fastest-run ratio of any model: on a machine the load average calls idle,
    above NOISY_SPREAD it means another virtual machine took CPU time from this one's cores."""
    return max(r["median_ms"] / min(r["runs_ms"]) for r in report["results"].values())


def markdown(report: dict) -> str:
    m = report["machine"]
    results = report["results"]
    baseline = results[BASELINE]["median_ms"]
    lines = [
        "# End to end: ResNet-18, 224x224, batch 1, 2 threads (host)",
        "",
        f"Machine: {m['cpu']} ({m['cores']} cores, LLVM cpu {m['llvm_cpu']}), Python {m['python']}, "
        f"TVM {m['tvm']}, PyTorch {m['torch']}, wrpn-tvm {m['wrpn_tvm']}. Medians of {report['repeat']} timed "
        f"runs per model (fewer only where a model takes seconds per run), taken in {report['rounds']} "
        f"round-robin rounds, each model in a fresh process per round. {report['note']}. Peak RSS includes "
        "the Python interpreter and runtime libraries; RSS growth is over the process right after imports.",
        "",
        f"Load average (1 min) at start / end: {report['load_average_1_5_15min']['start'][0]:.1f} / "
        f"{report['load_average_1_5_15min']['end'][0]:.1f} on a 2-core machine. " + (
            "Other jobs were running: every model got a fraction of the CPU, and absolute times are several "
            "times what a quiet machine gives (PyTorch's OpenMP threads suffer most from oversubscription). "
            "Compare rows with each other, and the min column as well as the median." if _loaded(report) else
            f"The load average saw no other job, yet the timings were noisy: a model's median was up to "
            f"{_spread(report):.1f}x its fastest run (another virtual machine on this host's cores), so compare "
            "the min column as well as the median." if _spread(report) > NOISY_SPREAD else
            "The machine was otherwise idle.") + (
            " Load average (1 min) at the start of each round: " + ", ".join(
                f"{load[0]:.1f}" for load in report["load_average_1_5_15min"]["per_round"]) + "."
            if report["load_average_1_5_15min"].get("per_round") else ""),
        "",
        f"Rerun (one command; the first run also makes the peers' venvs): "
        f"`{report.get('command', 'python benchmarks/end_to_end.py')}`." + (
            f" Code: `{report['git']}`" + (" (the working tree had uncommitted changes)" if report["git"].endswith(
                "-dirty") else "") + "." if "git" in report else ""),
        "",
        "| model | median ms | min ms | runs | vs PyTorch FP32 1x (median) | peak RSS MiB | RSS growth MiB | compile s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        growth = r["peak_rss_mib"] - r["rss_after_imports_mib"]
        compile_s = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
        lines.append(f"| {name} | {r['median_ms']:.1f} | {min(r['runs_ms']):.1f} | {len(r['runs_ms'])} | "
                     f"{r['speedup_vs_pytorch_fp32_1x']:.2f}x | "
                     f"{r['peak_rss_mib']:.0f} | {growth:.0f} | {compile_s} |")
    lines += _peer_lines(report)
    lines += _memory_lines(results)
    target = results[TARGET_VARIANT]
    verdict = "met" if report["target_met"] else (
        f"missed: {target['median_ms']:.1f} ms vs {baseline:.1f} ms, {target['median_ms'] / baseline:.2f}x slower")
    best_ratio = min(results[BASELINE]["runs_ms"]) / min(target["runs_ms"])
    lines += ["", f"Target ({report['target']}): **{verdict}** by the medians; by the fastest runs "
              f"{TARGET_VARIANT} is {best_ratio:.2f}x PyTorch FP32 1x's speed. " + (
                  "Both were measured under the same load, round-robin; the verdict on a quiet machine is not "
                  "measured here." if _loaded(report) else "Noisy timings (see above): the minima are the steadier "
                  "comparison." if _spread(report) > NOISY_SPREAD else "Measured on an otherwise idle machine."), ""]
    tuned = results[TUNED_VARIANT]
    lines += [f"With the shipped tuning log ({TUNED_VARIANT}): {tuned['median_ms']:.1f} ms, "
              f"{baseline / tuned['median_ms']:.2f}x PyTorch FP32 1x's speed: target "
              f"**{'met' if report['target_met_tuned'] else 'missed'}** tuned.", ""]
    lines += _peer_target_lines(results)
    lines += _floor_lines(report)
    for name, r in results.items():
        if "profile_grouped_ms" not in r or (r["median_ms"] <= baseline and name != TARGET_VARIANT):
            continue
        total = sum(r["profile_ms"].values())
        lines += [f"## Where the time goes: {name} (one instrumented run, {total:.1f} ms)", "",
                  "| kind of call | ms | share |", "| --- | ---: | ---: |"]
        lines += [f"| {kind} | {ms:.1f} | {100 * ms / total:.0f}% |" for kind, ms in r["profile_grouped_ms"].items()]
        top = sorted(r["profile_ms"].items(), key=lambda kv: -kv[1])[:8]
        lines += ["", "Slowest calls: " + ", ".join(f"`{sym}` {ms:.1f} ms" for sym, ms in top), ""]
    return "\n".join(lines) + "\n"


# (model, reference, at most this many times the reference's median)
PEER_TARGETS = [
    (TARGET_VARIANT, "onnxruntime fp32", 1.0),
    (TUNED_VARIANT, "onnxruntime fp32", 1.0),
    ("wrpn 1x a1/w1", "onnxruntime int8 (static, QDQ)", 1.0),
    ("wrpn 2x a4/w2", BASELINE, 0.6),
    (f"wrpn 2x a2/w2 {WITHOUT_AMX}", "onnxruntime fp32", 1.0),
    (f"wrpn 2x a4/w2 {WITHOUT_AMX}", BASELINE, 0.6),
    (f"{TUNED_VARIANT} {WITHOUT_AMX}", "onnxruntime fp32", 1.0),
    (MEMORY_BASELINE, "onnxruntime fp32", 1.3),
]


def _peer_target_lines(results: dict) -> list:
    """The latency targets against the peers, as ratios of medians from this run."""
    rows = [(model, reference, bound, results[model]["median_ms"] / results[reference]["median_ms"])
            for model, reference, bound in PEER_TARGETS if model in results and reference in results]
    if not rows:
        return []
    lines = ["Latency targets against the peers (this run's medians; ratio = model / reference; floor ratio: the "
             "model's floor, below, over the reference: the best ratio this CPU allows with these kernels):", "",
             "| model | reference | ratio | at most | verdict | floor ratio |",
             "| --- | --- | ---: | ---: | --- | ---: |"]
    for model, reference, bound, ratio in rows:
        verdict = "met" if ratio <= bound else f"missed by {100 * (ratio / bound - 1):.0f}%"
        floor = results[model].get("floor")
        floor_ratio = f"{floor['floor_ms'] / results[reference]['median_ms']:.2f}" if floor else "-"
        lines.append(f"| {model} | {reference} | {ratio:.2f} | {bound:g} | {verdict} | {floor_ratio} |")
    return lines + [""]


def _floor_lines(report: dict) -> list:
    """Each compiled WRPN model against this CPU's limit for its kernels (`floor_ms`)."""
    bounds = report.get("instruction_bounds")
    floors = {name: r["floor"] for name, r in report["results"].items() if "floor" in r}
    if not bounds or not floors:
        return []
    int8 = ", ".join(f"{mix} {rate / 1e9:.0f}" for mix, rate in bounds["int8_macs_per_s"].items())
    lines = ["## How close to this CPU's limit", "",
             f"Floor: the quantized convs at their kernel's instruction bound at {THREADS} threads (bit-serial: "
             f"{bounds['bitserial_binary_macs_per_s'] / 1e12:.2f} T binary MAC/s, popcount_roofline.c, abits x wbits "
             f"binary MACs per MAC; int8 dot: {int8} GMAC/s per mix, int8_roofline.c's one-core rate x {THREADS}), "
             "plus everything else (FP32 stem and classifier, packs, epilogues, pool) at its share of the median in "
             "the profiled run. No schedule of these kernels runs the model faster on this CPU; only fewer "
             "instructions per MAC (another kernel) or less other work could.", "",
             "| model | median ms | quantized convs ms | at bound ms | % of bound | rest ms | floor ms |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, floor in floors.items():
        lines.append(f"| {name} | {report['results'][name]['median_ms']:.1f} | {floor['quantized_ms']:.1f} | "
                     f"{floor['quantized_at_bound_ms']:.1f} | "
                     f"{100 * floor['quantized_at_bound_ms'] / floor['quantized_ms']:.0f}% | {floor['rest_ms']:.1f} | "
                     f"{floor['floor_ms']:.1f} |")
    return lines + [""]


def _memory_lines(results: dict) -> list:
    """Activation bytes written per inference and planned workspace per compiled model, against TVM FP32 1x."""
    compiled = {name: r["memory"] for name, r in results.items() if "memory" in r}
    if MEMORY_BASELINE not in compiled:
        return []
    mib = 1 << 20
    header = " | ".join(f"{what} b{batch} MiB | vs FP32 1x" for batch in MEMORY_BATCHES
                        for what in ("written", "workspace"))
    lines = ["", "## Activation memory (read off each compiled program: `wrpn_tvm.memory`)", "",
             "Written: the output tensors of every kernel call per inference (not inputs, weights or constants). "
             "Workspace: what Relax's memory planner allocates for intermediates (reused storage counted once; "
             "the model's outputs apart). Batch 32 is the same program traced again at that batch.", "",
             f"| model | {header} |", "| --- |" + " ---: | ---: |" * 2 * len(MEMORY_BATCHES)]
    base = compiled[MEMORY_BASELINE]
    for name, memory in compiled.items():
        cells = []
        for batch in MEMORY_BATCHES:
            for key in ("activation_bytes", "workspace_bytes"):
                value, reference = memory.get(str(batch), {}).get(key), base.get(str(batch), {}).get(key)
                cells += ["-", "-"] if value is None or not reference else [f"{value / mib:.1f}", f"{value / reference:.2f}x"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _peer_lines(report: dict) -> list:
    """Ratios of every compiled model to PyTorch and to each peer, from the same run's medians."""
    results = report["results"]
    peers = list(report.get("peers", {}))
    lines = []
    if peers:
        references = [BASELINE] + peers
        ours = [name for name, r in results.items() if name != BASELINE and not r.get("peer")]
        lines += ["", "## Against what a user would deploy instead (same run, round-robin)", "",
                  "Each cell: the other's median / ours, so above 1 means ours is faster. The ONNX Runtime and "
                  "OpenVINO rows run the TVM FP32 row's ResNet-18 (same weights, torch's ONNX exporter); LCE runs "
                  "larq_zoo's binary QuickNet (random weights), a different network of ResNet-18's size class "
                  "(63.3% ImageNet top-1 trained): compare it with the 1x 1/1 row.", "",
                  "| model | " + " | ".join(f"vs {name}" for name in references) + " |",
                  "| --- |" + " ---: |" * len(references)]
        for name in ours:
            lines.append(f"| {name} | " + " | ".join(
                f"{results[ref]['median_ms'] / results[name]['median_ms']:.2f}" for ref in references) + " |")
        lines += ["", "Peers: " + "; ".join(
            f"{name}: " + ", ".join(f"{k} {v}" for k, v in {**info['versions'], **info['settings']}.items())
            for name, info in report["peers"].items()) + "."]
    for name, reason in report.get("peers_missing", {}).items():
        lines += ["", f"Missing peer {name}: {reason}"]
    return lines


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    medians = [report["results"][n]["median_ms"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = ["tab:orange" if report["results"][n].get("peer") else "tab:blue" if n.startswith("wrpn") else "tab:gray"
              for n in names]
    ax.barh(names, medians, color=colors, label="median")
    ax.scatter([min(report["results"][n]["runs_ms"]) for n in names], names, color="black", marker="D", s=18,
               zorder=3, label="fastest run")
    ax.axvline(report["results"][BASELINE]["median_ms"], color="tab:red", linestyle="--", label=BASELINE)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on a short decade
    ax.set_xlabel("latency, ms (log scale)")
    ax.set_title("ResNet-18 224x224, batch 1, 2 threads")
    ax.invert_yaxis()
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "end_to_end")
    parser.add_argument("--no-peers", action="store_true", help="leave out ONNX Runtime, OpenVINO and LCE")
    parser.add_argument("--render", action="store_true", help="rebuild OUT.md and OUT.png from OUT.json")
    parser.add_argument("--child", choices=["tvm", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--child-arg", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "tvm":
        print(json.dumps(measure_tvm(args.child_arg, args.repeat)))
    elif args.child == "torch":
        print(json.dumps(measure_torch(args.repeat)))
    elif args.render:
        report = json.loads(args.out.with_suffix(".json").read_text())
        args.out.with_suffix(".md").write_text(markdown(report))
        plot(report, args.out.with_suffix(".png"))
    else:
        report = run(args.repeat, args.rounds, args.out, with_peers=not args.no_peers)
        print(args.out.with_suffix(".md").read_text())
        print("target met" if report["target_met"] else "target missed")


if __name__ == "__main__":
    main()
