"""Recognize an activation quantizer written as plain elementwise ops, and say why when it is not one.

A quantizer is a chain of scalar elementwise steps, with one round, from a float tensor (its
source) to the value a layer reads. Steps: add / subtract / multiply / divide by a scalar constant,
negate, clip, minimum / maximum with a scalar, relu, `where(x > c, c, x)` and its mirror images (a
clamp spelled as a select), PACT's `relu(x) - relu(x - α)`, and round. So all of these are
quantizers, in any arrangement of their scales:

    round(clip(x, 0, 1) * n) / n                         (WRPN, Eq. 2)
    round(clip(x, 0, α) * n / α) * α / n                 (a learned or fixed clip α)
    round((relu(x) - relu(x - α)) / α * n) * (α / n)     (PACT)
    (clamp(round(x * (1/s)) + 0, 0, n) - 0) * s          (fake_quantize_per_tensor_affine)
    where(where(round(relu(x) / s) > n, n, ...) < 0, 0, ...) * s   (Brevitas QuantReLU)

Meaning is found symbolically: the steps before the round compose to clamp(a*x + b, lo, hi), so
the integer levels lie in [round(lo), round(hi)]; the steps after it are evaluated exactly, in
float32, on every level that matters. The values must be m * s for integers m in [0, n] with one
scale s > 0: m is what the bit-serial kernel reads (k = bits of n), s folds into the epilogues.
The packed level is computed the way PyTorch computes the value (the same steps replayed in
float32), then recovered exactly as rint(value * (1/s)), which is checked here for every level.

Between the quantizer and the layer may sit ops that keep values on the grid: max pooling (after
non-decreasing steps) and reshapes (flatten).
"""

import math
from dataclasses import dataclass

import numpy as np
from tvm import relax, tirx

from .graph import BindingGraph, op_name, prim_value, shape_of

_LEVEL_PRESERVING = ("relax.nn.max_pool2d", "relax.reshape", "relax.flatten")
_LAYER_OPS = ("relax.nn.conv2d", "relax.matmul")
_SELECT_COMPARISONS = {"relax.greater": ">", "relax.greater_equal": ">", "relax.less": "<", "relax.less_equal": "<"}
_COMMUTATIVE = ("relax.add", "relax.multiply", "relax.maximum", "relax.minimum")
_LOOKBACK_DEPTH = 6  # how far past a blocking op a quantizer is still named as the cause
_LEVEL_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Step:
    """One scalar elementwise op: `op` is add, subtract, rsubtract (c - x), multiply, divide,
    negative, maximum, minimum, round or pact (relu(x) - relu(x - c))."""

    op: str
    constant: float = 0.0

    def numpy(self, v: np.ndarray) -> np.ndarray:
        c = np.float32(self.constant)
        if self.op == "pact":
            return np.maximum(v, np.float32(0)) - np.maximum(v - c, np.float32(0))
        return {
            "add": lambda: v + c, "subtract": lambda: v - c, "rsubtract": lambda: c - v, "multiply": lambda: v * c,
            "divide": lambda: v / c, "negative": lambda: -v, "maximum": lambda: np.maximum(v, c),
            "minimum": lambda: np.minimum(v, c), "round": lambda: np.rint(v),
        }[self.op]()

    def te(self, v):
        c = tirx.const(self.constant, "float32")
        zero = tirx.const(0.0, "float32")
        return {
            "add": lambda: v + c, "subtract": lambda: v - c, "rsubtract": lambda: c - v, "multiply": lambda: v * c,
            "divide": lambda: v / c, "negative": lambda: zero - v, "maximum": lambda: tirx.max(v, c),
            "minimum": lambda: tirx.min(v, c), "round": lambda: tirx.nearbyint(v),
            "pact": lambda: tirx.max(v, zero) - tirx.max(v - c, zero),
        }[self.op]()


