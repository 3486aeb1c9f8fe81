"""Which kernel runs each quantized conv: bit-serial (AND + popcount over every pair of bit-planes),
an int8 dot product over the integer levels (VNNI / pmaddubsw / sdot), or, on AVX2 CPUs, table
lookups (vpshufb in per-pixel tables of level sums, `ops.lut`), all exact in integers.

Bit-serial work grows with abits x wbits plane pairs and pads channels to 64-bit words; the int8 dot
product costs the same at every width up to 4 bits and pads channels to 4. Which is faster depends on
the layer and the CPU, so the choice is per layer:

* with a tuning database that holds records of the bit-serial and int8 kernels for the layer, the
  fastest tuned record (the tuner extracts every kernel's tasks, so a log tuned since they exist
  has them all); where the lookup kernel is offered but the log has no record of it (a log tuned
  before it existed), it stands at the int8 kernel's tuned time scaled by the cost model's ratio.
  An int8 conv's record covers what its function computes: where the lowering fused the next
  layer's int8 pack into it, that pack too (a bit-serial conv's record never holds its bitpack,
  which has a fixed schedule and no record), so the comparison leans towards bit-serial by a pack;
* otherwise a cost model: each kernel's inner-loop operations for the layer divided by its rate
  on this kind of CPU, the rates fitted to default-schedule timings (benchmarks/int8_dot.py,
  benchmarks/avx2.py).

Where the int8 dot product runs a conv in the Winograd F(2x2, 3x3) domain (x86 without AMX,
`ops.winograd_applies`), its cost, modelled or tuned (the direct conv's record: the Winograd conv
has a fixed schedule), is scaled by WINOGRAD_TIME_RATIO.

Convs that read one quantized map (a residual stage's first conv and its shortcut conv) share one
pass that packs it, computed in its producer's epilogue, only where they run one kernel; two
kernels need two passes. So such a group is settled together (`settle_shared_inputs`): each set of
kernels is priced at its convs' costs plus a pass per pack beyond the first, the pass timed by the
log's record of the map's int8 pack or, without records, priced by the cost model per element.
ResNet-18 2x 2/2's stage-2 convs split by their own records (int8-dot 0.64 ms against bit-serial
0.76 for the 3x3, 0.24 against 0.18 for the 1x1) ran the model 1.05x slower than either kernel for
both (three round-robin `bench` runs, znver4).
"""

import itertools
import math
from dataclasses import dataclass, field, replace

from .. import ops
from ..ops.bitserial import as_padding4
from ..kernel_kinds import AUTO, BITSERIAL, INT8_DOT, INT8_WINOGRAD, KERNELS, LUT
from ..targets import is_aarch64
from .recognize import LayerPlan

WORD_BITS = 64  # channels per bit-serial word on CPUs


@dataclass(frozen=True)
class Choice:
    kernel: str  # BITSERIAL, INT8_DOT or LUT
    why: str  # e.g. "kernel by cost model: int8-dot 0.41x bit-serial's time"; "" where there was no choice
    # What `auto` weighed, empty where nothing was: each kernel's tuned seconds (where the log has
    # records) and the cost model's estimate (bit-serial word steps).
    seconds: dict = field(default_factory=dict)
    estimated: dict = field(default_factory=dict)
    winograd: bool = False  # int8-dot, where it runs the layer, computes it in the Winograd F(2x2, 3x3) domain

    @property
    def runs_winograd(self) -> bool:
        return self.kernel == INT8_DOT and self.winograd


