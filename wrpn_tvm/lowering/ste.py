"""Remove what only training needs from the inference graph: straight-through-estimator identities.

At inference, `a + (q - a).detach()` is q: the importer already drops `detach` (and custom
autograd Functions export as their forward), which leaves `a + (q - a)`, `(q - a) + a` and
`a - (a - q)`. Each is replaced by q itself, and casts to the dtype a value already has by the
value. In float32 `a + (q - a)` may differ from q by an ulp of a; q is what the model means (and
what keeps weights on their grid), so the rewrite is applied before constants are folded.
"""

from tvm import relax

from .graph import BindingGraph, op_name, shape_of, substitute


def _straight_through(graph: BindingGraph, call):
    """q when `call` is one of the STE spellings above, else None."""
    name = op_name(call)
    if name == "relax.astype":
        source = call.args[0]
        return source if str(source.ty.dtype) == str(call.attrs.dtype) else None
    if name not in ("relax.add", "relax.subtract"):
        return None
    lhs, rhs = call.args[0], call.args[1]
    for outer, inner in ((lhs, rhs), (rhs, lhs)) if name == "relax.add" else ((lhs, rhs),):
        difference = graph.value(inner)
        if op_name(difference) != "relax.subtract":
            continue
        minuend, subtrahend = difference.args[0], difference.args[1]
        if name == "relax.add" and subtrahend.same_as(outer):
            return minuend  # a + (q - a)
        if name == "relax.subtract" and minuend.same_as(outer):
            return subtrahend  # a - (a - q)
    return None


def remove_straight_through(mod):
    """`main` with every STE identity (and identity cast) replaced by the value it passes on."""
    graph = BindingGraph(mod["main"])
    replacements: dict = {}
    for binding in graph.bindings:
        passed_on = _straight_through(graph, binding.value)
        if passed_on is None or not isinstance(getattr(passed_on, "ty", None), relax.TensorType):
            continue
        passed_on = replacements.get(passed_on, passed_on)
        if shape_of(passed_on) == shape_of(binding.var) and str(passed_on.ty.dtype) == str(binding.var.ty.dtype):
            replacements[binding.var] = passed_on
    return substitute(mod, replacements)