@dataclass(frozen=True)
class _Clamped:
    """clamp(a * x + b, lo, hi): what a chain of affine and clamping steps computes."""

    a: float = 1.0
    b: float = 0.0
    lo: float = -math.inf
    hi: float = math.inf

    def then(self, step: Step) -> "_Clamped | None":
        c = step.constant
        if step.op == "add":
            return _Clamped(self.a, self.b + c, self.lo + c, self.hi + c)
        if step.op == "subtract":
            return self.then(Step("add", -c))
        if step.op in ("multiply", "divide", "negative", "rsubtract"):
            factor = {"multiply": c, "divide": 1 / c if c else 0.0}.get(step.op, -1.0)
            if factor == 0:
                return None
            lo, hi = sorted((self.lo * factor, self.hi * factor))
            scaled = _Clamped(self.a * factor, self.b * factor, lo, hi)
            return scaled.then(Step("add", c)) if step.op == "rsubtract" else scaled
        if step.op == "maximum":
            return _Clamped(self.a, self.b, max(self.lo, c), max(self.hi, c))
        if step.op == "minimum":
            return _Clamped(self.a, self.b, min(self.lo, c), min(self.hi, c))
        if step.op == "pact":
            return self.then(Step("maximum", 0.0)).then(Step("minimum", c)) if c > 0 else None
        return self  # round: monotone, and within half a level of its input

    def preimage(self, lo: float, hi: float) -> tuple[float, float]:
        """The x interval that maps into [lo, hi] before the clamp (a is never 0: see then)."""
        ends = sorted(((lo - self.b) / self.a, (hi - self.b) / self.a))
        return ends[0], ends[1]


@dataclass(frozen=True)
class ActivationQuantizer:
    bits: int
    scale: float  # the value of one level
    source: object  # the Relax var the quantizer reads (its float input)
    steps: tuple  # Step, from source to the quantized value
    # The steps after the round give every level back unchanged through level_from_value (WRPN's
    # round(.) / n, read back as rint(value * n)): checked in float32 on every reachable level.
    round_is_level: bool = False

    def level_from_value(self, value):
        """TE: the integer level (as float32) of a quantized value."""
        return tirx.nearbyint(value * tirx.const(float(np.float32(1 / self.scale)), "float32"))

    def value_from_source(self, value):
        """TE: the quantized value, every step replayed on the quantizer's float input."""
        for step in self.steps:
            value = step.te(value)
        return value

    def value_from_level(self, level):
        """TE: the quantized value of an integer level (float32): the steps after the round
        replayed on it. The value itself, bit for bit, where the round is the level (round_is_level)."""
        at = next(i for i, step in enumerate(self.steps) if step.op == "round")
        for step in self.steps[at + 1:]:
            level = step.te(level)
        return level

    def level_from_source(self, value):
        """TE: the quantizer's steps replayed on its float input, then its level; the round itself
        where that is the level (no divide and second round per element of every pack)."""
        at = next(i for i, step in enumerate(self.steps) if step.op == "round")
        for step in self.steps[:at + 1] if self.round_is_level else self.steps:
            value = step.te(value)
        return value if self.round_is_level else self.level_from_value(value)


@dataclass(frozen=True)
class InputQuantizer:
    """What feeds a layer: its quantizer (None with a reason) and whether the layer reads the
    quantizer's output itself (no pooling or reshape in between)."""

    quantizer: "ActivationQuantizer | None"
    direct: bool
    reason: str = ""


def _scalar(graph: BindingGraph, expr) -> float | None:
    value = graph.constant(expr)
    if value is None or value.size != 1:
        return None
    return float(value.reshape(()))


def _scalar_operand(graph: BindingGraph, call) -> tuple[object, float, bool] | None:
    """(tensor operand, scalar constant, whether the scalar is on the left) of a binary call."""
    lhs, rhs = call.args[0], call.args[1]
    for tensor, scalar, scalar_left in ((lhs, rhs, False), (rhs, lhs, True)):
        number = _scalar(graph, scalar)
        if number is not None and graph.constant(tensor) is None:
            return tensor, number, scalar_left
    return None


def _pact(graph: BindingGraph, call):
    """(x, α) when call is relu(x) - relu(x - α) (or relu(x + (-α))), else None."""
    relus = [graph.value(arg) for arg in call.args[:2]]
    if any(op_name(r) != "relax.nn.relu" for r in relus):
        return None
    inner, shifted = relus[0].args[0], graph.value(relus[1].args[0])
    if op_name(shifted) not in ("relax.subtract", "relax.add"):
        return None
    operand = _scalar_operand(graph, shifted)
    if operand is None or not operand[0].same_as(inner) or operand[2]:
        return None
    alpha = operand[1] if op_name(shifted) == "relax.subtract" else -operand[1]
    return inner, alpha