@dataclass(frozen=True)
class LayerWork:
    """Inner-loop operations of one conv for each kernel: bit-serial word AND+popcount+accumulate
    steps (one per plane pair and 64-channel word), int8 dot steps (one per output block and
    4-channel group), and table lookups (one per vector of 32 output channels and group of channels
    whose weight codes make one 4-bit index; 0 where the weights have more than 2 bits) and the
    tables they look up in (one per input pixel, padding included, and group)."""

    bitserial_words: int
    int8_dots: int
    int8_pair_sums_fit_int16: bool  # vpmaddubsw kernels then accumulate in int16 (ops.pair_sums_fit_int16)
    lut_lookups: int = 0
    lut_tables: int = 0
    lut_steps: int = 1  # lookups added in bytes between widenings (the template's chunk)
    lut_int16: bool = False  # the whole reduction's table sums fit int16 (the template then widens into int16)
    amx_tile: "ops.AmxTile | None" = None  # the AMX tiling on CPUs with AMX (ops.amx_tile; None: VNNI runs it)
    winograd: bool = False  # the int8 dot product runs it in the Winograd domain (ops.winograd_applies)
    # The share of the Winograd conv's computed outputs that are the layer's: it computes whole 2x2
    # tiles, so an odd map computes a row and a column more (7x7: 49 of 64).
    winograd_useful_fraction: float = 1.0


