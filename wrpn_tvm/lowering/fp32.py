"""Rewrite the conv2d layers that stay in full precision to the blocked FP32 conv
(`ops.blocked_conv2d`), with the per-channel ops after them (bias, inference batch norm, scale)
folded into its weights and bias, as inference compilers do.

TVM's legalized conv2d gets only a generic loop schedule on a CPU; the blocked conv has an FMA
register-tile template (schedules/fp32_conv.py). CPU targets only: on CUDA, dlight schedules
the legalized conv.
"""

import numpy as np
from tvm import relax

from .. import ops
from .epilogue import Epilogue, fold_epilogue
from .graph import BindingGraph, op_name, shape_of


def _foldable_conv(graph: BindingGraph, var) -> "np.ndarray | None":
    """The constant OIHW weight of a float32 NCHW conv2d the blocked kernel computes, else None."""
    call = graph.value(var)
    attrs = call.attrs
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW"):
        return None
    if int(attrs.groups) != 1 or call.args[0].ty.dtype != "float32" or var.ty.dtype != "float32":
        return None
    return graph.constant(call.args[1])


@relax.expr_functor.mutator
class _Fp32ConvLowerer(relax.PyExprMutator):
    def __init__(self, mod, graph: BindingGraph, layers: dict):
        super().__init__(mod)
        self.mod = mod
        self.graph = graph
        self.layers = layers  # epilogue output var -> (conv var, weight, epilogue)

    def lower(self):
        main = self.mod.get_global_var("main")
        self.builder_.update_func(main, self.visit_expr(self.mod["main"]))
        return self.builder_.get()

    def visit_var_binding_(self, binding):
        layer = self.layers.get(binding.var)
        if layer is None:
            return super().visit_var_binding_(binding)
        self.set_var_remap(binding.var, self._emit(*layer))
        return None

    def _emit(self, conv_var, weight: np.ndarray, epilogue: Epilogue):
        call = self.graph.value(conv_var)
        folded = weight.astype(np.float64) * epilogue.multiplier.reshape(-1, 1, 1, 1)
        attrs = call.attrs
        return self.builder_.emit_te(
            ops.blocked_conv2d,
            self.visit_expr(call.args[0]),
            relax.const(ops.block_weight(folded)),
            relax.const(epilogue.offset.astype(np.float32)),
            tuple(int(s) for s in attrs.strides),
            tuple(int(p) for p in attrs.padding),
            tuple(int(d) for d in attrs.dilation),
            primfunc_name_hint="wrpn_fp32_conv2d",
        )


def describe(epilogue: "Epilogue | None") -> str:
    """What became of an FP32 conv, for its layer report."""
    if epilogue is None:
        return "TVM's generic conv2d (the blocked conv takes groups=1, NCHW and constant weights)"
    return "blocked conv" + (f" ({' + '.join(epilogue.folded)} folded)" if epilogue.folded else "")


def lower_fp32_convs(mod):
    """(mod with every foldable FP32 conv2d of `main` and its per-channel epilogue rewritten, one
    Epilogue or None per conv2d of `main` in program order: what was folded, or left alone)."""
    graph = BindingGraph(mod["main"])
    layers, outcomes = {}, []
    for binding in graph.bindings:
        if op_name(binding.value) != "relax.nn.conv2d":
            continue
        weight = _foldable_conv(graph, binding.var)
        if weight is None:
            outcomes.append(None)
            continue
        epilogue = fold_epilogue(graph, binding.var, np.ones(shape_of(binding.var)[1]))
        layers[epilogue.output] = (binding.var, weight, epilogue)
        outcomes.append(epilogue)
    if not layers:
        return mod, outcomes
    return relax.transform.DeadCodeElimination(["main"])(_Fp32ConvLowerer(mod, graph, layers).lower()), outcomes