def _select_clamp(graph: BindingGraph, call):
    """(x, Step) when call is where(x > c, c, x), where(x < c, c, x) or a mirror image, else None."""
    condition = graph.value(call.args[0])
    direction = _SELECT_COMPARISONS.get(op_name(condition))
    if direction is None:
        return None
    operand = _scalar_operand(graph, condition)
    if operand is None:
        return None
    x, bound, bound_left = operand
    if bound_left:  # c < x is x > c
        direction = "<" if direction == ">" else ">"
    when_true, when_false = call.args[1], call.args[2]
    if when_false.same_as(x) and _scalar(graph, when_true) == bound:
        return x, Step("minimum" if direction == ">" else "maximum", bound)  # x > c picks c: a ceiling
    if when_true.same_as(x) and _scalar(graph, when_false) == bound:
        return x, Step("maximum" if direction == ">" else "minimum", bound)
    return None


def _steps_of(graph: BindingGraph, expr):
    """(steps in forward order, input var) when expr's binding is one scalar elementwise op, else None."""
    call = graph.value(expr)
    name = op_name(call)
    if name is None or not isinstance(getattr(call.args[0], "ty", None), relax.TensorType):
        return None
    if name == "relax.round":
        return [Step("round")], call.args[0]
    if name == "relax.nn.relu":
        return [Step("maximum", 0.0)], call.args[0]
    if name == "relax.negative":
        return [Step("negative")], call.args[0]
    if name == "relax.clip":
        lower, upper = prim_value(call.args[1]), prim_value(call.args[2])
        return None if lower is None or upper is None else ([Step("maximum", lower), Step("minimum", upper)], call.args[0])
    if name == "relax.where":
        found = _select_clamp(graph, call)
        return None if found is None else ([found[1]], found[0])
    if name == "relax.subtract":
        pact = _pact(graph, call)
        if pact is not None:
            return [Step("pact", pact[1])], pact[0]
    if name not in ("relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum"):
        return None
    operand = _scalar_operand(graph, call)
    if operand is None or shape_of(operand[0]) != shape_of(expr):
        return None
    tensor, constant, scalar_left = operand
    op = name.split(".")[1]
    if scalar_left and name not in _COMMUTATIVE:
        if name == "relax.divide":
            return None  # c / x is no quantizer step
        op = "rsubtract"
    return [Step(op, constant)], tensor


def _describe_blocker(graph: BindingGraph, var, layer_op: str) -> str:
    name = op_name(graph.value(var)) or "an op"
    short = name.removeprefix("relax.").removeprefix("nn.")
    if short in ("avg_pool2d", "adaptive_avg_pool2d", "mean"):
        return f"an avg-pool sits between the quantizer and this {layer_op}: averaged levels are off the grid"
    if short in ("add", "subtract", "multiply", "divide"):
        call = graph.value(var)
        constant = any(graph.constant(arg) is not None for arg in call.args[:2])
        operand = "a non-scalar constant" if constant else "a tensor computed at run time"
        return (f"a {short} by {operand} sits between the quantizer and this {layer_op}: "
                "levels need one constant scale for the whole tensor")
    return f"a {short} sits between the quantizer and this {layer_op}: its output is off the quantizer's grid"


def _round_behind(graph: BindingGraph, var, depth: int) -> bool:
    """Whether a round lies within `depth` ops behind var (not looking past another layer)."""
    call = graph.value(var)
    name = op_name(call)
    if name == "relax.round":
        return True
    if name is None or name in _LAYER_OPS or depth == 0:
        return False
    return any(_round_behind(graph, arg, depth - 1) for arg in call.args
               if isinstance(arg, relax.Var) and graph.constant(arg) is None)


def _level_window(steps: list) -> tuple[float, float] | None:
    """The integer levels (right after the round) whose values can differ (infinite ends where a
    side is unclipped), or None when a step collapses every value (a scale of 0, PACT with α <= 0)."""
    at = next(i for i, step in enumerate(steps) if step.op == "round")
    before, after = _Clamped(), _Clamped()
    for step in steps[:at]:
        before = before.then(step)
        if before is None:
            return None
    for step in steps[at + 1:]:
        after = after.then(step)
        if after is None:
            return None
    lo, hi = after.preimage(after.lo, after.hi)
    # One level of margin each side: later rounds move a value by up to half a level.
    lo = lo if math.isinf(lo) else math.floor(lo) - 1
    hi = hi if math.isinf(hi) else math.ceil(hi) + 1
    return max(float(np.rint(before.lo)), lo), min(float(np.rint(before.hi)), hi)


