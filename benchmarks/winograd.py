"""Per layer: the Winograd F(2x2, 3x3) int8 conv against the direct int8 conv and the bit-serial conv,
for the cost model's `WINOGRAD_TIME_RATIO` (what an untuned compile prices a Winograd layer at:
the direct conv's estimate times that ratio) and the per-layer kernel choice it drives.

ResNet-18's 2x-wide 3x3 stride-1 convs (batch 1) at 2/2, for `x86-avx512` by default (AVX-512 VNNI
without AMX tiles, where `auto` uses Winograd), each kernel in the form the lowering gives it and at
its template's default decisions, timed as in the model: weights and output flushed from the caches
before each call (`cache_flush_cpu_non_first_arg`), the input left warm (its producer just wrote it).
The three kernels of a layer are timed round-robin, ROUNDS rounds of REPEAT calls, so a busy spell
hits all of them alike; figures are medians (and minima) in ms.

    python benchmarks/winograd.py                               # writes benchmarks/results/winograd.{json,md}
    python benchmarks/winograd.py --threads 1 --out /tmp/winograd   # a quick look
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from int8_dot import machine, measure_or_render, time_round_robin
from kernels import _kernel, lowered_conv_func

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

RESULTS = HERE / "results"
# (name, map size, channels): ResNet-18 2x's 3x3 stride-1 convs, padding 1.
LAYERS = [("56x56x128", 56, 128), ("28x28x256", 28, 256), ("14x14x512", 14, 512), ("7x7x1024", 7, 1024)]
BITS = (2, 2)
ROUNDS = 5
REPEAT = 20
KERNELS = ("bit-serial", "int8 direct", "int8 Winograd")


def int8_direct_func(size, channels, layout):
    from tvm import te

    from wrpn_tvm import ops

    data = te.placeholder((1, size, size, ops.int8_dot.padded_channels(channels, layout)), "uint8", name="data")
    shape = ops.prepack_int8_weight(np.zeros((channels, channels, 3, 3), np.int64), layout).shape
    weight = te.placeholder(shape, "int8", name="weight")
    return _kernel([data, weight, ops.int8_conv2d(data, weight, channels, 1, 1, BITS, layout)])


def int8_winograd_func(size, channels, layout):
    from tvm import te

    from wrpn_tvm import ops

    data = te.placeholder((1, size, size, ops.int8_dot.padded_channels(channels, layout)), "uint8", name="data")
    weight, correction = ops.prepack_winograd_weight(np.zeros((channels, channels, 3, 3), np.int64), BITS[0], layout)
    weight = te.placeholder(weight.shape, "int8", name="weight")
    correction = te.placeholder(correction.shape, str(correction.dtype), name="correction")
    return _kernel([data, weight, correction, ops.int8_winograd_conv2d(data, weight, correction, channels, 1, BITS)])


def modelled(size, channels, spec, layout) -> dict:
    """What an untuned compile predicts for the layer: each kernel's cost in bit-serial word steps,
    and the ratio it prices Winograd at."""
    from wrpn_tvm.kernel_kinds import BITSERIAL, INT8_DOT
    from wrpn_tvm.lowering.kernel_choice import (
        WINOGRAD_TIME_RATIO, cpu_kind, cpu_vendor, estimated_costs, layer_work)

    shape = (1, channels, size, size)
    work = layer_work(*BITS, (3, 3), shape, shape, layout, 1)
    kind = cpu_kind(spec.target)
    costs = estimated_costs(work, kind, cpu_vendor(spec.target), (BITSERIAL, INT8_DOT))
    return {"kind": kind, "winograd_time_ratio": WINOGRAD_TIME_RATIO.get(kind),
            "int8_over_bitserial": costs[INT8_DOT] / costs[BITSERIAL]}


def measure_layer(size, channels, spec, layout, rng, rounds):
    funcs = {"bit-serial": lowered_conv_func(size, channels, channels, 3, 1, 1, *BITS, spec),
             "int8 direct": int8_direct_func(size, channels, layout),
             "int8 Winograd": int8_winograd_func(size, channels, layout)}
    return time_round_robin(funcs, spec, rng, rounds, REPEAT, f_preproc="cache_flush_cpu_non_first_arg")


def run(threads_list, target, rounds) -> dict:
    import tvm

    from wrpn_tvm import ops
    from wrpn_tvm.targets import resolve

    spec = resolve(target)
    layout = ops.int8_layout(spec.target)
    rng = np.random.default_rng(0)
    result = {"machine": machine(), "target": target, "bits": BITS, "rounds": rounds, "repeat": REPEAT,
              "command": "python " + " ".join(sys.argv), "load_average_before": list(os.getloadavg()), "runs": []}
    started = time.time()
    for threads in threads_list:
        tvm.get_global_func("runtime.config_threadpool")(0, threads)
        for name, size, channels in LAYERS:
            load = list(os.getloadavg())
            times = measure_layer(size, channels, spec, layout, rng, rounds)
            median = {k: 1e3 * statistics.median(v) for k, v in times.items()}
            result["runs"].append({"threads": threads, "layer": name, "size": size, "channels": channels,
                                   "load_average": load, "seconds": times, "median_ms": median,
                                   "min_ms": {k: 1e3 * min(v) for k, v in times.items()},
                                   "model": modelled(size, channels, spec, layout)})
            print(f"{threads} thread(s) {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in median.items())
                  + f" ms ({time.time() - started:.0f} s)", flush=True)
    result["load_average_after"] = list(os.getloadavg())
    result["wall_s"] = time.time() - started
    return result


def markdown(result) -> str:
    m = result["machine"]
    lines = [f"# Winograd F(2x2, 3x3) int8 against the direct int8 and bit-serial convs ({result['target']})", "",
             f"Machine: {m['cpu']} ({m['cores']} cores, LLVM cpu {m['llvm_cpu']}), TVM {m['tvm']}. ResNet-18 2x's 3x3 "
             f"stride-1 convs at a{result['bits'][0]}/w{result['bits'][1]}, batch 1, template defaults, weights and "
             f"output flushed from the caches before each call; medians (minima) of {result['rounds']} round-robin "
             f"rounds x {result['repeat']} calls, ms. Load average (1 min) before / after: "
             f"{result['load_average_before'][0]:.1f} / {result['load_average_after'][0]:.1f}.", "",
             f"Rerun: `{result['command']}`.", "",
             "| threads | layer | bit-serial | int8 direct | int8 Winograd | Winograd / direct | Winograd / bit-serial "
             "| cost model: Winograd / bit-serial | faster | cost model picks |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for run in result["runs"]:
        med, low, model = run["median_ms"], run["min_ms"], run["model"]
        cells = [f"{med[k]:.3f} ({low[k]:.3f})" for k in KERNELS]
        predicted = model["int8_over_bitserial"]
        measured = med["int8 Winograd"] / med["bit-serial"]
        lines.append(f"| {run['threads']} | {run['layer']} | " + " | ".join(cells)
                     + f" | {med['int8 Winograd'] / med['int8 direct']:.2f} | {measured:.2f} | {predicted:.2f} | "
                     + ("Winograd" if measured < 1 else "bit-serial") + " | "
                     + ("Winograd" if predicted < 1 else "bit-serial") + " |")
    kinds = {run["model"]["kind"]: run["model"]["winograd_time_ratio"] for run in result["runs"]}
    lines += ["", "The cost model prices Winograd at the direct int8 estimate times WINOGRAD_TIME_RATIO ("
              + ", ".join(f"{k}: {v}" for k, v in kinds.items())
              + "; `wrpn_tvm/lowering/kernel_choice.py`)."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--target", default="x86-avx512")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--out", default=str(RESULTS / "winograd"), help="path without extension")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite OUT.md from OUT.json")
    args = parser.parse_args()
    measure_or_render(Path(args.out), args.markdown_only, markdown, lambda: run(args.threads, args.target, args.rounds))


if __name__ == "__main__":
    main()
