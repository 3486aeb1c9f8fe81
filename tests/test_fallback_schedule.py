"""The generic CPU schedule for untuned FP32 functions: same numbers, parallel, vectorizable inner loop."""

import numpy as np
import pytest
import tvm
from tvm import te, topi

from schedules import SCHEDULED_ATTR
from schedules.fallback_cpu import apply_fallback_schedules, schedule_function
from wrpn_tvm.targets import resolve


def _conv(shape, channels_out, kernel, stride, pad):
    data = te.placeholder(shape, name="data")
    weight = te.placeholder((channels_out, shape[1], kernel, kernel), name="weight")
    out = topi.nn.conv2d_nchw(data, weight, stride, pad, 1)
    return te.create_prim_func([data, weight, out]), topi.utils.get_const_tuple(out.shape)


@pytest.mark.parametrize("shape,cout,kernel,stride,pad", [
    ((1, 3, 33, 33), 16, 7, 2, 3),   # odd size, stride 2, padding: the split cannot divide 17
    ((1, 17, 16, 16), 24, 3, 1, 1),  # 16-wide rows: vectorizable inner loop
    ((2, 8, 12, 12), 5, 1, 1, 0),    # batch 2, 1x1
])
def test_scheduled_conv_matches_unscheduled(shape, cout, kernel, stride, pad):
    func, out_shape = _conv(shape, cout, kernel, stride, pad)
    scheduled = schedule_function(func)
    module = tvm.IRModule({"main": func})
    marked = apply_fallback_schedules(module)
    assert scheduled is not None and marked["main"].attrs[SCHEDULED_ATTR]
    assert not module["main"].attrs or SCHEDULED_ATTR not in module["main"].attrs  # the input is left as it was
    target = resolve("host").target
    rng = np.random.default_rng(0)
    args = [rng.standard_normal(shape).astype("float32"), rng.standard_normal((cout, shape[1], kernel, kernel)).astype("float32")]
    outputs = []
    for f in (func, scheduled):
        lib = tvm.compile(tvm.IRModule({"main": f}), target=target)
        out = tvm.runtime.tensor(np.zeros(out_shape, "float32"))
        lib["main"](*[tvm.runtime.tensor(a) for a in args], out)
        outputs.append(out.numpy())
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)


def test_large_work_runs_in_parallel():
    scheduled = schedule_function(_conv((1, 3, 64, 64), 16, 3, 1, 1)[0])
    assert "T.parallel" in scheduled.script()


def test_an_elementwise_chain_becomes_one_parallel_pass():
    """A quantizer after a residual add (clip, multiply, round, divide) as FuseOps hands it over:
    one block left, no intermediate map written, same numbers."""
    shape = (1, 64, 28, 28)
    a = te.placeholder(shape, name="a")
    b = te.placeholder(shape, name="b")
    added = te.compute(a.shape, lambda *i: a(*i) + b(*i), name="add")
    clipped = te.compute(a.shape, lambda *i: tvm.tirx.max(tvm.tirx.min(added(*i), 1.0), 0.0), name="clip")
    scaled = te.compute(a.shape, lambda *i: clipped(*i) * 3.0, name="multiply")
    rounded = te.compute(a.shape, lambda *i: tvm.tirx.nearbyint(scaled(*i)), name="round")
    out = te.compute(a.shape, lambda *i: rounded(*i) / 3.0, name="divide")
    func = te.create_prim_func([a, b, out])
    scheduled = schedule_function(func)
    sch = tvm.s_tir.Schedule(scheduled)
    assert len(sch.get_child_blocks(sch.get_sblock("root"))) == 1 and "T.parallel" in scheduled.script()
    rng = np.random.default_rng(0)
    x, y = (rng.standard_normal(shape).astype("float32") for _ in range(2))
    lib = tvm.compile(tvm.IRModule({"main": scheduled}), target=resolve("host").target)
    got = tvm.runtime.tensor(np.zeros(shape, "float32"))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(y), got)
    np.testing.assert_array_equal(got.numpy(), np.rint(np.clip(x + y, 0, 1) * np.float32(3)) / np.float32(3))


def test_a_matrix_vector_product_runs_along_contiguous_weight_rows():
    """A batch-1 classifier x[1, K] @ W[K, N]: outputs split into vectors, the reduction outside
    them, several vectors (40 of the 120 outputs, 160 bytes of a weight row) a reduction step."""
    x = te.placeholder((1, 200), name="x")
    w = te.placeholder((200, 120), name="w")
    k = te.reduce_axis((0, 200), name="k")
    out = te.compute((1, 120), lambda i, j: te.sum(x[i, k] * w[k, j], axis=k), name="matmul")
    scheduled = schedule_function(te.create_prim_func([x, w, out]))
    loops = [line.strip() for line in scheduled.script().splitlines() if line.strip().startswith("for ")]
    assert [line.split(" in ")[1] for line in loops[-3:]] == ["range(200):", "T.unroll(5):", "T.unroll(8):"]
    rng = np.random.default_rng(0)
    xv, wv = rng.standard_normal((1, 200)).astype("float32"), rng.standard_normal((200, 120)).astype("float32")
    lib = tvm.compile(tvm.IRModule({"main": scheduled}), target=resolve("host").target)
    got = tvm.runtime.tensor(np.zeros((1, 120), "float32"))
    lib["main"](tvm.runtime.tensor(xv), tvm.runtime.tensor(wv), got)
    np.testing.assert_allclose(got.numpy(), xv @ wv, rtol=1e-5, atol=1e-4)