def layer_work(abits: int, wbits: int, kernel_size, input_shape, output_shape, layout: "ops.Int8Layout",
               padding=0, stride=1) -> LayerWork:
    """The work of an NCHW conv with these bits, (KH, KW) kernel, shapes, padding and stride."""
    _, channels, in_h, in_w = input_shape
    batch, out_channels, out_h, out_w = output_shape
    kernel_h, kernel_w = kernel_size
    window = kernel_h * kernel_w * batch * out_h * out_w
    pairs = abits * wbits
    words = -(-channels // WORD_BITS)
    groups = -(-channels // layout.reduce_block)
    blocks = -(-out_channels // layout.out_block)
    steps = kernel_h * kernel_w * groups
    top, left, bottom, right = as_padding4(padding)
    amx_tile = ops.int8_dot.amx_tile(channels, out_h, out_w, in_w + left + right, stride, layout)
    lookups = tables = 0
    chunk, int16 = 1, False
    if ops.lut_fits(abits, wbits):
        lut_groups = ops.lut.groups(channels, wbits)
        chunk = max(d for d in range(1, ops.lut.int8_steps(abits, wbits) + 1) if lut_groups % d == 0)
        lookups = window * -(-out_channels // ops.lut.LANES) * lut_groups
        tables = batch * (in_h + top + bottom) * (in_w + left + right) * lut_groups
        int16 = kernel_h * kernel_w * lut_groups * ops.lut.table_bound(abits, wbits) <= 2**15 - 1
    winograd_outputs = math.prod(ops.int8_winograd.tiles_per_side((out_h, out_w))) * ops.int8_winograd.TILE**2
    return LayerWork(bitserial_words=window * out_channels * pairs * words, int8_dots=window * blocks * groups,
                     int8_pair_sums_fit_int16=ops.pair_sums_fit_int16(ops.pair_sum_max(abits, wbits), steps),
                     lut_lookups=lookups, lut_tables=tables, lut_steps=chunk,
                     lut_int16=int16, amx_tile=amx_tile,
                     winograd=ops.winograd_applies(kernel_size, stride, output_shape[2:], out_channels, layout,
                                                   abits, wbits),
                     winograd_useful_fraction=out_h * out_w / winograd_outputs)


# The cost of one int8 dot step in bit-serial word steps, per CPU kind: a layer's predicted time
# ratio is int8_dots * this / bitserial_words.
_WORDS_PER_DOT = {
    # Fitted to the 3x3 layers of benchmarks/results/int8_dot.md (znver4, default schedules, 1 and 2
    # threads): int8 / bit-serial measured 1.30-1.33 at 2/2, 0.67-0.68 at 4/2, 0.65-0.67 at 2/4,
    # 0.33-0.34 at 4/4, which give 5.2-5.4 (4.2 before the register tiles moved to the stack, which
    # made the bit-serial kernels 1.3x as fast and the int8 ones 1.05x).
    "avx512-vnni": 5.3,
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
# benchmarks/results/int8_dot_emeraldrapids.md, before the register tiles moved to the stack, not
# measured since): 3.4-3.6 at the multi-bit widths, against znver4's 4.0-4.7 then: two 512-bit
# vpdpbusd per cycle where Zen 4 does one, so there int8 wins 2/2 layers by
# 10-30% (ResNet-18 2x 2/2 end to end, benchmarks/results/end_to_end_emeraldrapids.md: 35.3 against
# 41.8 ms all bit-serial, medians of a noisy run; minima 21.7 against 32.5).
_WORDS_PER_DOT_BY_VENDOR = {("avx512-vnni", "intel"): 3.5}
# AMX (tdpbusd on tiles, `schedules.amx`) per dot step of a full 16-row tile; a tile of fewer
# pixels costs as much per tdpbusd, so a layer's dot steps cost this / the share of its tiles' rows
# its pixels fill (`ops.AmxTile.useful_fraction`). Sapphire/Emerald Rapids (a VM that LLVM reads as
# rocketlake), 1 thread, ResNet-18's 2x 3x3 layers, untuned (benchmarks/results/int8_dot_amx.md,
# before rows were shared), AMX / bit-serial: 0.23-0.35 at 2/2 and 0.72-0.81 at 1/1 on 14-pixel
# tiles; 0.55 and 1.89 on the 7-pixel tiles of 7x7 outputs (now 0.34 and 1.11 on 2 rows a tile,
# 0.98 predicted at 1/1). One figure fits
# the 1/1 layers, where the choice is close, at 0.75 (every 2/2 layer is int8's at any figure
# from 0.5 to 2; 2/2 alone would fit 0.8-1.2, the bit-serial 1/1 kernels run further from their
# bound than the 2/2 ones).
_AMX_WORDS_PER_FULL_TILE_DOT = 0.75
# vpmaddubsw kernels on layers whose whole reduction fits the int16 lanes (no vpmaddwd every 4
# steps): ResNet-18's 2x-wide 3x3 layers at 2/2 on x86-avx2, znver4, 1 thread, 1.15-1.20x as fast
# as the same kernel widening (1.09-1.18x at 2 threads). AVX-512BW: the same sequence, not measured.
_INT16_ACCUMULATING_SPEEDUP = {"avx2": 1.18, "avx512bw": 1.18}
# The Winograd F(2x2, 3x3) int8 conv's time over the direct conv's where it applies (a quarter of
# the dot steps, plus its transforms), on maps of whole 2x2 tiles: `winograd_ratio` divides it by the
# share of the tiles' outputs that are the layer's. ResNet-18 2x 2/2's 3x3 stride-1 layers, the two
# convs alone, weights flushed from cache: on an AMX Xeon built without AMX, 2 threads, x86-avx512
# (VNNI) 0.58-0.68 on 56x56 to 14x14 maps, 0.71-0.93 on 7x7 (0.82 predicted: 49 of 64 outputs);
# AVX-512BW 0.75 (56x56, 14x14); AVX-VNNI 0.65 (56x56), 0.99 (14x14); AVX2 0.74 (56x56, 28x28), 1.0
# (14x14, 7x7: the direct 2/2 kernel accumulates in int16 there, the Winograd one's larger products
# cannot). On znver4, 1 and 2 threads, VNNI: 0.57-0.74 on 56x56 to 14x14, 0.88-0.93 on 7x7
# (benchmarks/results/winograd.md).
WINOGRAD_TIME_RATIO = {"avx512-vnni": 0.63, "avx512bw": 0.75, "avx-vnni": 0.8, "avx2": 0.87}


# The cost of one table lookup (32 output channels x 2 input channels at 2-bit weights) with its
# share of the widenings, and of building one table, in int8 dot steps (8 x 4, int16-accumulating),
# for the CPU kinds the lookup kernel is offered on. Emerald Rapids, x86-avx2, 1 thread, the conv
# alone against the int8 conv on ResNet-18's 2x layers:
#   * widening into int16 every 16 lookups (2/2): 0.60-0.83 of int8's time, median 0.66, so a lookup
#     with its widenings costs 0.66 x 2 = 1.3 dots; every 4 (4/2) on 56x56x128: 1.28x that, so a
#     widening costs 1.7 lookups, a lookup alone 1.18 dots;
#   * widening into int32, 2/2 (16 lookups a widening) against 4/2 (4) on 28x28x256: 1.95x the time,
#     so a widening costs 7.4 lookups, a lookup alone 1.5 dots (2.2 with its widenings at 16).
# The tables pass of the 56x56x128 layers took 0.63 ms per call where their int8 conv took 4.15
# (2 threads, in the model): 10 dots a table.
_DOTS_PER_LOOKUP = {"avx2": {"int16": 1.18, "int32": 1.5}}
_LOOKUPS_PER_WIDENING = {"int16": 1.7, "int32": 7.4}
_DOTS_PER_TABLE = {"avx2": 10.0}


def lut_available(target) -> bool:
    """Whether the lookup kernel runs on this target: x86 CPUs with AVX2 (its template is ymm
    vpshufb)."""
    return _x86_kind(target) is not None


def lut_offered(target) -> bool:
    """Whether `auto` considers the lookup kernel: where the best int8 product is AVX2's
    vpmaddubsw. With VNNI (vpdpbusd does 32 or 64 MACs in one instruction) or AVX-512 the dot
    product or bit-serial are faster; `--kernels lut` still runs it there."""
    return _x86_kind(target) in _DOTS_PER_LOOKUP


def _x86_kind(target) -> "str | None":
    """cpu_kind of an x86 CPU target with AVX2; None for any other target."""
    from tvm.target.codegen import target_has_features

    if target.kind.name != "llvm" or is_aarch64(target) or not target_has_features("avx2", target):
        return None
    return cpu_kind(target)


def cpu_kind(target) -> str:
    """The int8 dot instruction family of a CPU target with an int8 layout (ops.int8_layout)."""
    from tvm.target.codegen import target_has_features

    if is_aarch64(target):
        return "neon-sdot"
    if target_has_features("amx-int8", target):
        return "amx"  # its layers that AMX does not take run on AVX512-VNNI
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


def _words_per_dot(kind: str, vendor: "str | None") -> float:
    """Per VNNI-sized dot step; AMX CPUs' VNNI rate (what AMX's layers are priced by: `estimated_ratio`)."""
    kind = "avx512-vnni" if kind == "amx" else kind
    return _WORDS_PER_DOT_BY_VENDOR.get((kind, vendor), _WORDS_PER_DOT[kind])


def estimated_ratio(work: LayerWork, kind: str, vendor: "str | None" = None) -> float:
    """int8-dot time / bit-serial time predicted for a layer on a CPU of this kind (and vendor)."""
    if kind == "amx" and work.amx_tile:
        words_per_dot = _AMX_WORDS_PER_FULL_TILE_DOT / work.amx_tile.useful_fraction
        return work.int8_dots * words_per_dot / work.bitserial_words
    speedup = _INT16_ACCUMULATING_SPEEDUP.get(kind, 1.0) if work.int8_pair_sums_fit_int16 else 1.0
    return work.int8_dots * _words_per_dot(kind, vendor) / speedup / work.bitserial_words


def winograd_ratio(work: LayerWork, kind: str) -> float:
    """The int8 dot product's time on a layer over its direct conv's: WINOGRAD_TIME_RATIO over the
    share of its tiles' outputs that are the layer's where it runs in the Winograd domain, else 1."""
    return WINOGRAD_TIME_RATIO[kind] / work.winograd_useful_fraction if work.winograd else 1.0


def estimated_costs(work: LayerWork, kind: str, vendor: "str | None", kernels) -> dict:
    """Predicted time of each of `kernels` for a layer, in bit-serial word steps."""
    int8 = estimated_ratio(work, kind, vendor) * work.bitserial_words
    costs = {BITSERIAL: float(work.bitserial_words), INT8_DOT: int8 * winograd_ratio(work, kind)}
    if LUT in kernels:
        dot = int8 / work.int8_dots  # the direct conv's dot step
        into = "int16" if work.lut_int16 else "int32"
        lookup = _DOTS_PER_LOOKUP[kind][into] * (1 + _LOOKUPS_PER_WIDENING[into] / work.lut_steps)
        costs[LUT] = (work.lut_lookups * lookup + work.lut_tables * _DOTS_PER_TABLE[kind]) * dot
    return {kernel: costs[kernel] for kernel in kernels}


def _unavailable(plan: LayerPlan, target, layout, kernel: str) -> "str | None":
    """Why `kernel` cannot run this layer, or None where it can."""
    if kernel == BITSERIAL:
        return None
    if plan.op != "conv2d":
        return f"{kernel} covers conv2d only"
    abits, wbits = plan.quantizer.bits, plan.grid.bits
    if kernel == INT8_DOT:
        if layout is None:
            return "this target has no int8 dot product"
        return None if ops.int8_fits(abits, wbits) else "its levels do not fit int8 products"
    if not lut_available(target):
        return "the lookup kernel needs an x86 CPU with AVX2"
    return None if ops.lut_fits(abits, wbits) else "it needs weights of at most 2 bits and table sums within int8"


def _times(costs: dict, reference: str) -> str:
    return ", ".join(f"{kernel} {cost / costs[reference]:.2f}x" for kernel, cost in costs.items() if kernel != reference)


def choose(plan: LayerPlan, target, layout: "ops.Int8Layout | None", mode: str, input_shape, output_shape,
           measured: "dict | None" = None) -> Choice:
    """The kernel for one quantized layer. `mode`: AUTO, or the kernel asked for; `measured`: the
    best tuned seconds of each kernel with records for this layer (bit-serial and int8-dot at least)."""
    if mode == INT8_WINOGRAD:
        return _winograd(plan, target, layout, input_shape, output_shape)
    if mode != AUTO:
        why = _unavailable(plan, target, layout, mode)
        if why is not None:
            return Choice(BITSERIAL, f"{mode} asked for, but {why}")
        if mode == BITSERIAL:
            return Choice(mode, "" if _only_bitserial(plan, target, layout) else f"{mode} asked for")
        work = layer_work(plan.quantizer.bits, plan.grid.bits, plan.grid.levels.shape[2:], input_shape, output_shape,
                          layout, plan.padding, plan.stride)
        return Choice(mode, f"{mode} asked for" + _on_tiles(mode, cpu_kind(target), work))
    kernels = [kernel for kernel in KERNELS if _unavailable(plan, target, layout, kernel) is None
               and (kernel != LUT or lut_offered(target))]
    if kernels == [BITSERIAL]:
        return Choice(BITSERIAL, "")  # the only kernel there is: nothing to explain
    work = layer_work(plan.quantizer.bits, plan.grid.bits, plan.grid.levels.shape[2:], input_shape, output_shape, layout,
                      plan.padding, plan.stride)
    kind = cpu_kind(target)
    costs = estimated_costs(work, kind, cpu_vendor(target), kernels)
    if measured is not None:
        seconds = {kernel: measured[kernel] for kernel in kernels if kernel in measured}
        why = "kernel by tuning: " + ", ".join(f"{kernel} {seconds[kernel] * 1e3:.3f} ms"
                                               for kernel in (INT8_DOT, BITSERIAL, LUT) if kernel in seconds)
        winograd = winograd_ratio(work, kind)
        if LUT in kernels and LUT not in seconds:
            seconds[LUT] = seconds[INT8_DOT] * costs[LUT] / (costs[INT8_DOT] / winograd)
            why += f", lut {seconds[LUT] * 1e3:.3f} ms (no record: int8-dot's time x the cost model's ratio)"
        if work.winograd:
            # The tuner times the direct conv; the Winograd one has a fixed schedule and no record.
            seconds[INT8_DOT] *= winograd
            why += (f"; int8-dot as Winograd {seconds[INT8_DOT] * 1e3:.3f} ms (its record x the cost model's "
                    f"{winograd:.2f})")
        kernel = min(seconds, key=seconds.get)
        return Choice(kernel, why + _on_tiles(kernel, kind, work), seconds, costs, work.winograd)
    kernel = min(costs, key=costs.get)
    if LUT not in kernels:
        why = f"kernel by cost model: int8-dot {costs[INT8_DOT] / costs[BITSERIAL]:.2f}x bit-serial's time"
    else:
        why = f"kernel by cost model: {_times(costs, BITSERIAL)} bit-serial's time"
    if work.winograd:
        why += " (int8-dot as Winograd)"
    return Choice(kernel, why + _on_tiles(kernel, kind, work), estimated=costs, winograd=work.winograd)


def _winograd(plan: LayerPlan, target, layout, input_shape, output_shape) -> Choice:
    """INT8_WINOGRAD asked for: int8-dot, in the Winograd domain where `ops.winograd_applies`."""
    why = _unavailable(plan, target, layout, INT8_DOT)
    if why is not None:
        return Choice(BITSERIAL, f"{INT8_WINOGRAD} asked for, but {why}")
    choice = choose(plan, target, layout, INT8_DOT, input_shape, output_shape)
    if ops.winograd_applies(plan.grid.levels.shape[2:], plan.stride, output_shape[2:], output_shape[1], layout,
                            plan.quantizer.bits, plan.grid.bits):
        return replace(choice, why=f"{INT8_WINOGRAD} asked for: 16 dot products per 2x2 outputs where the direct "
                                   "conv takes 36", winograd=True)
    # The direct conv's own note (where it runs on AMX tiles) stays.
    direct = choice.why.removeprefix(f"{INT8_DOT} asked for")
    return replace(choice, why=f"{INT8_WINOGRAD} asked for; direct int8-dot: Winograd F(2x2, 3x3) takes 3x3 stride-1 "
                               "convs of at least 16 tiles (7x7 outputs) and one block of output channels, with levels of at "
                               f"most 4 bits (5/4), on x86 without AMX tiles{direct}")


def _on_tiles(kernel: str, kind: str, work: LayerWork) -> str:
    """What `--explain` adds where the int8 dot product runs on AMX tiles."""
    tile = work.amx_tile
    if kernel == INT8_DOT and kind == "amx" and tile:
        rows = f"{tile.rows} rows x {tile.pixels}" if tile.rows > 1 else f"{tile.pixels}"
        return f"; int8-dot on AMX tiles of {rows} pixels"
    return ""


def pack_key(plan: LayerPlan, kernel: str) -> tuple:
    """What the pass packing a layer's input for `kernel` depends on: the rewrite emits one pass per
    key, so layers with equal keys share it (a residual block's conv and its shortcut conv on one
    kernel). Lookup tables carry the conv's zero padding and weight bits as well."""
    key = (plan.data, plan.quantizer.bits, kernel)
    return key + (plan.grid.bits, as_padding4(plan.padding)) if kernel == LUT else key


@dataclass(frozen=True)
class SharedInput:
    """Convs that read one quantized map. `positions`: theirs in the list of choices; `pack_keys`:
    position -> {kernel: its pack_key}; `pass_seconds`: a tuned record of one pass packing the map
    (its int8 pack), where the log has one; `pass_estimate`: the cost model's price of such a pass
    (`estimated_pass`)."""

    positions: list
    pack_keys: dict
    pass_seconds: "float | None" = None
    pass_estimate: "float | None" = None


# The cost of one pass packing a map (its producer's epilogue recomputed from the accumulators, then
# int8 levels or bit-planes written), in int8 dot steps per element. From the tuned records of
# ResNet-18 2x 2/2 on znver4: the int8 packs of the 14x14x512 and 56x56x128 stage inputs took 0.041
# and 0.37 ms (the latter adds a float shortcut) where the int8 convs ran 177 ps per dot step: 2.3
# and 5.2. The lookup tables' pass, 8 bytes written per element, costs 5 (`_DOTS_PER_TABLE`).
_PASS_DOTS_PER_ELEMENT = 3.0


def estimated_pass(input_shape, target) -> float:
    """The cost model's price of one pass packing a conv's NCHW input, in bit-serial word steps."""
    return math.prod(input_shape) * _PASS_DOTS_PER_ELEMENT * _words_per_dot(cpu_kind(target), cpu_vendor(target))


def settle_shared_inputs(groups: "list[SharedInput]", choices: list, names=None) -> list:
    """`choices` with each group of convs that read one quantized map on the set of kernels that
    costs least: its convs' costs, each on the cheapest kernel of the set it can run, plus a pass per
    pack beyond the first. A pack is one per kernel, and for lookups one per weight bits and padding;
    the cost model's lookup costs hold their tables' pass already. Priced in seconds where every conv
    of the group has records and the log has the pass's, else by the cost model; tuned records
    without the pass's keep the group on one kernel. `names`: position -> the layer's index, for
    the reasons."""
    settled = list(choices)
    names = names or {}
    for group in groups:
        members = [choices[i] for i in group.positions]
        if len({c.kernel for c in members}) < 2 or any(not c.estimated for c in members):
            continue
        tuned = all(c.seconds for c in members)
        costs = [c.seconds if tuned else c.estimated for c in members]  # never seconds beside model units
        per_pass = group.pass_seconds if tuned else group.pass_estimate
        kernels = sorted({k for cost in costs for k in cost}, key=KERNELS.index)
        best = None
        for size in range(1, len(kernels) + 1):
            for subset in itertools.combinations(kernels, size):
                picks = [min((k for k in subset if k in cost), key=cost.get, default=None) for cost in costs]
                if None in picks:
                    continue
                keys = [group.pack_keys[i][k] for i, k in zip(group.positions, picks)]
                extra = len(set(keys)) - 1
                if not tuned and LUT in picks:  # the lookups' estimates hold their tables' pass
                    extra = len({key for key, k in zip(keys, picks) if k != LUT})
                total = sum(cost[k] for cost, k in zip(costs, picks))
                price = (0, total + extra * per_pass) if per_pass is not None else (extra, total)
                if best is None or price < best[0]:
                    best = (price, picks)
        _, picks = best
        for i, c, kernel in zip(group.positions, members, picks):
            if kernel == c.kernel:
                continue
            same = [str(names.get(j, j)) for j, k in zip(group.positions, picks) if j != i and k == kernel]
            others = ("layer " if len(same) == 1 else "layers ") + ", ".join(same)
            if not same:
                reason = f"{kernel}: the cheapest set of kernels for the convs reading its input"
            elif per_pass is None:
                reason = f"{kernel}, as {others} on the same input, so that one pass packs it (no record prices a second)"
            elif tuned:
                reason = (f"{kernel}, as {others} on the same input: a second pass packing it "
                          f"({per_pass * 1e3:.3f} ms) costs more than {c.kernel} saves")
            else:
                reason = (f"{kernel}, as {others} on the same input: a second pass packing it "
                          f"({per_pass / c.estimated[BITSERIAL]:.2f}x this layer's bit-serial time) costs more than "
                          f"{c.kernel} saves")
            settled[i] = replace(c, kernel=kernel, why=f"{c.why}; {reason}")
    return settled


def _only_bitserial(plan: LayerPlan, target, layout) -> bool:
    return all(_unavailable(plan, target, layout, kernel) is not None for kernel in (INT8_DOT, LUT))