def _analyze(steps: list, source) -> "ActivationQuantizer | str":
    """The quantizer these steps define, or the reason they define none."""
    window = _level_window(steps)
    if window is None:
        return "the quantizer before it collapses every input to one value (a scale of 0 or an empty clip)"
    lo, hi = window
    if not math.isfinite(lo) or not math.isfinite(hi):
        side = "upper" if not math.isfinite(hi) else "lower"
        return f"the quantizer before it has no {side} clip: its levels are unbounded"
    if hi - lo > 1 << 20:
        return "the quantizer before it has more than a million levels"
    at = next(i for i, step in enumerate(steps) if step.op == "round")
    values = np.arange(lo, hi + 1, dtype=np.float32)
    for step in steps[at + 1:]:
        values = step.numpy(values)
    distinct = np.unique(values)
    if distinct.size < 2:
        return "the quantizer before it maps every input to one value"
    span = distinct.astype(np.float64)
    count = round((span[-1] - span[0]) / np.diff(span).min())  # levels - 1
    scale = (span[-1] - span[0]) / count
    from_lowest = (span - span[0]) / scale
    if np.abs(from_lowest - np.rint(from_lowest)).max() > _LEVEL_TOLERANCE:
        return "the quantizer's output values are not evenly spaced"
    multiples = span / scale
    zero_level = -multiples[0]
    if span[0] < 0:
        if span[-1] >= 0 and abs(zero_level - round(zero_level)) <= _LEVEL_TOLERANCE:
            return (f"the quantizer before it has a non-zero zero point: 0.0 is level {round(zero_level)} of 0..{count} "
                    "(an asymmetric or signed quantizer); bit-serial layers read levels 0..2^k-1 with 0.0 at level 0")
        return (f"the quantizer before it produces negative values (down to {distinct[0]:g}); bit-serial layers read "
                "levels 0..2^k-1 with 0.0 at level 0")
    if np.abs(multiples - np.rint(multiples)).max() > _LEVEL_TOLERANCE:
        return "the quantizer's levels are offset from 0.0 by a fraction of a level"
    top = round(span[-1] / scale)
    levels = np.rint(distinct * np.float32(1 / scale))
    if not np.array_equal(levels, np.rint(multiples)):
        return "the quantizer's levels cannot be recovered exactly from its float32 values"
    rounded = np.arange(lo, hi + 1, dtype=np.float32)
    round_is_level = bool(np.array_equal(np.rint(values * np.float32(1 / scale)), rounded))
    return ActivationQuantizer(max(1, top.bit_length()), scale, source, tuple(steps), round_is_level)


def _non_decreasing(steps: list) -> bool:
    return all(step.op not in ("negative", "rsubtract") and not (step.op in ("multiply", "divide") and step.constant < 0)
               for step in steps)


def _chain(graph: BindingGraph, expr, stop: set):
    """(steps, source, whether the layer reads the chain's output directly, reason it cannot) walking
    back from expr through scalar steps and, until a round is found, level-preserving ops; stops at
    `stop` vars (bit-serial layers' epilogue outputs)."""
    steps, direct = [], True
    while expr not in stop:
        found = _steps_of(graph, expr)
        if found is not None:
            steps[:0] = found[0]
            expr = found[1]
            continue
        value = graph.value(expr)
        if isinstance(value, relax.TupleGetItem):
            # max_pool2d_with_indices imports as a tuple (pooled, indices) and a getitem.
            packed = graph.value(value.tuple_value)
            if isinstance(packed, relax.Tuple):
                expr = packed.fields[value.index]
                continue
        name = op_name(value)
        if name not in _LEVEL_PRESERVING or any(step.op == "round" for step in steps):
            break
        if name == "relax.nn.max_pool2d" and not _non_decreasing(steps):
            return steps, expr, False, "a max-pool is followed by a decreasing step: the max is not of the levels"
        expr, direct = value.args[0], False
    return steps, expr, direct, ""


def find_input_quantizer(graph: BindingGraph, data, layer_op: str, stop: set = frozenset()) -> InputQuantizer:
    """The quantizer that produces a layer's input `data`, or the reason there is none."""
    steps, source, direct, reason = _chain(graph, data, stop)
    if reason:
        return InputQuantizer(None, direct, reason)
    if any(step.op == "round" for step in steps):
        found = _analyze(steps, source)
        return InputQuantizer(None, direct, found) if isinstance(found, str) else InputQuantizer(found, direct)
    if source not in stop and _round_behind(graph, source, _LOOKBACK_DEPTH):
        return InputQuantizer(None, direct, _describe_blocker(graph, source, layer_op))
    return InputQuantizer(None, direct, "input is not a WRPN-quantized activation (no clip -> round quantizer before it)")
