"""int8-dot conv2d (the alternative to bit-serial over the same integer levels): bit-exact against the
numpy reference on awkward shapes for every x86 dot kernel (VNNI, AVX-VNNI, AVX-512BW, AVX2) at
default decisions and in sampled MetaSchedule candidates, the dot instruction in the generated code
(and no AVX-512 in the AVX2 builds), sdot in the cross-compiled rasp5 build and exact results on an
emulated rasp5, and the layouts. AVX-VNNI code runs only where this CPU has it (Intel Sapphire
Rapids and Alder Lake on, AMD Zen 5; not Zen 4): elsewhere its exactness tests skip and only its
assembly is read."""

import importlib.util
import os
import re
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import te
from tvm.support import cc
from tvm.target.codegen import target_has_features

from kernel_cases import random_weights, tuning_spaces
from schedules import amx
from test_avx2 import AVX512_ONLY
from wrpn_tvm import ops
from wrpn_tvm.errors import WrpnError
from wrpn_tvm.pipeline import compile_prim_func
from wrpn_tvm.targets import host_cpu, resolve

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("arm_hot_loops", REPO / "benchmarks" / "arm_hot_loops.py")
arm_hot_loops = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(arm_hot_loops)

# An AVX-512BW CPU without VNNI (vpmaddubsw + vpmaddwd on zmm); runs on this AVX-512 machine.
SKYLAKE = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512", "num-cores": 2}
HOST_HAS_AVX_VNNI = target_has_features("avxvnni", resolve("host").target)
_needs_avx_vnni = pytest.mark.skipif(not HOST_HAS_AVX_VNNI, reason="this CPU has no AVX-VNNI to run the code")
# This CPU without AMX tiles, so that the dot kernels are what runs (tests/test_amx.py tests the tiles).
HOST_DOT = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": host_cpu(), "mattr": ["-amx-tile", "-amx-int8"],
            "num-cores": 2}
X86_TARGETS = {"host": HOST_DOT, "x86-avx2": "x86-avx2", "avx512bw": SKYLAKE, "x86-avx2-vnni": "x86-avx2-vnni"}
# The targets whose code runs here.
RUNNABLE_X86 = [pytest.param(name, marks=_needs_avx_vnni) if name == "x86-avx2-vnni" else name for name in X86_TARGETS]

# (abits, wbits, channels, out_channels, kernel, stride, padding, batch, image): channels off every
# multiple of 4/8/16/64 and out channels off 16 and 8, stride 2, odd images, 1x1 (the ResNet
# downsample), pad 0/1/asymmetric, batch 2, +-1 weights, the widest levels vpmaddubsw takes (4/4).
CONV_CASES = [
    (2, 2, 37, 13, 3, 1, 1, 1, 9),
    (4, 4, 130, 40, 3, 2, 1, 1, 11),
    (4, 2, 20, 24, 3, 1, 0, 2, 7),
    (2, 4, 66, 17, 1, 2, 0, 1, 9),
    (1, 1, 70, 32, 3, 2, (0, 1, 2, 1), 1, 8),
    (2, 1, 64, 5, 1, 1, 0, 1, 5),
    (4, 4, 3, 8, 3, 1, 1, 2, 6),
]


def _layout(target):
    return ops.int8_layout(resolve(target).target)


def _conv_func(layout, x_shape, out_channels, channels, kernel, stride, padding, bits=None):
    """int8_levels (float32 NCHW levels in) + int8_conv2d as one PrimFunc."""
    x = te.placeholder(x_shape, "float32", name="x")
    w_shape = ops.prepack_int8_weight(np.zeros((out_channels, channels, kernel, kernel), np.int64), layout).shape
    w = te.placeholder(w_shape, "int8", name="w")
    out = ops.int8_conv2d(ops.int8_levels(x, layout), w, out_channels, stride, padding, bits, layout)
    return te.create_prim_func([x, w, out])


def _run(executable, x, w_packed, out_shape) -> np.ndarray:
    device = tvm.cpu(0)
    out = tvm.runtime.tensor(np.zeros(out_shape, np.int32), device)
    executable["main"](tvm.runtime.tensor(x.astype(np.float32), device), tvm.runtime.tensor(w_packed, device), out)
    return out.numpy().transpose(0, 3, 1, 2)


