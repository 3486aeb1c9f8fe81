"""Rewrite planned layers to bitpack -> bit-serial kernel -> folded epilogue, with pre-packed weights.

Each bit-serial layer becomes three TE calls: pack_activation of its input, the bit-serial
conv2d / dense on constant pre-packed weights, and one per-channel float epilogue that reproduces
the last folded op's value in the original layout, so everything downstream is untouched. When a
layer reads the quantizer of another bit-serial layer's epilogue directly, its pack is computed
from that layer's int32 accumulator in one kernel (epilogue + quantize + bitpack): the float
activation map between the two layers is never written. The FP32 ops left behind become dead and
are removed.
"""

from dataclasses import dataclass

import numpy as np
from tvm import relax, te

from .. import ops
from .recognize import LayerPlan


@dataclass(frozen=True)
class _Emitted:
    acc: relax.Var  # int32 accumulator of a bit-serial layer
    multiplier: relax.Expr
    offset: relax.Expr
    op: str


def _affine(acc: te.Tensor, multiplier: te.Tensor, offset: te.Tensor, op: str) -> te.Tensor:
    """acc * multiplier[o] + offset[o] in the layer's original layout (NCHW from the NHWC conv)."""
    if op == "conv2d":
        n, h, w, o = acc.shape
        return te.compute(
            (n, o, h, w),
            lambda b, c, y, x: acc[b, y, x, c].astype("float32") * multiplier[c] + offset[c],
            name="wrpn_epilogue",
        )
    return te.compute(acc.shape, lambda b, c: acc[b, c].astype("float32") * multiplier[c] + offset[c],
                      name="wrpn_epilogue")


def word_bits_for(spec) -> int:
    """64-bit words on CPUs (one word covers 64 channels), 32 on CUDA (native popcount width)."""
    return 32 if spec.is_cuda else 64


@relax.expr_functor.mutator
class _Lowerer(relax.PyExprMutator):
    def __init__(self, mod, plans: list[LayerPlan], word_bits: int):
        super().__init__(mod)
        self.mod = mod
        self.word_bits = word_bits
        self.plan_at = {plan.epilogue.output: plan for plan in plans}
        self.emitted: dict = {}  # original epilogue output var -> _Emitted

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
        bits, word_bits = plan.quantizer.bits, self.word_bits
        producer = self.emitted.get(plan.quantizer.source) if plan.reads_quantizer_directly else None
        if producer is not None:
            return self.builder_.emit_te(
                lambda acc, m, b: ops.pack_activation(_affine(acc, m, b, producer.op), bits, word_bits),
                producer.acc, producer.multiplier, producer.offset,
                primfunc_name_hint="wrpn_epilogue_bitpack",
            )
        return self.builder_.emit_te(
            ops.pack_activation, self.visit_expr(plan.data), bits, word_bits, primfunc_name_hint="wrpn_bitpack"
        )

    def _emit_layer(self, plan: LayerPlan, output_var) -> relax.Var:
        abits, wbits = plan.quantizer.bits, plan.grid.bits
        packed = self._pack(plan)
        weight = relax.const(ops.pack_weight(plan.grid.levels, wbits, self.word_bits))
        if plan.op == "conv2d":
            acc = self.builder_.emit_te(
                ops.bitserial_conv2d, packed, weight, abits, wbits, plan.stride, plan.padding,
                primfunc_name_hint=f"wrpn_conv2d_a{abits}w{wbits}",
            )
        else:
            acc = self.builder_.emit_te(
                ops.bitserial_dense, packed, weight, abits, wbits, primfunc_name_hint=f"wrpn_dense_a{abits}w{wbits}"
            )
        multiplier = relax.const(plan.epilogue.multiplier.astype(np.float32))
        offset = relax.const(plan.epilogue.offset.astype(np.float32))
        self.emitted[output_var] = _Emitted(acc, multiplier, offset, plan.op)
        return self.builder_.emit_te(
            _affine, acc, multiplier, offset, plan.op, primfunc_name_hint="wrpn_epilogue"
        )


def rewrite(mod, plans: list[LayerPlan], word_bits: int):
    """The module with every planned layer lowered, dead FP32 leftovers removed."""
    lowered = _Lowerer(mod, plans, word_bits).lower()
    return relax.transform.DeadCodeElimination(["main"])(lowered)
