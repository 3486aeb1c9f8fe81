"""aarch64 bit-serial kernels: the hot loops' machine code for rasp3b/rasp4/rasp5 (16-bit count
lanes, no per-count widening, no spills), and bit-exact results on the emulated Pi for the narrow
accumulation and for the layers that fall back to the generic template."""

import functools
import importlib.util
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import te
from tvm.support import cc

from kernel_cases import (dense_epilogue_bitpack, dense_epilogue_bitpack_case, epilogue_bitpack_case, random_weights,
                          tuning_spaces)
from schedules.neon import narrow_accumulation
from wrpn_tvm import kernels, ops
from wrpn_tvm.ops.bitpack import pack_weight
from wrpn_tvm.pipeline import compile_prim_func
from wrpn_tvm.targets import resolve

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("arm_hot_loops", REPO / "benchmarks" / "arm_hot_loops.py")
arm_hot_loops = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(arm_hot_loops)

BOARDS = ("rasp3b", "rasp4", "rasp5")
# Bits whose rasp5 convs in these tests accumulate with udot (schedules/arm_cpu.py, `_plan_and_tile`).
UDOT_BITS = {(2, 1), (4, 2)}


def _library(executable, folder: Path, name: str) -> Path:
    path = folder / f"{name}.so"
    executable.export_library(str(path), fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
    return path


@pytest.mark.parametrize("board", BOARDS)
@pytest.mark.parametrize("abits, wbits, channels", [(2, 2, 256), (1, 1, 128), (2, 1, 192), (4, 2, 128),
                                                    (4, 2, 1024), (4, 4, 128)])
def test_hot_loop_accumulates_counts_in_narrow_lanes(tmp_path, board, abits, wbits, channels):
    """The conv's hottest loop: and + cnt per 128 bits, one accumulate per word and channel vector:
    into .8h lanes (uadalp; at 4/4, whose weighed bytes would overflow a second byte fold, uaddlp
    .8h + addp .8h + add), or on rasp5 (dotprod) for 2/1 and 4/2 into .4s lanes with udot and a
    ones vector (where its tile loses nothing by the register it holds); no uaddlp widening chain
    per count, and every innermost loop free of stack stores. 1024 channels at 4/2 (144 words)
    widen after each chunk of 72 words with uadalp."""
    executable = kernels.compile_conv2d((1, channels, 14, 14), (channels, channels, 3, 3), abits, wbits, 1, 1,
                                        target=board, word_bits=64)
    loops = arm_hot_loops.innermost_loops(_library(executable, tmp_path, "conv"))
    hot = arm_hot_loops.hot_loops(loops)[0]
    mnemonics = [insn.split()[0] for insn in hot]
    counts = mnemonics.count("cnt")
    assert counts >= 8 and all(re.match(r"cnt v\d+\.16b", insn) for insn in hot if insn.startswith("cnt"))
    assert mnemonics.count("and") == counts
    udot = [insn for insn in hot if re.match(r"udot v\d+\.4s, v\d+\.16b, v\d+\.16b", insn)]
    assert bool(udot) == (board == "rasp5" and (abits, wbits) in UDOT_BITS)
    accumulates = sum(bool(re.match(r"(uadalp|add) v\d+\.8h", insn)) for insn in hot) + len(udot)
    assert accumulates == counts // (abits * wbits)
    assert not [insn for insn in hot if re.match(r"(uaddlp|uadalp) v\d+\.(4s|2d)", insn)]
    # The bitpack before the product included (2 pixels per q register: 4 planes spilled scalar).
    for loop in loops:
        assert not arm_hot_loops.stack_stores(loop), f"stack stores in an innermost loop: {loop}"


def _run_remote(session, executable, folder: Path, name: str, out_shape, *arrays) -> np.ndarray:
    path = _library(executable, folder, name)
    session.upload(str(path))
    module = session.load_module(path.name)
    device = session.cpu()
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), device) for a in arrays]
    out = tvm.runtime.tensor(np.zeros(out_shape, dtype=np.int32), device)
    module["main"](*args, out)
    return out.numpy()