def _case_data(case, seed):
    abits, wbits, channels, out_channels, kernel, stride, padding, batch, image = case
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2**abits, (batch, channels, image, image))
    w = random_weights(rng, wbits, (out_channels, channels, kernel, kernel))
    return x, w, ops.conv2d_levels_reference(x, w, abits, wbits, stride, padding)


def _compile_case(case, target, bits):
    """(the case's conv compiled for target at default decisions, its int8 layout); `bits` told or None."""
    abits, wbits, channels, out_channels, kernel, stride, padding, batch, image = case
    spec = resolve(target)
    layout = ops.int8_layout(spec.target)
    func = _conv_func(layout, (batch, channels, image, image), out_channels, channels, kernel, stride, padding, bits)
    return compile_prim_func(func, spec), layout


def _exact(target, x, w, want, case, bits) -> bool:
    executable, layout = _compile_case(case, target, bits)
    got = _run(executable, x, ops.prepack_int8_weight(w, layout), (case[7], *want.shape[2:], case[3]))
    return np.array_equal(got, want)


@pytest.mark.parametrize("target", RUNNABLE_X86)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("told_bits", [True, False], ids=["bits", "no-bits"])
def test_conv2d_is_exact(target, case, told_bits):
    """Told the layer's bits, the vpmaddubsw kernels add int16 pair sums over several steps."""
    x, w, want = _case_data(case, CONV_CASES.index(case))
    assert _exact(X86_TARGETS[target], x, w, want, case, case[:2] if told_bits else None)


def _levels_pack_reference(acc, multiplier, offset, next_bits, layout) -> np.ndarray:
    """The next layer's NHWC levels (the layout's dtype) of clip(acc * m + o, 0, 1), rounded half to
    even; the padded channels 0."""
    value = acc.astype(np.float32) * multiplier[:, None, None] + offset[:, None, None]
    levels = ops.quantize_activation_reference(value, next_bits).astype(layout.activation_dtype)
    batch, channels, height, width = levels.shape
    out = np.zeros((batch, height, width, ops.int8_dot.padded_channels(channels, layout)), layout.activation_dtype)
    out[..., :channels] = levels.transpose(0, 2, 3, 1)
    return out


def _conv_writing_levels_case(case, layout, seed: "int | None" = None):
    """(PrimFunc, its inputs, the output the numpy reference wants) of an int8 conv fused with the
    next layer's 4-bit pack, as FuseOps fuses them in a model (the pack one compute of the
    accumulators). Dyadic scales and offsets keep every float step exact, with or without FMA, and
    put values exactly halfway between levels, where both sides round to even."""
    abits, wbits, channels, out_channels, kernel, stride, padding, batch, image = case
    x, w, acc = _case_data(case, CONV_CASES.index(case) if seed is None else seed)
    rng = np.random.default_rng(7)
    multiplier = (rng.integers(1, 9, out_channels) / 64).astype(np.float32)
    offset = (rng.integers(-8, 9, out_channels) / 32).astype(np.float32)
    next_bits = 4
    dtype = layout.activation_dtype
    data = te.placeholder((batch, image, image, ops.int8_dot.padded_channels(channels, layout)), dtype, name="data")
    weight = te.placeholder(ops.prepack_int8_weight(w, layout).shape, "int8", name="weight")
    m = te.placeholder((out_channels,), "float32", name="m")
    o = te.placeholder((out_channels,), "float32", name="o")
    conv = ops.int8_conv2d(data, weight, out_channels, stride, padding, (abits, wbits), layout)
    top = tvm.tirx.const(float(2**next_bits - 1), "float32")

    def level(n, c, h, v):
        value = conv[n, h, v, c].astype("float32") * m[c] + o[c]
        clipped = tvm.tirx.min(tvm.tirx.max(value, tvm.tirx.const(0.0, "float32")), tvm.tirx.const(1.0, "float32"))
        return tvm.tirx.nearbyint(clipped * top)

    levels = ops.int8_levels_of(level, (batch, out_channels, *acc.shape[2:]), layout)
    x_nhwc = np.zeros([int(d) for d in data.shape], dtype)
    x_nhwc[..., :channels] = x.transpose(0, 2, 3, 1)
    inputs = [x_nhwc, ops.prepack_int8_weight(w, layout), multiplier, offset]
    want = _levels_pack_reference(acc, multiplier, offset, next_bits, layout)
    return te.create_prim_func([data, weight, m, o, levels]), inputs, want


