"""CPU template for the int8-dot conv (`wrpn_tvm.ops.int8_dot`): x86 (AVX512-VNNI, AVX-512BW, AVX2
with or without AVX-VNNI) and aarch64 dotprod.

The register tile is (output pixels) x (weight blocks of ob output channels): per step of the
reduction (kh, kw, 4 input channels) it loads one [ob, 4] weight vector per block, broadcasts 4
activation bytes per pixel, and does one dot instruction (tensorized) per pixel and block into an
int32 accumulator register that stays there until the reduction ends. Tiles run in parallel; the
zero padding is one parallel pass over the input before the kernel (as for the blocked FP32 conv);
the write-back drops padded output channels and runs the fused epilogue on the tile, reading the
accumulators from registers (an int8 conv fused with the next layer's pack writes uint8 levels,
never its int32 sums).
With weight blocks outermost (weights past BLOCKS_OUTER_WEIGHT_BYTES), the tile loop prefetches the
next tile's blocks while it computes (`prefetch`): ResNet-18 2x 2/2 for x86-avx512 on an AMX Xeon
(2 threads, bench round-robin, 40 rounds) ran 0.98x its time without.
MetaSchedule samples the tile (blocks x rows x columns), the loop order and the unroll depth; the
rule tensorizes its candidates itself.

On the vpmaddubsw CPUs (AVX2, AVX-512BW), the int16 pair sums of a layer told its bits are added
to the accumulators in int16 until the write-back widens them, where the whole reduction's bound
fits int16 (2/2 up to 3x3x2424 channels, 4/2 up to 3x3x484); elsewhere several steps' pair sums are
added, then widened into int32 (vpmaddwd with ones) at every tensorized call.

The dot instruction follows from the layout the function was built with (ob = 16: AVX-512, 8:
AVX2, int8 activations: sdot), so tuning for an AVX-512 target never samples AVX2 designs; only
VNNI against vpmaddubsw (AVX512-VNNI against AVX-512BW, AVX-VNNI against AVX2) needs the target,
which a rule takes from `Target.current()` or, outside one, this machine (x86 candidates are built
and timed on the host).
"""

import math
from dataclasses import dataclass
from typing import Callable
from functools import lru_cache

from tvm import tirx
from tvm.s_tir import Schedule, TensorIntrin
from tvm.script import tirx as T
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder.tirx import prim_func as build_prim_func
from tvm.target import Target
from tvm.target.codegen import llvm_get_system_cpu, target_has_features

from wrpn_tvm.errors import WrpnError
from wrpn_tvm.ops.int8_dot import INT8_CONV2D_RULE, PAD_NAME, PAIR_SUM_ATTR, REDUCE_BLOCK, pair_sums_fit_int16

from . import amx, prefetch
from .common import (
    Decisions,
    attach_epilogue,
    block_rule,
    divisors,
    inline_around_kernels,
    inline_tile_copy,
    largest_divisor_at_most,
    loop_extent,
    pad_whole_input,
    place_parallel,
    place_remaining_blocks,
    root_blocks,
    try_vectorize,
    writeback_func,
)

UNROLL_STEPS = [0, 16, 64]
LOOP_ORDERS = ("blocks_outer", "pixels_outer")
# The default loop order takes weight blocks outermost where the weights exceed this: pixel tiles
# outermost stream every block's weights again for each tile, which costs once they fall out of a
# core's L2 (1 MB on Zen 4). benchmarks/results/int8_loop_order.md (znver4, 2 threads, cold caches:
# weights and output flushed, as in a model), pixels / blocks outermost: 0.87-1.01 up to 1.1 MB of
# weights (56x56x128 0.96, its 1x1 shortcut 0.91; a 512 KB 1x1 shortcut 1.04, within this host's
# noise), 1.08-1.19 from 2.3 MB (14x14x512, its stride-2 entry, 7x7x1024). Blocks outermost was the
# default everywhere before.
BLOCKS_OUTER_WEIGHT_BYTES = 2 * 1024 * 1024
MAX_TILE_BLOCKS = 4
MAX_TILE_ROWS = 4
PAD_VECTOR_BYTES = 64


