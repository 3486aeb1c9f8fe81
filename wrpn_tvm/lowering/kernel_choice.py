"""Which kernel runs each quantized conv: bit-serial (AND + popcount over every pair of bit-planes)
or an int8 dot product over the integer levels (VNNI / pmaddubsw / sdot), both exact in integers.

Bit-serial work grows with abits x wbits plane pairs and pads channels to 64-bit words; the int8 dot
product costs the same at every width up to 4 bits and pads channels to 4. Which is faster depends on
the layer and the CPU, so the choice is per layer:

* with a tuning database that holds records of both kernels for the layer, the faster tuned record
  (the tuner extracts both kernels' tasks, so a log tuned since they exist has both);
* otherwise a cost model: each kernel's inner-loop operations for the layer divided by its rate
  on this kind of CPU, the rates fitted to default-schedule timings (benchmarks/int8_dot.py).
"""

from dataclasses import dataclass

from .. import ops
from ..kernel_kinds import AUTO, BITSERIAL, INT8_DOT
from .recognize import LayerPlan

WORD_BITS = 64  # channels per bit-serial word on CPUs


@dataclass(frozen=True)
class Choice:
    kernel: str  # BITSERIAL or INT8_DOT
    why: str  # e.g. "kernel by cost model: int8-dot 0.41x bit-serial's time"; "" where there was no choice


@dataclass(frozen=True)
class LayerWork:
    """Inner-loop operations of one conv for each kernel: bit-serial word AND+popcount+accumulate
    steps (one per plane pair and 64-channel word), and int8 dot steps (one per output block and
    4-channel group)."""

    bitserial_words: int
    int8_dots: int
    int8_pair_sums_fit_int16: bool  # vpmaddubsw kernels then accumulate in int16 (ops.pair_sums_fit_int16)