@pytest.mark.parametrize("target", RUNNABLE_X86)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_writing_the_next_layers_levels_is_exact(target, case):
    """An int8 conv fused with the next layer's pack writes the levels from its tile, equal to the
    numpy reference (the emulated rasp5 runs the same cases: test_sdot_kernels_are_exact...)."""
    spec = resolve(X86_TARGETS[target])
    func, inputs, want = _conv_writing_levels_case(case, ops.int8_layout(spec.target))
    device = tvm.cpu(0)
    out = tvm.runtime.tensor(np.zeros(want.shape, want.dtype), device)
    compile_prim_func(func, spec)["main"](*(tvm.runtime.tensor(a, device) for a in inputs), out)
    assert np.array_equal(out.numpy(), want)


@pytest.mark.parametrize("target", RUNNABLE_X86)
@pytest.mark.parametrize("abits, wbits", [(4, 4), (2, 4), (4, 2)])
def test_extreme_levels_are_exact(target, abits, wbits):
    """Every activation at its top level and every weight at its most negative one (and a second
    output channel at the most positive): the largest int16 pair sums the steps add."""
    case = (abits, wbits, 260, 2, 3, 1, 1, 1, 5)
    top = 2 ** (wbits - 1) - 1
    x = np.full((1, 260, 5, 5), 2**abits - 1)
    w = np.concatenate([np.full((1, 260, 3, 3), -top), np.full((1, 260, 3, 3), top)])
    assert _exact(X86_TARGETS[target], x, w, ops.conv2d_levels_reference(x, w, abits, wbits, 1, 1), case,
                  (abits, wbits))


@pytest.mark.parametrize("target", [HOST_DOT, "x86-avx2", pytest.param("x86-avx2-vnni", marks=_needs_avx_vnni)],
                         ids=str)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tuning_candidates_are_exact(target, seed):
    """Sampled design spaces of both loop orders, after MetaSchedule's postprocs, built and run."""
    case = CONV_CASES[seed]
    abits, wbits, channels, out_channels, kernel, stride, padding, batch, image = case
    x, w, want = _case_data(case, seed)
    spec = resolve(target)
    layout = ops.int8_layout(spec.target)
    func = _conv_func(layout, x.shape, out_channels, channels, kernel, stride, padding)
    with spec.target:
        spaces = tuning_spaces(func, "cpu", ops.INT8_CONV2D_RULE, "wrpn_int8_conv2d", seed)
    assert len(spaces) == 2
    for space in spaces:
        got = _run(tvm.compile(space.mod, target=spec.target), x, ops.prepack_int8_weight(w, layout),
                   (batch, *want.shape[2:], out_channels))
        assert np.array_equal(got, want), space.trace


@pytest.mark.parametrize("target", [HOST_DOT, "x86-avx2", SKYLAKE, pytest.param("x86-avx2-vnni", marks=_needs_avx_vnni)],
                         ids=str)
@pytest.mark.parametrize("case_index", [1, 0], ids=["widening", "int16-accumulating"])
@pytest.mark.usefixtures("tensor_intrinsics")
def test_metaschedule_design_spaces_run_the_dot(target, case_index):
    """The design spaces MetaSchedule itself generates for the target, through the postprocs it
    runs there (x86 without VNNI runs no RewriteTensorize), are exact and use the dot instruction;
    on the vpmaddubsw targets, both with pair sums widened every few steps (4/4 over 3x3x132) and
    accumulated in int16 to the write-back (2/2 over 3x3x40)."""
    from tvm.s_tir import meta_schedule as ms

    case = CONV_CASES[case_index]
    abits, wbits, channels, out_channels, kernel, stride, padding, batch, image = case
    x, w, want = _case_data(case, case_index)
    spec = resolve(target)
    layout = ops.int8_layout(spec.target)
    func = _conv_func(layout, x.shape, out_channels, channels, kernel, stride, padding, case[:2])
    context = ms.TuneContext(mod=tvm.IRModule({"main": func}), target=spec.target,
                             space_generator="post-order-apply", search_strategy="evolutionary")
    # A rule has no target at hand: for AVX-512 (VNNI or not) it asks Target.current(), else this
    # machine; the tuner enters the target it tunes for.
    with spec.target:
        spaces = context.generate_design_space()
    assert len(spaces) == 2
    for space in spaces:
        assert all(postproc.apply(space) for postproc in context.space_generator.postprocs)
        executable = tvm.compile(space.mod, target=spec.target)
        assert re.search(r"\bvp(dpbusd|maddubsw)\b", executable.mod.inspect_source("asm"))
        got = _run(executable, x, ops.prepack_int8_weight(w, layout), (batch, *want.shape[2:], out_channels))
        assert np.array_equal(got, want)


