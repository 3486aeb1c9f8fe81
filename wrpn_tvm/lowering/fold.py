"""Evaluate at compile time whatever a model computes from its constants alone.

A model trained with quantizers in `forward()` exports its weights as parameters followed by the
quantizer's ops (clamp, round, div, sign, abs, mean, amax, where, fake-quant, ...). This pass
computes those ops in numpy, in the dtype of each result, and binds the results as constants, so
the grid check sees the weights the model really uses. A `where` whose condition is a constant
that is everywhere true (or false) becomes that branch (fake-quant's enabled switch, say).
Elementwise float32 ops are correctly rounded in numpy as in PyTorch; reductions may sum in
another order (an ulp of difference in a scale, well inside the epilogue's tolerance).
"""

import numpy as np
from tvm import relax

from .graph import BindingGraph, op_name, prim_value, shape_of, substitute, tensor_constant

_UNARY = {
    "relax.abs": np.abs, "relax.negative": np.negative, "relax.sign": np.sign, "relax.round": np.rint,
    "relax.floor": np.floor, "relax.ceil": np.ceil, "relax.trunc": np.trunc, "relax.sqrt": np.sqrt,
    "relax.rsqrt": lambda x: 1 / np.sqrt(x), "relax.exp": np.exp, "relax.log": np.log,
    "relax.square": np.square, "relax.nn.relu": lambda x: np.maximum(x, 0).astype(x.dtype),
    "relax.logical_not": np.logical_not, "relax.isfinite": np.isfinite,
}
_BINARY = {
    "relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply, "relax.divide": np.divide,
    "relax.power": np.power, "relax.maximum": np.maximum, "relax.minimum": np.minimum,
    "relax.floor_divide": np.floor_divide, "relax.greater": np.greater, "relax.greater_equal": np.greater_equal,
    "relax.less": np.less, "relax.less_equal": np.less_equal, "relax.equal": np.equal,
    "relax.not_equal": np.not_equal, "relax.logical_and": np.logical_and, "relax.logical_or": np.logical_or,
}
_REDUCE = {"relax.sum": np.sum, "relax.mean": np.mean, "relax.max": np.max, "relax.min": np.min, "relax.prod": np.prod}
_RESHAPE = ("relax.reshape", "relax.broadcast_to", "relax.expand_dims", "relax.squeeze", "relax.flatten")
_FILL = ("relax.full", "relax.full_like", "relax.zeros", "relax.zeros_like", "relax.ones", "relax.ones_like")


def _axes(attrs):
    return None if attrs.axis is None else tuple(int(a) for a in attrs.axis)


def _evaluate(call, args: list, out_shape: tuple):
    """The numpy value of one Relax call on constant arguments, or None for an op not covered."""
    name = op_name(call)
    if name in _UNARY:
        return _UNARY[name](args[0])
    if name in _BINARY:
        return _BINARY[name](args[0], args[1])
    if name == "relax.where":
        return np.where(args[0], args[1], args[2])
    if name == "relax.clip":
        lower, upper = prim_value(call.args[1]), prim_value(call.args[2])
        return None if lower is None or upper is None else np.clip(args[0], lower, upper)
    if name in _REDUCE:
        return _REDUCE[name](args[0], axis=_axes(call.attrs), keepdims=bool(call.attrs.keepdims))
    if name in _RESHAPE:
        return np.broadcast_to(args[0], out_shape) if name == "relax.broadcast_to" else args[0].reshape(out_shape)
    if name == "relax.permute_dims":
        return np.transpose(args[0], None if call.attrs.axes is None else [int(a) for a in call.attrs.axes])
    if name == "relax.astype":
        return args[0]  # cast to out_dtype below
    if name in _FILL:
        fill = {"zeros": 0, "ones": 1}.get(name.split(".")[1].removesuffix("_like"))
        if fill is None:
            fill = _constant_value(call.args[1])
            fill = prim_value(call.args[1]) if fill is None else fill
        return None if fill is None else np.full(out_shape, fill)
    if name == "relax.concat":
        return np.concatenate(args[0], axis=int(call.attrs.axis))
    if name == "relax.take":
        return np.take(args[0], args[1], axis=None if call.attrs.axis is None else int(call.attrs.axis))
    if name == "relax.strided_slice":
        axes, begin, end, strides = ([int(prim_value(v)) for v in arg.fields] for arg in call.args[1:5])
        index = [slice(None)] * args[0].ndim
        for axis, first, last, stride in zip(axes, begin, end, strides):
            index[axis] = slice(first, last, stride)
        return args[0][tuple(index)]
    return None