def _broadcast_bytes(A, step: int, lanes: int, dtype: str):
    """The 4 activation bytes of reduction step `step`, in every 32-bit lane of a vector."""
    word = T.reinterpret("int32", A.vload([step * REDUCE_BLOCK], f"{dtype}x{REDUCE_BLOCK}"))
    return T.reinterpret(f"{dtype}x{lanes * REDUCE_BLOCK}", T.broadcast(word, lanes))


def _weights(B, step: int, steps: int, lanes: int):
    return B.vload([step, 0, 0] if steps > 1 else [0, 0], f"int8x{lanes * REDUCE_BLOCK}")


def _vnni(lanes: int):
    """vpdpbusd: 4 u8 x s8 products added into each int32 lane. zmm (AVX512-VNNI) at 16 lanes;
    ymm at 8, VEX-encoded on CPUs with AVX-VNNI and no AVX-512 (LLVM picks the encoding)."""

    def implementation(A, B, c, steps):
        # The byte operands as <N x i8>: the signature of LLVM 20 and later (TVM's own VNNI
        # intrinsic passes <16 x i32>, which this TVM's LLVM rejects).
        return T.call_llvm_pure_intrin(f"int32x{lanes}", f"llvm.x86.avx512.vpdpbusd.{32 * lanes}", c,
                                       _broadcast_bytes(A, 0, lanes, "uint8"), _weights(B, 0, steps, lanes))

    return implementation


def _sdot(A, B, c, steps):
    return T.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.sdot.v4i32.v16i8", c,
                                   _broadcast_bytes(A, 0, 4, "int8"), _weights(B, 0, steps, 4))


def _widening(multiply_bytes: str, multiply_words: str, lanes: int):
    """vpmaddubsw (u8 x s8, neighbouring products added in a saturating int16) per step, the steps'
    int16 pair sums added (`pair_sum_steps` bounds them), then one vpmaddwd with ones into int32.
    Per 4 steps: 5 multiplies for 128 MACs per 32-bit lane group, against 8 one step at a time."""

    def implementation(A, B, c, steps):
        pairs = None
        for step in range(steps):
            product = T.call_llvm_pure_intrin(f"int16x{2 * lanes}", multiply_bytes,
                                              _broadcast_bytes(A, step, lanes, "uint8"),
                                              _weights(B, step, steps, lanes))
            pairs = product if pairs is None else pairs + product
        ones = T.broadcast(tirx.const(1, "int16"), 2 * lanes)
        return c + T.call_llvm_pure_intrin(f"int32x{lanes}", multiply_words, pairs, ones)

    return implementation


def _int16_accumulating(multiply_bytes: str, lanes: int):
    """vpmaddubsw per step, its pair sums added to the accumulator's int16 lanes: two operations
    per step where widening every few steps takes two and a quarter, of which one and a quarter are
    multiplies (vpmaddwd is one). The accumulator's 32-bit lane of an output holds two int16 pair
    sums until `_pair_sums_decoded` adds them on write-back."""

    def implementation(A, B, c, steps):
        pairs = T.reinterpret(f"int16x{2 * lanes}", c)
        for step in range(steps):
            pairs = pairs + T.call_llvm_pure_intrin(f"int16x{2 * lanes}", multiply_bytes,
                                                    _broadcast_bytes(A, step, lanes, "uint8"),
                                                    _weights(B, step, steps, lanes))
        return T.reinterpret(f"int32x{lanes}", pairs)

    return implementation


def _pair_sums_decoded(lanes: int, multiply_words: str):
    """The write-back's decoding: each output's two int16 pair sums added into int32 by vpmaddwd
    with ones."""

    def store(S, D):
        ones = T.broadcast(tirx.const(1, "int16"), 2 * lanes)
        pairs = T.reinterpret(f"int16x{2 * lanes}", S.vload([0], f"int32x{lanes}"))
        T.buffer_store(D, T.call_llvm_pure_intrin(f"int32x{lanes}", multiply_words, pairs, ones),
                       [T.ramp(0, 1, lanes)])

    return store


