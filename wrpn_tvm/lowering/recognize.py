"""Decide, layer by layer, whether a conv2d / dense runs bit-serially, and why not when it does not."""

from dataclasses import dataclass

import numpy as np

from .epilogue import Epilogue, fold_epilogue
from .graph import BindingGraph, op_name, shape_of
from .quantizer import ActivationQuantizer, find_input_quantizer
from .report import FP32, LayerReport
from ..bits import MAX_BITS
from .weight_grid import TOP_LEVEL, WeightGrid, detect_weight_grid

LAYER_OPS = {"relax.nn.conv2d": "conv2d", "relax.matmul": "dense"}


@dataclass
class LayerPlan:
    """A layer to lower: its input, the quantizer that feeds it, its weight grid and its folded epilogue."""

    op: str
    report_index: int
    data: object  # the Relax var the layer reads
    quantizer: ActivationQuantizer
    reads_quantizer_directly: bool  # no pooling / reshape between quantizer and layer
    grid: WeightGrid
    epilogue: Epilogue
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)


def _ints(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _conv_detail(call, weight_shape) -> str:
    out_c, in_c, kh, kw = weight_shape
    stride = _ints(call.attrs.strides)
    pad = _ints(call.attrs.padding)
    stride_text = str(stride[0]) if stride[0] == stride[1] else f"{stride[0]}x{stride[1]}"
    pad_text = str(pad[0]) if len(set(pad)) == 1 else "/".join(map(str, pad))
    return f"{kh}x{kw}/{stride_text} pad {pad_text}, {in_c}->{out_c}"


def _conv_weight(graph: BindingGraph, call):
    """(weight OIHW or None, reason the conv cannot run bit-serially from its attributes or '')."""
    attrs = call.attrs
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW"):
        return None, f"layout {attrs.data_layout}/{attrs.kernel_layout} (bit-serial lowering reads NCHW/OIHW)"
    if int(attrs.groups) != 1:
        return None, f"groups={int(attrs.groups)} (bit-serial conv2d needs groups=1)"
    if any(d != 1 for d in _ints(attrs.dilation)):
        return None, f"dilation={list(_ints(attrs.dilation))} (bit-serial conv2d needs dilation 1)"
    weight = graph.constant(call.args[1])
    return weight, "" if weight is not None else "weight is not a constant"


def _dense_weight(graph: BindingGraph, call):
    """(weight [O, K] or None, reason); a linear layer imports as matmul(x, permute_dims(W))."""
    if len(shape_of(call.args[0])) != 2 or len(shape_of(call.args[1])) != 2:
        return None, "matmul of rank > 2 (bit-serial dense reads [N, K] x [K, O])"
    weight = graph.constant(call.args[1])
    return (None, "weight is not a constant") if weight is None else (np.ascontiguousarray(weight.T), "")


def plan_layer(graph: BindingGraph, var, index: int, lowered_outputs: set) -> tuple[LayerReport, LayerPlan | None]:
    """The report for one conv2d / matmul binding, and its lowering plan when it runs bit-serially
    (`lowered_outputs`: the epilogue outputs of the bit-serial layers before it)."""
    call = graph.value(var)
    op = LAYER_OPS[op_name(call)]
    data = call.args[0]
    weight, reason = (_conv_weight if op == "conv2d" else _dense_weight)(graph, call)
    if op == "conv2d":
        detail = _conv_detail(call, shape_of(call.args[1]))
    else:
        k, o = shape_of(call.args[1])
        detail = f"{k}->{o}"

    def report(lowered_to, why):
        return LayerReport(index, op, detail, shape_of(data), shape_of(var), lowered_to, why,
                           weight_shape=shape_of(call.args[1]))

    if weight is None:
        return report(FP32, reason), None
    if data.ty.dtype != "float32" or var.ty.dtype != "float32":
        return report(FP32, f"dtype {data.ty.dtype} (lowering reads float32 layers)"), None
    found = find_input_quantizer(graph, data, op, lowered_outputs)
    quantizer, direct = found.quantizer, found.direct
    if quantizer is None:
        return report(FP32, found.reason), None
    if quantizer.bits > MAX_BITS:
        return report(FP32, f"activation quantizer has {quantizer.bits} bits (> {MAX_BITS})"), None
    grid = detect_weight_grid(weight)
    if grid is None:
        return report(FP32, f"weights lie on no WRPN grid with k <= {MAX_BITS} bits (integer levels within "
                            f"+-{TOP_LEVEL} times one scale per output channel)"), None
    scale = grid.scale * quantizer.scale  # value of one level of A times one level of W
    epilogue = fold_epilogue(graph, var, scale)
    plan = LayerPlan(op, index, data, quantizer, direct, grid, epilogue)
    if op == "conv2d":
        plan.stride = _ints(call.attrs.strides)
        plan.padding = _ints(call.attrs.padding)
    lowered = f"bit-serial {op} a{quantizer.bits}/w{grid.bits}"
    folded = " + ".join(["scale", *epilogue.folded])
    return report(lowered, f"epilogue: {folded}"), plan


def plan_function(graph: BindingGraph) -> tuple[list[LayerReport], list[LayerPlan]]:
    reports, plans, lowered_outputs = [], [], set()
    for binding in graph.bindings:
        if op_name(binding.value) not in LAYER_OPS:
            continue
        report, plan = plan_layer(graph, binding.var, len(reports), lowered_outputs)
        reports.append(report)
        if plan is not None:
            plans.append(plan)
            lowered_outputs.add(plan.epilogue.output)
    return reports, plans
