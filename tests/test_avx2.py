"""x86-avx2 bit-serial kernels: bit-exact against the numpy references (nibble counts and the
layers that keep the generic template, awkward shapes throughout), the generated code free of
AVX-512 instructions, the hot loop's nibble lookups with one widening per word, and the
MetaSchedule design spaces (both popcounts) exact after MetaSchedule's own postprocs."""

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import tvm

from kernel_cases import bitserial_conv_tuning_spaces, random_weights
from schedules.avx2 import NibbleCounts
from wrpn_tvm import kernels, ops
from wrpn_tvm.kernel_kinds import BITSERIAL, INT8_DOT
from wrpn_tvm.ops.bitpack import pack_weight
from wrpn_tvm.targets import resolve

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))  # the benchmark imports its neighbours, as when run as a script
_spec = importlib.util.spec_from_file_location("avx2_bench", REPO / "benchmarks" / "avx2.py")
avx2_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(avx2_bench)

TARGET = "x86-avx2"
# What only AVX-512 (EVEX) code can contain: zmm registers, the upper 16 xmm/ymm registers, mask
# registers and masking, embedded broadcasts, and the AVX-512-only popcount/logic instructions.
AVX512_ONLY = re.compile(r"%zmm|%[xy]mm(1[6-9]|2\d|3[01])\b|%k[0-7]\b|\{%k|\{1to\d+\}|\bvpopcnt|\bvpternlog|\bkmov")


def _uses_nibble_counts(asm: str) -> bool:
    return re.search(r"\bvpmaddubsw\t%ymm", asm) is not None


# (abits, wbits, channels, out_channels, kernel, stride, padding, batch, image, nibble counts):
# bit widths whose word sums fit a signed byte (2/2, 2/1, 1/2, 3/1, 1/3) or an unsigned byte per
# sign (4/2, 2/4, 3/3), and layers that keep the generic template (1/1: one pair; 4/2 over more
# words than its 16-bit lanes take; 4/4: byte sums beyond a byte; out channels that are no
# multiple of 4), with channels off every word boundary, stride 2, odd images, 1x1, batch 2.
CONV_CASES = [
    (2, 2, 100, 32, 3, 1, 1, 1, 7, True),
    (2, 2, 17, 16, 3, 2, (0, 1, 2, 1), 2, 9, True),
    (2, 2, 130, 8, 1, 1, 0, 1, 5, True),
    (2, 1, 70, 12, 3, 2, 1, 1, 6, True),
    (1, 2, 40, 20, 5, 2, 2, 1, 9, True),
    (3, 1, 65, 4, 3, 1, 1, 2, 5, True),
    (1, 3, 33, 8, 3, 1, 0, 1, 6, True),
    (4, 2, 70, 8, 3, 1, 1, 1, 7, True),
    (2, 4, 100, 12, 3, 2, 1, 1, 7, True),
    (3, 3, 65, 8, 1, 1, 0, 2, 5, True),
    (1, 1, 130, 24, 3, 2, 1, 1, 7, False),
    (4, 2, 520, 4, 3, 1, 1, 1, 3, False),
    (4, 4, 70, 8, 3, 1, 1, 1, 5, False),
    (2, 2, 20, 6, 3, 1, 1, 1, 7, False),
]
# (abits, wbits, features, out_features, batch, nibble counts)
DENSE_CASES = [(2, 2, 300, 12, 3, True), (2, 1, 77, 8, 2, True), (4, 2, 1000, 8, 2, True), (1, 1, 130, 6, 1, False),
               (4, 4, 100, 8, 2, False)]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_is_exact(case):
    abits, wbits, channels, out_channels, kernel, stride, padding, batch, image, nibbles = case
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    x = rng.integers(0, 2**abits, (batch, channels, image, image))
    w = random_weights(rng, wbits, (out_channels, channels, kernel, kernel))
    got = kernels.conv2d_levels(x, w, abits, wbits, stride, padding, target=TARGET, word_bits=64)
    assert np.array_equal(got, ops.conv2d_levels_reference(x, w, abits, wbits, stride, padding))
    executable = kernels.compile_conv2d(x.shape, w.shape, abits, wbits, stride, padding, TARGET, 64)
    assert _uses_nibble_counts(executable.mod.inspect_source("asm")) == nibbles


