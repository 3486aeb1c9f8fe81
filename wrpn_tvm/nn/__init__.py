"""WRPN networks in PyTorch: quantizers, layers, widening, the model zoo, checkpoints and export.

Modules: `quantize` (the paper's quantizers), `layers` (WRPNConv2d, WRPNLinear, WRPNAct, widening),
`zoo` (build_model), `checkpoint` (training state), `program` (the frozen torch.export program the
compiler reads, and `export`, the library function behind `wrpn-tvm export`; its docstring is the
graph-spelling contract).
"""

from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .cost import compute_cost, relative_cost
from .program import export, export_model, freeze_model, save_program
from .layers import WRPNAct, WRPNConv2d, WRPNLinear, check_width, widen
from .quantize import FULL_PRECISION, VALID_BITS, check_bits, quantize_activation, quantize_weight
from .zoo import MODEL_NAMES, build_model, default_image_size

__all__ = [
    "FULL_PRECISION", "MODEL_NAMES", "compute_cost", "relative_cost", "VALID_BITS", "WRPNAct", "WRPNConv2d", "WRPNLinear", "build_model",
    "check_bits", "check_width", "default_image_size", "export", "export_model", "freeze_model",
    "load_checkpoint", "model_from_checkpoint", "quantize_activation", "quantize_weight", "save_checkpoint",
    "save_program", "widen",
]