# (abits, wbits, word_bits, channels, out_channels, kernel, stride, padding, batch, image, target):
# narrow accumulation (1, 2 and 4 plane pairs; activation planes weighed in bytes at 4/2, 3/1 and
# 4/4; 32- and 64-bit words; reductions widened per chunk: 4/2 in 2 chunks of 72 words, 4/4 in 3 of
# 27) and its fallbacks (4 pairs of 32-bit words, channels that do not fill a q register), awkward
# shapes throughout.
# The emulated Pi is a cortex-a72: rasp5 code (cortex-a76, ARMv8.2) would not run on it.
CONV_CASES = [
    (2, 2, 64, 100, 32, 3, 1, 1, 1, 7, "rasp4"),
    (2, 2, 64, 17, 16, 3, 2, (0, 1, 2, 1), 2, 9, "rasp3b"),
    (1, 1, 64, 130, 24, 3, 2, 1, 1, 7, "rasp3b"),
    (1, 1, 32, 33, 20, 1, 1, 0, 2, 5, "rasp4"),
    (2, 1, 64, 70, 6, 3, 1, 1, 1, 6, "rasp4"),
    (1, 2, 32, 40, 12, 5, 2, 2, 1, 9, "rasp4"),
    (1, 4, 64, 65, 4, 3, 1, 1, 1, 5, "rasp4"),
    (4, 2, 64, 70, 10, 3, 1, 1, 1, 7, "rasp4"),
    (2, 2, 32, 50, 8, 3, 1, 1, 1, 6, "rasp4"),
    (2, 2, 64, 20, 5, 3, 1, 1, 1, 7, "rasp4"),
    (3, 1, 64, 90, 6, 3, 1, 1, 1, 6, "rasp4"),
    (4, 4, 64, 40, 6, 3, 1, 1, 1, 5, "rasp4"),
    (4, 2, 64, 1000, 4, 3, 1, 1, 1, 3, "rasp4"),
    (4, 4, 64, 520, 6, 3, 1, 1, 1, 4, "rasp3b"),
]
# (abits, wbits, word_bits, features, out_features, batch); the last two widen per chunk (150
# words at 4/2: 2 of 75; 100 at 4/4: 2 of 50).
DENSE_CASES = [(1, 1, 64, 300, 10, 3), (2, 2, 64, 130, 6, 1), (4, 2, 32, 100, 7, 2), (2, 1, 32, 77, 8, 2),
               (4, 2, 64, 100, 8, 2), (2, 2, 32, 70, 12, 1), (4, 2, 64, 9600, 4, 2), (4, 4, 64, 6400, 6, 1)]


@pytest.mark.emulator
def test_kernels_are_exact_on_the_emulated_pi(emulated_pool, tmp_path):
    from wrpn_tvm.remote.session import DeviceSpec, connect

    session = connect(DeviceSpec(rpc=emulated_pool.direct, timeout=600))
    rng = np.random.default_rng(21)
    for case, (abits, wbits, word_bits, channels, out_channels, kernel, stride, padding, batch, image, board) in \
            enumerate(CONV_CASES):
        x = rng.integers(0, 2**abits, (batch, channels, image, image))
        w = random_weights(rng, wbits, (out_channels, channels, kernel, kernel))
        want = ops.conv2d_levels_reference(x, w, abits, wbits, stride, padding)
        executable = kernels.compile_conv2d(x.shape, w.shape, abits, wbits, stride, padding, board, word_bits)
        out_shape = (batch, want.shape[2], want.shape[3], out_channels)
        got = _run_remote(session, executable, tmp_path, f"conv{case}", out_shape, x.astype(np.int32),
                          pack_weight(w, wbits, word_bits))
        assert np.array_equal(got.transpose(0, 3, 1, 2), want), CONV_CASES[case]
    for case, (abits, wbits, word_bits, features, out_features, batch) in enumerate(DENSE_CASES):
        x = rng.integers(0, 2**abits, (batch, features))
        w = random_weights(rng, wbits, (out_features, features))
        executable = kernels.compile_dense(x.shape, w.shape, abits, wbits, "rasp4", word_bits)
        got = _run_remote(session, executable, tmp_path, f"dense{case}", (batch, out_features), x.astype(np.int32),
                          pack_weight(w, wbits, word_bits))
        assert np.array_equal(got, ops.dense_levels_reference(x, w, abits, wbits)), DENSE_CASES[case]


