"""ResNet-18 (224x224, batch 1, 1 and 2 threads) built for `--target x86-avx2` against PyTorch FP32
1x restricted to AVX2, all measured in one run.

An AVX2-only machine is emulated on this AVX-512 one: the WRPN models are compiled for the
`x86-avx2` preset (LLVM x86-64-v3: AVX2, FMA, BMI2, no AVX-512 instruction; the tests read the
assembly), and PyTorch runs with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2, so that ATen's
kernels and oneDNN's convolutions use AVX2 code paths only (the child records what
torch.backends.cpu.get_cpu_capability() reports). The core's clock, caches and memory stay this
machine's.

Models (untuned: the templates at their default decisions):
  * pytorch fp32 1x (avx2): the baseline; the WRPN zoo's ResNet-18 at full precision, eager;
  * wrpn 2x a2/w2 and wrpn 1x a1/w1 for x86-avx2: the targets, each layer on the kernel the cost
    model picks (`--kernels auto`: table lookups for most 2/2 layers on AVX2, int8 dot products for
    the rest; bit-serial or lookups at 1/1);
  * wrpn 2x a2/w2 x86-avx2, int8-dot / bit-serial: every quantized layer on that kernel (vpmaddubsw;
    bit-serial with nibble counts), the alternatives the lookups are weighed against;
  * wrpn 2x a2/w2 x86-avx512: for reference, what the AVX-512 VPOPCNTQ build takes here;
  * where this CPU has AVX-VNNI, wrpn 2x a2/w2 and 1x a1/w1 for x86-avx2-vnni (the AVX2 laptops and
    desktops of Intel's Alder Lake and later: int8 dot products as VEX vpdpbusd on ymm), with the
    same targets as their x86-avx2 twins;
  * ONNX Runtime FP32 and static int8 (QDQ, per-channel weights) on the same FP32 ResNet-18 1x, in
    their own venv (benchmarks/peers_env.sh ort; `--no-peers` leaves them out). These are NOT
    restricted to AVX2: ONNX Runtime's MLAS picks its kernels from CPUID and has no switch to
    hide AVX-512 or VNNI, so its rows say what it does on this AVX-512 + VNNI CPU, an upper bound
    of what it would do on an AVX2 one.
Each model is timed in its own fresh process per thread count, round-robin over ROUNDS rounds so a
busy spell on a shared machine hits every model alike; latency is the median (and min) of
single-inference runs after warm-up, and beside the ratio of the pooled medians the median over
rounds of each round's ratio (the model against PyTorch timed minutes apart, not hours: the
steadier figure where the machine's speed drifts). The load average before and after goes into
the results.
(On a loaded machine the 1-thread rows are the fairer comparison: an OpenMP or TVM thread pool
whose second thread is descheduled waits for it at every barrier.)

    python benchmarks/avx2.py [--repeat 30] [--rounds 3] [--threads 1 2] [--no-peers] [--out benchmarks/results/avx2]
    python benchmarks/avx2.py --kernels   # then the per-layer kernels (1 thread, CPU time, llvm-mca), same files
    python benchmarks/avx2.py --out benchmarks/results/avx2_emeraldrapids   # results per CPU: one file each

Per-layer kernels: ResNet-18's 3x3 convs at 2x 2/2, 2x 4/2 and 1x 1/1, the bit-serial conv built
three ways (x86-avx2 with the nibble counts forced, x86-avx2 with LLVM's popcount only,
x86-avx512), and the x86-avx2 int8-dot and lookup convs, timed as CPU time per call at 1 thread
(what other jobs take from this core does not count; the lookup conv's tables pass and the int8
conv's padding pass are left out, as the bit-serial conv's pack is); for the AVX2 bit-serial
builds with multi-bit weights also llvm-mca's cycles per 256-bit AND + popcount + accumulate in
the hot loop on Haswell, Skylake and Zen 3 models (no load, no memory effects).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from end_to_end import NOISY_SPREAD, _peer_command, peers_env

IMAGE = 224
AVX2_TORCH_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
BASELINE = "pytorch fp32 1x (avx2)"
# name: (width, abits, wbits, target, kernels, nibble counts on)
WRPN_MODELS = {
    "wrpn 2x a2/w2 x86-avx2": (2.0, 2, 2, "x86-avx2", "auto", True),
    "wrpn 1x a1/w1 x86-avx2": (1.0, 1, 1, "x86-avx2", "auto", True),
    "wrpn 2x a2/w2 x86-avx2, int8-dot": (2.0, 2, 2, "x86-avx2", "int8-dot", True),
    "wrpn 2x a2/w2 x86-avx2, bit-serial": (2.0, 2, 2, "x86-avx2", "bit-serial", True),
    "wrpn 2x a2/w2 x86-avx512": (2.0, 2, 2, "x86-avx512", "auto", True),
}
TARGETS = {  # model: (how much faster than the baseline it must be, by the medians)
    "wrpn 2x a2/w2 x86-avx2": 1.0,
    "wrpn 1x a1/w1 x86-avx2": 3.0,
}
# Where this CPU has AVX-VNNI (VEX-encoded vpdpbusd on ymm: Intel Alder Lake and later client CPUs,
# Sapphire Rapids and later servers, AMD Zen 5), also the models built for that AVX2 machine.
AVX_VNNI_MODELS = {
    "wrpn 2x a2/w2 x86-avx2-vnni": (2.0, 2, 2, "x86-avx2-vnni", "auto", True),
    "wrpn 1x a1/w1 x86-avx2-vnni": (1.0, 1, 1, "x86-avx2-vnni", "auto", True),
}


# name -> (peers.py peer, which prepared ONNX model it runs); not restricted to AVX2 (see above).
ORT_PEERS = {
    "onnxruntime fp32 1x (this CPU's full ISA)": ("ort-fp32", "fp32"),
    "onnxruntime int8 1x, static QDQ (this CPU's full ISA)": ("ort-int8", "int8"),
}


def prepare_ort(folder: Path) -> tuple[dict, "str | None"]:
    """(peer name -> its peers.py `time` command, or why they are missing): the ort venv and the
    FP32 ResNet-18 1x exported to ONNX (FP32 and static int8)."""
    import torch

    from wrpn_tvm.nn import build_model, export_model

    reason = peers_env("ort")
    if reason:
        return {}, reason
    torch.manual_seed(0)
    model = build_model("resnet18", 1.0, 32, 32, num_classes=1000, in_channels=3, image_size=IMAGE).eval()
    program = folder / "fp32_1x.pt2"
    torch.export.save(export_model(model, torch.rand(1, 3, IMAGE, IMAGE)), str(program))
    done = subprocess.run(_peer_command("ort", "prepare-onnx", str(program), str(folder / "onnx")),
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {}, f"peers.py prepare-onnx failed: {done.stderr.strip()[-300:]}"
    models = json.loads(done.stdout.strip().splitlines()[-1])
    return {name: _peer_command("ort", "time", peer, models[which]) for name, (peer, which) in ORT_PEERS.items()}, None


def _peer_child(command: list, repeat: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([*command, "--repeat", str(repeat), "--threads", str(threads)], capture_output=True,
                          text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:4])} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _host_has_avx_vnni() -> bool:
    from tvm.target.codegen import target_has_features

    from wrpn_tvm.targets import resolve

    return target_has_features("avxvnni", resolve("host").target)
WARMUP = 3
STALLED_RATIO = 2.0  # a median this many times the fastest run: the model's threads stalled under the load


def _timed(run_once, repeat: int) -> list[float]:
    for _ in range(WARMUP):
        run_once()
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        run_once()
        runs.append((time.perf_counter() - start) * 1e3)
    return runs


def measure_tvm(library: str, repeat: int) -> dict:
    """Runs in a child process: the TVM runtime only."""
    import numpy as np
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(library), tvm.cpu())
    x = tvm.runtime.tensor(np.random.default_rng(0).random((1, 3, IMAGE, IMAGE), dtype=np.float32))
    return {"runs_ms": _timed(lambda: vm["main"](x), repeat)}


def measure_torch(repeat: int, threads: int) -> dict:
    """Runs in a child process started with AVX2_TORCH_ENV."""
    import torch

    from wrpn_tvm.nn import build_model

    torch.set_num_threads(threads)
    model = build_model("resnet18", 1.0, 32, 32, num_classes=1000, in_channels=3, image_size=IMAGE).eval()
    x = torch.rand(1, 3, IMAGE, IMAGE)
    with torch.inference_mode():
        runs = _timed(lambda: model(x), repeat)
    return {"runs_ms": runs, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _child(kind: str, arg: str, repeat: int, threads: int) -> dict:
    env = {**os.environ, "TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    if kind == "torch":
        env.update(AVX2_TORCH_ENV)
    command = [sys.executable, __file__, "--child", kind, "--child-arg", arg, "--repeat", str(repeat),
               "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} {arg} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compile_model(folder: Path, name: str, width: float, abits: int, wbits: int, target: str, kernel_mode: str,
                  nibble_counts: bool) -> tuple[str, float, str]:
    """(library, compile seconds, the lowering's summary: which kernel runs how many layers)."""
    import torch

    import schedules.x86
    from wrpn_tvm import build
    from wrpn_tvm.lowering import summary
    from wrpn_tvm.nn import build_model, export_model

    torch.manual_seed(0)
    model = build_model("resnet18", width, abits, wbits, num_classes=1000, in_channels=3, image_size=IMAGE).eval()
    program = folder / f"{''.join(c if c.isalnum() else '_' for c in name)}.pt2"
    torch.export.save(export_model(model, torch.rand(1, 3, IMAGE, IMAGE)), str(program))
    default_pairs = schedules.x86.MIN_DEFAULT_PAIRS
    # Off: no layer has enough plane pairs for the nibble counts, so all take the generic templates.
    schedules.x86.MIN_DEFAULT_PAIRS = default_pairs if nibble_counts else sys.maxsize
    try:
        start = time.perf_counter()
        result = build.compile_model(program, target, program.with_suffix(".so"), kernels=kernel_mode)
        return str(result.library), time.perf_counter() - start, summary(result.layers)
    finally:
        schedules.x86.MIN_DEFAULT_PAIRS = default_pairs


# Per-layer kernels: load-robust numbers (CPU time at 1 thread, and llvm-mca's static cycle counts).
KERNEL_LAYERS = [(56, 64), (28, 128), (14, 256), (7, 512)]  # ResNet-18's 3x3 convs at 1x width: (image, channels)
KERNEL_CONFIGS = [(2, 2, 2), (2, 4, 2), (1, 1, 1)]  # (width, abits, wbits)
# name: (target, minimum plane pairs for the nibble counts: 1 forces them, sys.maxsize switches them off)
KERNEL_BUILDS = {
    "x86-avx2 nibble counts": ("x86-avx2", 1),
    "x86-avx2 LLVM popcount": ("x86-avx2", sys.maxsize),
    "x86-avx512 VPOPCNTQ": ("x86-avx512", 1),
}
# The x86-avx2 alternatives to bit-serial, each conv alone (its own input pass left out).
CHOICE_KERNELS = ("x86-avx2 int8-dot", "x86-avx2 lut")
MCA_CPUS = ("haswell", "skylake", "znver3")  # the x86 models LLVM 14's llvm-mca has (no znver4)
KERNEL_CALLS, KERNEL_BATCHES = 5, 5


def conv_kernel(size: int, channels: int, abits: int, wbits: int, target: str, min_pairs: int):
    """The compiled bit-serial conv (packed input, 3x3, stride 1, padding 1) and random arguments."""
    import numpy as np
    import tvm
    from tvm import te

    import schedules.x86
    from wrpn_tvm import ops
    from wrpn_tvm.pipeline import compile_prim_func
    from wrpn_tvm.targets import resolve

    words = -(-channels // 64)
    data = te.placeholder((1, size, size, abits, words), "uint64", name="data")
    weight = te.placeholder((3, 3, wbits, words, channels), "uint64", name="weight")
    func = te.create_prim_func([data, weight, ops.bitserial_conv2d(data, weight, abits, wbits, 1, 1)])
    default_pairs = schedules.x86.MIN_DEFAULT_PAIRS
    schedules.x86.MIN_DEFAULT_PAIRS = min_pairs
    try:
        executable = compile_prim_func(func, resolve(target))
    finally:
        schedules.x86.MIN_DEFAULT_PAIRS = default_pairs
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.integers(0, 2**63, [int(d) for d in t.shape], dtype=np.uint64))
            for t in (data, weight)]
    args.append(tvm.runtime.tensor(np.zeros((1, size, size, channels), np.int32)))
    return executable, args