def _dot_func(lanes: int, steps: int, activation_dtype: str, implementation) -> tirx.PrimFunc:
    """C[i] += sum_s sum_k A[4 s + k] * B[s, i, k] for `lanes` int32 outputs over `steps` of 4
    channels (B is [lanes, 4] at one step): as the conv block writes it (description,
    implementation None), or as dot instructions. C is the local accumulator tile the template
    keeps in registers."""
    width = steps * REDUCE_BLOCK
    b_shape = (steps, lanes, REDUCE_BLOCK) if steps > 1 else (lanes, REDUCE_BLOCK)
    with IRBuilder() as builder:
        with build_prim_func():
            a, b, c = T.arg("a", T.handle()), T.arg("b", T.handle()), T.arg("c", T.handle())
            A = T.match_buffer(a, (width,), activation_dtype, offset_factor=1)
            B = T.match_buffer(b, b_shape, "int8", offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:width], B[tuple(slice(0, d) for d in b_shape)])
                T.writes(C[0:lanes])
                if implementation is not None:
                    T.buffer_store(C, implementation(A, B, C.vload([0], f"int32x{lanes}"), steps),
                                   [T.ramp(0, 1, lanes)])
                elif steps > 1:
                    with T.grid(lanes, steps, REDUCE_BLOCK) as (i, s, k):
                        with T.sblock("update"):
                            vi, vs, vk = T.axis.remap("SRR", [i, s, k])
                            T.reads(C[vi], A[vs * REDUCE_BLOCK + vk], B[vs, vi, vk])
                            T.writes(C[vi])
                            product = A[vs * REDUCE_BLOCK + vk].astype("int32") * B[vs, vi, vk].astype("int32")
                            T.buffer_store(C, C[vi] + product, [vi])
                else:
                    with T.grid(lanes, REDUCE_BLOCK) as (i, k):
                        with T.sblock("update"):
                            vi, vk = T.axis.remap("SR", [i, k])
                            T.reads(C[vi], A[vk], B[vi, vk])
                            T.writes(C[vi])
                            T.buffer_store(C, C[vi] + A[vk].astype("int32") * B[vi, vk].astype("int32"), [vi])
    return builder.get()


@dataclass(frozen=True)
class DotKernel:
    """A dot instruction (sequence) for blocks of `lanes` outputs and the register file around it:
    `registers` are left for the tile's accumulators and weight vectors after the temporaries
    (measured: fewer than the register file's count less temporaries, or LLVM spills). `steps`: the 4-channel reduction steps one tensorized call may cover (more than
    one only where int16 pair sums are added before widening). `decode`: the write-back intrinsic
    of a kernel whose accumulators hold int16 pair sums (`_int16_accumulating`), registered under
    the kernel's name with its multiply of words."""

    name: str
    lanes: int
    activation_dtype: str
    registers: int
    implementation: Callable
    steps: tuple = (1,)
    decode_multiply: "str | None" = None

    @property
    def decode_intrin(self) -> "str | None":
        return f"{self.name}_decode" if self.decode_multiply is not None else None

    def intrin(self, steps: int) -> str:
        return f"{self.name}_x{steps}"

    def fits(self, blocks: int, pixels: int, steps: int) -> bool:
        """Accumulators, and the weight vectors of a call's steps (LLVM loads them all up front)."""
        return blocks * pixels + blocks * steps <= self.registers

    def register(self) -> "DotKernel":
        for steps in self.steps:
            TensorIntrin.register(self.intrin(steps), _dot_func(self.lanes, steps, self.activation_dtype, None),
                                  _dot_func(self.lanes, steps, self.activation_dtype, self.implementation),
                                  override=True)
        if self.decode_multiply is not None:
            TensorIntrin.register(self.decode_intrin, writeback_func(self.lanes, "int32", None),
                                  writeback_func(self.lanes, "int32", _pair_sums_decoded(self.lanes, self.decode_multiply)),
                                  override=True)
        return self