@pytest.fixture(scope="module")
def emulated_rasp5(isolated_state):
    """An emulated rasp5 (qemu's cortex-a76 model: ARMv8.2 with dotprod) for the udot kernels."""
    if os.environ.get("WRPN_TVM_SKIP_EMULATOR") == "1":
        pytest.skip("WRPN_TVM_SKIP_EMULATOR=1")
    from wrpn_tvm.remote import daemons, emulator

    port = daemons.free_port()
    emulator.start(port, "rasp5", timeout=600)
    yield f"127.0.0.1:{port}"
    emulator.stop(port)


# (abits, wbits, channels, out_channels, kernel, stride, padding, image, features, out_features, batch,
# conv uses udot): udot's layers (2/1; 4/2, also over 136 words where uadalp widens per chunk; 1/1
# where its tile has a register to spare) and the layers rasp5 keeps on uadalp (2/2: 4 pairs would
# weigh their planes for udot's 4 lanes; 1/1 where its tile takes every register; 4/4).
RASP5_CASES = [(2, 1, 70, 6, 3, 1, 1, 6, 150, 6, 2, True), (4, 2, 1000, 4, 3, 1, 1, 3, 9600, 4, 1, True),
               (4, 2, 130, 10, 3, 2, 1, 7, 100, 8, 2, True), (1, 1, 130, 24, 3, 2, 1, 7, 300, 10, 3, True),
               (1, 1, 512, 512, 3, 1, 1, 7, 640, 16, 1, False), (2, 2, 100, 32, 3, 1, 1, 7, 130, 6, 1, False),
               (4, 4, 200, 8, 3, 1, 1, 5, 500, 6, 1, False)]


@pytest.mark.emulator
def test_udot_kernels_are_exact_on_an_emulated_rasp5(emulated_rasp5, tmp_path):
    from wrpn_tvm.remote.session import DeviceSpec, connect

    session = connect(DeviceSpec(rpc=emulated_rasp5, timeout=600))
    rng = np.random.default_rng(76)
    for case, (abits, wbits, channels, out_channels, kernel, stride, padding, image, features, out_features,
               batch, udot) in enumerate(RASP5_CASES):
        x = rng.integers(0, 2**abits, (1, channels, image, image))
        w = random_weights(rng, wbits, (out_channels, channels, kernel, kernel))
        want = ops.conv2d_levels_reference(x, w, abits, wbits, stride, padding)
        executable = kernels.compile_conv2d(x.shape, w.shape, abits, wbits, stride, padding, "rasp5", 64)
        # LLVM itself may widen a plain popcount with udot (the 1-bit activation level sums): the
        # product's hot loop tells.
        hot = arm_hot_loops.hot_loops(arm_hot_loops.innermost_loops(_library(executable, tmp_path, f"asm5_{case}")))
        assert any(insn.startswith("udot") for insn in hot[0]) == udot, RASP5_CASES[case]
        got = _run_remote(session, executable, tmp_path, f"conv5_{case}", (1, want.shape[2], want.shape[3],
                                                                          out_channels),
                          x.astype(np.int32), pack_weight(w, wbits, 64))
        assert np.array_equal(got.transpose(0, 3, 1, 2), want), RASP5_CASES[case]
        x = rng.integers(0, 2**abits, (batch, features))
        w = random_weights(rng, wbits, (out_features, features))
        executable = kernels.compile_dense(x.shape, w.shape, abits, wbits, "rasp5", 64)
        got = _run_remote(session, executable, tmp_path, f"dense5_{case}", (batch, out_features), x.astype(np.int32),
                          pack_weight(w, wbits, 64))
        assert np.array_equal(got, ops.dense_levels_reference(x, w, abits, wbits)), RASP5_CASES[case]
    # Tuning candidates: a rule takes dotprod from the target it runs under.
    for abits, wbits, words, seed in [(2, 1, 2, 6), (4, 2, 3, 7)]:
        channels = words * 64 - 28
        x = rng.integers(0, 2**abits, (1, channels, 7, 7))
        w = random_weights(rng, wbits, (32, channels, 3, 3))
        want = ops.conv2d_levels_reference(x, w, abits, wbits, 1, 1)
        with resolve("rasp5").target:
            spaces = _conv_tuning_spaces(abits, wbits, words, seed)
        for number, space in enumerate(spaces):
            executable = tvm.compile(space.mod, target=resolve("rasp5").target)
            assert re.search(r"\budot\tv\d+\.4s", executable.mod.inspect_source("asm"))
            got = _run_remote(session, executable, tmp_path, f"tuned5_{abits}{wbits}{number}", (1, 7, 7, 32),
                              ops.pack_activation_reference(x, abits, 64), pack_weight(w, wbits, 64))
            assert np.array_equal(got.transpose(0, 3, 1, 2), want)


