"""Bit-serial ops: compiled kernels equal the numpy references bit for bit; packing and grids."""

import itertools

import numpy as np
import pytest
import torch
import tvm
from tvm import te

from kernel_cases import random_weights
from wrpn_tvm import kernels, ops
from wrpn_tvm.errors import WrpnError

BIT_PAIRS = list(itertools.product(range(1, 5), repeat=2)) + [(8, 8), (5, 7), (8, 1), (1, 8), (6, 3)]
# (channels, out_channels, kernel, stride, padding, batch, image): cycled over the bit pairs so
# every pair meets a different shape and every shape feature appears several times.
CONV_SHAPES = [
    (3, 8, 3, 1, 1, 2, 7),
    (17, 16, 5, 2, 2, 1, 7),
    (100, 32, 1, 1, 0, 2, 7),
    (17, 5, 3, 2, (0, 1, 2, 1), 1, 7),
    (64, 64, 3, 1, 1, 1, 7),
    (100, 3, 5, 1, (2, 1), 2, 6),
    (33, 48, 3, 2, 0, 1, 7),
]


@pytest.mark.parametrize("case", range(len(BIT_PAIRS)))
def test_conv2d_levels_equal_reference(case):
    rng = np.random.default_rng(case)
    abits, wbits = BIT_PAIRS[case]
    channels, out_channels, kernel, stride, padding, batch, image = CONV_SHAPES[case % len(CONV_SHAPES)]
    x = rng.integers(0, 2**abits, (batch, channels, image, image))
    w = random_weights(rng, wbits, (out_channels, channels, kernel, kernel))
    got = kernels.conv2d_levels(x, w, abits, wbits, stride, padding)
    want = ops.conv2d_levels_reference(x, w, abits, wbits, stride, padding)
    assert got.dtype == np.int32 and np.array_equal(got, want)


@pytest.mark.parametrize("abits, wbits", [(1, 1), (2, 2), (3, 1), (4, 3)])
def test_64_bit_words_equal_reference(abits, wbits):
    """64-bit words accumulate in int64 lanes and narrow at the end: same integers."""
    rng = np.random.default_rng(64 + abits)
    x = rng.integers(0, 2**abits, (2, 100, 7, 7))
    w = random_weights(rng, wbits, (24, 100, 3, 3))
    got = kernels.conv2d_levels(x, w, abits, wbits, 2, 1, word_bits=64)
    assert np.array_equal(got, ops.conv2d_levels_reference(x, w, abits, wbits, 2, 1))
    xd, wd = x.reshape(2, -1)[:, :130], w.reshape(24, -1)[:, :130]
    assert np.array_equal(kernels.dense_levels(xd, wd, abits, wbits, word_bits=64),
                          ops.dense_levels_reference(xd, wd, abits, wbits))


@pytest.mark.parametrize("case", range(len(CONV_SHAPES)))
@pytest.mark.parametrize("target", ["host", "x86-avx2"])
def test_shift_group_conv2d_equals_reference(case, target):
    """The kernel form that sums each shift group apart (AVX-512's lowering) through the generic
    CPU template, at 32- and 64-bit words, on every awkward shape and a multi-bit weight pair each."""
    rng = np.random.default_rng(100 + case)
    abits, wbits = [(2, 2), (1, 2), (4, 2), (3, 4), (2, 3), (4, 4), (8, 2)][case]
    channels, out_channels, kernel, stride, padding, batch, image = CONV_SHAPES[case]
    x = rng.integers(0, 2**abits, (batch, channels, image, image))
    w = random_weights(rng, wbits, (out_channels, channels, kernel, kernel))
    want = ops.conv2d_levels_reference(x, w, abits, wbits, stride, padding)
    for word_bits in (32, 64):
        got = kernels.conv2d_levels(x, w, abits, wbits, stride, padding, target, word_bits, split_shift_groups=True)
        assert got.dtype == np.int32 and np.array_equal(got, want), word_bits


@pytest.mark.parametrize("case", [i for i, shape in enumerate(CONV_SHAPES) if shape[1] % ops.CONV_WEIGHT_BLOCK == 0])
def test_shift_group_conv2d_with_blocked_weights_equals_reference(case):
    """32-bit shift groups over weights blocked by output channels (the AVX-512 lowering's form),
    on the awkward shapes whose output channels fill whole blocks."""
    rng = np.random.default_rng(200 + case)
    abits, wbits = [(2, 2), (1, 2), (4, 2), (3, 4), (2, 3), (4, 4), (8, 2)][case]
    channels, out_channels, kernel, stride, padding, batch, image = CONV_SHAPES[case]
    x = rng.integers(0, 2**abits, (batch, channels, image, image))
    w = random_weights(rng, wbits, (out_channels, channels, kernel, kernel))
    got = kernels.conv2d_levels(x, w, abits, wbits, stride, padding, "host", 32, split_shift_groups=True,
                                weight_block=ops.CONV_WEIGHT_BLOCK)
    assert np.array_equal(got, ops.conv2d_levels_reference(x, w, abits, wbits, stride, padding))


