"""A view of a Relax function's bindings (who defines a var, who uses it, what constants it holds),
and the one edit the clean-up passes make: replacing vars by other expressions at their uses."""

import numpy as np
from tvm import ir, relax
from tvm.ir import Op


def op_name(expr) -> str | None:
    """The operator name of a Relax call ("relax.nn.conv2d"), or None for anything else."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, Op):
        return expr.op.name
    return None


def prim_value(expr) -> float | None:
    """The number held by an IntImm / FloatImm argument (clip bounds), or None."""
    value = getattr(expr, "value", None)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def tensor_constant(expr) -> np.ndarray | None:
    """The value of a tensor constant (not a number such as an IntImm, also an ir Constant in 0.27)."""
    if isinstance(expr, ir.expr.Constant) and hasattr(expr.value, "numpy"):
        return expr.value.numpy()
    return None


class BindingGraph:
    """Bindings of one function in program order, with def/use maps over its variables."""

    def __init__(self, func: relax.Function):
        self.bindings: list[relax.VarBinding] = []
        self._value: dict = {}
        self._users: dict = {}
        for block in func.body.blocks:
            for binding in block.bindings:
                if not isinstance(binding, relax.VarBinding):
                    continue
                self.bindings.append(binding)
                self._value[binding.var] = binding.value
                for used in relax.analysis.free_vars(binding.value):
                    self._users.setdefault(used, []).append(binding.var)
        for used in relax.analysis.free_vars(func.body.body):
            self._users.setdefault(used, []).append(None)  # None: the function's result

    def value(self, expr):
        """The expression bound to a var (None for parameters and non-vars)."""
        return self._value.get(expr) if isinstance(expr, relax.Var) else None

    def users(self, var) -> list:
        """Vars whose bindings read `var` (None stands for the function's return value)."""
        return self._users.get(var, [])

    def sole_user(self, var):
        """The one binding var that reads `var`, or None when it has zero or several readers."""
        users = self.users(var)
        return users[0] if len(users) == 1 else None

    def constant(self, expr) -> np.ndarray | None:
        """The value of a constant, seen through the reshapes and transposes the importer wraps around them."""
        if isinstance(expr, ir.expr.Constant):
            return tensor_constant(expr)
        value = self.value(expr)
        name = op_name(value)
        if name in ("relax.reshape", "relax.expand_dims", "relax.squeeze", "relax.permute_dims"):
            inner = self.constant(value.args[0])
            if inner is None:
                return None
            if name == "relax.permute_dims":
                axes = None if value.attrs.axes is None else [int(a) for a in value.attrs.axes]
                return np.transpose(inner, axes)
            return inner.reshape([int(d) for d in value.ty.shape])
        return None


def shape_of(expr) -> tuple[int, ...]:
    """The static shape of a tensor-valued var or constant."""
    return tuple(int(d) for d in expr.ty.shape)


@relax.expr_functor.mutator
class _Substitution(relax.PyExprMutator):
    def __init__(self, mod, replacements: dict):
        super().__init__(mod)
        self.replacements = replacements

    def visit_var_(self, var):
        replacement = self.replacements.get(var)
        return super().visit_var_(var) if replacement is None else replacement

    def visit_dataflow_var_(self, var):
        replacement = self.replacements.get(var)
        return super().visit_dataflow_var_(var) if replacement is None else replacement

    def visit_var_binding_(self, binding):
        if binding.var not in self.replacements:  # a replaced var's own binding is dropped
            super().visit_var_binding_(binding)


def substitute(mod, replacements: dict):
    """`main` with each var in `replacements` replaced at its uses (replacements already resolved)."""
    if not replacements:
        return mod
    mutator = _Substitution(mod, replacements)
    main = mod.get_global_var("main")
    mutator.builder_.update_func(main, mutator.visit_expr(mod["main"]))
    return relax.transform.DeadCodeElimination(["main"])(mutator.builder_.get())
