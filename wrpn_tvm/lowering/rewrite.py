"""Rewrite planned layers to bitpack -> bit-serial kernel -> folded epilogue, with pre-packed weights.

Each bit-serial layer becomes three TE calls: pack_activation of its input's integer levels (the
quantizer's steps replayed in float32 on its input, or the level of each already-quantized value
after pooling / flatten), the bit-serial
conv2d / dense on constant pre-packed weights, and one per-channel float epilogue that reproduces
the last folded op's value in the original layout, so everything downstream is untouched. When a
layer's quantizer reads another bit-serial layer's epilogue, directly or through a residual add,
its pack is computed from the int32 accumulator(s) in one kernel (epilogue + glue + quantize +
bitpack): no float activation map is written for it. A quantized map that such glue reads (the
identity shortcut of the first residual block, after the FP32 stem) is recomputed there from the
quantizer's input (except on aarch64: lower_wrpn says why). A float map is still written where a
float consumer needs it. The FP32 ops left behind become dead and are removed.

A conv whose kernel choice (kernel_choice.py) is the int8 dot product gets the same structure with
the levels as int8 bytes (`ops.int8_levels`) in place of the bit-planes and `ops.int8_conv2d` in
place of the bit-serial conv; one that is the lookup kernel gets per-pixel tables of level sums
(`ops.lut_tables`, which carry the conv's zero padding, so a conv and its shortcut share them only
where their padding and weight bits agree) and `ops.lut_conv2d`. Their accumulators and epilogues
are the same. An int8 pack computed from accumulators is one compute in the levels' NHWC layout
(an expression of the accumulators, not a chain of NCHW maps): where it reads only the producing
int8 conv's accumulators, per-channel constants and int8 levels already packed (a residual's
quantized shortcut, read back from the levels its block's first conv reads) it is elementwise to
that conv, so FuseOps fuses the two and the conv's template writes the next layer's uint8 levels
from its register tile (ResNet-18 2x 4/2: 14 of its 19 int8 convs; activations written 23.9 ->
12.8 MiB per inference).
"""

import functools
from dataclasses import dataclass

import numpy as np
from tvm import relax, te

from .. import ops
from .graph import BindingGraph, op_name, shape_of
from ..kernel_kinds import INT8_DOT, LUT
from .kernel_choice import Choice, pack_key
from .recognize import LayerPlan

_ELEMENTWISE = {
    "relax.add": lambda a, b: a + b,
    "relax.subtract": lambda a, b: a - b,
    "relax.multiply": lambda a, b: a * b,
}
_MAX_GLUE_DEPTH = 4


@dataclass(frozen=True)
class _Emitted:
    acc: relax.Var  # int32 accumulator of a bit-serial layer
    multiplier: relax.Expr
    offset: relax.Expr
    op: str


def _affine(acc: te.Tensor, multiplier: te.Tensor, offset: te.Tensor, op: str) -> te.Tensor:
    """acc * multiplier[o] + offset[o] in the layer's original layout (NCHW from the NHWC conv)."""
    value = _affine_value(acc, multiplier, offset, op)
    if op == "conv2d":
        n, h, w, o = acc.shape
        return te.compute((n, o, h, w), value, name="wrpn_epilogue")
    return te.compute(acc.shape, value, name="wrpn_epilogue")


def _affine_value(acc: te.Tensor, multiplier: te.Tensor, offset: te.Tensor, op: str):
    """_affine's value at an index of the original layout, as an expression of the accumulators."""
    if op == "conv2d":
        return lambda b, c, y, x: acc[b, y, x, c].astype("float32") * multiplier[c] + offset[c]
    return lambda b, c: acc[b, c].astype("float32") * multiplier[c] + offset[c]


def _levels(x: te.Tensor, level) -> te.Tensor:
    """The integer activation levels (as float32) that `level` computes from each element of x."""
    return te.compute(x.shape, lambda *i: level(x(*i)), name="wrpn_levels")