@pytest.mark.parametrize("case", DENSE_CASES, ids=str)
def test_dense_is_exact(case):
    abits, wbits, features, out_features, batch, nibbles = case
    rng = np.random.default_rng(features)
    x = rng.integers(0, 2**abits, (batch, features))
    w = random_weights(rng, wbits, (out_features, features))
    got = kernels.dense_levels(x, w, abits, wbits, TARGET, 64)
    assert np.array_equal(got, ops.dense_levels_reference(x, w, abits, wbits))
    executable = kernels.compile_dense(x.shape, w.shape, abits, wbits, TARGET, 64)
    assert _uses_nibble_counts(executable.mod.inspect_source("asm")) == nibbles


@pytest.mark.parametrize("extra_words", [0, 1])
def test_16_bit_lanes_hold_the_longest_reduction_they_take(extra_words):
    """2/2 at the extreme levels: each word adds 48 to a 16-bit lane at most; the longest
    reduction the lanes take is exact, one word more goes the generic way (and is exact too)."""
    words = NibbleCounts(2, 2).max_words + extra_words
    features = words * 64
    x = np.full((1, features), 3)
    w = np.stack([np.full(features, level) for level in (-1, 1, 0, -1)])  # a ymm of output features
    got = kernels.dense_levels(x, w, 2, 2, TARGET, 64)
    assert np.array_equal(got, ops.dense_levels_reference(x, w, 2, 2)) and got[0, 0] == -3 * features
    executable = kernels.compile_dense(x.shape, w.shape, 2, 2, TARGET, 64)
    assert _uses_nibble_counts(executable.mod.inspect_source("asm")) == (extra_words == 0)


def test_hot_loop_looks_up_nibbles_and_widens_once_per_word():
    """ResNet-18's 2x 28x28x256 2/2 conv: per word and ymm of 4 channels, 2 ANDs and 2 vpshufb per
    plane pair (4 pairs) and one vpmaddubsw; no vpsadbw widening per count, no stack traffic."""
    executable = kernels.compile_conv2d((1, 256, 28, 28), (256, 256, 3, 3), 2, 2, 1, 1, TARGET, 64)
    asm = executable.mod.inspect_source("asm")
    hot = [loop for loop in avx2_bench.innermost_loops(asm) if any(i.startswith("vpmaddubsw") for i in loop)]
    assert len(hot) == 1
    mnemonics = [insn.split()[0] for insn in hot[0]]
    widenings = mnemonics.count("vpmaddubsw")
    assert mnemonics.count("vpshufb") == 8 * widenings and mnemonics.count("vpand") == 8 * widenings
    assert "vpsadbw" not in mnemonics
    assert not [insn for insn in hot[0] if "(%rsp)" in insn]


@pytest.mark.parametrize("kernel", [BITSERIAL, INT8_DOT])
def test_no_avx512_instruction_in_a_whole_model(tmp_path, kernel):
    """A 2x-wide 2/2 small CNN compiled for x86-avx2 with each WRPN kernel: FP32 layers, bitpack or
    levels, nibble-count and generic bit-serial or pmaddubsw int8 kernels, epilogues. Not one AVX-512
    instruction or register anywhere."""
    import torch

    from wrpn_tvm import build
    from wrpn_tvm.nn import build_model, export_model

    torch.manual_seed(0)
    model = build_model("smallcnn", 2.0, 2, 2).eval()
    program = tmp_path / "cnn.pt2"
    torch.export.save(export_model(model, torch.rand(1, 1, 28, 28)), str(program))
    result = build.compile_model(program, TARGET, tmp_path / "cnn.so", kernels=kernel)
    disassembly = _objdump(result.library)
    assert re.search(r"\bvpmaddubsw\s+%ymm", disassembly)
    if kernel == BITSERIAL:
        assert re.search(r"\bvpshufb\s+%ymm", disassembly)
    offending = [line for line in disassembly.splitlines() if AVX512_ONLY.search(line)]
    assert not offending, offending[:5]