def test_a_level_epilogue_rounds_in_vector_registers():
    """An epilogue that rounds to levels (nearbyint, as torch.round) and narrows to int8 levels,
    the int8 kernel's input pass: vectorized, not scalarized into gathers and byte-by-byte stores,
    and exact on ties (round half to even)."""
    from wrpn_tvm import ops

    acc = te.placeholder((1, 5, 7, 64), "int32", name="acc")
    scale = te.placeholder((64,), "float32", name="scale")

    def level(n, h, w, c):
        scaled = acc[n, h, w, c].astype("float32") * scale[c]
        return tvm.tirx.nearbyint(tvm.tirx.max(tvm.tirx.min(scaled, tvm.tirx.const(15.0, "float32")),
                                               tvm.tirx.const(0.0, "float32")))

    levels = te.compute((1, 64, 5, 7), lambda n, c, h, w: level(n, h, w, c), name="levels")
    out = ops.int8_levels(levels, ops.Int8Layout(16))
    func = schedule_function(te.create_prim_func([acc, scale, out]))
    target = resolve("x86-avx512").target
    assembly = tvm.compile(tvm.IRModule({"main": func}), target=target).mod.inspect_source("asm")
    assert "vrndscaleps" in assembly and "gather" not in assembly and "vpextrb" not in assembly
    from tvm.target.codegen import target_has_features

    if not target_has_features("avx512f", resolve("host").target):
        return  # compiled and read above; run only where the code runs
    rng = np.random.default_rng(0)
    values = rng.integers(-4, 40, (1, 5, 7, 64)).astype(np.int32)
    half = np.full(64, 0.5, np.float32)  # odd accumulators land on .5: ties
    result = tvm.runtime.tensor(np.zeros((1, 5, 7, 64), np.uint8))
    tvm.compile(tvm.IRModule({"main": func}), target=target)["main"](
        tvm.runtime.tensor(values), tvm.runtime.tensor(half), result)
    assert np.array_equal(result.numpy(), np.rint(np.clip(values * half, 0, 15)).astype(np.uint8))


def _pool_reference(x, kind, kernel, stride, pad):
    """numpy max / average pool (the average over the window's in-bounds elements)."""
    fill = -np.inf if kind == "max" else 0.0
    padded = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)], constant_values=fill)
    ones = np.pad(np.ones_like(x), [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    out_h = (x.shape[2] + 2 * pad - kernel) // stride + 1
    out_w = (x.shape[3] + 2 * pad - kernel) // stride + 1
    out = np.empty((*x.shape[:2], out_h, out_w), np.float32)
    for i in range(out_h):
        for j in range(out_w):
            window = padded[:, :, i * stride:i * stride + kernel, j * stride:j * stride + kernel]
            if kind == "max":
                out[:, :, i, j] = window.max(axis=(2, 3))
            else:
                count = ones[:, :, i * stride:i * stride + kernel, j * stride:j * stride + kernel].sum(axis=(2, 3))
                out[:, :, i, j] = window.sum(axis=(2, 3)) / count
    return out


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("shape, kernel, stride, pad", [
    ((1, 16, 20, 20), 3, 2, 1),  # ResNet's stem pool, small
    ((2, 5, 9, 11), 3, 1, 1),    # batch 2, odd sizes, stride 1
    ((1, 3, 7, 7), 2, 2, 1),     # even window, padding past the edge
])
def test_a_padded_pool_writes_no_padded_copy(kind, shape, kernel, stride, pad):
    """A pool after its padding stage: channel planes in parallel, each window padded where it is
    reduced (no padded copy of the map written in a pass of its own), same numbers as numpy."""
    data = te.placeholder(shape, name="data")
    out = topi.nn.pool2d(data, (kernel, kernel), (stride, stride), (1, 1), (pad, pad, pad, pad), kind,
                         count_include_pad=False)
    scheduled = schedule_function(te.create_prim_func([data, out]))
    assert "T.parallel" in scheduled.script()
    sch = tvm.s_tir.Schedule(scheduled)
    blocks = {sch.get(b).name_hint: b for b in sch.get_child_blocks(sch.get_sblock("root"))}
    padding = next(b for name, b in blocks.items() if name.startswith("pad"))
    update = next(b for name, b in blocks.items() if name.startswith("pool") and name.endswith("_update"))
    # The padding runs inside the pool's parallel loop over planes, not as a pass of its own.
    assert sch.get(sch.get_loops(padding)[0]).same_as(sch.get(sch.get_loops(update)[0]))
    assert sch.get(sch.get_loops(update)[0]).kind == tvm.tirx.ForKind.PARALLEL
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype("float32")
    lib = tvm.compile(tvm.IRModule({"main": scheduled}), target=resolve("host").target)
    got = tvm.runtime.tensor(np.zeros(topi.utils.get_const_tuple(out.shape), "float32"))
    lib["main"](tvm.runtime.tensor(x), got)
    np.testing.assert_allclose(got.numpy(), _pool_reference(x, kind, kernel, stride, pad), rtol=1e-6, atol=1e-6)