@pytest.mark.emulator
@pytest.mark.parametrize("abits, wbits, most_words", [(2, 2, 1023), (4, 2, 136), (4, 4, 68)])
@pytest.mark.parametrize("chunks", [1, 2])
def test_16_bit_lanes_hold_the_longest_reduction_they_take(emulated_pool, tmp_path, abits, wbits, most_words,
                                                           chunks):
    """Every activation and weight bit set (-1 is every weight plane): at 2/2 each 16-bit lane
    gains 64 per 64-bit word, so 1023 words is the most it takes (65472); at 4/2 (bytes weighed
    over the activation planes, 2 lanes per class and channel) 480, so 136 words (65280); at 4/4
    (one lane per class and channel) 960, so 68 (65280). Twice as many words run as two chunks of
    that most, widened in between. All exact."""
    from wrpn_tvm.remote.session import DeviceSpec, connect

    session = connect(DeviceSpec(rpc=emulated_pool.direct, timeout=600))
    plan = narrow_accumulation(abits, wbits, "uint64")
    assert plan.max_words == most_words and plan.chunk_words(1, chunks * most_words) == most_words
    features = chunks * most_words * 64
    x = np.full((1, features), 2**abits - 1)
    w = np.full((2, features), -1)
    executable = kernels.compile_dense(x.shape, w.shape, abits, wbits, "rasp4", 64)
    assert re.search(r"\b(uadalp|add)\tv\d+\.8h", executable.mod.inspect_source("asm"))
    got = _run_remote(session, executable, tmp_path, f"dense{abits}{wbits}{chunks}", (1, 2), x.astype(np.int32),
                      pack_weight(w, wbits, 64))
    assert np.array_equal(got, ops.dense_levels_reference(x, w, abits, wbits))
    assert got[0, 0] == -(2**abits - 1) * features


def _conv_tuning_spaces(abits: int, wbits: int, words: int, seed: int) -> list:
    """tuning_spaces of a 3x3 conv on 7x7 of `words` 64-bit channel words."""
    data = te.placeholder((1, 7, 7, abits, words), "uint64", name="data")
    weight = te.placeholder((3, 3, wbits, words, 32), "uint64", name="weight")
    func = te.create_prim_func([data, weight, ops.bitserial_conv2d(data, weight, abits, wbits, 1, 1)])
    return tuning_spaces(func, "arm_cpu", ops.CONV2D_RULE, "wrpn_bitserial_conv2d", seed)


