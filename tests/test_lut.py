"""The lookup-table conv (`ops.lut`, AVX2 vpshufb): its numpy formulation against the plain integer
conv, the compiled tables pass + conv bit for bit against the numpy reference on awkward shapes and
at the int8 bounds of the byte sums, the hot loop in the assembly (vpshufb on ymm, no spill, no
AVX-512), the layouts, and what it refuses."""

import re

import numpy as np
import pytest
import tvm
from tvm import te

from kernel_cases import random_weights, tuning_spaces
from test_avx2 import AVX512_ONLY
from test_int8_dot import _self_loops
from wrpn_tvm import ops
from wrpn_tvm.errors import WrpnError
from wrpn_tvm.ops import lut
from wrpn_tvm.pipeline import compile_prim_func
from wrpn_tvm.targets import resolve

# (abits, wbits, channels, out_channels, kernel, stride, padding, batch, image): channels off every
# multiple of the group (2 or 4) and of 32, out channels off 32, stride 2, odd images, 1x1, pad
# 0/1/asymmetric, batch 2, +-1 weights (4 channels a table), the widest levels a table holds at
# 2-bit weights (a4: 4 lookups between widenings), one group only.
CONV_CASES = [
    (2, 2, 37, 13, 3, 1, 1, 1, 9),
    (2, 1, 70, 40, 3, 2, (0, 1, 2, 1), 2, 8),
    (1, 1, 64, 33, 1, 1, 0, 1, 5),
    (4, 2, 20, 24, 3, 2, 1, 1, 7),
    (1, 2, 3, 8, 3, 1, 1, 2, 6),
    (2, 2, 130, 70, 3, 1, 1, 1, 11),
    (3, 1, 66, 96, 1, 2, 0, 1, 9),
]
TARGETS = ["x86-avx2", "host"]  # the AVX2 preset, and this machine (the same template runs on AVX-512)


def _case_data(case, seed):
    abits, wbits, channels, out_channels, kernel, stride, padding, batch, image = case
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2**abits, (batch, channels, image, image))
    w = random_weights(rng, wbits, (out_channels, channels, kernel, kernel))
    return x, w


def _funcs(x_shape, w_shape, abits, wbits, stride, padding):
    """(the tables pass: float32 NCHW levels -> tables, the conv: tables + codes -> NHWC int32)."""
    x = te.placeholder(x_shape, "float32", name="x")
    tables = lut.lut_tables(x, wbits, padding)
    codes = te.placeholder(lut.prepack_lut_codes(np.ones(w_shape, np.int64), wbits).shape, "uint8", name="codes")
    table_input = te.placeholder(tables.shape, "int8", name="tables")
    out = lut.lut_conv2d(table_input, codes, w_shape[0], stride, (abits, wbits))
    return te.create_prim_func([x, tables]), te.create_prim_func([table_input, codes, out]), tables, out


def _run_compiled(target, x, w, abits, wbits, stride, padding) -> np.ndarray:
    spec = resolve(target)
    tables_func, conv_func, tables, out = _funcs(x.shape, w.shape, abits, wbits, stride, padding)
    device = tvm.cpu(0)
    table_values = tvm.runtime.tensor(np.zeros([int(d) for d in tables.shape], np.int8), device)
    compile_prim_func(tables_func, spec)["main"](tvm.runtime.tensor(x.astype(np.float32), device), table_values)
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], np.int32), device)
    compile_prim_func(conv_func, spec)["main"](table_values, tvm.runtime.tensor(lut.prepack_lut_codes(w, wbits), device),
                                                result)
    return result.numpy().transpose(0, 3, 1, 2)


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_the_lookup_formulation_is_the_integer_conv(case):
    abits, wbits, *_, kernel, stride, padding, _, _ = case
    x, w = _case_data(case, 0)
    assert np.array_equal(lut.lut_conv2d_reference(x, w, abits, wbits, stride, padding),
                          ops.conv2d_levels_reference(x, w, abits, wbits, stride, padding))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_is_exact(target, case):
    abits, wbits, *_, stride, padding, _, _ = case
    x, w = _case_data(case, 1)
    assert np.array_equal(_run_compiled(target, x, w, abits, wbits, stride, padding),
                          ops.conv2d_levels_reference(x, w, abits, wbits, stride, padding))


