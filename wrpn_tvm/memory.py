"""Activation memory of a compiled model, read off the Relax module the build compiles (not
estimated from the network's layers):

- activation bytes written per inference: the output tensors of every kernel call (`call_tir`,
  `call_tir_inplace`, `call_dps_packed`) in `main` just before `CallTIRRewrite` turns them into
  plain calls; inputs, weights and constants are not written, and reshapes lowered to views
  (`RewriteDataflowReshape`) write nothing;
- planned workspace: the sum of the `alloc_storage` sizes in `main` after `StaticPlanBlockMemory`.
  Storage reuse is the planner's own: tensors whose lifetimes do not overlap share one storage,
  counted once at its size; the storages are summed as if all were live at once, which is what one
  call allocates through the VM's allocator. The tensors `main` returns outlive the call, so the
  planner leaves them to the runtime (`builtin.alloc_tensor`): they are `output_bytes`, apart.

The build records these for the batch it compiles (`recording`); `program_footprints` gives them
for any batch of a `.pt2` program without code generation, tracing the program again at that batch.
"""

import contextlib
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import tvm
from tvm import relax

from . import pt2
from .errors import WrpnError, one_line
from .kernel_kinds import AUTO
from .pipeline import prepare_module, relax_pipeline
from .targets import TargetSpec, resolve

_KERNEL_CALLS = ("relax.call_tir", "relax.call_tir_inplace", "relax.call_dps_packed")


@dataclass(frozen=True)
class Footprint:
    batch: "int | None"  # the first input's leading dimension; None for a scalar input
    activation_bytes: int  # written by kernel calls, per inference
    kernel_calls: int
    workspace_bytes: int  # planned storages for intermediates
    storages: int
    output_bytes: int  # main's results, allocated outside the plan

    def to_json(self) -> dict:
        return asdict(self)