def choice_kernel(kind: str, size: int, channels: int, abits: int, wbits: int):
    """The compiled x86-avx2 int8-dot or lookup conv (3x3, stride 1, padding 1, its input already
    in the kernel's layout) and random arguments."""
    import numpy as np
    import tvm
    from tvm import te

    from wrpn_tvm import ops
    from wrpn_tvm.ops import lut
    from wrpn_tvm.pipeline import compile_prim_func
    from wrpn_tvm.targets import resolve

    spec = resolve("x86-avx2")
    rng = np.random.default_rng(0)
    top = 2 ** (wbits - 1) - 1
    levels = rng.choice([-1, 1], (channels, channels, 3, 3)) if wbits == 1 else rng.integers(
        -top, top + 1, (channels, channels, 3, 3))
    if kind == "x86-avx2 int8-dot":
        layout = ops.int8_layout(spec.target)
        data = te.placeholder((1, size, size, ops.int8_dot.padded_channels(channels, layout)), "uint8", name="data")
        weight_values = ops.prepack_int8_weight(levels, layout)
        weight = te.placeholder(weight_values.shape, "int8", name="weight")
        out = ops.int8_conv2d(data, weight, channels, 1, 1, (abits, wbits))
        data_values = rng.integers(0, 2**abits, [int(d) for d in data.shape], dtype=np.uint8)
    else:
        x = te.placeholder((1, channels, size, size), "float32")
        data = te.placeholder(lut.lut_tables(x, wbits, 1).shape, "int8", name="tables")
        weight_values = lut.prepack_lut_codes(levels, wbits)
        weight = te.placeholder(weight_values.shape, "uint8", name="codes")
        out = lut.lut_conv2d(data, weight, channels, 1, (abits, wbits))
        bound = lut.table_bound(abits, wbits)
        data_values = rng.integers(-bound, bound + 1, [int(d) for d in data.shape], dtype=np.int8)
    executable = compile_prim_func(te.create_prim_func([data, weight, out]), spec)
    args = [tvm.runtime.tensor(data_values), tvm.runtime.tensor(weight_values),
            tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], np.int32))]
    return executable, args