@pytest.mark.parametrize("abits, wbits", [(2, 2), (4, 2), (1, 1), (3, 1)])
@pytest.mark.parametrize("sign", [1, -1])
def test_byte_sums_at_their_bound_are_exact(abits, wbits, sign):
    """Every activation at its top level and every weight at +1 (or -1): each table entry the
    lookups find is at its bound, so the byte sums between widenings reach +-127 (or just under)."""
    channels = 4 * lut.group_channels(wbits) * lut.int8_steps(abits, wbits)  # several whole chunks
    x = np.full((1, channels, 5, 5), 2**abits - 1)
    w = np.full((33, channels, 3, 3), sign)
    assert lut.int8_steps(abits, wbits) * lut.table_bound(abits, wbits) <= 127
    assert np.array_equal(_run_compiled("x86-avx2", x, w, abits, wbits, 1, 1),
                          ops.conv2d_levels_reference(x, w, abits, wbits, 1, 1))


@pytest.mark.parametrize("channels, into", [(1184, "int16"), (1216, "int32")])
def test_sums_at_the_int16_bound_are_exact(channels, into):
    """A 2/2 reduction of 3x3x1184 channels reaches 9 x 592 x 6 = 31968 <= 32767: the tile holds
    int16 sums (one vpmovsxbw per 16 channels); 1216 channels would pass 32767, so the tile widens
    into int32 (vpmovsxbd)."""
    x = np.full((1, channels, 3, 3), 3)
    w = np.ones((32, channels, 3, 3), np.int64)
    _, conv_func, _, _ = _funcs(x.shape, w.shape, 2, 2, 1, 1)
    asm = compile_prim_func(conv_func, resolve("x86-avx2")).mod.inspect_source("asm")
    assert bool(re.search(r"\bvpmovsxbw\b", asm)) == (into == "int16")
    assert bool(re.search(r"\bvpmovsxbd\b", asm)) == (into == "int32")
    for sign in (1, -1):
        assert np.array_equal(_run_compiled("x86-avx2", x, sign * w, 2, 2, 1, 1),
                              ops.conv2d_levels_reference(x, sign * w, 2, 2, 1, 1))


@pytest.mark.parametrize("size, channels", [(56, 128), (14, 512), (7, 1024)])
def test_avx2_hot_loop_is_vpshufb_on_ymm_without_spills_or_avx512(size, channels):
    _, conv_func, _, _ = _funcs((1, channels, size, size), (channels, channels, 3, 3), 2, 2, 1, 1)
    asm = compile_prim_func(conv_func, resolve("x86-avx2")).mod.inspect_source("asm")
    loops = [loop for loop in _self_loops(asm) if any(re.match(r"vpshufb\s", i) for i in loop)]
    assert loops
    for loop in loops:
        lookups = [i for i in loop if re.match(r"vpshufb\s", i)]
        assert all(re.search(r"%ymm\d+, %ymm\d+$", i) for i in lookups), lookups
        assert len([i for i in loop if re.match(r"vpaddb\s", i)]) == len(lookups)
        assert not [i for i in loop if re.match(r"vmov\w*\s+%[xy]mm\d+, -?\d*\(%rsp\)", i)], loop
    assert not AVX512_ONLY.search(asm)


def _run_conv(executable, x, w, abits, wbits, stride, padding, target="x86-avx2") -> np.ndarray:
    """A compiled conv alone, on tables from the numpy formulation's compiled tables pass."""
    tables_func, _, tables, out = _funcs(x.shape, w.shape, abits, wbits, stride, padding)
    device = tvm.cpu(0)
    table_values = tvm.runtime.tensor(np.zeros([int(d) for d in tables.shape], np.int8), device)
    compile_prim_func(tables_func, resolve(target))["main"](tvm.runtime.tensor(x.astype(np.float32), device),
                                                            table_values)
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], np.int32), device)
    executable["main"](table_values, tvm.runtime.tensor(lut.prepack_lut_codes(w, wbits), device), result)
    return result.numpy().transpose(0, 3, 1, 2)


