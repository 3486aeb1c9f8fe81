"""Rewrite the conv2d layers that stay in full precision to the blocked FP32 conv
(`ops.blocked_conv2d`), with the per-channel ops after them (bias, inference batch norm, scale)
folded into its weights and bias, as inference compilers do.

TVM's legalized conv2d gets only a generic loop schedule on a CPU; the blocked conv has an FMA
register-tile template (schedules/fp32_conv.py). CPU targets only: on CUDA, dlight schedules
the legalized conv.

A conv whose output only a max pool reads (a ResNet stem, through a ReLU or not) writes it
NCHW16c and the pool runs in that layout; the pooled map, a quarter of the conv's, goes back to
NCHW for its reader (a pack fuses the transform). NCHW makes each register tile's write-back
scatter its 16 channels over 16 rows: ResNet-18 2x's stem (3 -> 128 channels, 112x112 out) took
1.46 ms that way against 1.34 blocked (Xeon with AVX-512, 2 threads, the conv alone; a
diagnostic timing, not a committed benchmark).
"""

from dataclasses import dataclass

import numpy as np
from tvm import relax

from .. import ops
from .epilogue import Epilogue, fold_epilogue
from .graph import BindingGraph, op_name, shape_of

BLOCKED_LAYOUT = f"NCHW{ops.CHANNEL_BLOCK}c"


@dataclass(frozen=True)
class Fp32Conv:
    """What became of one FP32 conv2d: its folded epilogue (None: left to TVM's conv2d), and
    whether it writes NCHW16c into a max pool in that layout."""

    epilogue: "Epilogue | None"
    blocked_pool: bool = False


def _foldable_conv(graph: BindingGraph, var) -> "np.ndarray | None":
    """The constant OIHW weight of a float32 NCHW conv2d the blocked kernel computes, else None."""
    call = graph.value(var)
    attrs = call.attrs
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW"):
        return None
    if int(attrs.groups) != 1 or call.args[0].ty.dtype != "float32" or var.ty.dtype != "float32":
        return None
    return graph.constant(call.args[1])


def _blocked_pool(graph: BindingGraph, output, channels: int) -> "relax.Var | None":
    """The NCHW max pool that alone reads a conv's output, through one ReLU at most (elementwise:
    the mutator re-emits it over the blocked map as it is), where the channels fill whole blocks;
    else None."""
    if channels % ops.CHANNEL_BLOCK:
        return None
    user = graph.sole_user(output)
    if user is not None and op_name(graph.value(user)) == "relax.nn.relu":
        user = graph.sole_user(user)
    value = graph.value(user) if user is not None else None
    if op_name(value) != "relax.nn.max_pool2d" or (value.attrs.layout, value.attrs.out_layout) != ("NCHW", "NCHW"):
        return None
    return user


@relax.expr_functor.mutator
class _Fp32ConvLowerer(relax.PyExprMutator):
    def __init__(self, mod, graph: BindingGraph, layers: dict):
        super().__init__(mod)
        self.mod = mod
        self.graph = graph
        self.layers = layers  # epilogue output var -> (conv var, weight, epilogue, its blocked pool's var or None)
        self.pools = {pool for *_, pool in layers.values() if pool is not None}

    def lower(self):
        main = self.mod.get_global_var("main")
        self.builder_.update_func(main, self.visit_expr(self.mod["main"]))
        return self.builder_.get()

    def visit_var_binding_(self, binding):
        layer = self.layers.get(binding.var)
        if layer is not None:
            self.set_var_remap(binding.var, self._emit(*layer))
        elif binding.var in self.pools:
            self.set_var_remap(binding.var, self._emit_blocked_pool(binding.value))
        else:
            return super().visit_var_binding_(binding)
        return None

    def _emit(self, conv_var, weight: np.ndarray, epilogue: Epilogue, blocked_pool: "relax.Var | None"):
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
            blocked_pool is not None,
            primfunc_name_hint="wrpn_fp32_conv2d",
        )

    def _emit_blocked_pool(self, call):
        attrs = call.attrs
        pooled = self.builder_.emit(relax.op.nn.max_pool2d(
            self.visit_expr(call.args[0]), attrs.pool_size, attrs.strides, attrs.padding, attrs.dilation,
            bool(attrs.ceil_mode), bool(attrs.count_include_pad), layout=BLOCKED_LAYOUT, out_layout=BLOCKED_LAYOUT))
        # A transpose and a reshape, not relax's layout_transform: that legalizes to an opaque
        # function, which FuseOps keeps apart from the pack that reads the map.
        batch, blocks, height, width, lanes = shape_of(pooled)
        channels_first = self.builder_.emit(relax.op.permute_dims(pooled, [0, 1, 4, 2, 3]))
        return self.builder_.emit(relax.op.reshape(channels_first, (batch, blocks * lanes, height, width)))


def describe(conv: Fp32Conv) -> str:
    """What became of an FP32 conv, for its layer report."""
    epilogue = conv.epilogue
    if epilogue is None:
        return "TVM's generic conv2d (the blocked conv takes groups=1, NCHW and constant weights)"
    return ("blocked conv" + (f" ({' + '.join(epilogue.folded)} folded)" if epilogue.folded else "")
            + (f", written {BLOCKED_LAYOUT} into a max pool in that layout" if conv.blocked_pool else ""))


def lower_fp32_convs(mod):
    """(mod with every foldable FP32 conv2d of `main` and its per-channel epilogue rewritten, one
    Fp32Conv per conv2d of `main` in program order: what was folded, or left alone)."""
    graph = BindingGraph(mod["main"])
    layers, outcomes = {}, []
    for binding in graph.bindings:
        if op_name(binding.value) != "relax.nn.conv2d":
            continue
        weight = _foldable_conv(graph, binding.var)
        if weight is None:
            outcomes.append(Fp32Conv(None))
            continue
        channels = shape_of(binding.var)[1]
        epilogue = fold_epilogue(graph, binding.var, np.ones(channels))
        blocked_pool = _blocked_pool(graph, epilogue.output, channels)
        layers[epilogue.output] = (binding.var, weight, epilogue, blocked_pool)
        outcomes.append(Fp32Conv(epilogue, blocked_pool is not None))
    if not layers:
        return mod, outcomes
    return relax.transform.DeadCodeElimination(["main"])(_Fp32ConvLowerer(mod, graph, layers).lower()), outcomes
