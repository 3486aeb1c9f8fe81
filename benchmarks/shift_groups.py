"""Shift-group accumulators against the single sum: ResNet-18's 2x-wide 3x3 bit-serial convs on this
CPU, each kernel form under its template's default decisions, timed round-robin in one process.

The single sum adds every plane pair's popcount into one accumulator per output, shifting and adding
per shift group on every channel word (14 vector operations per 4 plane pairs at 2/2); the group form
keeps one accumulator per shift group and combines them once per output (12: AND + popcount + add or
subtract per pair, the bound's count). Both compute the same integers (checked here before timing).
64-bit words, as the lowering uses on CPUs. Each kernel is timed two ways: warm (calls averaged over
at least 40 ms, MetaSchedule's default) and cold (every argument but the input flushed from the
caches before each call, as a conv runs in a model). Rates are binary MACs (activation bit x weight
bit x MAC) per second against this run's popcount bound (benchmarks/popcount_roofline.c, the
instruction-throughput bound of kernels.py --roofline). The last column is the form the lowering
uses for the layer on this CPU (`lowering.rewrite.splits_shift_groups`).

  python benchmarks/shift_groups.py          # writes benchmarks/results/shift_groups.{json,md}
  python benchmarks/shift_groups.py --out benchmarks/results/shift_groups_znver5
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from kernels import roofline
from int8_dot import machine

HERE = Path(__file__).resolve().parent
LAYERS = [(56, 128), (28, 256), (14, 512), (7, 1024)]  # (image size, channels), ResNet-18 at 2x width
ABITS, WBITS = 2, 2
WORD_BITS = 64
ROUNDS = 6
REPEAT = 10  # timings per kernel per round
ROOFLINE_RUNS = 2


def conv_func(size: int, channels: int, split: bool):
    from tvm import te

    from wrpn_tvm import ops

    words = -(-channels // WORD_BITS)
    data = te.placeholder((1, size, size, ABITS, words), f"uint{WORD_BITS}", name="data")
    weight = te.placeholder((3, 3, WBITS, words, channels), f"uint{WORD_BITS}", name="weight")
    return te.create_prim_func([data, weight, ops.bitserial_conv2d(data, weight, ABITS, WBITS, 1, 1,
                                                                   split_shift_groups=split)])


def measure_layer(size: int, channels: int, spec, rng) -> dict:
    """{form: {caching: [seconds per round]}} for one layer, after checking the forms agree."""
    import tvm

    from wrpn_tvm.pipeline import compile_prim_func

    words = channels // WORD_BITS
    args = [tvm.runtime.tensor(rng.integers(0, 2**63, (1, size, size, ABITS, words), dtype=np.uint64)),
            tvm.runtime.tensor(rng.integers(0, 2**63, (3, 3, WBITS, words, channels), dtype=np.uint64)),
            tvm.runtime.tensor(np.zeros((1, size, size, channels), np.int32))]
    executables = {form: compile_prim_func(conv_func(size, channels, form == "groups"), spec)
                   for form in ("single", "groups")}
    outputs = {}
    for form, executable in executables.items():
        executable(*args)
        outputs[form] = args[2].numpy().copy()
    if not np.array_equal(outputs["single"], outputs["groups"]):
        raise SystemExit(f"{size}x{size}x{channels}: the two forms disagree")
    evaluators = {(form, caching): executable.mod.time_evaluator(
        "main", tvm.cpu(), number=1, repeat=REPEAT,
        **({"min_repeat_ms": 40} if caching == "warm" else {"f_preproc": "cache_flush_cpu_non_first_arg"}))
        for form, executable in executables.items() for caching in ("warm", "cold")}
    times = {form: {"warm": [], "cold": []} for form in executables}
    for _ in range(ROUNDS):
        for (form, caching), evaluator in evaluators.items():
            times[form][caching].append(statistics.median(evaluator(*args).results))
    return times


def run(threads_list) -> dict:
    import tvm

    from wrpn_tvm.lowering.rewrite import splits_shift_groups
    from wrpn_tvm.targets import resolve

    spec = resolve("host")
    rng = np.random.default_rng(0)
    load_before = os.getloadavg()
    sections = []
    for threads in threads_list:
        tvm.get_global_func("runtime.config_threadpool")(0, threads)
        bound = max(r["bound_binary_macs_per_s"] for r in roofline(ROOFLINE_RUNS, threads))
        layers = []
        for size, channels in LAYERS:
            layers.append({"layer": f"{size}x{size}x{channels}", "binary_macs": size * size * channels * channels * 9
                           * ABITS * WBITS, "lowering_splits": splits_shift_groups(spec, 3, 3, channels),
                           "seconds": measure_layer(size, channels, spec, rng)})
        sections.append({"threads": threads, "bound_binary_macs_per_s": bound, "layers": layers})
    return {"machine": machine(), "bits": f"{ABITS}/{WBITS}", "word_bits": WORD_BITS, "rounds": ROUNDS,
            "repeat": REPEAT, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average_1_5_15min": {"start": load_before, "end": os.getloadavg()}, "sections": sections}


def markdown(report: dict) -> str:
    m, load = report["machine"], report["load_average_1_5_15min"]
    lines = [
        f"# Shift-group accumulators against the single sum: ResNet-18 2x 3x3 convs, {report['bits']}", "",
        f"CPU: {m['cpu']} (LLVM cpu {m['llvm_cpu']}, {m['cores']} cores), TVM {m['tvm']}, Python {m['python']}; "
        f"{report['date']}. Command: `python benchmarks/shift_groups.py`. {report['word_bits']}-bit words, "
        f"default template decisions, medians of {report['rounds']} round-robin rounds of {report['repeat']} "
        f"timings each. Load average (1/5/15 min) at start {'/'.join(f'{v:.1f}' for v in load['start'])}, at end "
        f"{'/'.join(f'{v:.1f}' for v in load['end'])}.", "",
        "groups/single below 1: the group form is faster. % of bound: binary MAC/s against this run's "
        "popcount bound (popcount_roofline.c). Lowering: the form `wrpn-tvm compile` gives the layer here.", "",
        "| threads | layer | caches | single ms | groups ms | groups/single | single % of bound | groups % of bound "
        "| lowering |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for section in report["sections"]:
        bound = section["bound_binary_macs_per_s"]
        for layer in section["layers"]:
            for caching in ("warm", "cold"):
                single = statistics.median(layer["seconds"]["single"][caching])
                groups = statistics.median(layer["seconds"]["groups"][caching])
                share = [f"{100 * layer['binary_macs'] / t / bound:.0f}%" for t in (single, groups)]
                lines.append(f"| {section['threads']} | {layer['layer']} | {caching} | {single * 1e3:.3f} | "
                             f"{groups * 1e3:.3f} | {groups / single:.2f} | {share[0]} | {share[1]} | "
                             f"{'groups' if layer['lowering_splits'] else 'single'} |")
    bounds = ", ".join(f"{s['threads']} thread(s) {s['bound_binary_macs_per_s'] / 1e12:.2f} T binary MAC/s"
                       for s in report["sections"])
    return "\n".join(lines + ["", f"Popcount bound this run: {bounds}.", ""])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "shift_groups",
                        help="results path without suffix (.json and .md are written)")
    args = parser.parse_args()
    report = run(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