@pytest.mark.emulator
def test_tuning_candidates_are_exact_on_the_emulated_pi(emulated_pool, tmp_path):
    """Sampled tiles of both loop orders, tensorized by MetaSchedule's own postprocs; 4/2 at 16
    words (144 in the reduction) and 4/4 at 9 (81) widened per chunk, and a dense 4/2 of 150 words
    (2 chunks of 75)."""
    from wrpn_tvm.remote.session import DeviceSpec, connect

    session = connect(DeviceSpec(rpc=emulated_pool.direct, timeout=600))
    rng = np.random.default_rng(5)
    for abits, wbits, words, seed in [(2, 2, 2, 1), (1, 1, 2, 2), (4, 2, 2, 3), (4, 2, 16, 4), (4, 4, 9, 5)]:
        channels = words * 64 - 28  # the last word partly padding
        x = rng.integers(0, 2**abits, (1, channels, 7, 7))
        w = random_weights(rng, wbits, (32, channels, 3, 3))
        want = ops.conv2d_levels_reference(x, w, abits, wbits, 1, 1)
        for number, space in enumerate(_conv_tuning_spaces(abits, wbits, words, seed)):
            executable = tvm.compile(space.mod, target=resolve("rasp4").target)
            assert re.search(r"\b(uadalp|add)\tv\d+\.8h", executable.mod.inspect_source("asm"))
            got = _run_remote(session, executable, tmp_path, f"tuned{abits}{wbits}{words}{number}", (1, 7, 7, 32),
                              ops.pack_activation_reference(x, abits, 64), pack_weight(w, wbits, 64))
            assert np.array_equal(got.transpose(0, 3, 1, 2), want)
    x = rng.integers(0, 2**4, (2, 150 * 64 - 20))
    w = random_weights(rng, 2, (8, x.shape[1]))
    data = te.placeholder((2, 4, 150), "uint64", name="data")
    weight = te.placeholder((2, 150, 8), "uint64", name="weight")
    func = te.create_prim_func([data, weight, ops.bitserial_dense(data, weight, 4, 2)])
    for number, space in enumerate(tuning_spaces(func, "arm_cpu", ops.DENSE_RULE, "wrpn_bitserial_dense", 8)):
        executable = tvm.compile(space.mod, target=resolve("rasp4").target)
        got = _run_remote(session, executable, tmp_path, f"tuned_dense{number}", (2, 8),
                          ops.pack_activation_reference(x, 4, 64), pack_weight(w, 2, 64))
        assert np.array_equal(got, ops.dense_levels_reference(x, w, 4, 2))


# (image size, channels, abits): ResNet-18's fused packs at 2x width (128 to 1024 channels: 2 to 16
# words; from 256 on a pixel's levels interleave, below 4 pixels' levels at a time, or 2 on a
# 14-pixel row), one word of 3 planes on an odd row (7 columns), partial words (16 and 48
# channels), and 1 bit (on an odd row of 128 channels, staged without interleaving).
EPILOGUE_BITPACKS = [(56, 128, 2), (28, 256, 4), (7, 1024, 2), (14, 512, 4), (7, 64, 3), (9, 16, 4), (5, 48, 2),
                     (28, 128, 1), (7, 64, 1), (14, 256, 1), (14, 128, 2), (7, 128, 1)]
# Channels off the 16-channel groups the levels are narrowed in (a partial group; one channel past a word).
OFF_GROUP_BITPACKS = [(5, 24, 2), (3, 100, 3), (3, 65, 2)]
# (rows, channels, abits): a dense layer's input, staged per row.
DENSE_BITPACKS = [(1, 512, 2), (1, 4096, 1), (8, 1024, 4), (1, 100, 2), (3, 17, 3), (2, 70, 1)]


