"""Shift-group accumulators against the single sum, in 64- and 32-bit words: ResNet-18's bit-serial
convs on this CPU (the 2x-wide 3x3 conv of each stage, a stride-2 stage entry and its 1x1 shortcut,
the 4/2 setting, 1x width, and a channel count no multiple of 32), each kernel form under its
template's default decisions, timed round-robin in one process.

The single sum adds every plane pair's popcount into one accumulator per output, shifting and adding
per shift group on every channel word (14 vector operations per 4 plane pairs at 2/2); the group form
keeps one accumulator per shift group and combines them once per output (12: AND + popcount + add or
subtract per pair, the bound's count). In 64-bit words (what the packs write on CPUs) a group
accumulator is int64, two zmm registers per 16 output channels; in 32-bit words (the packed words
read as halves, as the lowering does on AVX-512) it is int32, one register, so the tile holds twice
the channels. Blocked weights ([O/16, KH, KW, planes, words, 16], `ops.block_conv_weight`) keep
each 16-channel tile's weights contiguous: one sequential stream from memory instead of 64-byte pieces
a row of O words apart; where the weights exceed the template's CACHED_WEIGHT_BYTES its tile loop
prefetches the next tile's (`schedules/prefetch.py`), and the last form is the same kernel built
without the prefetch. All forms compute the same integers (checked here before timing). Each kernel is timed
two ways: warm (calls averaged over at least 40 ms, MetaSchedule's default) and cold (every argument
but the input flushed from the caches before each call, as a conv runs in a model). Rates are binary
MACs (activation bit x weight bit x MAC) per second against this run's popcount bound
(benchmarks/popcount_roofline.c, the instruction-throughput bound of kernels.py --roofline). The last
column is the form `wrpn-tvm compile` gives the layer on this CPU (`lowering.rewrite.conv_lane_bits`,
`conv_weight_block`).

  python benchmarks/shift_groups.py          # writes benchmarks/results/shift_groups.{json,md}
  python benchmarks/shift_groups.py --out benchmarks/results/shift_groups_znver5
"""

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernels import roofline
from int8_dot import machine

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Layer:
    size: int  # input height and width
    in_channels: int
    out_channels: int
    kernel: int = 3
    stride: int = 1
    abits: int = 2
    wbits: int = 2

    @property
    def name(self) -> str:
        shape = f"{self.size}x{self.size}x{self.in_channels}"
        if self.out_channels != self.in_channels:
            shape += f"->{self.out_channels}"
        extra = "" if (self.kernel, self.stride) == (3, 1) else f" {self.kernel}x{self.kernel}/{self.stride}"
        return f"{shape}{extra} {self.abits}/{self.wbits}"

    @property
    def out_size(self) -> int:
        return (self.size + 2 * (self.kernel // 2) - self.kernel) // self.stride + 1

    @property
    def binary_macs(self) -> int:
        return (self.out_size ** 2 * self.out_channels * self.in_channels * self.kernel ** 2
                * self.abits * self.wbits)


# ResNet-18 at 2x width: its 3x3 convs per stage, a stride-2 stage entry and its 1x1 shortcut, the 4/2
# setting; then 1x's 56x56 stage and a channel count that is no multiple of 32.
LAYERS = [Layer(56, 128, 128), Layer(28, 256, 256), Layer(14, 512, 512), Layer(7, 1024, 1024),
          Layer(56, 128, 256, stride=2), Layer(56, 128, 256, kernel=1, stride=2), Layer(56, 128, 128, abits=4),
          Layer(56, 64, 64), Layer(28, 100, 100)]
ROUNDS = 6
REPEAT = 10  # timings per kernel per round
ROOFLINE_RUNS = 2


# (name, word bits, sums shift groups apart, output channels per weight block or None, built through
# the compiler's TIR pipeline, which inserts the next weight tile's prefetch where the template marks it)
FORMS = [("single 64-bit", 64, False, None, True), ("groups 64-bit", 64, True, None, True),
         ("groups 32-bit", 32, True, None, True), ("groups 32-bit, blocked weights", 32, True, 16, True),
         ("the same, no prefetch", 32, True, 16, False)]


def conv_func(layer: Layer, split: bool, word_bits: int = 64, block: "int | None" = None):
    from tvm import te

    from wrpn_tvm import ops

    words = -(-layer.in_channels // 64) * (64 // word_bits)
    data = te.placeholder((1, layer.size, layer.size, layer.abits, words), f"uint{word_bits}", name="data")
    layout = (layer.kernel, layer.kernel, layer.wbits, words, layer.out_channels)
    if block:
        layout = (layer.out_channels // block, *layout[:4], block)
    weight = te.placeholder(layout, f"uint{word_bits}", name="weight")
    return te.create_prim_func([data, weight, ops.bitserial_conv2d(
        data, weight, layer.abits, layer.wbits, layer.stride, layer.kernel // 2, split_shift_groups=split)])


def as_halves(weight: np.ndarray) -> np.ndarray:
    """64-bit packed conv weights [KH, KW, planes, CW, O] as 32-bit words [.., 2 CW, O], low half first."""
    low, high = (weight & np.uint64(0xFFFFFFFF)).astype(np.uint32), (weight >> np.uint64(32)).astype(np.uint32)
    halves = np.stack([low, high], axis=4)  # [KH, KW, planes, CW, 2, O]
    return halves.reshape(*weight.shape[:3], 2 * weight.shape[3], weight.shape[4])


def packed_bits(rng, shape: tuple, channels: int) -> np.ndarray:
    """Random 64-bit words along the last axis of `shape`, zero past `channels` (as a pack pads)."""
    bits = rng.integers(0, 2, (*shape[:-1], shape[-1] * 64), dtype=np.uint64)
    bits[..., channels:] = 0
    return (bits.reshape(*shape, 64) << np.arange(64, dtype=np.uint64)).sum(-1, dtype=np.uint64)


def compile_without_prefetch(func, spec):
    """As `compile_prim_func`, through TVM's own TIR pipeline, which leaves the prefetch marks unused."""
    import tvm

    import schedules

    return tvm.compile(schedules.apply_default_schedules(tvm.IRModule({"main": func}), spec.target), target=spec.target)


def measure_layer(layer: Layer, spec, rng) -> dict:
    """{form: {caching: [seconds per round]}} for one layer, after checking the forms agree."""
    import tvm

    from wrpn_tvm import ops
    from wrpn_tvm.pipeline import compile_prim_func

    words = -(-layer.in_channels // 64)
    data = packed_bits(rng, (1, layer.size, layer.size, layer.abits, words), layer.in_channels)
    weight = np.moveaxis(packed_bits(rng, (layer.kernel, layer.kernel, layer.wbits, layer.out_channels, words),
                                     layer.in_channels), -1, -2).copy()
    by_word = {64: (data, weight), 32: (data.view(np.uint32), as_halves(weight))}  # little-endian halves
    out_shape = (1, layer.out_size, layer.out_size, layer.out_channels)
    runs = {}
    for name, word_bits, split, block, prefetch in FORMS:
        if block and layer.out_channels % block:
            continue
        data_words, weight_words = by_word[word_bits]
        args = [tvm.runtime.tensor(data_words),
                tvm.runtime.tensor(ops.block_conv_weight(weight_words, block) if block else weight_words),
                tvm.runtime.tensor(np.zeros(out_shape, np.int32))]
        func = conv_func(layer, split, word_bits, block)
        runs[name] = (compile_prim_func(func, spec) if prefetch else compile_without_prefetch(func, spec), args)
    outputs = {}
    for name, (executable, args) in runs.items():
        executable(*args)
        outputs[name] = args[2].numpy().copy()
    if not all(np.array_equal(outputs[FORMS[0][0]], output) for output in outputs.values()):
        raise SystemExit(f"{layer.name}: the forms disagree")
    evaluators = {(name, caching): (executable.mod.time_evaluator(
        "main", tvm.cpu(), number=1, repeat=REPEAT,
        **({"min_repeat_ms": 40} if caching == "warm" else {"f_preproc": "cache_flush_cpu_non_first_arg"})), args)
        for name, (executable, args) in runs.items() for caching in ("warm", "cold")}
    times = {name: {"warm": [], "cold": []} for name in runs}
    for _ in range(ROUNDS):
        for (name, caching), (evaluator, args) in evaluators.items():
            times[name][caching].append(statistics.median(evaluator(*args).results))
    return times


def lowering_form(spec, layer: Layer) -> str:
    from wrpn_tvm.lowering.rewrite import conv_lane_bits, conv_weight_block, splits_shift_groups

    form = (conv_lane_bits(spec, layer.wbits), splits_shift_groups(spec, layer.wbits),
            conv_weight_block(spec, layer.wbits, layer.out_channels), True)
    return next(name for name, *rest in FORMS if tuple(rest) == form)


def run(threads_list) -> dict:
    import tvm

    from wrpn_tvm.targets import resolve

    spec = resolve("host")
    rng = np.random.default_rng(0)
    load_before = os.getloadavg()
    sections = []
    for threads in threads_list:
        tvm.get_global_func("runtime.config_threadpool")(0, threads)
        bound = max(r["bound_binary_macs_per_s"] for r in roofline(ROOFLINE_RUNS, threads))
        layers = []
        for layer in LAYERS:
            layers.append({"layer": layer.name, "binary_macs": layer.binary_macs,
                           "lowering": lowering_form(spec, layer), "seconds": measure_layer(layer, spec, rng)})
        sections.append({"threads": threads, "bound_binary_macs_per_s": bound, "layers": layers})
    return {"machine": machine(), "rounds": ROUNDS,
            "repeat": REPEAT, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average_1_5_15min": {"start": load_before, "end": os.getloadavg()}, "sections": sections}


def markdown(report: dict) -> str:
    m, load = report["machine"], report["load_average_1_5_15min"]
    names = [name for name, *_ in FORMS]
    lines = [
        "# Shift-group accumulators against the single sum, 64- and 32-bit words: ResNet-18's bit-serial convs", "",
        f"CPU: {m['cpu']} (LLVM cpu {m['llvm_cpu']}, {m['cores']} cores), TVM {m['tvm']}, Python {m['python']}; "
        f"{report['date']}. Command: `python benchmarks/shift_groups.py`. Default template decisions, medians of "
        f"{report['rounds']} round-robin rounds of {report['repeat']} timings each. Load average (1/5/15 min) at "
        f"start {'/'.join(f'{v:.1f}' for v in load['start'])}, at end {'/'.join(f'{v:.1f}' for v in load['end'])}.",
        "",
        "ms and, in brackets, binary MAC/s against this run's popcount bound (popcount_roofline.c). Lowering: the "
        "form `wrpn-tvm compile` gives the layer here.", "",
        "| threads | layer | caches | " + " | ".join(names) + " | lowering |",
        "| ---: | --- | --- | " + " | ".join("---:" for _ in names) + " | --- |",
    ]
    for section in report["sections"]:
        bound = section["bound_binary_macs_per_s"]
        for layer in section["layers"]:
            for caching in ("warm", "cold"):
                cells = []
                for name in names:
                    if name not in layer["seconds"]:  # blocked weights need whole blocks of output channels
                        cells.append("-")
                        continue
                    seconds = statistics.median(layer["seconds"][name][caching])
                    cells.append(f"{seconds * 1e3:.3f} ({100 * layer['binary_macs'] / seconds / bound:.0f}%)")
                lines.append(f"| {section['threads']} | {layer['layer']} | {caching} | " + " | ".join(cells)
                             + f" | {layer['lowering']} |")
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
