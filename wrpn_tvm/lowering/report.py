"""What the lowering did with each conv2d / dense layer: one line per layer for `compile --explain`."""

from dataclasses import dataclass

FP32 = "fp32"


@dataclass(frozen=True)
class LayerReport:
    index: int  # position among the model's conv2d / dense layers, from 0
    op: str  # "conv2d" or "dense"
    detail: str  # e.g. "3x3/1 pad 1, 64->128 channels"
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    lowered_to: str  # "bit-serial conv2d a2/w2" or FP32
    reason: str = ""  # why the layer stayed FP32; what was folded for a bit-serial layer

    @property
    def is_bitserial(self) -> bool:
        return self.lowered_to != FP32

    def __str__(self) -> str:
        shapes = f"{'x'.join(map(str, self.input_shape))} -> {'x'.join(map(str, self.output_shape))}"
        line = f"layer {self.index:>2}  {self.op:<6} {self.detail:<28} {shapes:<28} {self.lowered_to}"
        return f"{line}  ({self.reason})" if self.reason else line