def _asm(target, channels=64, out_channels=64, bits=(4, 4)) -> str:
    spec = resolve(target)
    func = _conv_func(ops.int8_layout(spec.target), (1, channels, 14, 14), out_channels, channels, 3, 1, 1, bits)
    return compile_prim_func(func, spec).mod.inspect_source("asm")


def _count(pattern: str, asm: str) -> int:
    return len(re.findall(pattern, asm))


def _self_loops(asm: str) -> list[list[str]]:
    """The innermost x86 loops: from a label to a branch back to it (straight-line code after the
    branch, falling through, is not the loop's)."""
    loops = []
    for block in re.split(r"\n(?=\.LBB\d+_\d+:)", asm):
        label = re.match(r"(\.LBB\d+_\d+):", block)
        lines = [line.strip() for line in block.splitlines()[1:] if line.startswith("\t") and not line.startswith("\t.")]
        back = [i for i, line in enumerate(lines) if label and re.match(rf"j\w+\s+{re.escape(label.group(1))}$", line)]
        if back:
            loops.append(lines[: back[0]])
    return loops


@pytest.mark.parametrize("target", X86_TARGETS)
@pytest.mark.parametrize("size, channels", [(56, 128), (28, 256), (7, 1024)])
def test_x86_dot_loops_do_not_spill(target, size, channels):
    """The default register tile fits: no dot loop stores a vector register to the stack."""
    spec = resolve(X86_TARGETS[target])
    func = _conv_func(ops.int8_layout(spec.target), (1, channels, size, size), channels, channels, 3, 1, 1, (4, 4))
    asm = compile_prim_func(func, spec).mod.inspect_source("asm")
    dot_loops = [loop for loop in _self_loops(asm) if any(re.match(r"(\{vex\}\s+)?vp(dpbusd|maddubsw)", i) for i in loop)]
    assert dot_loops
    for loop in dot_loops:
        assert not [i for i in loop if re.match(r"vmov\w*\s+%[xyz]mm\d+, -?\d*\(%rsp\)", i)], loop


def test_host_uses_its_dot_instruction():
    asm = _asm("host")
    if amx.available(resolve("host").target):
        assert re.search(r"\btdpbusd\b", asm)
    elif target_has_features("avx512vnni", resolve("host").target):
        assert re.search(r"\bvpdpbusd\t.*%zmm", asm)
        assert not re.search(r"\bvpmaddubsw\b", asm)
    else:
        assert re.search(r"\bvpmaddubsw\t.*%zmm", asm)


@pytest.mark.parametrize("bits", [(2, 2), (4, 4), None], ids=str)
def test_avx2_vnni_build_is_vex_vpdpbusd_on_ymm(bits):
    """AVX-VNNI: one VEX-encoded vpdpbusd per step and block, at every width (no pair sums to
    bound), and no AVX-512 instruction."""
    asm = _asm("x86-avx2-vnni", 256, bits=bits)
    assert _count(r"\{vex\}\s+vpdpbusd\t.*%ymm", asm) == _count(r"\bvpdpbusd\b", asm) > 0
    assert not re.search(r"\bvpmadd(ubsw|wd)\b", asm)
    assert not AVX512_ONLY.search(asm)


def test_an_avx_vnni_laptop_host_takes_vpdpbusd_on_ymm():
    """`--target host` on Alder Lake (AVX2 + AVX-VNNI, no AVX-512): the 8-lane layout, its dot as VEX
    vpdpbusd, and the cost model's AVX-VNNI figure."""
    from wrpn_tvm.lowering.kernel_choice import cpu_kind

    alderlake = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "alderlake", "num-cores": 2}
    assert ops.int8_layout(resolve(alderlake).target) == ops.Int8Layout(8, 4, "uint8")
    assert cpu_kind(resolve(alderlake).target) == "avx-vnni"
    asm = _asm(alderlake, 64, bits=(2, 2))
    assert re.search(r"\{vex\}\s+vpdpbusd\t.*%ymm", asm) and not re.search(r"\bvpmaddubsw\b", asm)
    assert not AVX512_ONLY.search(asm)