WIDENING_STEPS = (1, 2, 4)
# 32 zmm less a broadcast and a spare: 2x(2x7) tiles (28 accumulators, 2 weight vectors) fit with
# the blocks innermost. ResNet-18 2x 2/2's direct 3x3 convs, x86-avx512 on an Intel Xeon, 1 thread,
# weights flushed: 2x(2x7) 0.81-0.88x the time of 1x(2x14), 7x7 maps (2x(1x7) either way) unchanged.
VNNI = DotKernel("wrpn_vnni_dot_16x4", 16, "uint8", 30, _vnni(16)).register()
# 16 ymm less a broadcast. vpdpbusd's accumulator is its own chain (latency 5, 2 per cycle on
# Golden Cove): at 14 (a 2x(2x2) tile, 8 chains) the kernels ran latency-bound at 113-117 GMAC/s
# on ResNet-18's 56x56 and 28x28 layers, at 15 (1x(2x7)) 147-168 (Emerald Rapids, 1 thread); 16 spilled.
AVX_VNNI = DotKernel("wrpn_avxvnni_dot_8x4", 8, "uint8", 15, _vnni(8)).register()
# 32 zmm less a broadcast, the int16 pairs and the ones of vpmaddwd.
AVX512BW = DotKernel("wrpn_avx512bw_dot_16x4", 16, "uint8", 27,
                     _widening("llvm.x86.avx512.pmaddubs.w.512", "llvm.x86.avx512.pmaddw.d.512", 16),
                     WIDENING_STEPS).register()
# 16 ymm, the same three temporaries.
AVX2 = DotKernel("wrpn_avx2_dot_8x4", 8, "uint8", 13,
                 _widening("llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd", 8), WIDENING_STEPS).register()
# Where the whole reduction fits the int16 lanes: no ones vector to keep.
AVX512BW_INT16 = DotKernel("wrpn_avx512bw_dot16_16x4", 16, "uint8", 28,
                           _int16_accumulating("llvm.x86.avx512.pmaddubs.w.512", 16),
                           decode_multiply="llvm.x86.avx512.pmaddw.d.512").register()
AVX2_INT16 = DotKernel("wrpn_avx2_dot16_8x4", 8, "uint8", 14, _int16_accumulating("llvm.x86.avx2.pmadd.ub.sw", 8),
                       decode_multiply="llvm.x86.avx2.pmadd.wd").register()
INT16_ACCUMULATING = {AVX2.name: AVX2_INT16, AVX512BW.name: AVX512BW_INT16}
# 32 q registers less broadcast activations (ld1r into registers): a 1x28 tile spilled (cortex-a76).
SDOT = DotKernel("wrpn_sdot_4x4", 4, "int8", 24, _sdot).register()


@lru_cache(maxsize=1)
def _host_target() -> Target:
    """This machine as LLVM names its CPU (a tuner enters its target, `host` with AMX included)."""
    return Target({"kind": "llvm", "mcpu": llvm_get_system_cpu()})


def dot_kernel(ob: int, activation_dtype: str, target: "Target | None") -> DotKernel:
    """The dot instruction for a block of ob output channels (what the layout was built for)."""
    if activation_dtype == "int8" and ob == 4:
        return SDOT
    if activation_dtype == "uint8" and ob == 8:
        target = target if target is not None else _host_target()
        return AVX_VNNI if target_has_features("avxvnni", target) else AVX2
    if activation_dtype == "uint8" and ob == 16:
        target = target if target is not None else _host_target()
        return VNNI if target_has_features("avx512vnni", target) else AVX512BW
    raise WrpnError(f"no int8 dot kernel for blocks of {ob} output channels of {activation_dtype} activations")


def _layout_of(sch: Schedule, block) -> tuple[int, str]:
    """(ob, activation dtype) of an int8 conv block: its accumulator's last extent, its data's dtype."""
    info = sch.get(block)
    ob = int(info.writes[0].source.shape[-1])
    data = [r.source for r in info.reads if len(r.source.shape) == 4]
    return ob, str(data[0].dtype)


def _weight_buffer(sch: Schedule, block) -> tirx.Buffer:
    """The int8 conv block's prepacked weights (its 6-D int8 read)."""
    return next(r.source for r in sch.get(block).reads if len(r.source.shape) == 6)


def _weight_bytes(sch: Schedule, block) -> int:
    return math.prod(int(extent) for extent in _weight_buffer(sch, block).shape)


def default_order(sch: Schedule, block) -> str:
    return LOOP_ORDERS[0] if _weight_bytes(sch, block) > BLOCKS_OUTER_WEIGHT_BYTES else LOOP_ORDERS[1]


