"""Recognize the WRPN activation quantizer written as plain Relax ops.

    k > 1:  round(clip(x, 0, 1) * (2^k - 1)) / (2^k - 1)      k = 1:  round(clip(x, 0, 1))

Spellings accepted: clip(x, 0, 1), minimum(maximum(x, 0), 1) in either nesting, minimum(relu(x), 1);
the scale as multiply by n (either operand order) and the unscale as divide by n or multiply by 1/n.
Between the quantizer and the layer that reads it may sit ops that map levels to levels: max
pooling (a max of levels is a level) and reshapes (flatten).
"""

from dataclasses import dataclass

import numpy as np
from tvm import relax

from .graph import BindingGraph, op_name, prim_value

# Ops through which a quantized activation stays on its grid.
_LEVEL_PRESERVING = ("relax.nn.max_pool2d", "relax.reshape", "relax.flatten")


@dataclass(frozen=True)
class ActivationQuantizer:
    bits: int
    source: object  # the Relax var the quantizer reads (its float input)
    output: object  # the Relax var holding the quantized value


def _scalar(graph: BindingGraph, expr) -> float | None:
    value = graph.constant(expr)
    if value is None or value.size != 1:
        return None
    return float(value.reshape(()))


def _scalar_operand(graph: BindingGraph, call) -> tuple[object, float] | None:
    """(tensor operand, scalar constant) of a binary call with one scalar-constant operand."""
    lhs, rhs = call.args[0], call.args[1]
    for tensor, scalar in ((lhs, rhs), (rhs, lhs)):
        number = _scalar(graph, scalar)
        if number is not None and _scalar(graph, tensor) is None:
            return tensor, number
    return None


def _clip_source(graph: BindingGraph, expr):
    """x if expr computes clip(x, 0, 1) in one of the accepted spellings, else None."""
    call = graph.value(expr)
    name = op_name(call)
    if name == "relax.clip":
        if prim_value(call.args[1]) == 0.0 and prim_value(call.args[2]) == 1.0:
            return call.args[0]
        return None
    if name not in ("relax.minimum", "relax.maximum"):
        return None
    operand = _scalar_operand(graph, call)
    if operand is None:
        return None
    inner, bound = operand
    inner_call = graph.value(inner)
    inner_name = op_name(inner_call)
    if name == "relax.minimum" and bound == 1.0:
        if inner_name == "relax.nn.relu":
            return inner_call.args[0]
        if inner_name == "relax.maximum":
            lower = _scalar_operand(graph, inner_call)
            return lower[0] if lower is not None and lower[1] == 0.0 else None
    if name == "relax.maximum" and bound == 0.0 and inner_name == "relax.minimum":
        upper = _scalar_operand(graph, inner_call)
        return upper[0] if upper is not None and upper[1] == 1.0 else None
    return None


def _levels_bits(levels: float) -> int | None:
    """k for a scale n = 2^k - 1, or None when n is not of that form."""
    rounded = round(levels)
    if rounded < 1 or abs(levels - rounded) > 1e-4 * rounded:
        return None
    bits = int(np.log2(rounded + 1))
    return bits if 2**bits - 1 == rounded else None


def match_quantizer(graph: BindingGraph, expr) -> ActivationQuantizer | None:
    """The quantizer whose output is exactly `expr`, or None."""
    call = graph.value(expr)
    name = op_name(call)
    if name == "relax.round":
        source = _clip_source(graph, call.args[0])
        return None if source is None else ActivationQuantizer(1, source, expr)
    if name not in ("relax.divide", "relax.multiply"):
        return None
    operand = _scalar_operand(graph, call)
    if operand is None or (name == "relax.divide" and call.args[1].same_as(operand[0])):
        return None
    rounded, unscale = operand
    round_call = graph.value(rounded)
    if op_name(round_call) != "relax.round" or unscale == 0.0:
        return None
    scale_call = graph.value(round_call.args[0])
    scaled = _scalar_operand(graph, scale_call) if op_name(scale_call) == "relax.multiply" else None
    if scaled is None:
        return None
    clipped, levels = scaled
    divisor = unscale if name == "relax.divide" else 1.0 / unscale
    bits = _levels_bits(levels)
    if bits is None or abs(divisor - levels) > 1e-4 * levels:  # the unscale must undo the scale
        return None
    source = _clip_source(graph, clipped)
    return None if source is None else ActivationQuantizer(bits, source, expr)


def find_input_quantizer(graph: BindingGraph, expr) -> tuple[ActivationQuantizer | None, bool]:
    """The quantizer that produces a layer's input, looking through level-preserving ops.

    Returns (quantizer or None, whether the input is the quantizer's output itself).
    """
    direct = True
    while True:
        quantizer = match_quantizer(graph, expr)
        if quantizer is not None:
            return quantizer, direct
        value = graph.value(expr)
        if isinstance(value, relax.TupleGetItem):
            # max_pool2d_with_indices imports as a tuple (pooled, indices) and a getitem.
            packed = graph.value(value.tuple_value)
            if isinstance(packed, relax.Tuple):
                expr = packed.fields[value.index]
                continue
            return None, direct
        if op_name(value) in _LEVEL_PRESERVING:
            expr, direct = value.args[0], False
            continue
        return None, direct
