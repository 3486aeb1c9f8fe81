"""Bit-serial WRPN operators: TE computes, weight pre-packing, their schedule-rule names and numpy
references. A leaf of the package: it imports nothing of wrpn_tvm but its errors (`kernels`
compiles and runs them one at a time)."""

from .bitpack import BITPACK_RULE, pack_activation, pack_weight
from .bitserial import CONV2D_RULE, DENSE_RULE, bitserial_conv2d, bitserial_dense
from .reference import (
    conv2d_levels_reference,
    dense_levels_reference,
    pack_activation_reference,
    quantize_activation_reference,
)

__all__ = [
    "BITPACK_RULE",
    "CONV2D_RULE",
    "DENSE_RULE",
    "bitserial_conv2d",
    "bitserial_dense",
    "conv2d_levels_reference",
    "dense_levels_reference",
    "pack_activation",
    "pack_activation_reference",
    "pack_weight",
    "quantize_activation_reference",
]
