"""WRPN 3x3 stride-1 conv2d as int8 dot products in the Winograd F(2x2, 3x3) domain: 16
multiplies per 2x2 outputs and input channel against the direct conv's 36, exact in integers like
`int8_dot` (whose int8 levels it reads and whose int32 NHWC sums it returns, so the lowering's packs
and epilogues are the same).

Integers throughout. The input transform B^T d B of a 4x4 patch of levels in [0, A] lies in
[-2A, 4A]; it is stored offset by 2A, as the uint8 the x86 dot instructions multiply (A <= 42). The
weights are transformed with 2G in place of G (G's entries are halves), U = (2G) g (2G)^T = 4 G g
G^T, integers within 9 W for weight levels in [-W, W] (int8 for W <= 14). Per tile and output
channel the 16 sums M = sum_c (V + 2A) U are then 4 times the Winograd products plus the offset's
share 2A sum_c U, a per-channel constant that the output transform A^T M A loses as one constant
per output position in the 2x2 tile (`prepack_winograd_weight`'s correction), and the result,
exactly 4 times the conv, is shifted right by 2.

Layouts (ob, Cp as in `int8_dot`):
  input levels  NHWC [N, H, W, Cp] uint8 (`int8_levels`)
  weights       int8 [16, ceil(O / ob), Cp / 4, ob, 4] (one [O, C] matrix per Winograd position), or,
                for layers whose transformed weights exceed IN_KERNEL_TRANSFORM_BYTES, the direct
                conv's [ceil(O / ob), 3, 3, Cp / 4, ob, 4] (`prepack_int8_weight`), transformed in
                the kernel (`wino_weight_rows`, `wino_weight`)
  correction    int32 [2, 2, ceil(O / ob) * ob]
  output        int32 NHWC [N, OH, OW, O]
The stages: the input transform per row of 2x2 tiles (`wino_rows`, `wino_input`), one dot-product
GEMM per Winograd position (`wino_gemm`, rule WINOGRAD_RULE, which the CPU template tensorizes),
the output transform per tile and weight block (`wino_output_tiles`) and the tiles read back as NHWC.

Why two weight forms: a layer with large weights runs in groups of output channels, each reading
its weights once a call (`schedules.int8_winograd`), so they come from memory at every call, and
the transformed form is 16/9 the bytes of the direct one (ResNet-18 2x's 7x7x1024: 16.8 MB against
9.4 MB a conv). Transformed per group into a buffer the group's GEMMs then read from L2, the
weights cost 9/16 the memory traffic and the model 9/16 the bytes on disk, for a few int8 adds per
weight.
"""

import math

import numpy as np
from tvm import te, tirx

from .bitserial import as_padding4
from .grid import check_bits, check_weight_levels
from .int8_dot import Int8Layout, padded_channels, prepack_int8_weight
from ..errors import WrpnError

WINOGRAD_RULE = "wrpn_int8_winograd"
TILE = 2  # outputs per tile side: F(2x2, 3x3)
POSITIONS = 16  # Winograd positions of a 4x4 input patch
# Each transformed weight (16/9 the direct conv's bytes) is used once per tile of a call. With the
# template's channel groups (each weight read once a call) the 7x7 outputs of ResNet-18 2x 2/2
# (16 tiles, 1024 channels) took 0.71x the direct conv's time (x86-avx512 on an AMX Xeon, 2 threads,
# weights flushed from cache); smaller maps were not measured.
MIN_TILES = 16
# Transformed weights beyond this come from L3 or memory at every call (a row of tiles would read
# them all): such layers run in channel groups and take the direct weights (see above).
IN_KERNEL_TRANSFORM_BYTES = 1 << 20
B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
G_TWICE = np.array([[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]])
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])


def _max_level(bits: int, signed: bool) -> int:
    return max(1, 2 ** (bits - 1) - 1) if signed else 2**bits - 1


def winograd_fits(abits: int, wbits: int) -> bool:
    """Whether the offset input transform fits uint8 (6 A <= 255), the transformed weights int8
    (9 W <= 127), and two of their products vpmaddubsw's saturating int16 (the AVX2 and AVX-512BW
    dot kernels add pairs there): 2/2 to 4/4 and 5/4 do."""
    check_bits(abits, wbits)
    inputs, weights = 6 * _max_level(abits, False), 9 * _max_level(wbits, True)
    return inputs <= 255 and weights <= 127 and 2 * inputs * weights <= 2**15 - 1