def _tensor_bytes(ty) -> "int | None":
    """Bytes of a tensor (or a tuple of them) of static shape; None when any size is unknown."""
    if isinstance(ty, relax.TupleType):
        sizes = [_tensor_bytes(field) for field in ty.fields]
        return None if None in sizes else sum(sizes)
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    dims = getattr(ty.shape, "values", None)
    if dims is None or not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
        return None
    dtype = tvm.DataType(ty.dtype)
    count = 1
    for dim in dims:
        count *= int(dim)
    return count * ((dtype.bits * dtype.lanes + 7) // 8)  # bool and sub-byte types take whole bytes


def _calls(func, names) -> list:
    """Every call in func to one of the operators `names`, in program order."""
    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name in names:
            found.append(expr)

    relax.analysis.post_order_visit(func, visit)
    return found


def footprint(lowered, planned, batch: "int | None") -> "Footprint | None":
    """The figures from `main` before CallTIRRewrite (`lowered`) and after StaticPlanBlockMemory
    (`planned`); None when a size is not static (a data-dependent shape), rather than a wrong count."""
    written = [_tensor_bytes(call.ty_args[0]) for call in _calls(lowered["main"], _KERNEL_CALLS)]
    storages = []
    for call in _calls(planned["main"], ("relax.memory.alloc_storage",)):
        size = call.args[0].values[0]
        storages.append(int(size) if isinstance(size, tvm.tirx.IntImm) else None)
    outputs = [_tensor_bytes(call.ty) for call in _calls(planned["main"], ("relax.builtin.alloc_tensor",))]
    if None in written or None in storages or None in outputs:
        return None
    return Footprint(batch, sum(written), len(written), sum(storages), len(storages), sum(outputs))


@tvm.instrument.pass_instrument
class _Capture:
    """Keeps the module entering CallTIRRewrite and the one leaving StaticPlanBlockMemory."""

    def __init__(self):
        self.lowered = self.planned = None

    def run_before_pass(self, mod, info):
        if info.name == "CallTIRRewrite":
            self.lowered = mod

    def run_after_pass(self, mod, info):
        if info.name == "StaticPlanBlockMemory":
            self.planned = mod


class Recording:
    """What `recording` captured, and the batch it was compiled for."""

    def __init__(self, batch: "int | None"):
        self.batch = batch
        self._capture = _Capture()

    def footprint(self) -> "Footprint | None":
        if self._capture.lowered is None or self._capture.planned is None:
            raise WrpnError("the Relax pipeline ran no memory planning: no memory figures")  # a TVM pipeline change
        return footprint(self._capture.lowered, self._capture.planned, self.batch)


@contextlib.contextmanager
def recording(inputs: list):
    """Capture the memory figures of whatever Relax pipeline runs inside (the build's own): yields a
    Recording whose `footprint()` reads them. `inputs` are the program's InputSpecs (for the batch)."""
    current = tvm.transform.PassContext.current()
    rec = Recording(batch_of(inputs))
    with tvm.transform.PassContext(opt_level=current.opt_level, required_pass=list(current.required_pass),
                                   disabled_pass=list(current.disabled_pass),
                                   instruments=list(current.instruments) + [rec._capture], config=dict(current.config)):
        yield rec


def batch_of(inputs: list) -> "int | None":
    shape = inputs[0].shape if inputs else ()
    return shape[0] if shape else None


def rebatched(program, batch: int, where: str = "the program"):
    """The ExportedProgram traced again with every input's leading dimension set to `batch`.

    An export fixes its batch, and sizes baked into it (a `view(x, [1, 512])`) either fail the
    trace or silently drop the batch; so every tensor computed from an input must keep `batch` as
    its leading dimension, or this refuses with the advice to export at that batch from PyTorch."""
    import torch

    specs = pt2.input_specs(program)
    if batch < 1 or any(not spec.shape for spec in specs):
        raise WrpnError(f"{where}: cannot set batch {batch}: it needs a batch >= 1 and inputs with a leading dimension")
    module = program.module(check_guards=False)
    plain = torch.fx.GraphModule(module, module.graph)  # the graph and weights, without the exported batch's input check
    example = tuple(torch.zeros((batch, *spec.shape[1:]), dtype=getattr(torch, spec.dtype)) for spec in specs)
    advice = f"export it from PyTorch at batch {batch}"
    try:
        with torch.no_grad():
            traced = torch.export.export(plain, example)
    except Exception as err:  # torch raises assorted types for a shape baked into the graph
        raise WrpnError(f"{where}: cannot trace it again at batch {batch} ({one_line(err)}); {advice}") from None
    batched = {node for node in traced.graph.nodes if node.op == "placeholder" and node.name in
               {spec.arg.name for spec in traced.graph_signature.input_specs if spec.kind.name == "USER_INPUT"}}
    for node in traced.graph.nodes:
        if node.op != "call_function" or not batched.intersection(node.all_input_nodes):
            continue
        batched.add(node)
        value = node.meta.get("val")
        for tensor in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(tensor, torch.Tensor) and (tensor.dim() == 0 or tensor.shape[0] != batch):
                raise WrpnError(f"{where}: {node.name} gives shape {list(tensor.shape)} at batch {batch}, not a "
                                f"batch-leading tensor (a size baked in at export?); {advice}")
    return traced


def module_footprint(mod, spec: TargetSpec, inputs: list) -> "Footprint | None":
    """The figures of a prepared module (`pipeline.prepare_module`) under the build's Relax pipeline,
    stopping before code generation."""
    with recording(inputs) as rec:
        relax_pipeline(spec)(mod)
    return rec.footprint()


def program_footprints(program_path: "str | os.PathLike", batches=(1, 32), target: "str | TargetSpec" = "host",
                       kernels: str = AUTO) -> "dict[int, Footprint | None]":
    """Per batch, the memory figures of a `.pt2` program compiled for `target` with `kernels` (as
    `build.compile_model` takes it; no code generation): the exported batch as it is, any other
    traced again at that batch (`rebatched`)."""
    import torch

    spec = resolve(target)
    program = pt2.load_program(program_path)
    exported = batch_of(pt2.input_specs(program))
    results = {}
    with tempfile.TemporaryDirectory(prefix="wrpn-memory-") as tmp:
        for batch in batches:
            path = Path(program_path)
            if batch != exported:
                path = Path(tmp) / f"batch{batch}.pt2"
                torch.export.save(rebatched(program, batch, str(program_path)), str(path))
            mod, _, inputs = prepare_module(path, spec, kernels)
            results[batch] = module_footprint(mod, spec, inputs)
    return results