def accumulating_kernel(sch: Schedule, block, kernel: DotKernel) -> DotKernel:
    """The kernel's int16-accumulating form where the block's whole reduction (one pair sum per
    4-channel step in each int16 lane) is bounded within int16; the kernel itself otherwise."""
    wider = INT16_ACCUMULATING.get(kernel.name)
    bound = sch.get(block).annotations.get(PAIR_SUM_ATTR)
    if wider is None or bound is None:
        return kernel
    _, _, _, _, _, kh, kw, c4, _ = sch.get_loops(block)
    steps = loop_extent(sch, kh) * loop_extent(sch, kw) * loop_extent(sch, c4)
    return wider if pair_sums_fit_int16(int(bound), steps) else kernel


def reduction_steps(sch: Schedule, block, kernel: DotKernel, channel_steps: int) -> int:
    """4-channel steps per tensorized call: the most the kernel offers that divide the layer's and
    whose int16 pair sums cannot overflow (one step where the block does not bound its levels)."""
    bound = sch.get(block).annotations.get(PAIR_SUM_ATTR)
    return max(s for s in kernel.steps
               if channel_steps % s == 0 and (s == 1 or (bound is not None and pair_sums_fit_int16(int(bound), s))))


def has_int8_conv(sch: Schedule) -> bool:
    return any(block_rule(sch, block) == INT8_CONV2D_RULE for block in root_blocks(sch))


def default_tile(blocks: int, rows: int, columns: int, kernel: DotKernel, steps: int) -> tuple[int, int, int]:
    """(weight blocks, rows, columns) per tile, each dividing its extent, whose registers fit: the
    most accumulators (independent chains that hide the dot latency), then the most dot instructions
    per load (a weight vector per block, a broadcast per pixel). Measured on znver4 (CPU time, 1
    thread): VNNI 1x28 / 4x4 / 2x7 within 2% of each other; AVX2 at 4 steps 1x8 (2 rows of 4) 145
    GMAC/s, 2x2 135, 2x4 (spilling) 116. On an Intel Xeon (Sapphire/Emerald Rapids) the loads count:
    the VNNI loop alone (hand-written, operands in L1) ran 320-337 GMAC/s as 1x28 (29 loads per 28
    dots), 372-395 as 2x14, 379-391 as 4x7, against 474 for vpdpbusd alone."""

    def score(tile):
        b, r, c = tile
        return b * r * c, b * r * c / (b + r * c), r

    # Over several steps LLVM hoists every step's broadcasts to share them between blocks, and a
    # tile of two blocks spilled (AVX-512BW 2x(2x4)); one block keeps only its steps' weights live.
    most_blocks = 1 if steps > 1 else MAX_TILE_BLOCKS
    tiles = [(b, r, c) for b in divisors(blocks) if b <= most_blocks
             for r in divisors(rows) if r <= 2 for c in divisors(columns) if kernel.fits(b, r * c, steps)]
    return max(tiles, key=score)