@pytest.mark.parametrize("seed, case_index", [(1, 0), (2, 1), (3, 3)])
def test_tuning_candidates_are_exact(seed, case_index):
    """Sampled design spaces (tile and both loop orders), after MetaSchedule's postprocs, built and
    run: every tile is exact, spilling or not (int16 tiles for cases 0 and 1, int32 for 3)."""
    case = CONV_CASES[case_index]
    abits, wbits, channels, out_channels, kernel, stride, padding, batch, image = case
    x, w = _case_data(case, seed)
    _, conv_func, _, _ = _funcs(x.shape, w.shape, abits, wbits, stride, padding)
    spec = resolve("x86-avx2")
    with spec.target:
        spaces = tuning_spaces(conv_func, "cpu", ops.LUT_CONV2D_RULE, lut.LUT_CONV2D_RULE, seed)
    assert len(spaces) == 2
    want = ops.conv2d_levels_reference(x, w, abits, wbits, stride, padding)
    for space in spaces:
        got = _run_conv(tvm.compile(space.mod, target=spec.target), x, w, abits, wbits, stride, padding)
        assert np.array_equal(got, want), space.trace


@pytest.mark.usefixtures("tensor_intrinsics")
def test_metaschedule_design_spaces_run_the_lookups():
    """The design spaces MetaSchedule itself generates for x86-avx2, through its postprocs."""
    from tvm.s_tir import meta_schedule as ms

    case = CONV_CASES[0]
    abits, wbits, channels, out_channels, kernel, stride, padding, batch, image = case
    x, w = _case_data(case, 0)
    _, conv_func, _, _ = _funcs(x.shape, w.shape, abits, wbits, stride, padding)
    spec = resolve("x86-avx2")
    context = ms.TuneContext(mod=tvm.IRModule({"main": conv_func}), target=spec.target,
                             space_generator="post-order-apply", search_strategy="evolutionary")
    with spec.target:
        spaces = context.generate_design_space()
    assert len(spaces) == 2
    for space in spaces:
        assert all(postproc.apply(space) for postproc in context.space_generator.postprocs)
        executable = tvm.compile(space.mod, target=spec.target)
        assert re.search(r"\bvpshufb\b", executable.mod.inspect_source("asm"))
        assert np.array_equal(_run_conv(executable, x, w, abits, wbits, stride, padding),
                              ops.conv2d_levels_reference(x, w, abits, wbits, stride, padding))