def cpu_ms(executable, args) -> float:
    """CPU milliseconds per call, best of KERNEL_BATCHES batches (1 thread: time other jobs take from
    this process's core does not count)."""
    main = executable["main"]
    main(*args)
    best = float("inf")
    for _ in range(KERNEL_BATCHES):
        start = time.process_time()
        for _ in range(KERNEL_CALLS):
            main(*args)
        best = min(best, (time.process_time() - start) / KERNEL_CALLS * 1e3)
    return best


def innermost_loops(asm: str) -> list[list[str]]:
    """The instructions of each loop of an assembly listing (a label, then a backward jump to it)
    that holds no other label."""
    import re

    lines, labels, loops = asm.splitlines(), {}, []
    for number, line in enumerate(lines):
        label = re.match(r"^(\.LBB\d+_\d+):", line)
        if label:
            labels[label.group(1)] = number
        jump = re.match(r"^\s+j\w+\s+(\.LBB\d+_\d+)", line)
        if jump and labels.get(jump.group(1), number) < number:
            body = lines[labels[jump.group(1)] + 1 : number + 1]
            if not any(re.match(r"^\.LBB\d+_\d+:", text) for text in body):
                loops.append([t.strip() for t in body if t.strip() and not t.strip().startswith((".", "#"))])
    return loops