@pytest.mark.parametrize("size, channels, abits, pixels", [
    (14, 256, 1, 1), (7, 1024, 2, 1),  # a pixel's 16+ channel steps
    (28, 128, 1, 4), (56, 64, 2, 4), (14, 128, 2, 2),  # too few: 4 pixels of a row, 2 of a 4k+2 row
    (7, 128, 1, None), (56, 32, 2, None), (5, 24, 2, None),  # an odd row; 8 trips at most; a partial step
])
def test_levels_interleave_over_pixels_where_a_pixels_steps_are_few(size, channels, abits, pixels):
    """The pixels whose levels one trip of the staged levels loop computes on ARM (None: not
    interleaved), for the hand-written epilogue (an accumulator read per pixel, a scale and an
    offset per channel)."""
    from tvm.s_tir import Schedule

    from schedules import arm_cpu, staged_bitpack

    sch = Schedule(arm_hot_loops.epilogue_bitpack(size, channels, abits))
    levels = staged_bitpack.levels_to_stage(sch, sch.get_sblock("wrpn_bitpack"))
    assert staged_bitpack.interleaved_pixels(sch, levels, arm_cpu.LEVELS_INTERLEAVE) == pixels


def test_a_pixels_registers_bound_how_many_pixels_interleave():
    """A step holds a register per read per channel and one per pixel for each read per pixel:
    ResNet-18's residual packs with quantized glue (6 of one, 3 of the other) do not interleave."""
    from schedules.arm_cpu import LEVELS_INTERLEAVE

    assert LEVELS_INTERLEAVE.pixels_per_trip(128, 28, per_channel=2, per_pixel=1) == 4
    assert LEVELS_INTERLEAVE.pixels_per_trip(128, 28, per_channel=4, per_pixel=2) == 2  # 4 x (4 + 2 x 2) = 32
    assert LEVELS_INTERLEAVE.pixels_per_trip(128, 28, per_channel=6, per_pixel=3) is None
    assert LEVELS_INTERLEAVE.pixels_per_trip(256, 14, per_channel=6, per_pixel=3) is None


