"""Schedule templates: generated code per target (x86 popcount, aarch64 NEON cnt, CUDA via nvcc),
robustness to fused PrimFuncs from Relax, and the MetaSchedule custom-rule registration."""

import re
import shutil

import numpy as np
import pytest
import tvm
from tvm import relax, te
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir import Schedule

import schedules
from wrpn_tvm import kernels, ops
from wrpn_tvm.targets import resolve


def _asm(target: str, abits=2, wbits=2) -> str:
    executable = kernels.compile_conv2d((1, 64, 8, 8), (64, 64, 3, 3), abits, wbits, 1, 1, target=target)
    return executable.mod.inspect_source("asm")


def test_aarch64_conv_uses_neon_vector_popcount():
    asm = _asm("rasp4")
    assert re.search(r"\bcnt\tv\d+\.16b", asm), "no NEON vector popcount in the aarch64 conv"
    assert re.search(r"\buaddlp\tv\d+\.8h", asm) and re.search(r"\buaddlp\tv\d+\.4s", asm)
    # A scalar popcount on aarch64 is `cnt v.8b` on one 64-bit register: none may be left.
    assert not re.search(r"\bcnt\tv\d+\.8b", asm)


def _host_has_vpopcntdq() -> bool:
    with open("/proc/cpuinfo") as cpuinfo:
        return "avx512_vpopcntdq" in cpuinfo.read()


@pytest.mark.skipif(not _host_has_vpopcntdq(), reason="host CPU lacks AVX-512 VPOPCNTDQ")
def test_host_conv_uses_avx512_vector_popcount():
    assert re.search(r"\bvpopcntd\t%zmm", _asm("host"))


def test_avx2_conv_uses_vector_popcount_without_avx512():
    asm = _asm("x86-avx2")
    assert "zmm" not in asm and "vpopcnt" not in asm
    assert re.search(r"\bvpshufb\t%ymm", asm), "expected the AVX2 nibble-table popcount"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_kernels_compile_with_nvcc():
    from tvm.support import nvcc

    for compile_kernel in (
        lambda: kernels.compile_conv2d((1, 40, 7, 7), (48, 40, 3, 3), 2, 1, 2, 1, target="cuda"),
        lambda: kernels.compile_dense((2, 100), (10, 100), 4, 2, target="cuda"),
    ):
        source = compile_kernel().mod.imports[0].inspect_source()
        with tvm.target.Target({"kind": "cuda", "arch": "sm_80"}):
            ptx = nvcc.compile_cuda(source, target_format="ptx", compiler="nvcc")
        assert b"popc.b32" in ptx


@pytest.mark.gpu
@pytest.mark.skipif(not tvm.cuda(0).exist, reason="no NVIDIA GPU")
@pytest.mark.parametrize("abits, wbits", [(1, 1), (2, 2), (4, 3)])
def test_cuda_kernels_match_reference(abits, wbits):
    rng = np.random.default_rng(abits)
    x = rng.integers(0, 2**abits, (2, 17, 7, 7))
    top = max(1, 2 ** (wbits - 1) - 1)
    w = rng.choice([-1, 1], (16, 17, 3, 3)) if wbits == 1 else rng.integers(-top, top + 1, (16, 17, 3, 3))
    got = kernels.conv2d_levels(x, w, abits, wbits, 2, 1, target="cuda")
    assert np.array_equal(got, ops.conv2d_levels_reference(x, w, abits, wbits, 2, 1))
    xd, wd = x.reshape(2, -1)[:, :100], w.reshape(16, -1)[:, :100]
    assert np.array_equal(kernels.dense_levels(xd, wd, abits, wbits, target="cuda"),
                          ops.dense_levels_reference(xd, wd, abits, wbits))


def _affine_nchw(acc, multiplier, offset):
    n, h, w, o = acc.shape
    return te.compute((n, o, h, w), lambda b, c, y, x: acc[b, y, x, c].astype("float32") * multiplier[c] + offset[c],
                      name="epilogue")