def _objdump(library) -> str:
    import subprocess

    return subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.parametrize("abits, wbits", [(1, 1), (2, 2), (1, 4), (4, 2)])
def test_kernels_have_no_avx512_instruction(abits, wbits):
    executable = kernels.compile_conv2d((1, 100, 9, 9), (32, 100, 3, 3), abits, wbits, 2, 1, TARGET, 64)
    asm = executable.mod.inspect_source("asm")
    assert re.search(r"\bvpshufb\t%ymm", asm)
    assert not [line for line in asm.splitlines() if AVX512_ONLY.search(line)]


@pytest.mark.parametrize("abits, wbits, seed", [(2, 2, 1), (2, 1, 2), (1, 1, 3)])
def test_tuning_offers_both_popcounts_and_every_candidate_is_exact(abits, wbits, seed):
    """Generic (LLVM popcount) and nibble-count spaces in both loop orders; sampled tiles,
    tensorized by MetaSchedule's own postprocs, compiled for x86-avx2 and run."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2**abits, (1, 100, 7, 7))
    w = random_weights(rng, wbits, (32, 100, 3, 3))
    want = ops.conv2d_levels_reference(x, w, abits, wbits, 1, 1)
    spaces = bitserial_conv_tuning_spaces("cpu", abits, wbits, seed)
    nibble_spaces = 0
    for space in spaces:
        assert "sample_perfect_tile" in str(space.trace)
        executable = tvm.compile(space.mod, target=resolve(TARGET).target)
        nibble_spaces += _uses_nibble_counts(executable.mod.inspect_source("asm"))
        out = tvm.runtime.tensor(np.zeros((1, 7, 7, 32), np.int32))
        executable["main"](tvm.runtime.tensor(ops.pack_activation_reference(x, abits, 64)),
                           tvm.runtime.tensor(pack_weight(w, wbits, 64)), out)
        assert np.array_equal(out.numpy().transpose(0, 3, 1, 2), want)
    assert len(spaces) == 4 and nibble_spaces == 2


def test_tuning_under_a_target_offers_only_its_popcounts():
    """`tune` runs under its target: AVX-512 tunes VPOPCNTQ at 16 lanes with no nibble space (its
    tensorize would fail there), AVX2 the generic template at its 8 lanes beside the nibble counts."""
    with resolve("x86-avx512").target:
        avx512 = bitserial_conv_tuning_spaces("cpu", 2, 2, 1)
    with resolve(TARGET).target:
        avx2 = bitserial_conv_tuning_spaces("cpu", 2, 2, 1)
    def nibble_spaces(spaces):
        return sum("auto_tensorize" in str(space.trace) for space in spaces)

    assert (len(avx512), nibble_spaces(avx512)) == (2, 0)
    assert (len(avx2), nibble_spaces(avx2)) == (4, 2)


def test_byte_and_lane_bounds():
    """The plans that fit: a word's byte sums within a signed byte (one sum) or an unsigned byte
    (a sum per sign), and 16-bit lanes over the reduction; ResNet-18's longest 2x 2/2 reduction
    (3x3 x 16 words) fits."""
    assert NibbleCounts(2, 2).signed_bytes and NibbleCounts(2, 2).fits(9 * 16)
    assert NibbleCounts(2, 2).max_words == 32767 // 96
    assert not NibbleCounts(4, 2).signed_bytes and NibbleCounts(4, 2).fits(9 * 4) and not NibbleCounts(4, 2).fits(72)
    assert not NibbleCounts(4, 4).fits(1)
    assert NibbleCounts(1, 4).signed_bytes and NibbleCounts(4, 1).signed_bytes
