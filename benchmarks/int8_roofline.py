"""The int8-dot conv kernels against their instruction mix's roofline on this core.

`int8_roofline.c` measures, register-only, how many multiply-accumulates per second one core can do
with each instruction mix the int8 conv template uses (its JSON: clock, GMAC/s per mix). This script
builds it, then times the TVM int8 conv of ResNet-18's 2x-wide layers (benchmarks/int8_dot.py's
LAYERS, batch 1, default schedules, 1 thread) in each form the template emits here:
  * x86-avx2 told 2/2: int16 pair sums accumulated over the whole reduction (mix avx2_int16);
  * x86-avx2 told 4/4: pair sums widened every 4 steps, as where the reduction does not fit int16
    (mix avx2_widen4);
  * host with AVX512-VNNI: vpdpbusd zmm (mix avx512_vnni), where this CPU has it; with AMX-INT8,
    tdpbusd on tiles (mix amx) for the layers whose channels fill 64-byte tile rows (all of these),
    and then the x86-avx512 preset as well, which leaves AMX out: vpdpbusd zmm, what an AVX-512 CPU
    without tiles runs;
  * x86-avx2-vnni: VEX-encoded vpdpbusd ymm (mix avx_vnni), where this CPU has AVX-VNNI.
Each kernel's GMAC/s is its layer's MACs over the median of 5 rounds x 3 timings (each at least
40 ms of calls, after one untimed), and `% of roofline` that over the mix's rate: the share of the instructions' own
throughput that the loads, broadcasts, loop and write-back leave.

    python benchmarks/int8_roofline.py     # writes benchmarks/results/int8_roofline.{json,md}
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import int8_dot  # noqa: E402  (benchmarks/ is not a package)

RESULTS = HERE / "results"
ROUNDS, REPEAT, MIN_REPEAT_MS = 5, 3, 40
# (target, bits the kernel is told, the roofline mix its inner loop is): see the module docstring.
KERNELS = [("x86-avx2", (2, 2), "avx2_int16"), ("x86-avx2", (4, 4), "avx2_widen4"), ("host", (4, 4), "avx512_vnni"),
           ("x86-avx512", (4, 4), "avx512_vnni"), ("x86-avx2-vnni", (4, 4), "avx_vnni"), ("host", (4, 4), "amx")]


def roofline() -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        binary = Path(scratch) / "int8_roofline"
        subprocess.run(["gcc", "-O2", str(HERE / "int8_roofline.c"), "-o", str(binary)], check=True)
        return json.loads(subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout)


def _expected_mix(spec, bits, in_channels: int, kernel: int, out_width: "int | None") -> str:
    """The mix the template's choice gives a layer (a check that the kernel is what the row says);
    out_width None: a layer recorded without it, before AMX tiles (not counted as on them)."""
    from tvm.target.codegen import target_has_features

    from schedules import amx
    from wrpn_tvm import ops
    from wrpn_tvm.ops.int8_dot import padded_channels

    layout = ops.int8_layout(spec.target)
    if out_width is not None and amx.available(spec.target) and ops.int8_dot.amx_runs(in_channels, layout):
        return "amx"
    if layout.out_block == 16:
        return "avx512_vnni"
    if target_has_features("avxvnni", spec.target):
        return "avx_vnni"
    steps = kernel * kernel * padded_channels(in_channels, layout) // layout.reduce_block
    return "avx2_int16" if ops.pair_sums_fit_int16(ops.pair_sum_max(*bits), steps) else "avx2_widen4"


def measure(rates: dict) -> list:
    import tvm

    from schedules import amx
    from wrpn_tvm import ops
    from wrpn_tvm.pipeline import compile_prim_func
    from wrpn_tvm.targets import resolve

    tvm.get_global_func("runtime.config_threadpool")(0, 1)
    rng = np.random.default_rng(0)
    rows = []
    host_on_tiles = amx.available(resolve("host").target)
    for target, bits, mix in KERNELS:
        if mix not in rates:
            continue  # the CPU lacks the instructions (e.g. no VNNI)
        if target == "x86-avx512" and not host_on_tiles:
            continue  # the host rows are these kernels already
        spec = resolve(target)
        layout = ops.int8_layout(spec.target)
        int8_dot.INT8_BITS = bits
        for layer in int8_dot.LAYERS:
            name, size, cin, cout, kernel, stride, padding = layer
            if _expected_mix(spec, bits, cin, kernel, int8_dot._out_size(size, kernel, stride, padding)) != mix:
                continue
            func = int8_dot.int8_func(size, cin, cout, kernel, stride, padding, layout)
            evaluator = compile_prim_func(func[0], spec).mod.time_evaluator(
                "main", tvm.cpu(), number=1, repeat=REPEAT, min_repeat_ms=MIN_REPEAT_MS)
            args = int8_dot._args(func, rng)
            evaluator(*args)  # warm-up: page faults, the thread pool, the clock
            seconds = [t for _ in range(ROUNDS) for t in evaluator(*args).results]
            out = int8_dot._out_size(size, kernel, stride, padding)
            macs = out * out * cout * cin * kernel * kernel
            gmacs = macs / statistics.median(seconds) / 1e9
            rows.append({"target": target, "bits": list(bits), "mix": mix, "layer": name, "macs": macs,
                         "median_ms": 1e3 * statistics.median(seconds), "gmac_per_s": gmacs,
                         "percent_of_roofline": 100 * gmacs / rates[mix]["gmac_per_s"],
                         "load_average": list(os.getloadavg())})
            print(f"{target} a{bits[0]}w{bits[1]} {name}: {gmacs:.0f} GMAC/s "
                  f"({rows[-1]['percent_of_roofline']:.0f}% of {mix})", flush=True)
    return rows


def markdown(result: dict) -> str:
    m, peak = result["machine"], result["roofline"]
    lines = ["# int8-dot conv kernels against their instruction mix's roofline (1 core)", "",
             f"CPU: {m['cpu']} (LLVM CPU {m['llvm_cpu']}); TVM {m['tvm']}; clock {peak['clock_ghz']:.2f} GHz "
             f"(timed). Command: `{result['command']}`; {result['wall_s']:.0f} s. Load average before/after: "
             f"{int8_dot._loads(result['load_average_before'])} / {int8_dot._loads(result['load_average_after'])}.",
             "", "Roofline (`int8_roofline.c`: register-only loops, best of "
             f"{peak['tries']}; what a kernel that also loads its operands cannot beat):", "",
             "| mix | instructions per group | GMAC/s | MAC/cycle |", "| --- | --- | ---: | ---: |"]
    groups = {"avx2_int16": "vpmaddubsw + vpaddw (ymm)",
              "avx2_widen4": "4 vpmaddubsw + 3 vpaddw + vpmaddwd + vpaddd (ymm)",
              "avx512_vnni": "vpdpbusd (zmm)", "avx_vnni": "{vex} vpdpbusd (ymm)",
              "amx": "tdpbusd (16x64 by 64x16 byte tiles)"}
    for mix, rate in peak["mixes"].items():
        lines.append(f"| {mix} | {groups[mix]} | {rate['gmac_per_s']:.0f} | {rate['mac_per_cycle']:.1f} |")
    lines += ["", "TVM int8 conv (default schedule, batch 1, 1 thread; ResNet-18 2x layers):", "",
              "| target | told bits | mix | layer | ms | GMAC/s | % of roofline |",
              "| --- | --- | --- | --- | ---: | ---: | ---: |"]
    for row in result["rows"]:
        lines.append(f"| {row['target']} | {row['bits'][0]}/{row['bits'][1]} | {row['mix']} | {row['layer']} | "
                     f"{row['median_ms']:.3f} | {row['gmac_per_s']:.0f} | {row['percent_of_roofline']:.0f} |")
    lines.append("")
    for mix in peak["mixes"]:
        shares = [row["percent_of_roofline"] for row in result["rows"] if row["mix"] == mix and "3x3" in row["layer"]]
        if shares:
            lines.append(f"* {mix}, 3x3 layers: {min(shares):.0f}-{max(shares):.0f}% of its roofline"
                         + (": above it, so on this CPU the register-only loop does not reach the mix's real "
                            "limit (its port throughput) and is no bound." if max(shares) > 100 else "."))
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(RESULTS / "int8_roofline"), help="path without extension")
    args = parser.parse_args()
    started, load_before = time.time(), list(os.getloadavg())
    peak = roofline()
    rows = measure(peak["mixes"])
    result = {"machine": int8_dot.machine(), "command": "python " + " ".join(sys.argv), "roofline": peak,
              "rows": rows, "load_average_before": load_before, "load_average_after": list(os.getloadavg()),
              "wall_s": time.time() - started}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
