"""Per-layer: bit-serial conv2d against the int8-dot conv2d over the same integer levels, for the
per-layer kernel choice (which one a compile picks, and the untuned cost model behind it).

ResNet-18's 2x-wide quantized convs (3x3 stride 1 and 2, and the 1x1 stride-2 downsample convs;
batch 1), at activation/weight bits 2/2, 4/2, 2/4, 4/4 and 1/1 (+-1 weights), both kernels at their
schedule template's default decisions (untuned), for `host` (here AVX-512 with VNNI: vpdpbusd) and
`x86-avx2` (vpmaddubsw + vpmaddwd; an AVX2 machine emulated on this one: same cores, clock and
caches). Each kernel is timed alone, as the lowering calls it:
  * bit-serial: packed activations [N, H, W, abits, C/64] in (64-bit words, as the CPU lowering
    packs them), int32 NHWC out;
  * int8: NHWC levels [N, H, W, C] in (uint8), int32 NHWC out. Its code does not depend on the bits
    (up to 4/4), so it is built and timed once per layer.
The input stages of the two (float32 NCHW levels -> bitpack, or -> int8_levels) are timed apart
(in a model they fuse into the producer's epilogue). The kernels of one layer are timed
round-robin, ROUNDS rounds, so a busy spell hits all of them alike; figures are medians (and
minima) over every timing, in ms; GMAC/s counts the layer's multiply-accumulates.

    python benchmarks/int8_dot.py                      # writes benchmarks/results/int8_dot.{json,md}
    python benchmarks/int8_dot.py --threads 1 --layers 1 --out /tmp/int8_dot   # a quick look
    python benchmarks/int8_dot.py --threads 1 --targets x86-avx2 x86-avx2-vnni --out benchmarks/results/int8_dot_avxvnni
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from kernels import _kernel, lowered_conv_func

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

RESULTS = HERE / "results"
# (name, input size, in channels, out channels, kernel, stride, padding): ResNet-18 at 2x width.
LAYERS = [
    ("56x56x128 3x3", 56, 128, 128, 3, 1, 1),
    ("56x56x128->256 3x3 s2", 56, 128, 256, 3, 2, 1),
    ("56x56x128->256 1x1 s2", 56, 128, 256, 1, 2, 0),
    ("28x28x256 3x3", 28, 256, 256, 3, 1, 1),
    ("28x28x256->512 3x3 s2", 28, 256, 512, 3, 2, 1),
    ("28x28x256->512 1x1 s2", 28, 256, 512, 1, 2, 0),
    ("14x14x512 3x3", 14, 512, 512, 3, 1, 1),
    ("14x14x512->1024 3x3 s2", 14, 512, 1024, 3, 2, 1),
    ("14x14x512->1024 1x1 s2", 14, 512, 1024, 1, 2, 0),
    ("7x7x1024 3x3", 7, 1024, 1024, 3, 1, 1),
]
BITS = [(2, 2), (4, 2), (2, 4), (4, 4), (1, 1)]
TARGETS = ["host", "x86-avx2"]
WORD_BITS = 64
# The int8 kernel is told the widest of BITS: AVX2 adds 4 steps of int16 pair sums before widening
# at every width up to 4/4, so its code (and time) is the same for all of them.
INT8_BITS = (4, 4)
ROUNDS = 5
REPEAT = 3  # timings per round, each at least MIN_REPEAT_MS
MIN_REPEAT_MS = 40


def _out_size(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def int8_func(size, cin, cout, kernel, stride, padding, layout):
    from tvm import te

    from wrpn_tvm import ops

    data = te.placeholder((1, size, size, -(-cin // 4) * 4), layout.activation_dtype, name="data")
    w_shape = ops.prepack_int8_weight(np.zeros((cout, cin, kernel, kernel), np.int64), layout).shape
    weight = te.placeholder(w_shape, "int8", name="weight")
    return _kernel([data, weight, ops.int8_conv2d(data, weight, cout, stride, padding, INT8_BITS, layout)])


def bitpack_func(size, cin, abits):
    from tvm import te

    from wrpn_tvm import ops

    x = te.placeholder((1, cin, size, size), "float32", name="x")
    return _kernel([x, ops.pack_activation(x, abits, WORD_BITS, quantize=False)])


def int8_levels_func(size, cin, layout):
    from tvm import te

    from wrpn_tvm import ops

    x = te.placeholder((1, cin, size, size), "float32", name="x")
    return _kernel([x, ops.int8_levels(x, layout)])


def _args(kernel, rng):
    """Random arguments of the right dtypes (timing does not depend on the values)."""
    import tvm

    args = []
    for shape, dtype in kernel[1]:
        if dtype == "float32":
            data = rng.integers(0, 4, shape).astype(np.float32)
        elif dtype == "int32":
            data = np.zeros(shape, np.int32)
        else:
            info = np.iinfo(dtype)
            data = rng.integers(max(info.min, -7), min(info.max, 15), shape, endpoint=True).astype(dtype)
        args.append(tvm.runtime.tensor(data, tvm.cpu()))
    return args


def time_round_robin(funcs: dict, spec, rng, rounds: int, repeat: int, **evaluator_options) -> dict:
    """name -> list of seconds: each kernel of `funcs` (name -> `_kernel`'s (func, arg specs))
    compiled for `spec` and timed on random arguments by `time_evaluator(number=1, repeat=repeat,
    **evaluator_options)`, `rounds` rounds over all of them in turn, so a busy spell hits all alike."""
    import tvm

    from wrpn_tvm.pipeline import compile_prim_func

    timers = {}
    for name, kernel in funcs.items():
        evaluator = compile_prim_func(kernel[0], spec).mod.time_evaluator("main", tvm.cpu(), number=1, repeat=repeat,
                                                                          **evaluator_options)
        timers[name] = (evaluator, _args(kernel, rng))
    times = {name: [] for name in funcs}
    for _ in range(rounds):
        for name, (evaluator, args) in timers.items():
            times[name] += [float(t) for t in evaluator(*args).results]
    return times


def measure_layer(layer, spec, layout, rng, rounds):
    """name -> list of seconds, for every kernel of one layer, timed round-robin."""
    _, size, cin, cout, kernel, stride, padding = layer
    funcs = {f"bitserial a{a}w{w}": lowered_conv_func(size, cin, cout, kernel, stride, padding, a, w, spec)
             for a, w in BITS}
    funcs["int8"] = int8_func(size, cin, cout, kernel, stride, padding, layout)
    for abits in sorted({a for a, _ in BITS}):
        funcs[f"bitpack a{abits}"] = bitpack_func(size, cin, abits)
    funcs["int8_levels"] = int8_levels_func(size, cin, layout)
    return time_round_robin(funcs, spec, rng, rounds, REPEAT, min_repeat_ms=MIN_REPEAT_MS)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine() -> dict:
    import tvm
    from tvm.target import codegen

    from wrpn_tvm.targets import host_mattr

    return {"cpu": _cpu_model(), "llvm_cpu": codegen.llvm_get_system_cpu(), "llvm_mattr": host_mattr() or [],
            "cores": os.cpu_count(),
            "tvm": tvm.__version__, "python": platform.python_version()}


def run(threads_list, targets, layers, rounds) -> dict:
    import tvm

    from schedules import amx
    from wrpn_tvm import ops
    from wrpn_tvm.targets import resolve

    rng = np.random.default_rng(0)
    result = {"machine": machine(), "word_bits": WORD_BITS, "rounds": rounds, "repeat": REPEAT,
              "min_repeat_ms": MIN_REPEAT_MS, "bits": BITS, "command": "python " + " ".join(sys.argv),
              "load_average_before": list(os.getloadavg()), "runs": []}
    started = time.time()
    for threads in threads_list:
        tvm.get_global_func("runtime.config_threadpool")(0, threads)
        for target in targets:
            spec = resolve(target)
            layout = ops.int8_layout(spec.target)
            for layer in layers:
                name, size, cin, cout, kernel, stride, padding = layer
                out = _out_size(size, kernel, stride, padding)
                load = list(os.getloadavg())
                times = measure_layer(layer, spec, layout, rng, rounds)
                on_tiles = amx.available(spec.target) and ops.int8_dot.amx_runs(cin, layout)
                result["runs"].append({
                    "threads": threads, "target": target, "int8_layout": [layout.out_block, layout.reduce_block,
                                                                          layout.activation_dtype],
                    "int8_kernel": "amx" if on_tiles else "dot",
                    "layer": name, "size": size, "in_channels": cin, "out_channels": cout, "kernel": kernel,
                    "stride": stride, "padding": padding, "macs": out * out * cout * cin * kernel * kernel,
                    "load_average": load, "seconds": times,
                    "median_ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
                    "min_ms": {k: 1e3 * min(v) for k, v in times.items()},
                })
                print(f"{threads} thread(s) {target} {name}: " + ", ".join(
                    f"{k} {1e3 * statistics.median(v):.3f}" for k, v in times.items()) +
                    f" ms ({time.time() - started:.0f} s)", flush=True)
    result["load_average_after"] = list(os.getloadavg())
    result["wall_s"] = time.time() - started
    return result


def _loads(values) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def markdown(result) -> str:
    """The report; `python benchmarks/int8_dot.py --markdown-only` rewrites it from the JSON."""
    m = result["machine"]
    lines = [
        "# Bit-serial against int8-dot conv2d per layer (ResNet-18 2x, batch 1, untuned)", "",
        f"CPU: {m['cpu']} (LLVM CPU {m['llvm_cpu']}"
        + (f" {','.join(m['llvm_mattr'])}" if m.get("llvm_mattr") else "") + f", {m['cores']} cores); TVM {m['tvm']}. Command: "
        f"`{result['command']}`. Medians (minima) of {result['rounds']} rounds x {result['repeat']} timings "
        f"(each at least {result['min_repeat_ms']} ms of calls), in ms; kernels of a layer timed round-robin. "
        f"Load average before/after: {_loads(result['load_average_before'])} / "
        f"{_loads(result['load_average_after'])}; per layer in the JSON and the `load` column (1-minute load "
        "average as the layer started, which counts this benchmark's own threads)"
        + (": other jobs shared this 2-core machine during the run, so rows whose load exceeds their thread count "
           "by more than 0.5 read slow, the 2-thread ones most (a TVM pool thread descheduled holds up the whole "
           "kernel); the kernels of one layer were timed round-robin, so their ratios suffer less."
           if max(r["load_average"][0] - r["threads"] for r in result["runs"]) > 0.5 else "."), "",
        "Bit-serial: packed activations in (64-bit words), int32 NHWC out. int8: uint8 NHWC levels in, int32 "
        "NHWC out; one kernel for every bit width (tdpbusd on AMX tiles for host with AMX-INT8 where the layer's "
        "channels fill 64-byte tile rows, every layer here; vpdpbusd zmm for host with AVX512-VNNI, vpdpbusd ymm for "
        "x86-avx2-vnni, vpmaddubsw + vpmaddwd for x86-avx2). `int8 / best`: the int8 kernel's time over the faster bit-serial one at that width, "
        "below 1 where int8 wins. The input stages (float32 NCHW levels in) are timed apart: bitpack at "
        "2/4 activation bits, int8_levels.", "",
    ]
    groups = {}
    for row in result["runs"]:
        groups.setdefault((row["threads"], row["target"]), []).append(row)
    for (threads, target), rows in groups.items():
        bit_names = [f"a{a}w{w}" for a, w in result["bits"]]
        tiles = " on AMX tiles" if all(row.get("int8_kernel") == "amx" for row in rows) else ""
        lines += [f"## {target}, {threads} thread(s) (int8 layout ob={rows[0]['int8_layout'][0]}{tiles})", "",
                  "| layer | MMAC | " + " | ".join(f"bit-serial {b}" for b in bit_names) +
                  " | int8 | int8 GMAC/s | " + " | ".join(f"int8 / {b}" for b in bit_names) +
                  " | bitpack a2 / a4 | int8_levels | load |",
                  "| --- | ---: |" + " ---: |" * (2 * len(bit_names) + 4)]
        for row in rows:
            med, low = row["median_ms"], row["min_ms"]
            cells = [f"{med['bitserial ' + b]:.3f} ({low['bitserial ' + b]:.3f})" for b in bit_names]
            ratios = [f"{med['int8'] / med['bitserial ' + b]:.2f}" for b in bit_names]
            lines.append(
                f"| {row['layer']} | {row['macs'] / 1e6:.0f} | " + " | ".join(cells) +
                f" | {med['int8']:.3f} ({low['int8']:.3f}) | {row['macs'] / med['int8'] / 1e6:.0f} | " +
                " | ".join(ratios) +
                f" | {med['bitpack a2']:.3f} / {med['bitpack a4']:.3f} | {med['int8_levels']:.3f} | "
                f"{row['load_average'][0]:.1f} |")
        total = {k: sum(r["median_ms"][k] for r in rows) for k in rows[0]["median_ms"]}
        best = {b: sum(min(r["median_ms"]["int8"], r["median_ms"]["bitserial " + b]) for r in rows)
                for b in bit_names}
        lines += ["", "Sums over these layers (ms): " + ", ".join(
            f"{b}: bit-serial {total['bitserial ' + b]:.2f}, per-layer best {best[b]:.2f}" for b in bit_names) +
            f"; int8 {total['int8']:.2f}.", ""]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--targets", nargs="+", default=TARGETS)
    parser.add_argument("--layers", type=int, default=len(LAYERS), help="only the first N layers")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--out", default=str(RESULTS / "int8_dot"), help="path without extension")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite OUT.md from OUT.json")
    args = parser.parse_args()
    measure_or_render(Path(args.out), args.markdown_only, markdown,
                      lambda: run(args.threads, args.targets, LAYERS[: args.layers], args.rounds))


def measure_or_render(out: Path, markdown_only: bool, markdown, measure) -> None:
    """With --markdown-only, OUT.md rewritten from OUT.json; else `measure()`'s result written
    (`write_results`)."""
    if markdown_only:
        out.with_suffix(".md").write_text(markdown(json.loads(out.with_suffix(".json").read_text())))
        return
    write_results(out, measure(), markdown)


def write_results(out: Path, result: dict, markdown) -> None:
    """OUT.json (the whole result) and OUT.md (`markdown(result)`, also printed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