def test_fused_relax_functions_schedule_and_stay_exact():
    """PrimFuncs as FuseTIR leaves them (pack + conv + float epilogue + the next layer's pack in
    one function), emitted through BlockBuilder.emit_te, scheduled, compiled, run by the VM."""
    rng = np.random.default_rng(0)
    w1 = rng.integers(-1, 2, (40, 17, 3, 3))
    w2 = rng.choice([-1, 1], (8, 40, 3, 3))
    scale, shift = np.full(40, 1 / 64, np.float32), np.full(40, 0.125, np.float32)  # exact in float32

    def first_layer(x, w, m, b):
        acc = ops.bitserial_conv2d(ops.pack_activation(x, 2), w, 2, 2, 1, 1)
        return ops.pack_activation(_affine_nchw(acc, m, b), 1)

    def second_layer(packed, w, m, b):
        return _affine_nchw(ops.bitserial_conv2d(packed, w, 1, 1, 2, (1, 0, 1, 0)), m, b)

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 17, 6, 6), "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            packed = builder.emit_te(first_layer, x, relax.const(ops.pack_weight(w1, 2)), relax.const(scale),
                                     relax.const(shift))
            y = builder.emit_te(second_layer, packed, relax.const(ops.pack_weight(w2, 1)),
                                relax.const(np.ones(8, np.float32)), relax.const(np.zeros(8, np.float32)))
            out = builder.emit_output(y)
        builder.emit_func_output(out)
    mod = builder.get()
    target = resolve("host").target
    scheduled = schedules.apply_default_schedules(mod, target)
    for gvar, func in scheduled.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            assert "T.parallel" in func.script(), f"{gvar.name_hint} was left unscheduled"
    vm = relax.VirtualMachine(tvm.compile(scheduled, target=target), tvm.cpu())
    xv = rng.random((1, 17, 6, 6)).astype(np.float32)
    got = vm["main"](tvm.runtime.tensor(xv)).numpy()

    acc1 = ops.conv2d_levels_reference(ops.quantize_activation_reference(xv, 2), w1, 2, 2, 1, 1)
    y1 = acc1.astype(np.float32) * scale[None, :, None, None] + shift[None, :, None, None]
    acc2 = ops.conv2d_levels_reference(ops.quantize_activation_reference(y1, 1), w2, 1, 1, 2, (1, 0, 1, 0))
    assert np.array_equal(got, acc2.astype(np.float32))


def test_functions_without_wrpn_blocks_are_left_alone():
    a = te.placeholder((8,), name="a")
    func = te.create_prim_func([a, te.compute((8,), lambda i: a[i] * 2, name="double")])
    mod = tvm.IRModule({"double": func})
    assert schedules.apply_default_schedules(mod, resolve("host").target)["double"].same_as(func)


def _conv_func():
    data = te.placeholder((1, 7, 7, 2, 1), "uint32", name="data")
    weight = te.placeholder((3, 3, 2, 1, 32), "uint32", name="weight")
    return te.create_prim_func([data, weight, ops.bitserial_conv2d(data, weight, 2, 2, 1, 1)])


def _check_sampled_space_is_exact(space, target) -> None:
    rng = np.random.default_rng(3)
    x, w = rng.integers(0, 4, (1, 20, 7, 7)), rng.integers(-1, 2, (32, 20, 3, 3))
    executable = tvm.compile(space.mod, target=target)
    out = tvm.runtime.tensor(np.zeros((1, 7, 7, 32), np.int32))
    executable["main"](tvm.runtime.tensor(ops.pack_activation_reference(x, 2)),
                       tvm.runtime.tensor(ops.pack_weight(w, 2)), out)
    assert np.array_equal(out.numpy().transpose(0, 3, 1, 2), ops.conv2d_levels_reference(x, w, 2, 2, 1, 1))


def _cuda_tuning_target(spec) -> tvm.target.Target:
    # MetaSchedule's GPU rules need the thread limits that device tags carry.
    return tvm.target.Target(dict(spec.target.export(), max_threads_per_block=1024,
                                  max_shared_memory_per_block=49152, thread_warp_size=32))


@pytest.mark.parametrize("target, key", [("host", "cpu"), ("rasp4", "arm_cpu"), ("cuda", "cuda")])
def test_registered_rules_sample_tunable_schedules(target, key):
    """The functions under MetaSchedule's custom-rule names return design spaces whose traces
    sample tiles and unrolling; sampled CPU schedules compute exactly, the others compile."""
    spec = resolve(target)
    for rule in (ops.CONV2D_RULE, ops.DENSE_RULE, ops.BITPACK_RULE):
        assert tvm.get_global_func(schedules.rule_name(key, rule), allow_missing=True) is not None
    rule = tvm.get_global_func(schedules.rule_name(key, ops.CONV2D_RULE))
    for seed in (1, 2, 3):
        sch = Schedule(_conv_func(), seed=seed)
        spaces = rule(sch, sch.get_sblock("wrpn_bitserial_conv2d"))
        assert len(spaces) == (1 if key == "cuda" else 2)
        trace = str(spaces[-1].trace)
        assert "sample_perfect_tile" in trace and "sample_categorical" in trace
        if key == "cpu":
            for space in spaces:  # MetaSchedule's CPU postprocs must accept every candidate
                root = space.get_sblock("root")
                for annotation, value in (("parallel", 32), ("vectorize", 64), ("unroll_explicit", 512)):
                    space.annotate(root, f"meta_schedule.{annotation}", value)
                assert ms.postproc.RewriteParallelVectorizeUnroll().apply(space)
                assert ms.postproc.RewriteReductionBlock().apply(space)
            _check_sampled_space_is_exact(spaces[-1], spec.target)
        else:
            compile_target = tvm.target.Target(spec.target, host="llvm") if key == "cuda" else spec.target
            tvm.compile(spaces[-1].mod, target=compile_target)


