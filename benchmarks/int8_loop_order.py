"""The int8-dot conv template's two loop orders per layer, warm and cold: what its default order
(`schedules.int8_dot.default_order`: weight blocks outermost past BLOCKS_OUTER_WEIGHT_BYTES of
weights, pixel tiles outermost below) rests on.

ResNet-18's 2x-wide quantized convs (benchmarks/int8_dot.py's LAYERS, batch 1), the int8 kernel
for `host` at its default tile, each layer built twice: weight blocks outermost (a thread sweeps
every pixel tile with one block's weights) and pixel tiles outermost (each tile's input stays in
L1 while every block's weights stream past it). Timed warm (calls averaged over at least 40 ms)
and cold (the weights and output flushed from the caches before each call, as a conv runs in a
model), the two orders round-robin, ROUNDS rounds; medians (minima) in ms.

    python benchmarks/int8_loop_order.py            # writes benchmarks/results/int8_loop_order.{json,md}
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from int8_dot import INT8_BITS, LAYERS, _args, int8_func, machine, write_results  # noqa: E402

RESULTS = HERE / "results"
ROUNDS = 6
COLD_REPEAT = 20


def _build(func, order: str, spec):
    """The int8 conv PrimFunc scheduled as the template's default but for its loop order."""
    import tvm
    from tvm.s_tir import Schedule

    from schedules import int8_dot

    sch = Schedule(tvm.IRModule({"main": func}))
    int8_dot.schedule_function(sch, spec.target, order=order)
    mod = sch.mod
    mod["main"] = mod["main"].with_attr("tirx.is_scheduled", True)
    return tvm.compile(mod, target=spec.target)


def measure_layer(layer, spec, layout, rng, rounds) -> dict:
    import tvm

    from schedules.int8_dot import LOOP_ORDERS

    _, size, cin, cout, kernel, stride, padding = layer
    func, shapes = int8_func(size, cin, cout, kernel, stride, padding, layout)
    args = _args((func, shapes), rng)
    timers = {}
    outputs = {}
    for order in LOOP_ORDERS:
        executable = _build(func, order, spec)
        executable["main"](*args)
        outputs[order] = args[-1].numpy().copy()
        timers[order, "warm"] = executable.mod.time_evaluator("main", tvm.cpu(), number=1, repeat=3, min_repeat_ms=40)
        timers[order, "cold"] = executable.mod.time_evaluator(
            "main", tvm.cpu(), number=1, repeat=COLD_REPEAT, f_preproc="cache_flush_cpu_non_first_arg")
    if not np.array_equal(*outputs.values()):
        raise SystemExit(f"{layer[0]}: the loop orders disagree")
    times = {f"{order} {caching}": [] for order, caching in timers}
    for _ in range(rounds):
        for (order, caching), timer in timers.items():
            times[f"{order} {caching}"] += [float(t) for t in timer(*args).results]
    return times


def run(threads: int, rounds: int) -> dict:
    import tvm

    from schedules.int8_dot import BLOCKS_OUTER_WEIGHT_BYTES
    from wrpn_tvm import ops
    from wrpn_tvm.targets import resolve

    tvm.get_global_func("runtime.config_threadpool")(0, threads)
    spec = resolve("host")
    layout = ops.int8_layout(spec.target)
    rng = np.random.default_rng(0)
    result = {"machine": machine(), "threads": threads, "rounds": rounds, "int8_bits": INT8_BITS,
              "blocks_outer_weight_bytes": BLOCKS_OUTER_WEIGHT_BYTES, "command": "python " + " ".join(sys.argv),
              "load_average_before": list(os.getloadavg()), "runs": []}
    started = time.time()
    for layer in LAYERS:
        name, size, cin, cout, kernel, stride, padding = layer
        weights = int(np.prod(ops.prepack_int8_weight(np.zeros((cout, cin, kernel, kernel), np.int64), layout).shape))
        times = measure_layer(layer, spec, layout, rng, rounds)
        result["runs"].append({
            "layer": name, "weight_bytes": weights, "load_average": list(os.getloadavg()), "seconds": times,
            "median_ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
            "min_ms": {k: 1e3 * min(v) for k, v in times.items()},
        })
        print(f"{name}: " + ", ".join(f"{k} {1e3 * statistics.median(v):.3f}" for k, v in times.items()) +
              f" ms ({time.time() - started:.0f} s)", flush=True)
    result["load_average_after"] = list(os.getloadavg())
    return result


def markdown(result) -> str:
    m = result["machine"]
    threshold = result["blocks_outer_weight_bytes"]
    lines = [
        "# int8-dot conv: loop order per layer (ResNet-18 2x, batch 1, template default tile)", "",
        f"CPU: {m['cpu']} (LLVM CPU {m['llvm_cpu']}, {m['cores']} cores); TVM {m['tvm']}; {result['threads']} "
        f"thread(s). Command: `{result['command']}`. Medians (minima) in ms over {result['rounds']} round-robin "
        "rounds; warm: calls averaged over at least 40 ms; cold: weights and output flushed before each call. "
        f"Load average (1 min) before / after: {result['load_average_before'][0]:.1f} / "
        f"{result['load_average_after'][0]:.1f}.", "",
        f"Default (`schedules.int8_dot.default_order`): blocks outermost past {threshold / 2**20:.0f} MiB of "
        "weights, else pixels outermost. `cold pixels / blocks` below 1: pixels outermost is faster in a model.", "",
        "| layer | weights KiB | blocks warm | pixels warm | blocks cold | pixels cold | cold pixels / blocks | default |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in result["runs"]:
        med, low = row["median_ms"], row["min_ms"]
        cells = [f"{med[k]:.3f} ({low[k]:.3f})" for k in
                 ("blocks_outer warm", "pixels_outer warm", "blocks_outer cold", "pixels_outer cold")]
        default = "blocks" if row["weight_bytes"] > threshold else "pixels"
        lines.append(f"| {row['layer']} | {row['weight_bytes'] / 1024:.0f} | " + " | ".join(cells) +
                     f" | {med['pixels_outer cold'] / med['blocks_outer cold']:.2f} | {default} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--out", default=str(RESULTS / "int8_loop_order"), help="path without extension")
    args = parser.parse_args()
    write_results(Path(args.out), run(args.threads, args.rounds), markdown)


if __name__ == "__main__":
    main()