def layer_work(abits: int, wbits: int, kernel_size, input_shape, output_shape, layout: "ops.Int8Layout") -> LayerWork:
    """The work of an NCHW conv with these bits, (KH, KW) kernel and shapes."""
    _, channels, _, _ = input_shape
    batch, out_channels, out_h, out_w = output_shape
    kernel_h, kernel_w = kernel_size
    window = kernel_h * kernel_w * batch * out_h * out_w
    pairs = abits * wbits
    words = -(-channels // WORD_BITS)
    groups = -(-channels // layout.reduce_block)
    blocks = -(-out_channels // layout.out_block)
    steps = kernel_h * kernel_w * groups
    return LayerWork(bitserial_words=window * out_channels * pairs * words, int8_dots=window * blocks * groups,
                     int8_pair_sums_fit_int16=ops.pair_sums_fit_int16(ops.pair_sum_max(abits, wbits), steps))


# The cost of one int8 dot step in bit-serial word steps, per CPU kind: a layer's predicted time
# ratio is int8_dots * this / bitserial_words.
_WORDS_PER_DOT = {
    # Fitted to the 3x3 layers of benchmarks/results/int8_dot.md (znver4, default schedules, 1 thread):
    # int8 / bit-serial measured 0.93-1.06 at 2/2, 0.52-0.55 at 4/2, 0.46-0.52 at 2/4, 0.27-0.29 at
    # 4/4, which give 4.0-4.5; ties at 2/2 go to bit-serial (its kernels scale better to 2 threads).
    "avx512-vnni": 4.2,
    # x86-avx2 on the same CPU: 0.66-0.84 at 2/2, 0.22-0.34 at 4/2 and 2/4, 0.11-0.16 at 4/4: 1.1-1.4
    # (the int8 kernel built for 4/4 there: pair sums widened every 4 steps).
    "avx2": 1.3,
    # AVX-VNNI (vpdpbusd ymm) against the AVX2 bit-serial kernels, on Emerald Rapids (1 thread,
    # benchmarks/results/int8_dot_avxvnni.md): medians 0.75-0.85 over the multi-bit widths (x86-avx2's
    # vpmaddubsw there: 1.05-1.24, which the 1.3 above from znver4 matches).
    "avx-vnni": 0.8,
    # Not measured: the same vpmaddubsw + vpmaddwd sequence as AVX2 on twice the lanes, against a
    # bit-serial loop without VPOPCNTDQ (LLVM's nibble-lookup popcount), as on AVX2.
    "avx512bw": 1.3,
    # Not timed on a board: llvm-mca on cortex-a76 puts the sdot loop at 0.76 cycles per dot step
    # (21 MAC/cycle) and the 2/2 bit-serial loop at 0.77 cycles per word step (1.53 per 128 bits).
    "neon-sdot": 1.0,
}
# Where one vendor's cores measured apart from the kind's figure above. Emerald Rapids (1 thread,
# benchmarks/results/int8_dot_emeraldrapids.md): 3.4-3.6 at the multi-bit widths, against znver4's
# 4.0-4.7: two 512-bit vpdpbusd per cycle where Zen 4 does one, so there int8 wins 2/2 layers by
# 10-30% (ResNet-18 2x 2/2 end to end, benchmarks/results/end_to_end_emeraldrapids.md: 35.3 against
# 41.8 ms all bit-serial, medians of a noisy run; minima 21.7 against 32.5).
_WORDS_PER_DOT_BY_VENDOR = {("avx512-vnni", "intel"): 3.5}
# vpmaddubsw kernels on layers whose whole reduction fits the int16 lanes (no vpmaddwd every 4
# steps): ResNet-18's 2x-wide 3x3 layers at 2/2 on x86-avx2, znver4, 1 thread, 1.15-1.20x as fast
# as the same kernel widening (1.09-1.18x at 2 threads). AVX-512BW: the same sequence, not measured.
_INT16_ACCUMULATING_SPEEDUP = {"avx2": 1.18, "avx512bw": 1.18}


def cpu_kind(target) -> str:
    """The int8 dot instruction family of a CPU target with an int8 layout (ops.int8_layout)."""
    from tvm.target.codegen import target_has_features

    if "aarch64" in str(target.attrs.get("mtriple", "")):
        return "neon-sdot"
    if target_has_features("avx512vnni", target):
        return "avx512-vnni"
    if target_has_features("avx512bw", target):
        return "avx512bw"
    return "avx-vnni" if target_has_features("avxvnni", target) else "avx2"


def cpu_vendor(target) -> "str | None":
    """"amd" or "intel" for an x86 target's CPU; for an ISA-level one (x86-64-v3, v4: any CPU of the
    level) this machine's, where it can run the code (x86 builds are timed and mostly run where they
    are compiled); None for other targets, or an ISA level this machine lacks."""
    from ..targets import host_cpu, missing_features, resolve

    if target.kind.name != "llvm" or not str(target.attrs.get("mtriple", "")).startswith("x86_64"):
        return None
    cpu = str(target.attrs.get("mcpu", ""))
    if cpu.startswith("x86-64") or cpu in ("", "generic"):
        if missing_features(target, resolve("host").target):
            return None
        cpu = host_cpu()
    return "amd" if cpu.startswith(("znver", "bdver", "btver")) else "intel"


def estimated_ratio(work: LayerWork, kind: str, vendor: "str | None" = None) -> float:
    """int8-dot time / bit-serial time predicted for a layer on a CPU of this kind (and vendor)."""
    speedup = _INT16_ACCUMULATING_SPEEDUP.get(kind, 1.0) if work.int8_pair_sums_fit_int16 else 1.0
    words_per_dot = _WORDS_PER_DOT_BY_VENDOR.get((kind, vendor), _WORDS_PER_DOT[kind])
    return work.int8_dots * words_per_dot / speedup / work.bitserial_words


def choose(plan: LayerPlan, target, layout: "ops.Int8Layout | None", mode: str, input_shape, output_shape,
           measured: "tuple[float, float] | None" = None) -> Choice:
    """The kernel for one quantized layer. `mode`: AUTO, or the kernel asked for; `measured`: the
    best tuned seconds of (bit-serial, int8-dot) for this layer."""
    if plan.op != "conv2d" or layout is None or not ops.int8_fits(plan.quantizer.bits, plan.grid.bits):
        if mode != INT8_DOT:
            return Choice(BITSERIAL, "")  # the only kernel there is: nothing to explain
        why = ("this target has no int8 dot product" if layout is None else
               "int8-dot covers conv2d only" if plan.op != "conv2d" else "its levels do not fit int8 products")
        return Choice(BITSERIAL, f"int8-dot asked for, but {why}")
    if mode != AUTO:
        return Choice(mode, f"{mode} asked for")
    if measured is not None:
        bitserial, int8 = measured
        kernel = INT8_DOT if int8 < bitserial else BITSERIAL
        return Choice(kernel, f"kernel by tuning: int8-dot {int8 * 1e3:.3f} ms, bit-serial {bitserial * 1e3:.3f} ms")
    work = layer_work(plan.quantizer.bits, plan.grid.bits, plan.grid.levels.shape[2:], input_shape, output_shape, layout)
    ratio = estimated_ratio(work, cpu_kind(target), cpu_vendor(target))
    kernel = INT8_DOT if ratio < 1 else BITSERIAL
    return Choice(kernel, f"kernel by cost model: int8-dot {ratio:.2f}x bit-serial's time")