def splits_shift_groups(spec, wbits: int) -> bool:
    """Whether a bit-serial conv for this target sums each shift group apart (multi-bit weights):
    where VPOPCNTQ counts zmm registers (x86 with AVX512-VPOPCNTDQ), whose 32 registers hold a tile
    of one accumulator per group once the accumulators are int32 (`conv_lane_bits`). With int64
    accumulators the group form lost below 3x3 over 256 channels (56x56x128 2/2, znver4: 1.05-1.10x
    the single sum's time); in 32-bit lanes it is the fastest form on every layer
    benchmarks/shift_groups.py measures (1x1 and 3x3, stride 1 and 2, 64 to 1024 channels, 2/2 and 4/2)
    with warm caches; with cold caches the fastest or within 5%, except the 1x1 stride-2 shortcut
    (1.15x / 1.23x the 64-bit group form's time at 2 / 1 threads, 0.17 against 0.15 ms)."""
    from tvm.target.codegen import target_has_features

    return wbits > 1 and spec.target.kind.name == "llvm" and target_has_features("avx512vpopcntdq", spec.target)


def word_bits_for(spec) -> int:
    """64-bit words on CPUs (one word covers 64 channels), 32 on CUDA (native popcount width)."""
    return 32 if spec.is_cuda else 64


def conv_lane_bits(spec, wbits: int) -> int:
    """The word size a bit-serial conv counts in: 32 bits for a shift-group conv on a CPU (the
    packed 64-bit words read as pairs of 32-bit halves, the weights packed in 32 bits). Its
    accumulators are then int32, one zmm per 16 output channels rather than two, and the tile holds
    twice the channels without spilling. benchmarks/results/shift_groups.md (znver4, 2 threads, warm
    caches), against the 64-bit form the lowering gave each layer before: ResNet-18 2x 2/2's 3x3
    stages 0.86x (56x56x128, which kept one sum), 0.95x, 0.98x, 0.98x, at 89-93% of the popcount
    bound; the stride-2 stage entry 0.86x and its 1x1 shortcut 0.93x; 4/2 0.86x; 28x28x100 0.60x."""
    return 32 if splits_shift_groups(spec, wbits) and word_bits_for(spec) == 64 else word_bits_for(spec)


def conv_weight_block(spec, wbits: int, out_channels: int) -> "int | None":
    """Output channels per block of a bit-serial conv's blocked weights (ops.block_conv_weight), or
    None for the plain layout: blocked for the 32-bit shift-group convs (`conv_lane_bits`) whose
    output channels fill whole blocks, one vector of int32 accumulators each, the default tile's
    channel step. benchmarks/results/shift_groups.md (znver4, 2/2, cold caches: weights and output
    flushed, as in a model): 7x7x1024, 2.4 MB of weights, 1.28 -> 1.01 ms at 2 threads, 2.23 -> 1.80
    ms at 1; ResNet-18's other layers within 4% either way, warm or cold."""
    if conv_lane_bits(spec, wbits) == word_bits_for(spec) or out_channels % ops.CONV_WEIGHT_BLOCK:
        return None
    return ops.CONV_WEIGHT_BLOCK