def test_avx512bw_without_vnni_uses_pmaddubsw_on_zmm():
    asm = _asm(SKYLAKE)
    assert re.search(r"\bvpmaddubsw\t.*%zmm", asm) and re.search(r"\bvpmaddwd\t.*%zmm", asm)
    assert not re.search(r"\bvpdpbusd\b", asm)


@pytest.mark.parametrize("bits, channels, steps", [((4, 4), 256, 4), (None, 64, 1)])
def test_avx2_build_has_no_avx512(bits, channels, steps):
    """vpmaddubsw + vpmaddwd on ymm only; told the bits, one widening vpmaddwd per 4 steps where
    the whole reduction's pair sums do not fit int16 (4/4 over 3x3x256)."""
    asm = _asm("x86-avx2", channels, bits=bits)
    multiplies, widenings = _count(r"\bvpmaddubsw\t.*%ymm", asm), _count(r"\bvpmaddwd\t.*%ymm", asm)
    assert widenings and multiplies == steps * widenings
    assert not AVX512_ONLY.search(asm)


@pytest.mark.parametrize("target", ["x86-avx2", "avx512bw"])
@pytest.mark.parametrize("bits, channels", [((2, 2), 1024), ((4, 4), 64), ((1, 1), 512)])
def test_pair_sums_accumulate_in_int16_where_the_reduction_fits(target, bits, channels):
    """Where every int16 lane's bound over the whole reduction fits (3x3x1024 at 2/2: 2304 steps of
    at most 6), the dot loops add vpmaddubsw's pair sums with vpaddw and widen only on write-back."""
    assert ops.pair_sum_max(*bits) * 9 * channels // 4 <= 2**15 - 1
    register = "%ymm" if target == "x86-avx2" else "%zmm"
    asm = _asm(X86_TARGETS[target], channels, bits=bits)
    dot_loops = [loop for loop in _self_loops(asm) if any(re.match(r"vpmaddubsw", i) for i in loop)]
    assert dot_loops
    for loop in dot_loops:
        assert not [i for i in loop if re.match(r"vpmaddwd", i)], loop
        multiplies = [i for i in loop if re.match(rf"vpmaddubsw\t.*{register}", i)]
        assert len(multiplies) == len([i for i in loop if re.match(rf"vpaddw\t.*{register}", i)]), loop
    assert re.search(rf"\bvpmaddwd\t.*{register}", asm)


