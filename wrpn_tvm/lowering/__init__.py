"""WRPN lowering: find the quantized layers of an imported model and run them bit-serially.

`lower_wrpn(mod, spec)` takes the Relax module from `frontend.to_relax`, merges repeated
computations (a PACT clip written as relu(f(x)) - relu(f(x) - α) calls f twice), removes
training-only identities (straight-through estimators), evaluates everything computed from constants alone
(weights quantized in `forward()`), and returns it with every conv2d / dense that reads an
activation quantizer and holds on-grid constant weights rewritten
to bitpack + bit-serial kernel + one folded per-channel epilogue (scale, bias, batch norm), plus
one LayerReport per conv2d / dense saying what it became and, for FP32 layers, why. On CPUs the
convs that stay FP32 become the blocked FP32 conv, their bias / batch norm folded in.
Modules: graph (binding view), ste (STE removal), fold (constant evaluation), quantizer (activation
quantizer analysis), weight_grid (numeric grid check), epilogue (affine folding), recognize
(per-layer decision), kernel_choice (bit-serial, int8 dot or table lookup per layer), rewrite (the Relax
rewrite), fp32 (the FP32 conv rewrite), report.
"""

from dataclasses import replace

from tvm import relax

from .. import ops
from .fold import fold_constants
from .fp32 import describe as describe_fp32
from .fp32 import lower_fp32_convs
from .graph import BindingGraph
from ..kernel_kinds import AUTO, BITSERIAL, KERNELS, MODES
from .kernel_choice import SharedInput, choose, estimated_pass, pack_key, settle_shared_inputs
from .recognize import plan_function
from .report import FP32, WINOGRAD, LayerReport, program_warnings, summary
from .rewrite import layer_tag, rewrite
from .ste import remove_straight_through

__all__ = ["FP32", "MODES", "LayerReport", "layer_tag", "lower_wrpn", "program_warnings", "summary"]


def lower_wrpn(mod, spec, kernels: str = AUTO, measured: "dict | None" = None, passes: "dict | None" = None):
    """(lowered module, one LayerReport per conv2d / dense layer of `main`, in program order).

    `kernels`: AUTO chooses the kernel per layer (from `measured`, layer index -> {kernel: best
    tuned seconds}, where a database has the bit-serial and int8 kernels', else the cost model),
    convs that read one map together (`passes`, layer index -> tuned seconds of the pass packing
    its input, prices a second pass); "bit-serial", "int8-dot" or "lut" asks for that kernel
    wherever it applies."""
    mod = fold_constants(remove_straight_through(relax.transform.EliminateCommonSubexpr()(mod)))
    graph = BindingGraph(mod["main"])
    reports, plans = plan_function(graph)
    if plans:
        layout = None if spec.is_cuda else ops.int8_layout(spec.target)
        choices = []
        for plan in plans:
            report = reports[plan.report_index]
            choices.append(choose(plan, spec.target, layout, kernels, report.input_shape, report.output_shape,
                                  (measured or {}).get(plan.report_index)))
        if kernels == AUTO and layout is not None:
            choices = settle_shared_inputs(_shared_inputs(plans, reports, spec, passes or {}), choices,
                                           {i: plan.report_index for i, plan in enumerate(plans)})
        # Not on aarch64: Cortex-A53's scalar levels loop of such a pack (the shortcut is read across
        # NCHW channels) runs out of registers with the quantizer inlined and spills (test_arm_asm).
        mod, fused_inputs = rewrite(mod, plans, spec, choices, layout, replay_quantizers=not spec.is_aarch64)
        for plan, choice, fused in zip(plans, choices, fused_inputs):
            report = reports[plan.report_index]
            reason = report.reason + ("; input packed in its producer's epilogue" if fused else "")
            reason += f"; {choice.why}" if choice.why else ""
            reports[plan.report_index] = replace(report, reason=reason,
                                                 lowered_to=report.lowered_to.replace("bit-serial", choice.kernel, 1),
                                                 kernel=WINOGRAD if choice.runs_winograd else report.kernel)
    if not spec.is_cuda:
        mod, outcomes = lower_fp32_convs(mod)
        # The convs left after the rewrite are the FP32 conv reports, in the same program order.
        fp32_convs = [i for i, report in enumerate(reports) if report.op == "conv2d" and not report.is_bitserial]
        for index, conv in zip(fp32_convs, outcomes, strict=True):
            reports[index] = replace(reports[index], kernel=describe_fp32(conv))
    return mod, reports


def _shared_inputs(plans, reports, spec, passes: dict) -> list:
    """A SharedInput for each quantized map read by two or more plans (they share the pass that
    packs it where their pack keys agree)."""
    readers: dict = {}
    for position, plan in enumerate(plans):
        readers.setdefault(pack_key(plan, BITSERIAL), []).append(position)
    groups = []
    for positions in readers.values():
        if len(positions) < 2:
            continue
        first = plans[positions[0]]
        groups.append(SharedInput(
            positions, {i: {kernel: pack_key(plans[i], kernel) for kernel in KERNELS} for i in positions},
            passes.get(first.report_index), estimated_pass(reports[first.report_index].input_shape, spec.target)))
    return groups