def mca_cycles_per_and(asm: str, cpu: str) -> float:
    """llvm-mca's cycles per 256-bit AND + popcount + accumulate in the loop with the most nibble
    lookups (two vpshufb per 256-bit popcount in both AVX2 ways)."""
    import re

    hot = max(innermost_loops(asm), key=lambda loop: sum(i.startswith("vpshufb") for i in loop))
    iterations = 200
    done = subprocess.run(["llvm-mca", "-mtriple=x86_64-linux-gnu", f"-mcpu={cpu}", f"-iterations={iterations}"],
                          input="\n".join(i for i in hot if not i.startswith("j")), capture_output=True, text=True,
                          check=True)
    cycles = int(re.search(r"Total Cycles:\s+(\d+)", done.stdout).group(1)) / iterations
    return cycles / (sum(i.startswith("vpshufb") for i in hot) / 2)


def kernels() -> dict:
    """CPU ms per call at 1 thread for every layer, config and build; llvm-mca cycles per 256-bit
    AND for the AVX2 builds of the 2/2 layers (1-bit weights add a level-sum loop of lookups)."""
    import shutil

    rows = []
    for width, abits, wbits in KERNEL_CONFIGS:
        for size, channels in KERNEL_LAYERS:
            row = {"layer": f"{size}x{size}x{int(channels * width)}", "width": width, "abits": abits, "wbits": wbits,
                   "cpu_ms": {}, "mca_cycles_per_256_bit_and": {}}
            for name, (target, min_pairs) in KERNEL_BUILDS.items():
                executable, args = conv_kernel(size, int(channels * width), abits, wbits, target, min_pairs)
                row["cpu_ms"][name] = cpu_ms(executable, args)
                if target == "x86-avx2" and wbits > 1 and shutil.which("llvm-mca"):
                    asm = executable.mod.inspect_source("asm")
                    row["mca_cycles_per_256_bit_and"][name] = {cpu: mca_cycles_per_and(asm, cpu) for cpu in MCA_CPUS}
            for name in CHOICE_KERNELS:
                row["cpu_ms"][name] = cpu_ms(*choice_kernel(name, size, int(channels * width), abits, wbits))
            print(f"[{time.strftime('%H:%M:%S')}] {row['layer']} {abits}/{wbits}: "
                  + ", ".join(f"{n} {ms:.2f} ms" for n, ms in row["cpu_ms"].items()), flush=True)
            rows.append(row)
    return {"threads": 1, "calls": KERNEL_CALLS, "batches": KERNEL_BATCHES, "load_average_1_5_15min": os.getloadavg(),
            "rows": rows}


