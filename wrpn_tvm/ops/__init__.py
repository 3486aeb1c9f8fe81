"""WRPN operators (bit-serial kernels, and the blocked FP32 conv for the layers left in full
precision): TE computes, weight pre-packing, their schedule-rule names and numpy references.
A leaf of the package: it imports nothing of wrpn_tvm but its errors (`kernels` compiles and
runs them one at a time)."""

from .bitpack import BITPACK_RULE, CONV_WEIGHT_BLOCK, block_conv_weight, pack_activation, pack_weight
from .bitserial import CONV2D_RULE, DENSE_RULE, SHIFT_COMBINE, bitserial_conv2d, bitserial_dense
from .blocked_conv2d import CHANNEL_BLOCK, FP32_CONV2D_RULE, block_weight, blocked_conv2d
from .int8_dot import (INT8_CONV2D_RULE, AmxTile, Int8Layout, int8_conv2d, int8_fits, int8_layout, int8_levels,
                       int8_levels_of, pair_sum_max, pair_sums_fit_int16, prepack_int8_weight)
from .int8_winograd import (WINOGRAD_RULE, int8_winograd_conv2d, prepack_winograd_weight, winograd_applies,
                            winograd_fits)
from .lut import (LUT_CONV2D_RULE, lut_conv2d, lut_conv2d_reference, lut_fits, lut_tables,
                  prepack_lut_codes)
from .reference import (
    conv2d_float_reference,
    conv2d_levels_reference,
    dense_levels_reference,
    pack_activation_reference,
    quantize_activation_reference,
)

__all__ = [
    "BITPACK_RULE",
    "CHANNEL_BLOCK",
    "CONV_WEIGHT_BLOCK",
    "CONV2D_RULE",
    "SHIFT_COMBINE",
    "DENSE_RULE",
    "FP32_CONV2D_RULE",
    "INT8_CONV2D_RULE",
    "LUT_CONV2D_RULE",
    "WINOGRAD_RULE",
    "Int8Layout",
    "block_conv_weight",
    "block_weight",
    "blocked_conv2d",
    "bitserial_conv2d",
    "bitserial_dense",
    "conv2d_float_reference",
    "conv2d_levels_reference",
    "dense_levels_reference",
    "int8_conv2d",
    "AmxTile",
    "int8_fits",
    "int8_layout",
    "int8_levels",
    "int8_levels_of",
    "int8_winograd_conv2d",
    "lut_conv2d",
    "lut_conv2d_reference",
    "lut_fits",
    "lut_tables",
    "pair_sum_max",
    "pair_sums_fit_int16",
    "pack_activation",
    "prepack_lut_codes",
    "pack_activation_reference",
    "pack_weight",
    "prepack_int8_weight",
    "prepack_winograd_weight",
    "winograd_applies",
    "winograd_fits",
    "quantize_activation_reference",
]