def conv_words(spec, wbits: int, channels: int) -> tuple[str, int]:
    """(word dtype, words per pixel and plane) of a bit-serial conv's packed input, as the conv reads it."""
    word_bits, lane_bits = word_bits_for(spec), conv_lane_bits(spec, wbits)
    return f"uint{lane_bits}", -(-channels // word_bits) * (word_bits // lane_bits)


@relax.expr_functor.mutator
class _Lowerer(relax.PyExprMutator):
    def __init__(self, mod, plans: list[LayerPlan], spec, choices: list[Choice], int8_layout,
                 replay_quantizers: bool):
        super().__init__(mod)
        self.mod = mod
        self.spec = spec
        self.word_bits = word_bits_for(spec)
        self.int8_layout = int8_layout
        self.plan_at = {plan.epilogue.output: plan for plan in plans}
        self.kernel_of = {plan.report_index: choice.kernel for plan, choice in zip(plans, choices, strict=True)}
        self.winograd = {plan.report_index for plan, choice in zip(plans, choices) if choice.runs_winograd}
        self.emitted: dict = {}  # original epilogue output var -> _Emitted
        self.packed: dict = {}  # pack_key -> packed var
        self.views: dict = {}  # (packed var, lane bits) -> its view in words of that size
        self.fused_packs: set = set()  # input vars whose pack is computed from accumulators
        self.int8_levels: dict = {}  # quantized map -> (its quantizer, the int8 levels packed from it)
        # Quantized maps a layer reads directly -> their quantizer, replayed where glue reads them.
        self.quantizer_of = ({plan.data: plan.quantizer for plan in plans if plan.reads_quantizer_directly}
                             if replay_quantizers else {})
        self.graph = BindingGraph(mod["main"])

    def lower(self):
        for gvar, func in self.mod.functions_items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(gvar, self.visit_expr(func))
        return self.builder_.get()

    def visit_var_binding_(self, binding):
        plan = self.plan_at.get(binding.var)
        if plan is None:
            return super().visit_var_binding_(binding)
        self.set_var_remap(binding.var, self._emit_layer(plan, binding.var))
        return None

    def _pack(self, plan: LayerPlan) -> relax.Var:
        # A residual block's conv and its shortcut conv share it when they run the same kernel.
        kernel = self.kernel_of[plan.report_index]
        key = pack_key(plan, kernel)
        if key not in self.packed:
            self.packed[key] = self._emit_pack(plan, kernel)
        return self.packed[key]

    def _emit_pack(self, plan: LayerPlan, kernel: str) -> relax.Var:
        quantizer, word_bits, layout = plan.quantizer, self.word_bits, self.int8_layout
        if kernel == INT8_DOT:
            name = "int8_levels"

            def pack(levels):
                return ops.int8_levels(levels, layout)
        elif kernel == LUT:
            name = "lut_tables"

            def pack(levels):
                return ops.lut_tables(levels, plan.grid.bits, plan.padding)
        else:
            name = "bitpack"

            def pack(levels):
                return ops.pack_activation(levels, quantizer.bits, word_bits, quantize=False)

        # The int8 pack is one compute reading the accumulators in place (an expression of them,
        # not a chain of NCHW maps): elementwise to the int8 conv that computes them, so FuseOps
        # fuses it into that conv, whose template writes the levels from the register tile.
        as_expression = kernel == INT8_DOT
        fused = (self._glue_from_accumulators(quantizer.source, materialize=not as_expression)
                 if plan.reads_quantizer_directly else None)
        if fused is not None:
            args, build = fused
            self.fused_packs.add(plan.data)
            if as_expression:
                def pack_fused(*tensors):
                    value = build(list(tensors))
                    return ops.int8_levels_of(lambda *i: quantizer.level_from_source(value(*i)),
                                              shape_of(quantizer.source), layout)
            else:
                def pack_fused(*tensors):
                    return pack(_levels(build(list(tensors)), quantizer.level_from_source))
            packed = self.builder_.emit_te(pack_fused, *args, primfunc_name_hint=f"wrpn_epilogue_{name}")
        else:
            packed = self._emit_plain_pack(plan, name, pack)
        if kernel == INT8_DOT and plan.reads_quantizer_directly and quantizer.round_is_level:
            self.int8_levels[plan.data] = (quantizer, packed)
        return packed

    def _emit_plain_pack(self, plan: LayerPlan, name: str, pack) -> relax.Var:
        quantizer = plan.quantizer
        # Read the quantizer's input when the layer reads its output directly, and replay its steps:
        # the float quantized map need not be computed for the pack.
        if plan.reads_quantizer_directly:
            source, level = quantizer.source, quantizer.level_from_source
        else:
            source, level = plan.data, quantizer.level_from_value
        return self.builder_.emit_te(lambda x: pack(_levels(x, level)), self.visit_expr(source),
                                     primfunc_name_hint=f"wrpn_{name}")

    def _as_lanes(self, packed: relax.Var, lane_bits: int) -> relax.Var:
        """The packed words as words of `lane_bits` (as many more as they are smaller): a view,
        nothing copied (a little-endian word's low part holds its first channels, as a packing in
        the smaller words would)."""
        if (packed, lane_bits) not in self.views:
            *outer, words = shape_of(packed)
            self.views[packed, lane_bits] = self.builder_.emit(relax.op.memory.view(
                packed, [*outer, words * (self.word_bits // lane_bits)], f"uint{lane_bits}"))
        return self.views[packed, lane_bits]

    def _glue_from_accumulators(self, var, depth: int = 0, materialize: bool = True):
        """(Relax args, builder) recomputing `var` elementwise from bit-serial accumulators, or None.

        Covers the glue between a bit-serial layer's epilogue and the next quantizer: the epilogue
        itself, and residual adds / subtracts / multiplies of it with another epilogue or any
        float tensor of the same shape. At least one operand must come from an accumulator.
        builder(tensors) gives `var`'s value by its index in `var`'s layout: a TE tensor per step
        (`materialize`), or one expression of the tensors it reads.
        """
        emitted = self.emitted.get(var)
        if emitted is not None:
            def affine(tensors):
                acc, multiplier, offset = tensors[:3]
                del tensors[:3]
                return (_affine if materialize else _affine_value)(acc, multiplier, offset, emitted.op)

            return [emitted.acc, emitted.multiplier, emitted.offset], affine
        call = self.graph.value(var)
        combine = _ELEMENTWISE.get(op_name(call))
        if combine is None or depth >= _MAX_GLUE_DEPTH or shape_of(call.args[0]) != shape_of(call.args[1]):
            return None
        parts = [self._glue_from_accumulators(arg, depth + 1, materialize) for arg in call.args[:2]]
        if all(part is None for part in parts):
            return None
        parts = [part if part is not None else self._passthrough(arg, materialize)
                 for part, arg in zip(parts, call.args[:2])]

        def build(tensors):
            lhs, rhs = parts[0][1](tensors), parts[1][1](tensors)
            if not materialize:
                return lambda *i: combine(lhs(*i), rhs(*i))
            return te.compute(lhs.shape, lambda *i: combine(lhs(*i), rhs(*i)), name="wrpn_glue")

        return parts[0][0] + parts[1][0], build

    def _passthrough(self, var, materialize: bool):
        levels = None if materialize else self.int8_levels.get(var)
        if levels is not None:
            # A quantized map already packed as int8 levels (a residual block's input, which its
            # first conv reads): its value read back from those levels, exactly, in the levels' NHWC
            # layout, so that no float map is written for it and the pack stays elementwise.
            quantizer, packed = levels

            def from_levels(tensors):
                source = tensors.pop(0)
                return lambda n, c, h, w: quantizer.value_from_level(source[n, h, w, c].astype("float32"))

            return [packed], from_levels
        quantizer = self.quantizer_of.get(var)
        if quantizer is not None:
            # A quantized map a layer also reads (the identity shortcut after the FP32 stem): its
            # steps replayed on their input here, so the map itself is never written.
            def replay(tensors):
                source = tensors.pop(0)
                if not materialize:
                    return lambda *i: quantizer.value_from_source(source(*i))
                return te.compute(source.shape, lambda *i: quantizer.value_from_source(source(*i)),
                                  name="wrpn_quantizer")

            return [self.visit_expr(quantizer.source)], replay

        def take(tensors):
            return tensors.pop(0)

        return [self.visit_expr(var)], take

    def _emit_layer(self, plan: LayerPlan, output_var) -> relax.Var:
        abits, wbits = plan.quantizer.bits, plan.grid.bits
        packed = self._pack(plan)
        # The layer's index in the kernel's name lets the kernel choice find its tuning records.
        tag = f"a{abits}w{wbits}_{layer_tag(plan.report_index)}"
        if plan.report_index in self.winograd:
            weight, correction = ops.prepack_winograd_weight(plan.grid.levels, abits, self.int8_layout)
            acc = self.builder_.emit_te(
                ops.int8_winograd_conv2d, packed, relax.const(weight), relax.const(correction),
                int(plan.grid.levels.shape[0]), plan.padding, (abits, wbits),
                primfunc_name_hint=f"wrpn_int8_winograd_{tag}",
            )
        elif self.kernel_of[plan.report_index] == INT8_DOT:
            weight = relax.const(ops.prepack_int8_weight(plan.grid.levels, self.int8_layout))
            acc = self.builder_.emit_te(
                # The layout by keyword: emit_te takes only tensors and plain values positionally.
                functools.partial(ops.int8_conv2d, layout=self.int8_layout), packed, weight,
                int(plan.grid.levels.shape[0]), plan.stride, plan.padding, (abits, wbits),
                primfunc_name_hint=f"wrpn_int8_conv2d_{tag}",
            )
        elif self.kernel_of[plan.report_index] == LUT:
            codes = relax.const(ops.prepack_lut_codes(plan.grid.levels, wbits))
            acc = self.builder_.emit_te(
                ops.lut_conv2d, packed, codes, int(plan.grid.levels.shape[0]), plan.stride, (abits, wbits),
                primfunc_name_hint=f"wrpn_lut_conv2d_{tag}",
            )
        elif plan.op == "conv2d":
            lane_bits = conv_lane_bits(self.spec, wbits)
            if lane_bits != self.word_bits:
                packed = self._as_lanes(packed, lane_bits)
            weight = _pad_words(ops.pack_weight(plan.grid.levels, wbits, lane_bits), shape_of(packed)[-1])
            block = conv_weight_block(self.spec, wbits, weight.shape[-1])
            weight = relax.const(ops.block_conv_weight(weight, block) if block else weight)
            acc = self.builder_.emit_te(
                ops.bitserial_conv2d, packed, weight, abits, wbits, plan.stride, plan.padding,
                split_shift_groups=splits_shift_groups(self.spec, wbits), primfunc_name_hint=f"wrpn_conv2d_{tag}",
            )
        else:
            weight = relax.const(ops.pack_weight(plan.grid.levels, wbits, self.word_bits))
            acc = self.builder_.emit_te(
                ops.bitserial_dense, packed, weight, abits, wbits, primfunc_name_hint=f"wrpn_dense_{tag}"
            )
        multiplier = relax.const(plan.epilogue.multiplier.astype(np.float32))
        offset = relax.const(plan.epilogue.offset.astype(np.float32))
        self.emitted[output_var] = _Emitted(acc, multiplier, offset, plan.op)
        return self.builder_.emit_te(
            _affine, acc, multiplier, offset, plan.op, primfunc_name_hint="wrpn_epilogue"
        )


def _pad_words(weight: np.ndarray, words: int) -> np.ndarray:
    """Packed conv weights [KH, KW, wbits, CW, O] with zero words up to `words` (halves of the
    activations' words can outnumber the weight's own words: 20 channels are one 64-bit word, two
    halves, but one 32-bit word)."""
    missing = words - weight.shape[3]
    return np.pad(weight, [(0, 0)] * 3 + [(0, missing), (0, 0)]) if missing else weight


def layer_tag(index: int) -> str:
    return f"layer{index}_"


def rewrite(mod, plans: list[LayerPlan], spec, choices: list[Choice], int8_layout=None,
            replay_quantizers: bool = True):
    """(The module with every planned layer lowered by its chosen kernel and dead FP32 leftovers
    removed, and for each plan whether its input is packed straight from accumulators in the
    producers' epilogue.) `replay_quantizers`: recompute a quantized shortcut inside the packs that
    add it rather than write it (see the module docstring). `spec`: the target, which sets the word
    size and where bit-serial convs sum each shift group apart (`splits_shift_groups`)."""
    lowerer = _Lowerer(mod, plans, spec, choices, int8_layout, replay_quantizers)
    lowered = relax.transform.DeadCodeElimination(["main"])(lowerer.lower())
    return lowered, [plan.data in lowerer.fused_packs for plan in plans]
