"""What the lowering did with each conv2d / dense layer: one line per layer for `compile --explain`,
a one-line summary that compile always prints, and warnings about the program itself."""

import math
from collections import Counter
from dataclasses import dataclass

from .graph import BindingGraph, op_name

FP32 = "fp32"
WINOGRAD = "Winograd F(2x2, 3x3)"  # the kernel of an int8-dot conv in the Winograd domain


@dataclass(frozen=True)
class LayerReport:
    index: int  # position among the model's conv2d / dense layers, from 0
    op: str  # "conv2d" or "dense"
    detail: str  # e.g. "3x3/1 pad 1, 64->128 channels"
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    lowered_to: str  # "bit-serial conv2d a2/w2", "int8-dot conv2d a2/w2" or FP32
    reason: str = ""  # why the layer stayed FP32; what was folded for a bit-serial layer
    # For an FP32 layer, the kernel it runs as (and what was folded into it); WINOGRAD for an int8-dot
    # layer computed in that domain.
    kernel: str = ""
    weight_shape: tuple[int, ...] = ()  # conv OIHW (I per group), dense [K, O] as the matmul reads it

    @property
    def macs(self) -> int:
        """Multiply-accumulates per inference at the compiled batch (0 without a weight shape)."""
        if not self.weight_shape:
            return 0
        per_output = math.prod(self.weight_shape[1:]) if self.op == "conv2d" else self.weight_shape[0]
        return math.prod(self.output_shape) * per_output

    @property
    def is_bitserial(self) -> bool:
        """True for a quantized layer, whichever integer kernel runs it (bit-serial, int8 dot or lookup)."""
        return self.lowered_to != FP32

    @property
    def bits(self) -> str:
        """"a2/w2" for a bit-serial layer, FP32 otherwise."""
        return self.lowered_to.rsplit(" ", 1)[-1]

    def __str__(self) -> str:
        shapes = f"{'x'.join(map(str, self.input_shape))} -> {'x'.join(map(str, self.output_shape))}"
        line = f"layer {self.index:>2}  {self.op:<6} {self.detail:<28} {shapes:<28} {self.lowered_to}"
        if self.kernel:
            line += f" as {self.kernel}"
        return f"{line}  ({self.reason})" if self.reason else line


def summary(reports: list[LayerReport]) -> str:
    """E.g. "7 of 9 conv/dense layers quantized (a2/w2 x6, a4/w2 x1; bit-serial x5, int8-dot x2); 2 fp32"."""
    quantized = [report for report in reports if report.is_bitserial]
    line = f"{len(quantized)} of {len(reports)} conv/dense layers quantized"
    if quantized:
        bits = Counter(report.bits for report in quantized)
        kernels = Counter(report.lowered_to.split(" ", 1)[0] for report in quantized)
        line += (" (" + ", ".join(f"{b} x{count}" for b, count in bits.most_common()) + "; "
                 + ", ".join(f"{kernel} x{count}" for kernel, count in kernels.most_common()) + ")")
    fp32 = len(reports) - len(quantized)
    return line + (f"; {fp32} fp32" if fp32 else "")


def program_warnings(mod, reports: list[LayerReport]) -> list[str]:
    """What a user should know before trusting the library: it differs from the trained model at
    inference (train-mode batch norm), or it gains nothing from WRPN (no bit-serial layer)."""
    warnings = []
    training = sum(op_name(binding.value) == "relax.nn.batch_norm" and bool(binding.value.attrs.training)
                   for binding in BindingGraph(mod["main"]).bindings)
    if training:
        warnings.append(f"{training} batch norm layer(s) were exported in train mode: they normalize each batch by "
                        "its own statistics, not the running ones (export after model.eval())")
    if reports and not any(report.is_bitserial for report in reports):
        warnings.append("no conv/dense layer runs bit-serially: the library is plain FP32 code, often slower than "
                        "PyTorch (compile --explain says why for each layer)")
    return warnings