def test_blocked_conv_weights_keep_each_blocks_channels_together():
    w = random_weights(np.random.default_rng(3), 2, (32, 5, 3, 3))
    packed = ops.pack_weight(w, 2, 32)
    blocked = ops.block_conv_weight(packed, 16)
    assert blocked.shape == (2, 3, 3, 2, 1, 16)
    assert np.array_equal(blocked[1, ..., 3], packed[..., 16 + 3])
    with pytest.raises(WrpnError, match="multiple of 16"):
        ops.block_conv_weight(packed[..., :20], 16)


def test_conv2d_levels_extreme_levels_accumulate_exactly():
    """All-max activations times all-min weights: the largest magnitudes the planes produce."""
    abits, wbits = 8, 8
    x = np.full((1, 100, 5, 5), 2**abits - 1)
    w = np.full((4, 100, 3, 3), -(2 ** (wbits - 1) - 1))
    got = kernels.conv2d_levels(x, w, abits, wbits, 1, 1)
    assert np.array_equal(got, ops.conv2d_levels_reference(x, w, abits, wbits, 1, 1))
    assert got.min() == 255 * -127 * 100 * 9


@pytest.mark.parametrize(
    "abits, wbits, features, out_features, batch",
    [(1, 1, 100, 10, 3), (2, 3, 33, 17, 1), (4, 2, 512, 64, 2), (3, 1, 17, 5, 4), (8, 8, 64, 16, 1), (2, 4, 3, 7, 2)],
)
def test_dense_levels_equal_reference(abits, wbits, features, out_features, batch):
    rng = np.random.default_rng(features)
    x = rng.integers(0, 2**abits, (batch, features))
    w = random_weights(rng, wbits, (out_features, features))
    got = kernels.dense_levels(x, w, abits, wbits)
    assert np.array_equal(got, ops.dense_levels_reference(x, w, abits, wbits))


