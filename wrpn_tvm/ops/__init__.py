"""Bit-serial WRPN operators: TE computes, weight pre-packing, numpy references, a convenience API."""

from .bitpack import BITPACK_RULE, pack_activation, pack_weight
from .bitserial import CONV2D_RULE, DENSE_RULE, bitserial_conv2d, bitserial_dense
from .levels import compile_conv2d, compile_dense, conv2d_levels, dense_levels
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
    "compile_conv2d",
    "compile_dense",
    "conv2d_levels",
    "dense_levels",
    "conv2d_levels_reference",
    "dense_levels_reference",
    "pack_activation",
    "pack_activation_reference",
    "pack_weight",
    "quantize_activation_reference",
]