def _top_k(call, values: np.ndarray):
    """relax.topk on a constant: its values and indices, as a tuple of constants or the one asked for."""
    attrs = call.attrs
    axis, k = int(attrs.axis), int(attrs.k)
    order = np.argsort(-values if attrs.largest else values, axis=axis, kind="stable")
    indices = np.take(order, np.arange(k), axis=axis)
    top = (relax.const(np.take_along_axis(values, indices, axis=axis)), relax.const(indices.astype(str(attrs.dtype))))
    return {"both": relax.Tuple(top), "values": top[0], "indices": top[1]}[str(attrs.ret_type)]


def _fold_tuple(value, operand):
    """A tuple of constants (or its item) that replaces a tuple-valued binding, or None."""
    if isinstance(value, relax.TupleGetItem):
        packed = operand(value.tuple_value)
        return operand(packed.fields[value.index]) if isinstance(packed, relax.Tuple) else None
    if isinstance(value, relax.Tuple):
        fields = [operand(field) for field in value.fields]
        return relax.Tuple(fields) if all(tensor_constant(field) is not None for field in fields) else None
    if op_name(value) == "relax.topk":
        values = tensor_constant(operand(value.args[0]))
        return None if values is None else _top_k(value, values)
    return None


def _fold(var, call, operand):
    """What replaces `var = call` when its operands are constants, or None."""
    tupled = _fold_tuple(call, operand)
    if tupled is not None:
        return tupled
    if not isinstance(call, relax.Call) or not isinstance(var.ty, relax.TensorType) or var.ty.shape is None:
        return None
    out_shape, out_dtype = shape_of(var), str(var.ty.dtype)
    tensor_args = [arg for arg in call.args if _is_tensor(arg)]
    args = [_constant_value(operand(arg)) for arg in tensor_args]
    if op_name(call) == "relax.where" and args[0] is not None and args[0].size and (args[0].all() or not args[0].any()):
        branch = operand(call.args[1] if args[0].all() else call.args[2])
        if shape_of(branch) == out_shape and str(branch.ty.dtype) == out_dtype:
            return branch
    if any(arg is None for arg in args):
        return None
    with np.errstate(all="ignore"):
        result = _evaluate(call, args, out_shape)
    if result is None:
        return None
    result = np.asarray(result).astype(out_dtype)
    return relax.const(result, out_dtype) if result.shape == out_shape else None


def _is_tensor(expr) -> bool:
    """A tensor, or a tuple of tensors (concat's operand); not the tuples of numbers a slice takes."""
    if isinstance(expr, relax.Tuple):
        return bool(expr.fields) and all(_is_tensor(field) for field in expr.fields)
    return isinstance(getattr(expr, "ty", None), relax.TensorType)


def _constant_value(expr):
    """The numpy value of a constant operand (tuples of constants included), else None."""
    if isinstance(expr, relax.Tuple):
        values = [_constant_value(field) for field in expr.fields]
        return None if any(v is None for v in values) else values
    return tensor_constant(expr)


def fold_constants(mod):
    """`main` with every binding computed from constants alone replaced by its value."""
    replacements: dict = {}

    def operand(expr):
        return replacements.get(expr, expr) if isinstance(expr, relax.Var) else expr

    for binding in BindingGraph(mod["main"]).bindings:
        value = binding.value
        folded = value if tensor_constant(value) is not None else _fold(binding.var, value, operand)
        if folded is not None:
            replacements[binding.var] = folded
    return substitute(mod, replacements)