def kernels_markdown(section: dict) -> list[str]:
    builds = list(KERNEL_BUILDS)
    lines = [
        "## Per-layer kernels (ResNet-18 3x3 convs, 1 thread, CPU time)", "",
        "The bit-serial conv alone (packed input, padding 1, stride 1), for each way to count bits: CPU "
        f"milliseconds per call, best of {section['batches']} batches of {section['calls']} calls in one process "
        "(CPU time leaves out what other jobs take from this core; their cache and memory traffic stays in). "
        "The x86-avx2 build uses the nibble counts where a layer has two or more plane pairs and its 16-bit lanes "
        "hold the reduction (2/2; 4/2 up to 68 words, so not at 14x14x512 and 7x7x1024, where both AVX2 columns "
        f"are LLVM's popcount), LLVM's popcount otherwise (1/1). Load average (1/5/15 min) at the end of this part: "
        f"{'/'.join(f'{v:.1f}' for v in section['load_average_1_5_15min'])}.", "",
        "| layer | a/w bits | " + " | ".join(f"{b} ms" for b in builds)
        + " | LLVM / nibble time | nibble / AVX-512 time |",
        "| --- | --- | " + " | ".join("---:" for _ in builds) + " | ---: | ---: |",
    ]
    for row in section["rows"]:
        ms = row["cpu_ms"]
        nibble, llvm, avx512 = (ms[b] for b in builds)
        lines.append(f"| {row['layer']} | {row['abits']}/{row['wbits']} | " + " | ".join(f"{ms[b]:.2f}" for b in builds)
                     + f" | {llvm / nibble:.2f} | {nibble / avx512:.2f} |")
    choice_rows = [row for row in section["rows"] if all(k in row["cpu_ms"] for k in CHOICE_KERNELS)]
    if choice_rows:
        int8, lut = CHOICE_KERNELS
        lines += ["", "The x86-avx2 kernels a layer can run as, the same way (the int8 conv on NHWC bytes, its "
                  "padding pass left out; the lookup conv on its tables, their pass left out), against bit-serial "
                  "with nibble counts:", "",
                  f"| layer | a/w bits | {builds[0]} ms | {int8} ms | {lut} ms | lut / int8 time | lut / nibble time |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for row in choice_rows:
            ms = row["cpu_ms"]
            lines.append(f"| {row['layer']} | {row['abits']}/{row['wbits']} | {ms[builds[0]]:.2f} | {ms[int8]:.2f} | "
                         f"{ms[lut]:.2f} | {ms[lut] / ms[int8]:.2f} | {ms[lut] / ms[builds[0]]:.2f} |")
    mca_rows = [row for row in section["rows"] if row["mca_cycles_per_256_bit_and"]]
    if mca_rows:
        avx2_builds = [b for b in builds if KERNEL_BUILDS[b][0] == "x86-avx2"]
        lines += ["", "llvm-mca (LLVM 14) cycles per 256-bit AND + popcount + accumulate in the hot loop, by the "
                  "scheduling model of an Intel Haswell, Skylake and AMD Zen 3 (static: no load, no memory):", "",
                  "| layer | a/w bits | " + " | ".join(f"{b} {cpu}" for b in avx2_builds for cpu in MCA_CPUS) + " |",
                  "| --- | --- | " + " | ".join("---:" for _ in avx2_builds for _ in MCA_CPUS) + " |"]
        for row in mca_rows:
            cycles = row["mca_cycles_per_256_bit_and"]
            lines.append(f"| {row['layer']} | {row['abits']}/{row['wbits']} | "
                         + " | ".join(f"{cycles[b][cpu]:.2f}" for b in avx2_builds for cpu in MCA_CPUS) + " |")
    return lines + [""]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def run(repeat: int, rounds: int, thread_counts: list[int], out: Path, with_peers: bool = True) -> dict:
    import torch

    from wrpn_tvm.runtime import machine_info

    load_before = os.getloadavg()
    libraries, compile_s, lowering = {}, {}, {}
    models = {**WRPN_MODELS, **(AVX_VNNI_MODELS if _host_has_avx_vnni() else {})}
    targets = {**TARGETS, **{name: TARGETS[name.replace("-vnni", "")] for name in models if name in AVX_VNNI_MODELS}}
    capability, peers, peers_missing, peer_versions = None, {}, None, {}
    with tempfile.TemporaryDirectory(prefix="wrpn-avx2-") as tmp:
        if with_peers:
            peers, peers_missing = prepare_ort(Path(tmp))
        names = [BASELINE, *models, *peers]
        measured = {threads: {name: [] for name in names} for threads in thread_counts}
        round_medians = {threads: {name: [] for name in names} for threads in thread_counts}
        for name, (width, abits, wbits, target, kernel_mode, nibbles) in models.items():
            print(f"[{time.strftime('%H:%M:%S')}] compiling {name}", flush=True)
            libraries[name], compile_s[name], lowering[name] = compile_model(
                Path(tmp), name, width, abits, wbits, target, kernel_mode, nibbles)
        per_round = max(1, repeat // rounds)
        for index in range(rounds):
            print(f"[{time.strftime('%H:%M:%S')}] round {index + 1}/{rounds}", flush=True)
            for threads in thread_counts:
                torch_result = _child("torch", "", per_round, threads)
                capability = torch_result["cpu_capability"]
                measured[threads][BASELINE] += torch_result["runs_ms"]
                round_medians[threads][BASELINE].append(_median(torch_result["runs_ms"]))
                for name, library in libraries.items():
                    runs = _child("tvm", library, per_round, threads)["runs_ms"]
                    measured[threads][name] += runs
                    round_medians[threads][name].append(_median(runs))
                for name, command in peers.items():
                    result = _peer_child(command, per_round, threads)
                    peer_versions[name] = result["versions"]
                    measured[threads][name] += result["runs_ms"]
                    round_medians[threads][name].append(_median(result["runs_ms"]))
    results = {}
    for threads, by_model in measured.items():
        baseline = _median(by_model[BASELINE])
        baseline_rounds = round_medians[threads][BASELINE]
        results[str(threads)] = {name: {"runs_ms": runs, "median_ms": _median(runs), "min_ms": min(runs),
                                        "speedup_vs_baseline": baseline / _median(runs),
                                        "round_medians_ms": round_medians[threads][name],
                                        "speedup_vs_baseline_per_round": _median(
                                            [b / m for b, m in zip(baseline_rounds, round_medians[threads][name])])}
                                 for name, runs in by_model.items()}
    report = {
        "benchmark": "avx2",
        "model": "resnet18", "image": IMAGE, "batch": 1, "threads": thread_counts, "repeat": repeat,
        "rounds": rounds,
        "machine": {**machine_info(), "platform": platform.platform(), "torch": torch.__version__},
        "emulation": {"tvm_target": "x86-avx2 (LLVM x86-64-v3)" + (
            ", x86-avx2-vnni (x86-64-v3 + AVX-VNNI)" if len(models) > len(WRPN_MODELS) else ""),
            "torch_env": AVX2_TORCH_ENV,
                      "torch_cpu_capability": capability},
        "load_average_1_5_15min": {"start": load_before, "end": os.getloadavg()},
        "peers": {name: {"versions": peer_versions.get(name), "restricted_to_avx2": False} for name in peers},
        "peers_missing": peers_missing,
        "compile_s": compile_s,
        "lowering": lowering,
        "targets": {threads: {name: {"speedup_at_least": factor, "speedup": by_model[name]["speedup_vs_baseline"],
                                     "speedup_per_round": by_model[name]["speedup_vs_baseline_per_round"],
                                     "met": by_model[name]["speedup_vs_baseline"] >= factor}
                              for name, factor in targets.items()}
                    for threads, by_model in results.items()},
        "results": results,
    }
    previous = out.with_suffix(".json")
    if previous.is_file() and "kernels" in json.loads(previous.read_text()):
        # The per-layer part (`--kernels`) is a run of its own: keep it until it is rerun.
        report["kernels"] = json.loads(previous.read_text())["kernels"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    return report


def _loaded(report: dict) -> bool:
    """Whether other jobs shared the CPUs: a 1-minute load above one core's worth at either end."""
    load = report["load_average_1_5_15min"]
    return max(load["start"][0], load["end"][0]) > 1.5


def markdown(report: dict) -> str:
    m, load = report["machine"], report["load_average_1_5_15min"]
    results = report["results"]
    lines = [
        "# ResNet-18 built for x86-avx2 vs PyTorch FP32 1x restricted to AVX2 (224x224, batch 1)",
        "",
        f"Machine: {m['cpu']} ({m['cores']} cores, LLVM cpu {m['llvm_cpu']}, AVX-512 VPOPCNTDQ), Python "
        f"{m['python']}, TVM {m['tvm']}, PyTorch {m['torch']}. An AVX2 machine is emulated on this AVX-512 one: "
        f"the WRPN models are compiled for {report['emulation']['tvm_target']}, with no AVX-512 instruction; "
        f"PyTorch runs with `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` (its CPU capability read "
        f"{report['emulation']['torch_cpu_capability']}). Clock, caches and memory are this machine's. All models "
        "untuned (templates at their default decisions).",
        "",
        f"Medians (and minima) of {report['repeat']} single-inference runs per model, each model in a fresh process "
        f"per round, {report['rounds']} round-robin rounds. Load average (1/5/15 min) at start "
        f"{'/'.join(f'{v:.1f}' for v in load['start'])}, at end {'/'.join(f'{v:.1f}' for v in load['end'])} on "
        f"{m['cores']} cores: " + (
            "the machine was shared with other jobs, so absolute times are inflated (PyTorch's OpenMP threads "
            "suffer most from oversubscription); the models were measured under the same load, round-robin."
            if _loaded(report) else "the load average saw no other job."),
        "",
    ]
    spread = max(r["median_ms"] / r["min_ms"] for by_model in results.values() for r in by_model.values())
    if spread > NOISY_SPREAD:
        lines += [f"The timings were noisy all the same: a model's median was up to {spread:.1f}x its fastest run, "
                  "so CPU time was taken by something the load average does not see (another virtual machine on "
                  "this host's cores). The ratio of the minima, beside that of the medians, is the steadier "
                  "comparison there; the targets below go by the medians.", ""]
    for threads, by_model in results.items():
        lines += [f"## {threads} thread{'s' if threads != '1' else ''}", "",
                  "| model | median ms | min ms | runs | speed vs PyTorch FP32 1x AVX2 (medians) | (minima) "
                  "| (median of the rounds' ratios) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        baseline = by_model[BASELINE]
        for name, r in by_model.items():
            per_round = r.get("speedup_vs_baseline_per_round")
            lines.append(f"| {name} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {len(r['runs_ms'])} | "
                         f"{r['speedup_vs_baseline']:.2f}x | {baseline['min_ms'] / r['min_ms']:.2f}x | "
                         + (f"{per_round:.2f}x |" if per_round is not None else "|"))
        stalled = baseline["median_ms"] > STALLED_RATIO * baseline["min_ms"]
        lines += ["", "Targets (by the medians)" + (
            f": no verdict from this table. PyTorch's median is {baseline['median_ms'] / baseline['min_ms']:.0f}x "
            "its fastest run: under this load its threads waited on each other, and the ratios below say nothing "
            "about a quiet machine." if stalled else ":")]
        for name, target in report["targets"][threads].items():
            verdict = "met" if target["met"] else "missed"
            rounds = (f"; by the rounds' ratios {target['speedup_per_round']:.2f}x"
                      if "speedup_per_round" in target else "")
            lines.append(f"* {name} at least {target['speedup_at_least']:g}x PyTorch FP32 1x AVX2: "
                         + (f"({verdict}, {target['speedup']:.2f}x{rounds})" if stalled else
                            f"**{verdict}** ({target['speedup']:.2f}x{rounds})") + ".")
        lines.append("")
    if report.get("peers"):
        versions = next(iter(report["peers"].values()))["versions"] or {}
        lines += ["ONNX Runtime (" + ", ".join(f"{k} {v}" for k, v in versions.items()) + ") runs with this CPU's full "
                  "instruction set: its MLAS kernels are picked from CPUID, with no switch to hide AVX-512 or VNNI, so "
                  "its rows are not an AVX2 machine's but an upper bound of it (the int8 row uses VNNI here, which "
                  "an AVX2 CPU lacks).", ""]
    elif report.get("peers_missing"):
        lines += [f"ONNX Runtime is missing from this run: {report['peers_missing']}", ""]
    if "lowering" in report:
        lines += ["Kernels per model (the compile's summary):", ""]
        lines += [f"* {name}: {line}" for name, line in report["lowering"].items()] + [""]
    lines += ["Compile seconds: " + ", ".join(f"{name} {s:.0f}" for name, s in report["compile_s"].items()) + ".", ""]
    if "kernels" in report:
        lines += kernels_markdown(report["kernels"])
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "avx2")
    parser.add_argument("--render", action="store_true", help="rebuild OUT.md from OUT.json")
    parser.add_argument("--no-peers", action="store_true", help="leave ONNX Runtime out")
    parser.add_argument("--kernels", action="store_true",
                        help="time the per-layer kernels (1 thread, CPU time) into OUT.json, then rebuild OUT.md")
    parser.add_argument("--child", choices=["tvm", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--child-arg", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "tvm":
        print(json.dumps(measure_tvm(args.child_arg, args.repeat)))
    elif args.child == "torch":
        print(json.dumps(measure_torch(args.repeat, args.threads[0])))
    elif args.render or args.kernels:
        report = json.loads(args.out.with_suffix(".json").read_text())
        if args.kernels:
            report["kernels"] = kernels()
            args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(report))
    else:
        run(args.repeat, args.rounds, args.threads, args.out, with_peers=not args.no_peers)
        print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
