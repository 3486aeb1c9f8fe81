"""The kernels a quantized conv can run as, by the names the lowering, the command line and the
results use (a module of its own so that `--help` does not import TVM)."""

BITSERIAL = "bit-serial"  # AND + popcount over every pair of bit-planes
INT8_DOT = "int8-dot"  # an int8 dot product over the integer levels
LUT = "lut"  # vpshufb lookups in per-pixel tables of level sums (AVX2; 1- and 2-bit weights)
KERNELS = (BITSERIAL, INT8_DOT, LUT)
AUTO = "auto"  # per layer, whichever is faster
MODES = (AUTO, *KERNELS)
