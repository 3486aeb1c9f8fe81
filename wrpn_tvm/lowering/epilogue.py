"""Fold the per-channel affine ops after a bit-serial layer (scale, bias, inference batch norm) into one
epilogue y = acc * multiplier[o] + offset[o], computed in float64 and stored as float32."""

from dataclasses import dataclass, field

import numpy as np
from tvm import relax

from .graph import BindingGraph, op_name, shape_of

CHANNEL_AXIS = 1  # NCHW conv outputs and [N, O] dense outputs alike


@dataclass
class Epilogue:
    multiplier: np.ndarray  # float64 [O]
    offset: np.ndarray  # float64 [O]
    output: object  # the last Relax var whose value this epilogue reproduces
    folded: list[str] = field(default_factory=list)


def _per_channel(value: np.ndarray | None, out_shape: tuple[int, ...]) -> np.ndarray | None:
    """The [O] vector of a constant that broadcasts along the channel axis only, else None."""
    if value is None or value.ndim > len(out_shape):
        return None
    aligned = value.reshape((1,) * (len(out_shape) - value.ndim) + value.shape)
    for axis, size in enumerate(aligned.shape):
        if size != 1 and (axis != CHANNEL_AXIS or size != out_shape[axis]):
            return None
    channels = out_shape[CHANNEL_AXIS]
    return np.broadcast_to(aligned.reshape(-1).astype(np.float64), (channels,)) if aligned.size == 1 else (
        aligned.reshape(channels).astype(np.float64))


def _batch_norm_result(graph: BindingGraph, bn_var):
    """The getitem var reading output 0 of a batch_norm tuple, if that is its only use."""
    user = graph.sole_user(bn_var)
    value = graph.value(user) if user is not None else None
    if isinstance(value, relax.TupleGetItem) and value.index == 0:
        return user
    return None


def _absorb(graph: BindingGraph, current, user, multiplier, offset, out_shape):
    """(multiplier, offset, new output var, op label) after absorbing `user`, or None if it is not affine."""
    call = graph.value(user)
    name = op_name(call)
    if name in ("relax.add", "relax.subtract", "relax.multiply", "relax.divide"):
        if shape_of(user) != out_shape or user.ty.dtype != "float32":
            return None
        lhs, rhs = call.args[0], call.args[1]
        if lhs.same_as(current) and not rhs.same_as(current):
            other = rhs
        elif rhs.same_as(current) and not lhs.same_as(current) and name in ("relax.add", "relax.multiply"):
            other = lhs
        else:
            return None
        c = _per_channel(graph.constant(other), out_shape)
        if c is None:
            return None
        if name == "relax.add":
            return multiplier, offset + c, user, "bias"
        if name == "relax.subtract":
            return multiplier, offset - c, user, "bias"
        if name == "relax.multiply":
            return multiplier * c, offset * c, user, "scale"
        if np.any(c == 0):
            return None
        return multiplier / c, offset / c, user, "scale"
    if name == "relax.nn.batch_norm" and call.args[0].same_as(current) and int(call.attrs.axis) == CHANNEL_AXIS:
        if bool(getattr(call.attrs, "training", False)):
            return None
        params = [graph.constant(a) for a in call.args[1:5]]  # 1-D vectors along the channel axis
        if any(p is None or p.shape != (out_shape[CHANNEL_AXIS],) for p in params):
            return None
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        result = _batch_norm_result(graph, user)
        if result is None:
            return None
        if not call.attrs.scale:
            gamma = np.ones_like(gamma)
        if not call.attrs.center:
            beta = np.zeros_like(beta)
        factor = gamma / np.sqrt(var + float(call.attrs.epsilon))
        return multiplier * factor, (offset - mean) * factor + beta, result, "batch_norm"
    return None


def fold_epilogue(graph: BindingGraph, layer_output, scale: np.ndarray) -> Epilogue:
    """Absorb the chain of single-use per-channel affine ops that follows a layer's output."""
    out_shape = shape_of(layer_output)
    epilogue = Epilogue(np.asarray(scale, dtype=np.float64), np.zeros(out_shape[CHANNEL_AXIS]), layer_output)
    while True:
        user = graph.sole_user(epilogue.output)
        if user is None:
            return epilogue
        absorbed = _absorb(graph, epilogue.output, user, epilogue.multiplier, epilogue.offset, out_shape)
        if absorbed is None:
            return epilogue
        epilogue.multiplier, epilogue.offset, epilogue.output, label = absorbed
        epilogue.folded.append(label)
