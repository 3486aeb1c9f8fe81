"""The kernels a quantized conv can run as, by the names the lowering, the command line and the
results use (a module of its own so that `--help` does not import TVM)."""

BITSERIAL = "bit-serial"  # AND + popcount over every pair of bit-planes
INT8_DOT = "int8-dot"  # an int8 dot product over the integer levels
LUT = "lut"  # vpshufb lookups in per-pixel tables of level sums (AVX2; 1- and 2-bit weights)
KERNELS = (BITSERIAL, INT8_DOT, LUT)
AUTO = "auto"  # per layer, whichever is faster
# int8-dot on every conv it can run, those that the Winograd F(2x2, 3x3) transforms take in that domain
# (3x3 stride 1, x86 without AMX tiles; `ops.int8_winograd`). `auto` weighs int8-dot at the Winograd
# conv's cost where it applies; `int8-dot` asked for is the direct conv everywhere.
INT8_WINOGRAD = "int8-winograd"
MODES = (AUTO, *KERNELS, INT8_WINOGRAD)