def conv2d(sch: Schedule, block, kernel: DotKernel, tuning: bool, order: "str | None" = None) -> None:
    decisions = Decisions(sch, tuning)
    order = order if order is not None else default_order(sch, block)
    kernel = accumulating_kernel(sch, block, kernel)
    n, oh, ow, ob, oi, kh, kw, c4, ci = sch.get_loops(block)
    steps = reduction_steps(sch, block, kernel, loop_extent(sch, c4))
    inner = [oi, ci]
    if steps > 1:
        c4, step = sch.split(c4, [None, steps])
        inner = [oi, step, ci]
    extents = [loop_extent(sch, loop) for loop in (ob, oh, ow)]
    blocks, rows, columns = default_tile(*extents, kernel, steps)
    ob_outer, ob_inner = sch.split(ob, decisions.tile(ob, 2, MAX_TILE_BLOCKS, [extents[0] // blocks, blocks]))
    oh_outer, oh_inner = sch.split(oh, decisions.tile(oh, 2, MAX_TILE_ROWS, [extents[1] // rows, rows]))
    ow_outer, ow_inner = sch.split(ow, decisions.tile(ow, 2, kernel.registers, [extents[2] // columns, columns]))
    pixels = [n, oh_outer, ow_outer]
    outer = [ob_outer, *pixels] if order == "blocks_outer" else [*pixels, ob_outer]
    # Blocks innermost: each pixel's broadcast feeds every block's dot at once, so only the tile's
    # weight vectors stay live beside the accumulators (blocks outermost, LLVM kept every pixel's
    # broadcast live across the blocks and a 2x14 tile spilled).
    register_loops = [oh_inner, ow_inner, ob_inner]
    sch.reorder(*outer, kh, kw, c4, *register_loops, *inner)
    tile = sch.fuse(*outer)
    sch.parallel(tile)
    sch.annotate(tile, "pragma_auto_unroll_max_step", decisions.choice(UNROLL_STEPS, default=0))
    sch.annotate(tile, "pragma_unroll_explicit", 1)
    if order == "blocks_outer":
        prefetch.mark(sch, tile, _weight_buffer(sch, block))
    pad_whole_input(sch, block)
    for loop in register_loops:
        sch.unroll(loop)
    writeback = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(writeback, tile, preserve_unit_loops=True)
    _, *writeback_tile, writeback_lanes = sch.get_loops(writeback)
    attach_epilogue(sch, writeback, tile)
    if kernel.decode_intrin is not None:
        # The write-back of int16 pair sums decodes them: the update and the decoding are applied
        # together or not at all.
        sch.tensorize(writeback_lanes, kernel.decode_intrin)
        if tuning:
            sch.blockize(writeback_tile[0])
    else:
        try_vectorize(sch, writeback_lanes)
        inline_tile_copy(sch, writeback, tile)
    init = sch.decompose_reduction(block, kh)
    try_vectorize(sch, sch.get_loops(init)[-1])
    init_loops = sch.get_loops(init)
    sch.tensorize(oi, kernel.intrin(steps))
    if tuning:
        # Tensorized here, not left to MetaSchedule's RewriteTensorize postproc: x86 targets
        # without VNNI do not run it. RewriteParallelVectorizeUnroll (it runs on every candidate)
        # rejects decomposed and tensorized blocks at the top level: blocks inside a block are out
        # of its reach.
        sch.blockize(register_loops[0])
        sch.blockize(init_loops[1])


def _schedule_padding(sch: Schedule) -> None:
    """Vectorize the padded copy over channels, a zmm of bytes at a time (LLVM does not finish
    on a 1024-lane vector when the copy also transposes NCHW levels)."""
    for block in root_blocks(sch):
        if sch.get(block).name_hint.startswith(PAD_NAME):
            channels = sch.get_loops(block)[-1]
            lanes = largest_divisor_at_most(loop_extent(sch, channels), PAD_VECTOR_BYTES)
            try_vectorize(sch, sch.split(channels, [None, lanes])[1])


def schedule_function(sch: Schedule, target: Target, order: "str | None" = None) -> None:
    """Untuned schedule of a PrimFunc holding int8 conv(s) and their fused neighbours (`order`: one
    of LOOP_ORDERS for every conv, else each conv's `default_order`)."""
    others = inline_around_kernels(sch, INT8_CONV2D_RULE, PAD_NAME)
    for block in [b for b in root_blocks(sch) if block_rule(sch, b) == INT8_CONV2D_RULE]:
        if amx.available(target) and amx.fits(sch, block):
            amx.conv2d(sch, block, tuning=False, order=order or default_order(sch, block))
        else:
            conv2d(sch, block, dot_kernel(*_layout_of(sch, block), target), tuning=False, order=order)
    _schedule_padding(sch)
    place_remaining_blocks(sch, others, place_parallel)


def conv2d_rule(sch: Schedule, block) -> list[Schedule]:
    """The MetaSchedule custom rule: one design space per loop order."""
    target = Target.current(allow_none=True)
    kernel = dot_kernel(*_layout_of(sch, block), target)
    on_tiles = amx.available(target if target is not None else _host_target()) and amx.fits(sch, block)
    spaces = []
    for order in LOOP_ORDERS:
        space = sch.copy()
        if on_tiles:
            amx.conv2d(space, block, tuning=True, order=order)
        else:
            conv2d(space, block, kernel, tuning=True, order=order)
        spaces.append(space)
    return spaces