def test_references_agree_with_torch():
    """The numpy references themselves, against torch's float64 conv / matmul on small integers."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 16, (2, 17, 7, 7))
    w = random_weights(rng, 3, (5, 17, 3, 3))
    want = torch.nn.functional.conv2d(torch.tensor(x, dtype=torch.float64), torch.tensor(w, dtype=torch.float64),
                                      stride=2, padding=1)
    assert np.array_equal(ops.conv2d_levels_reference(x, w, 4, 3, 2, 1), want.numpy().astype(np.int32))
    xd, wd = x.reshape(2, -1)[:, :40], random_weights(rng, 1, (6, 40))
    assert np.array_equal(ops.dense_levels_reference(xd, wd, 4, 1), xd @ wd.T)


def _build_pack(shape, abits, word_bits, quantize):
    x = te.placeholder(shape, "float32" if quantize else "int32", name="x")
    packed = ops.pack_activation(x, abits, word_bits, quantize=quantize)
    return tvm.compile(tvm.IRModule({"main": te.create_prim_func([x, packed])}), target="llvm"), packed.shape


def _run_pack(shape, abits, word_bits, quantize, values):
    executable, out_shape = _build_pack(shape, abits, word_bits, quantize)
    device = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros([int(d) for d in out_shape], dtype=f"uint{word_bits}"), device)
    executable["main"](tvm.runtime.tensor(values, device), out)
    return out.numpy()


@pytest.mark.parametrize("shape, word_bits", [((2, 3, 4, 5), 32), ((1, 100, 3, 2), 64), ((3, 33), 32), ((2, 130), 64)])
def test_pack_activation_layout_equals_reference(shape, word_bits):
    abits = 3
    levels = np.random.default_rng(0).integers(0, 2**abits, shape).astype(np.int32)
    got = _run_pack(shape, abits, word_bits, False, levels)
    assert np.array_equal(got, ops.pack_activation_reference(levels, abits, word_bits))


@pytest.mark.parametrize("abits", [1, 2, 3, 4, 8])
def test_pack_activation_quantizes_like_torch_round(abits):
    """round(clip(x, 0, 1) * (2^a - 1)) with ties to even, like torch.round, clipping outside [0, 1]."""
    scale = 2**abits - 1
    ties = (np.arange(scale) + 0.5) / scale  # x * scale lands on (or next to) k + 0.5
    values = np.concatenate([ties, [0.5, -0.3, 0.0, 1.0, 1.7, 0.25, 0.75]]).astype(np.float32)
    x = values.reshape(1, -1)
    torch_levels = torch.round(torch.clamp(torch.tensor(x), 0, 1) * scale).to(torch.int64).numpy()
    assert np.array_equal(ops.quantize_activation_reference(x, abits), torch_levels)
    got = _run_pack(x.shape, abits, 32, True, x)
    assert np.array_equal(got, ops.pack_activation_reference(torch_levels, abits, 32))
    # 0.5 * (2^a - 1) is exactly k + 0.5 with k = 2^(a-1) - 1 odd (or 0): ties go to the even level.
    assert ops.quantize_activation_reference(np.float32([0.5]), abits)[0] == (2 ** (abits - 1) if abits > 1 else 0)


@pytest.mark.parametrize("wbits", [1, 2, 3, 8])
@pytest.mark.parametrize("word_bits", [32, 64])
def test_pack_weight_planes_decode_to_levels(wbits, word_bits):
    """Decode the packed conv weight bit by bit (two's complement, or the sign at 1 bit)."""
    rng = np.random.default_rng(wbits)
    w = random_weights(rng, wbits, (5, 70, 3, 2))
    packed = ops.pack_weight(w, wbits, word_bits)
    assert packed.shape == (3, 2, wbits, -(-70 // word_bits), 5) and packed.dtype == np.dtype(f"uint{word_bits}")
    channel = np.arange(70)
    bits = (packed[:, :, :, channel // word_bits, :] >> (channel % word_bits).astype(packed.dtype)[:, None]) & 1
    bits = bits.astype(np.int64)  # [KH, KW, planes, C, O]
    if wbits == 1:
        decoded = 2 * bits[:, :, 0] - 1
    else:
        weights = np.array([2**j for j in range(wbits - 1)] + [-(2 ** (wbits - 1))])
        decoded = np.einsum("hwjco,j->hwco", bits, weights)
    assert np.array_equal(decoded.transpose(3, 2, 0, 1), w)
    dense = ops.pack_weight(w[:, :, 0, 0], wbits, word_bits)
    assert np.array_equal(dense, packed[0, 0])


@pytest.mark.parametrize(
    "x, w, abits, wbits",
    [
        (np.full((1, 3, 4, 4), 4), np.ones((2, 3, 3, 3)), 2, 2),  # activation above 2^2 - 1
        (np.full((1, 3, 4, 4), -1), np.ones((2, 3, 3, 3)), 2, 2),  # negative activation
        (np.full((1, 3, 4, 4), 0.5), np.ones((2, 3, 3, 3)), 2, 2),  # not an integer level
        (np.ones((1, 3, 4, 4)), np.zeros((2, 3, 3, 3)), 1, 1),  # zero is not a 1-bit weight
        (np.ones((1, 3, 4, 4)), np.full((2, 3, 3, 3), -2), 1, 2),  # 2-bit grid is {-1, 0, 1}
        (np.ones((1, 3, 4, 4)), np.full((2, 3, 3, 3), 8), 1, 4),  # 4-bit grid is [-7, 7]
        (np.ones((1, 3, 4, 4)), np.ones((2, 3, 3, 3)), 0, 2),  # bits out of 1..8
        (np.ones((1, 3, 4, 4)), np.ones((2, 3, 3, 3)), 2, 9),
        (np.ones((1, 3, 4, 4)), np.ones((2, 5, 3, 3)), 2, 2),  # channel mismatch
    ],
)
def test_bad_levels_and_bits_are_rejected(x, w, abits, wbits):
    with pytest.raises(WrpnError):
        kernels.conv2d_levels(x, w, abits, wbits, 1, 1)


def test_bad_dense_levels_and_pack_weight_inputs_are_rejected():
    with pytest.raises(WrpnError, match="activation levels"):
        kernels.dense_levels(np.full((1, 8), 2), np.ones((2, 8)), 1, 1)
    with pytest.raises(WrpnError, match="weight levels"):
        ops.pack_weight(np.full((2, 8), 3), 2)
    with pytest.raises(WrpnError, match="word_bits"):
        ops.pack_weight(np.ones((2, 8)), 2, word_bits=16)


def test_non_host_targets_compile_but_do_not_run_here():
    x, w = np.ones((1, 3, 4, 4), dtype=np.int64), np.ones((2, 3, 3, 3), dtype=np.int64)
    with pytest.raises(WrpnError, match="RPC"):
        kernels.conv2d_levels(x, w, 1, 2, 1, 1, target="rasp4")