@pytest.mark.parametrize("size, channels", [(28, 256), (14, 512), (7, 1024)])
def test_rasp5_hot_loop_is_sdot_without_spills(tmp_path, size, channels):
    """The cross-compiled rasp5 conv's dot loops: sdot per (block, pixel) of the register tile (at
    least 8 in the hottest), none storing to the stack."""
    spec = resolve("rasp5")
    func = _conv_func(ops.int8_layout(spec.target), (1, channels, size, size), channels, channels, 3, 1, 1, (4, 4))
    path = tmp_path / "conv.so"
    compile_prim_func(func, spec).export_library(str(path), fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
    loops = arm_hot_loops.innermost_loops(path)
    sdots = [sum(bool(re.match(r"sdot v\d+\.4s, v\d+\.16b, v\d+\.16b", insn)) for insn in loop) for loop in loops]
    assert max(sdots) >= 8
    for loop, count in zip(loops, sdots):
        assert not (count and arm_hot_loops.stack_stores(loop)), f"stack stores in a dot loop: {loop}"


@pytest.fixture(scope="module")
def rasp5_device():
    """An emulated rasp5 (qemu's cortex-a76: dotprod) of its own: the shared pool emulates rasp4."""
    from wrpn_tvm.remote import daemons, emulator

    if os.environ.get("WRPN_TVM_SKIP_EMULATOR") == "1":
        pytest.skip("WRPN_TVM_SKIP_EMULATOR=1")
    if not emulator.is_prepared():
        pytest.fail("the emulated Raspberry Pi is not prepared: run scripts/setup.sh")
    port = daemons.free_port()
    emulator.start(port, "rasp5", timeout=600)
    yield f"127.0.0.1:{port}"
    emulator.stop(port)


@pytest.mark.emulator
def test_sdot_kernels_are_exact_on_the_emulated_rasp5(rasp5_device, tmp_path):
    from wrpn_tvm.remote.session import DeviceSpec, connect

    session = connect(DeviceSpec(rpc=rasp5_device, timeout=600))
    spec = resolve("rasp5")
    layout = ops.int8_layout(spec.target)
    for index, case in enumerate(CONV_CASES[:5]):
        abits, wbits, channels, out_channels, kernel, stride, padding, batch, image = case
        x, w, want = _case_data(case, index)
        func = _conv_func(layout, x.shape, out_channels, channels, kernel, stride, padding, case[:2])
        path = tmp_path / f"conv{index}.so"
        compile_prim_func(func, spec).export_library(str(path), fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
        session.upload(str(path))
        device = session.cpu()
        out = tvm.runtime.tensor(np.zeros((batch, *want.shape[2:], out_channels), np.int32), device)
        session.load_module(path.name)["main"](tvm.runtime.tensor(x.astype(np.float32), device),
                                               tvm.runtime.tensor(ops.prepack_int8_weight(w, layout), device), out)
        assert np.array_equal(out.numpy().transpose(0, 3, 1, 2), want), case
        # The same conv writing the next layer's levels from its tile.
        func, inputs, want = _conv_writing_levels_case(case, layout)
        path = tmp_path / f"conv_levels{index}.so"
        compile_prim_func(func, spec).export_library(str(path), fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
        session.upload(str(path))
        out = tvm.runtime.tensor(np.zeros(want.shape, want.dtype), device)
        session.load_module(path.name)["main"](*(tvm.runtime.tensor(a, device) for a in inputs), out)
        assert np.array_equal(out.numpy(), want), case


@pytest.mark.parametrize("target, expected", [
    ("x86-avx512", ops.Int8Layout(16, 4, "uint8")),
    (SKYLAKE, ops.Int8Layout(16, 4, "uint8")),
    ("x86-avx2", ops.Int8Layout(8, 4, "uint8")),
    ("x86-avx2-vnni", ops.Int8Layout(8, 4, "uint8")),
    ("rasp5", ops.Int8Layout(4, 4, "int8")),
    ("rasp4", None),
    ("rasp3b", None),
    ("aarch64", None),
    ("cuda", None),
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"}, None),  # SSE2 only
], ids=str)
def test_layout_per_target(target, expected):
    assert ops.int8_layout(resolve(target).target) == expected


def test_int8_fits():
    assert all(ops.int8_fits(a, w) for a in range(1, 5) for w in range(1, 5))
    # sdot's activations are signed bytes; a pair of products 2 * 127 * 127 still fits vpmaddubsw's int16.
    assert ops.int8_fits(7, 8) and not ops.int8_fits(8, 1)


def test_levels_and_weights_layout():
    layout = ops.Int8Layout(8, 4, "uint8")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 16, (2, 6, 3, 5))
    xt = te.placeholder(x.shape, "float32", name="x")
    levels = ops.int8_levels(xt, layout)
    executable = tvm.compile(te.create_prim_func([xt, levels]), target="llvm")
    out = tvm.runtime.tensor(np.zeros((2, 3, 5, 8), np.uint8))
    executable["main"](tvm.runtime.tensor(x.astype(np.float32)), out)
    want = np.zeros((2, 3, 5, 8), np.uint8)
    want[..., :6] = x.transpose(0, 2, 3, 1)
    assert np.array_equal(out.numpy(), want)

    w = random_weights(rng, 4, (11, 6, 3, 1))
    packed = ops.prepack_int8_weight(w, layout)
    assert packed.shape == (2, 3, 1, 2, 8, 4) and packed.dtype == np.int8
    o, c, kh = 9, 5, 2
    assert packed[o // 8, kh, 0, c // 4, o % 8, c % 4] == w[o, c, kh, 0]
    assert not packed[1, :, :, :, 3:].any() and not packed[:, :, :, 1, :, 2:].any()  # padding is 0


def test_mismatched_shapes_are_refused():
    layout = ops.Int8Layout(16)
    data = te.placeholder((1, 8, 8, 16), "uint8", name="data")
    with pytest.raises(WrpnError, match="channels"):
        ops.int8_conv2d(data, te.placeholder((1, 3, 3, 5, 16, 4), "int8", name="w"), 16)
    with pytest.raises(WrpnError, match="weight blocks"):
        ops.int8_conv2d(data, te.placeholder((2, 3, 3, 4, 16, 4), "int8", name="w"), 16)
    with pytest.raises(WrpnError, match="levels"):
        ops.prepack_int8_weight(np.full((1, 1, 1, 1), 200), layout)