def _no_spills(func, board: str, folder: Path) -> None:
    library = folder / "pack.so"
    compile_prim_func(func, resolve(board)).export_library(str(library),
                                                          fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
    for loop in arm_hot_loops.innermost_loops(library):
        assert not arm_hot_loops.stack_stores(loop), f"stack stores in an innermost loop: {loop}"


@pytest.mark.parametrize("board", BOARDS)
def test_dense_and_off_group_bitpacks_do_not_spill(tmp_path, board):
    """Staged too (the generic template stored to the stack 7 times per iteration in a 512-channel
    dense pack on Cortex-A72): a dense layer's input a row at a time, and channel counts off the
    level groups."""
    for size, channels, abits in OFF_GROUP_BITPACKS:
        _no_spills(arm_hot_loops.epilogue_bitpack(size, channels, abits), board, tmp_path)
    for rows, channels, abits in DENSE_BITPACKS:
        _no_spills(dense_epilogue_bitpack(rows, channels, abits), board, tmp_path)


@pytest.mark.parametrize("board", BOARDS)
@pytest.mark.parametrize("size, channels, abits", EPILOGUE_BITPACKS)
def test_fused_bitpack_gathers_bits_with_neon_and_does_not_spill(tmp_path, board, size, channels, abits):
    """A fused epilogue's pack: the levels of a pixel computed once (vectorized over channels),
    each word gathered from bytes of levels by addp; no innermost loop
    stores to the stack (the generic schedule spilled in every one of these)."""
    library = tmp_path / "pack.so"
    compile_prim_func(arm_hot_loops.epilogue_bitpack(size, channels, abits), resolve(board)).export_library(
        str(library), fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
    listing = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", str(library)],
                             capture_output=True, text=True, check=True).stdout
    gathers = len(re.findall(r"\baddp\s+v\d+\.16b", listing))
    # Four per word and plane; LLVM may copy the pixel's code, and fold the gathers of zero bytes.
    assert gathers >= 3 * -(-channels // 64) * abits
    for loop in arm_hot_loops.innermost_loops(library):
        assert not arm_hot_loops.stack_stores(loop), f"stack stores in an innermost loop: {loop}"


@pytest.mark.emulator
def test_fused_bitpacks_are_exact_on_the_emulated_pi(emulated_pool, tmp_path):
    """Against pack_activation_reference of the numpy levels (round half to even, as nearbyint),
    accumulators spread over every level and past both clips; conv and dense packs."""
    from wrpn_tvm.remote.session import DeviceSpec, connect

    session = connect(DeviceSpec(rpc=emulated_pool.direct, timeout=600))
    rng = np.random.default_rng(64)
    cases = [(arm_hot_loops.epilogue_bitpack, epilogue_bitpack_case, case)
             for case in EPILOGUE_BITPACKS + OFF_GROUP_BITPACKS]
    cases += [(dense_epilogue_bitpack, dense_epilogue_bitpack_case, case) for case in DENSE_BITPACKS]
    for make, reference, (size, channels, abits) in cases:
        arrays, want = reference(rng, size, channels, abits)
        executable = compile_prim_func(make(size, channels, abits), resolve("rasp4"))
        path = _library(executable, tmp_path, f"pack{make.__name__}{size}_{channels}_{abits}")
        session.upload(str(path))
        module = session.load_module(path.name)
        device = session.cpu()
        args = [tvm.runtime.tensor(a, device) for a in arrays]
        out = tvm.runtime.tensor(np.zeros(want.shape, dtype=np.uint64), device)
        module["main"](*args, out)
        assert np.array_equal(out.numpy(), want), (size, channels, abits)


# (rows, columns, channels, abits): the first quantized layer's pack of NCHW float input. ResNet-18
# 2x's (56x56x128), MNIST smallcnn's 14x14 rows (2-pixel groups) with a partial word, a partial
# fourth word, 1-bit words, and one plane of one partial word (16 channels at 1 bit; 2x 1/1's 32,
# whose unstaged template spilled on Cortex-A53).
COLUMN_BITPACKS = [(56, 56, 128, 2), (14, 14, 48, 3), (3, 8, 200, 4), (7, 14, 100, 1), (8, 12, 16, 2),
                   (14, 14, 16, 4), (5, 6, 64, 1), (4, 8, 16, 1), (14, 14, 32, 1)]
# Odd rows keep the generic template, which spills on Cortex-A53: exactness only.
ODD_ROW_BITPACKS = [(7, 7, 64, 2), (3, 5, 130, 1)]


def _column_staged(columns: int) -> bool:
    return columns % 2 == 0


def _column_bitpack_case(rng, rows: int, columns: int, channels: int, abits: int, batch: int = 1) -> tuple:
    """(input, the words the numpy reference wants): values spread past both clips, and exact
    halfway levels (rounded half to even, as nearbyint)."""
    top = 2**abits - 1
    x = rng.uniform(-0.3, 1.3, (batch, channels, rows, columns)).astype(np.float32)
    halfway = rng.random(x.shape) < 0.1
    x[halfway] = ((rng.integers(0, top, x.shape) + 0.5) / top).astype(np.float32)[halfway]
    levels = np.rint(np.clip(x, 0, 1) * np.float32(top)).astype(np.int64)
    return x, ops.pack_activation_reference(levels, abits, 64)


@pytest.mark.parametrize("board", BOARDS)
@pytest.mark.parametrize("rows, columns, channels, abits", COLUMN_BITPACKS)
def test_column_bitpack_inserts_bits_with_sli_and_does_not_spill(tmp_path, board, rows, columns, channels, abits):
    """The first quantized layer's pack: the levels of a few pixels of a row computed once
    (vectorized over the pixels), each plane's words built by sli chains, a vector lane per pixel;
    no innermost loop stores to the stack (the unstaged template spilled at 128 channels)."""
    library = tmp_path / "pack.so"
    compile_prim_func(arm_hot_loops.column_bitpack(rows, columns, channels, abits), resolve(board)).export_library(
        str(library), fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
    listing = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", str(library)],
                             capture_output=True, text=True, check=True).stdout
    inserts = len(re.findall(r"\bsli\s+v\d+\.[24]s", listing))
    if _column_staged(columns):
        # An insert per channel and plane but the first of each half word, for every group of pixels.
        halves = sum(min(32, channels - start) - 1 for start in range(0, channels, 32))
        assert inserts >= halves * abits
    else:
        assert inserts == 0
    for loop in arm_hot_loops.innermost_loops(library):
        assert not arm_hot_loops.stack_stores(loop), f"stack stores in an innermost loop: {loop}"


@pytest.mark.emulator
def test_column_bitpacks_are_exact_on_the_emulated_pi(emulated_pool, tmp_path):
    """Against pack_activation_reference of the numpy levels, staged (4 and 2 pixels) or not, and a
    batch of images."""
    from wrpn_tvm.remote.session import DeviceSpec, connect

    session = connect(DeviceSpec(rpc=emulated_pool.direct, timeout=600))
    rng = np.random.default_rng(56)
    cases = [(*case, 1) for case in COLUMN_BITPACKS + ODD_ROW_BITPACKS] + [(6, 10, 72, 2, 3)]  # (..., batch)
    for rows, columns, channels, abits, batch in cases:
        x, want = _column_bitpack_case(rng, rows, columns, channels, abits, batch)
        executable = compile_prim_func(arm_hot_loops.column_bitpack(rows, columns, channels, abits, batch),
                                       resolve("rasp4"))
        path = _library(executable, tmp_path, f"columns{rows}_{columns}_{channels}_{abits}_{batch}")
        session.upload(str(path))
        module = session.load_module(path.name)
        device = session.cpu()
        out = tvm.runtime.tensor(np.zeros(want.shape, dtype=np.uint64), device)
        module["main"](tvm.runtime.tensor(x, device), out)
        assert np.array_equal(out.numpy(), want), (rows, columns, channels, abits, batch)


@functools.lru_cache(maxsize=None)
def _fused_bitpacks(folder: Path, width: float, abits: int, wbits: int) -> dict:
    """name -> PrimFunc of the fused epilogue bitpacks of ResNet-18 (224x224) lowered bit-serial."""
    import torch

    from wrpn_tvm.kernel_kinds import BITSERIAL
    from wrpn_tvm.nn import build_model, export_model
    from wrpn_tvm.pipeline import fuse_module, prepare_module

    torch.manual_seed(0)
    model = build_model("resnet18", width, abits, wbits, num_classes=1000, in_channels=3, image_size=224).eval()
    program = folder / f"resnet18-{width}-{abits}{wbits}.pt2"
    torch.export.save(export_model(model, torch.rand(1, 3, 224, 224)), str(program))
    spec = resolve("rasp4")  # the lowering and fusion are the same for every board
    mod, _, _ = prepare_module(program, spec, BITSERIAL)
    return {gv.name_hint: func.with_attr("global_symbol", "main") for gv, func in fuse_module(mod, spec).functions.items()
            if isinstance(func, tvm.tirx.PrimFunc) and "epilogue_bitpack" in gv.name_hint}


@pytest.mark.parametrize("board", BOARDS)
@pytest.mark.parametrize("width, abits, wbits", [(2.0, 2, 2), (2.0, 4, 4), (0.25, 4, 4), (1.0, 1, 1)])
def test_resnet18_fused_bitpacks_do_not_spill(tmp_path_factory, board, width, abits, wbits):
    """Every fused epilogue bitpack of the model, 16 to 1024 channels, residual glue included."""
    funcs = _fused_bitpacks(tmp_path_factory.getbasetemp(), width, abits, wbits)
    assert len(funcs) == 11
    folder = tmp_path_factory.mktemp("packs")
    spilling = []
    for name, func in funcs.items():
        library = folder / f"{name}.so"
        compile_prim_func(func, resolve(board)).export_library(
            str(library), fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
        spilling += [name for loop in arm_hot_loops.innermost_loops(library) if arm_hot_loops.stack_stores(loop)]
    assert not spilling