def test_shift_group_kernel_tunes_and_stays_exact():
    """The form AVX-512's lowering uses (a local accumulator per shift group, computed at the
    combine's tile): the x86 rule's sampled spaces pass MetaSchedule's CPU postprocs and compute
    exactly; untuned, the tile keeps no intermediate in memory beyond the local accumulators."""
    data = te.placeholder((1, 7, 7, 2, 1), "uint32", name="data")
    weight = te.placeholder((3, 3, 2, 1, 32), "uint32", name="weight")
    func = te.create_prim_func([data, weight, ops.bitserial_conv2d(data, weight, 2, 2, 1, 1, split_shift_groups=True)])
    target = resolve("x86-avx512").target
    with target:
        rule = tvm.get_global_func(schedules.rule_name("cpu", ops.CONV2D_RULE))
        for seed in (1, 2, 3):
            sch = Schedule(func, seed=seed)
            spaces = rule(sch, sch.get_sblock("wrpn_bitserial_conv2d"))
            assert len(spaces) == 2
            for space in spaces:
                root = space.get_sblock("root")
                for annotation, value in (("parallel", 32), ("vectorize", 64), ("unroll_explicit", 512)):
                    space.annotate(root, f"meta_schedule.{annotation}", value)
                assert ms.postproc.RewriteParallelVectorizeUnroll().apply(space)
                assert ms.postproc.RewriteReductionBlock().apply(space)
                _check_sampled_space_is_exact(space, resolve("host").target)
    scheduled = schedules.apply_default_schedules(tvm.IRModule({"main": func}), target)["main"]
    assert 'scope="local"' in scheduled.script() and "wrpn_shift_combine" in scheduled.script()


@pytest.mark.parametrize("target", ["host", "rasp4", "cuda"])
@pytest.mark.usefixtures("tensor_intrinsics")
def test_metaschedule_design_spaces_come_from_the_templates(target):
    """Through MetaSchedule itself."""
    spec = resolve(target)
    ms_target = _cuda_tuning_target(spec) if spec.is_cuda else spec.target
    context = ms.TuneContext(mod=tvm.IRModule({"main": _conv_func()}), target=ms_target,
                             space_generator="post-order-apply", search_strategy="evolutionary", rand_state=1)
    spaces = context.generate_design_space()
    assert len(spaces) == (1 if spec.is_cuda else 2)
    assert "sample_perfect_tile" in str(spaces[0].trace)
    if target == "host":
        _check_sampled_space_is_exact(spaces[-1], spec.target)


def test_default_register_tile_covers_short_rows_on_avx512():
    """A row that does not divide by 4 (ResNet's 7- and 14-wide stages) takes a 7-pixel tile with
    2 vectors on AVX-512 rather than 1 or 2 pixels with 4; NEON's tile is left as it was."""
    from schedules.cpu import _default_pixels

    assert [_default_pixels(width, 16) for width in (56, 28, 14, 7, 13, 6)] == [4, 4, 7, 7, 1, 6]
    assert [_default_pixels(width, 4) for width in (56, 14, 7)] == [4, 2, 1]


@pytest.mark.parametrize("block", [None, ops.CONV_WEIGHT_BLOCK])
def test_the_conv_template_sizes_plain_and_blocked_weights_alike(block):
    """The default loop order depends on the weights' size (channel tiles outermost past
    CACHED_WEIGHT_BYTES): the template must find the weight buffer in either layout."""
    from schedules.common import weight_bytes

    layout = (3, 3, 2, 32, 64) if block is None else (64 // block, 3, 3, 2, 32, block)
    data = te.placeholder((1, 9, 9, 2, 32), "uint32", name="data")
    weight = te.placeholder(layout, "uint32", name="weight")
    func = te.create_prim_func([data, weight, ops.bitserial_conv2d(data, weight, 2, 2, 1, 1, split_shift_groups=True)])
    sch = Schedule(func)
    assert weight_bytes(sch, sch.get_sblock("wrpn_bitserial_conv2d")) == 3 * 3 * 2 * 32 * 64 * 4