def test_a_tuned_record_replays_in_a_fresh_process(tmp_path):
    """A record's trace names its tile's intrinsic: a build with the log, in a process where the
    tuning rule never ran, must find it (reading a log registers every tile a lookup task can
    sample). The record here is the template default's trace, as a job's first trial logs it."""
    import subprocess
    import sys

    import torch
    from tvm.s_tir import meta_schedule as ms

    from wrpn_tvm import build, runtime
    from wrpn_tvm.nn import build_model, export_model
    from wrpn_tvm.pipeline import default_schedule, prepare_module
    from wrpn_tvm.tuning.database import RECORD_FILE, WORKLOAD_FILE
    from wrpn_tvm.tuning.tasks import extract_tasks

    torch.manual_seed(0)
    program = tmp_path / "cnn.pt2"
    torch.export.save(export_model(build_model("smallcnn", 2.0, 2, 2).eval(), torch.rand(1, 1, 28, 28)), str(program))
    spec = resolve("x86-avx2")
    tasks = [t for t in extract_tasks([prepare_module(program, spec, "lut")[0]], spec)
             if t.task_name.startswith("wrpn_lut_conv2d")]
    assert tasks
    log = tmp_path / "log"
    log.mkdir()
    database = ms.database.JSONDatabase(str(log / WORKLOAD_FILE), str(log / RECORD_FILE))
    for task in tasks:
        mod = task.dispatched[0]
        trace = default_schedule(mod, spec.target).trace
        assert "wrpn_avx2_lut_" in str(trace)
        database.commit_tuning_record(ms.database.TuningRecord(
            trace, database.commit_workload(mod), [1e-4], spec.target, ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
    script = ("import sys, numpy as np; from wrpn_tvm import build, runtime; "
              "r = build.compile_model(sys.argv[1], 'x86-avx2', sys.argv[2], kernels='lut', tuning_log=sys.argv[3]); "
              "np.save(sys.argv[4], runtime.run(r.library, [np.load(sys.argv[5])])[0])")
    x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run([sys.executable, "-c", script, str(program), str(tmp_path / "tuned.so"), str(log),
                           str(tmp_path / "out.npy"), str(tmp_path / "x.npy")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "corrupt" not in done.stderr, done.stderr[-2000:]
    untuned = build.compile_model(program, "x86-avx2", tmp_path / "untuned.so", kernels="bit-serial")
    assert np.array_equal(np.load(tmp_path / "out.npy"), runtime.run(untuned.library, [x])[0])


def test_codes_layout():
    """Two 2-bit codes per index (0: level 0, 1: +1, 2: -1), the first channel in the low bits;
    vectors of 32 output channels, padded outputs and channels code 0."""
    w = np.zeros((33, 3, 1, 1), np.int64)
    w[0, :, 0, 0] = [1, -1, 1]
    w[32, :, 0, 0] = [-1, 0, -1]
    codes = lut.prepack_lut_codes(w, 2)
    assert codes.shape == (2, 1, 1, 2, 32) and codes.dtype == np.uint8
    assert codes[0, 0, 0, :, 0].tolist() == [1 | 2 << 2, 1]
    assert codes[1, 0, 0, :, 0].tolist() == [2 | 0 << 2, 2]
    assert not codes[1, 0, 0, :, 1:].any()
    # +-1 weights: four 1-bit codes (0: -1, 1: +1) per index.
    ones = lut.prepack_lut_codes(np.array([1, -1, -1, 1, 1]).reshape(1, 5, 1, 1), 1)
    assert ones[0, 0, 0, :, 0].tolist() == [0b1001, 0b0001]


def test_tables_layout():
    """Entry i of a group's table is sum_k level_k * level(code_k(i)); padding and padded
    channels give zero tables."""
    x = np.array([3, 1, 2], dtype=np.float32).reshape(1, 3, 1, 1)
    tables_func, _, tables, _ = _funcs(x.shape, (1, 3, 3, 3), 2, 2, 1, 1)
    values = tvm.runtime.tensor(np.zeros([int(d) for d in tables.shape], np.int8))
    compile_prim_func(tables_func, resolve("x86-avx2"))["main"](tvm.runtime.tensor(x), values)
    table = values.numpy()
    assert table.shape == (1, 3, 3, 2, 16)
    level = np.array([0, 1, -1, 0])
    index = np.arange(16)
    assert table[0, 1, 1, 0].tolist() == (3 * level[index & 3] + 1 * level[index >> 2]).tolist()
    assert table[0, 1, 1, 1].tolist() == (2 * level[index & 3]).tolist()
    assert not table[0, 0].any() and not table[0, :, 2].any()


def test_what_it_refuses():
    assert lut.lut_fits(2, 2) and lut.lut_fits(4, 2) and lut.lut_fits(1, 1)
    assert not lut.lut_fits(2, 4)  # 4-bit weights: one weight a code, no gain
    assert not lut.lut_fits(8, 2)  # 2 x 255 does not fit a signed byte
    with pytest.raises(WrpnError, match="1- or 2-bit weights"):
        lut.prepack_lut_codes(np.ones((1, 1, 1, 1)), 4)
    with pytest.raises(WrpnError, match="weight levels"):
        lut.prepack_lut_codes(np.full((1, 1, 1, 1), 2), 2)
    tables = te.placeholder((1, 5, 5, 2, 16), "int8")
    with pytest.raises(WrpnError, match="do not match"):
        lut.lut_conv2d(tables, te.placeholder((1, 3, 3, 3, 32), "uint8"), 8)
    with pytest.raises(WrpnError, match="output channels"):
        lut.lut_conv2d(tables, te.placeholder((1, 3, 3, 2, 32), "uint8"), 40)