def tiles_per_side(out_size) -> tuple[int, ...]:
    """The 2x2 output tiles along each side of an output of out_size (an odd side's last one half
    outside it)."""
    return tuple(-(-int(extent) // TILE) for extent in out_size)


def winograd_applies(kernel_size, stride, out_size, out_channels: int, layout: "Int8Layout | None", abits: int,
                     wbits: int) -> bool:
    """A 3x3 stride-1 conv whose levels fit (`winograd_fits`), whose output has at least MIN_TILES
    tiles and a whole block of channels, on a layout of uint8 activations (x86) without AMX tiles."""
    tiles = math.prod(tiles_per_side(out_size))
    return (layout is not None and layout.activation_dtype == "uint8" and not layout.amx
            and out_channels >= layout.out_block
            and tuple(kernel_size) == (3, 3) and tuple(np.broadcast_to(stride, 2)) == (1, 1)
            and tiles >= MIN_TILES and winograd_fits(abits, wbits))


def input_offset(abits: int) -> int:
    """What the input transform adds to make its values unsigned: 2A."""
    return 2 * _max_level(abits, False)


def transforms_weights_in_kernel(out_channels: int, channels: int, layout: Int8Layout) -> bool:
    """Whether a layer's transformed weights exceed IN_KERNEL_TRANSFORM_BYTES, so that it takes
    the direct weights and transforms them in the kernel."""
    blocks = -(-int(out_channels) // layout.out_block)
    return POSITIONS * blocks * layout.out_block * padded_channels(channels, layout) > IN_KERNEL_TRANSFORM_BYTES


def prepack_winograd_weight(w_levels: np.ndarray, abits: int, layout: Int8Layout,
                            in_kernel: "bool | None" = None) -> tuple[np.ndarray, np.ndarray]:
    """OIHW 3x3 integer weight levels -> (int8 weights, int32 [2, 2, OB * ob] correction for the
    input offset), padded outputs and channels 0. The weights: transformed, [16, OB, Cp / 4, ob, 4],
    or, where `in_kernel` (default: `transforms_weights_in_kernel`), the direct conv's
    [OB, 3, 3, Cp / 4, ob, 4] for the kernel to transform."""
    levels = check_weight_levels(np.asarray(w_levels), 8)
    if levels.ndim != 4 or levels.shape[2:] != (3, 3):
        raise WrpnError(f"Winograd F(2x2, 3x3) takes 3x3 OIHW weights, got shape {levels.shape}")
    out_channels, channels = levels.shape[:2]
    ob, lane = layout.out_block, layout.reduce_block
    blocks, cp = -(-out_channels // ob), padded_channels(channels, layout)
    transformed = np.zeros((4, 4, blocks * ob, cp), dtype=np.int64)
    transformed[:, :, :out_channels, :channels] = np.einsum("ik,ockl,jl->ijoc", G_TWICE, levels.astype(np.int64),
                                                            G_TWICE)
    if np.abs(transformed).max(initial=0) > 127:
        raise WrpnError("the transformed weights do not fit int8 (weight levels beyond +-14)")
    sums = transformed.sum(axis=3)  # [4, 4, O]: sum_c U per position
    correction = input_offset(abits) * np.einsum("ri,ijo,sj->rso", A_T, sums, A_T)
    if in_kernel is None:
        in_kernel = transforms_weights_in_kernel(out_channels, channels, layout)
    if in_kernel:
        return prepack_int8_weight(levels, layout), correction.astype(np.int32)
    # [16, OB, ob, C4, lane] -> [16, OB, C4, ob, lane]
    packed = transformed.reshape(POSITIONS, blocks, ob, cp // lane, lane).transpose(0, 1, 3, 2, 4)
    return np.ascontiguousarray(packed.astype(np.int8)), correction.astype(np.int32)


def _select(index, values):
    """values[index] for a loop variable the template unrolls (the selects fold to one value)."""
    result = values[-1]
    for position in range(len(values) - 2, -1, -1):
        result = tirx.Select(index == position, values[position], result)
    return result


def _rows_times(matrix: np.ndarray, row: int, values: list):
    """(matrix @ values)[row] for a small integer matrix (B^T, A^T, 2G), as adds and subtracts."""
    total = None
    for coefficient, value in zip(matrix[row], values):
        for _ in range(abs(int(coefficient))):
            if total is None:
                total = value if coefficient > 0 else -value
            else:
                total = total + value if coefficient > 0 else total - value
    return total


def _transformed_weight(weight) -> te.Tensor:
    """int8 [16, OB, Cp / 4, ob, 4] U = (2G) g (2G)^T of direct weights [OB, 3, 3, Cp / 4, ob, 4]:
    per output row of 2G then per column, adds in int8 (|U| <= 9 W fits, `winograd_fits`)."""
    blocks, kernel_h, kernel_w, lanes_c, ob, lane = (int(d) for d in weight.shape)
    if (kernel_h, kernel_w) != (3, 3) or str(weight.dtype) != "int8":
        raise WrpnError(f"Winograd direct weights must be int8 [OB, 3, 3, C4, ob, 4], got {tuple(weight.shape)} "
                        f"{weight.dtype}")
    rows = te.compute(
        (blocks, 4, 3, lanes_c, ob, lane),
        lambda b, i, l, c4, oi, ci: _select(i, [_rows_times(G_TWICE, r, [weight[b, k, l, c4, oi, ci] for k in range(3)])
                                                for r in range(4)]),
        name="wino_weight_rows")
    return te.compute(
        (POSITIONS, blocks, lanes_c, ob, lane),
        lambda xi, b, c4, oi, ci: _select(xi % 4, [_rows_times(G_TWICE, s, [rows[b, xi // 4, l, c4, oi, ci]
                                                                             for l in range(3)]) for s in range(4)]),
        name="wino_weight")


def int8_winograd_conv2d(data, weight, correction, out_channels: int, padding=1, bits=(2, 2)) -> te.Tensor:
    """int32 NHWC [N, OH, OW, out_channels] 3x3 stride-1 conv of int8_levels data [N, H, W, Cp]
    with `prepack_winograd_weight`'s weights (either form) and correction; zero padding is level 0."""
    batch, height, width, channels = (int(d) for d in data.shape)
    if len(weight.shape) == 6:
        weight = _transformed_weight(weight)
    positions, blocks, lanes_c, ob, lane = (int(d) for d in weight.shape)
    if str(weight.dtype) != "int8" or str(data.dtype) != "uint8":
        raise WrpnError(f"Winograd int8 conv2d takes uint8 data and int8 weights, got {data.dtype} and {weight.dtype}")
    if positions != POSITIONS or lanes_c * lane != channels:
        raise WrpnError(f"Winograd weights of shape {tuple(weight.shape)} do not fit {channels} input channels")
    if not (blocks - 1) * ob < int(out_channels) <= blocks * ob:
        raise WrpnError(f"{int(out_channels)} output channels do not fit {blocks} weight blocks of {ob}")
    if int(out_channels) < ob:
        # The GEMM's register tile is a whole block, and the stages it is computed at take only
        # the channels the output reads.
        raise WrpnError(f"the Winograd int8 conv needs at least {ob} output channels, got {int(out_channels)}")
    if not winograd_fits(*bits):
        raise WrpnError(f"a{bits[0]}/w{bits[1]} levels do not fit the Winograd int8 transforms")
    top, left, bottom, right = as_padding4(padding)
    out_h, out_w = height + top + bottom - 2, width + left + right - 2
    tiles_h, tiles_w = tiles_per_side((out_h, out_w))
    offset = tirx.const(input_offset(bits[0]), "int16")

    def level(n, y, x, c):
        """The zero-padded input at padded coordinates, as int16 (also past the last tile's edge)."""
        inside = tirx.all(y >= top, y < height + top, x >= left, x < width + left)
        row = tirx.min(tirx.max(y - top, 0), height - 1)
        column = tirx.min(tirx.max(x - left, 0), width - 1)
        return tirx.if_then_else(inside, data[n, row, column, c].astype("int16"), tirx.const(0, "int16"))

    rows = te.compute(
        (batch, tiles_h, TILE * tiles_w + 2, 4, channels),
        lambda n, th, x, i, c: _select(i, [_rows_times(B_T, r, [level(n, TILE * th + a, x, c) for a in range(4)])
                                           for r in range(4)]),
        name="wino_rows")
    transformed = te.compute(
        (batch, tiles_h, POSITIONS, tiles_w, channels),
        lambda n, th, xi, tw, c: (_select(xi % 4, [_rows_times(B_T, s, [rows[n, th, TILE * tw + b, xi // 4, c]
                                                                         for b in range(4)]) for s in range(4)])
                                  + offset).astype("uint8"),
        name="wino_input")
    c4 = te.reduce_axis((0, lanes_c), name="c4")
    ci = te.reduce_axis((0, lane), name="ci")
    products = te.compute(
        (batch, tiles_h, tiles_w, POSITIONS, blocks, ob),
        lambda n, th, tw, xi, b, oi: te.sum(
            transformed[n, th, xi, tw, c4 * lane + ci].astype("int32") * weight[xi, b, c4, oi, ci].astype("int32"),
            axis=[c4, ci]),
        name="wino_gemm", attrs={"schedule_rule": WINOGRAD_RULE})

    def output_value(n, th, tw, b, r, s, oi):
        m = [[products[n, th, tw, 4 * i + j, b, oi] for j in range(4)] for i in range(4)]
        by_column = [[_rows_times(A_T, col, m[i]) for col in range(2)] for i in range(4)]
        per_position = [[_rows_times(A_T, row, [by_column[i][col] for i in range(4)]) for col in range(2)]
                        for row in range(2)]
        return _select(r, [_select(s, per_position[row]) for row in range(2)]) - correction[r, s, b * ob + oi]

    # By weight block, as the GEMM writes them, so a block's tiles can follow its GEMMs in cache.
    tiles = te.compute((batch, tiles_h, tiles_w, blocks, TILE, TILE, ob), output_value, name="wino_output_tiles")
    return te.compute(
        (batch, out_h, out_w, int(out_channels)),
        lambda n, oh, ow, o: tiles[n, oh // TILE, ow // TILE, o // ob, oh % TILE, ow % TILE, o % ob] >> 2,
        name="wino_output")
