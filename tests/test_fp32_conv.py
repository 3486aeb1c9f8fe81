"""The blocked FP32 conv for layers that stay in full precision: kernel against the numpy reference
on awkward shapes (default schedule and sampled tuning candidates), the generated FMA code per
target, and the lowering of a plain PyTorch model's conv + bias + batch norm to it.

Floats are summed in another order than numpy's, so results are compared to a float64 reference
within float32 rounding (1e-5 relative to the output's scale), not bit for bit."""

import re

import numpy as np
import pytest
import torch
import tvm
from tvm import te

import schedules
from kernel_cases import tuning_spaces
from schedules import fp32_conv
from wrpn_tvm import ops
from wrpn_tvm.errors import WrpnError
from wrpn_tvm.targets import resolve

# (N, C, H, W, O, kernel, stride, padding, dilation): channels off every block size, odd sizes,
# stride 2, asymmetric padding, 1x1, dilation, batch 2.
SHAPES = [
    (1, 3, 33, 33, 19, 7, 2, 3, 1),
    (2, 5, 9, 11, 17, 3, 1, 1, 1),
    (1, 16, 14, 14, 40, 1, 1, 0, 1),
    (1, 8, 15, 13, 33, 3, 2, (0, 1, 1, 0), 1),
    (1, 4, 12, 12, 16, 3, 1, 2, 2),
    (1, 64, 7, 7, 64, 3, 1, 1, 1),
]


def _random_conv(shape, blocked_output=False):
    """The blocked conv of a random case: (its placeholders, its output, the inputs, the float
    reference in NCHW)."""
    n, c, h, w, o, k, stride, padding, dilation = shape
    rng = np.random.default_rng(sum(shape[:6]))
    x = rng.standard_normal((n, c, h, w)).astype("float32")
    weight = rng.standard_normal((o, c, k, k)).astype("float32")
    bias = rng.standard_normal(o).astype("float32")
    placeholders = [te.placeholder(x.shape, name="data"), te.placeholder(ops.block_weight(weight).shape, name="weight"),
                    te.placeholder(bias.shape, name="bias")]
    conv = ops.blocked_conv2d(*placeholders, stride, padding, dilation, blocked_output=blocked_output)
    reference = ops.conv2d_float_reference(x, weight, bias, stride, padding, dilation)
    return placeholders, conv, [x, ops.block_weight(weight), bias], reference


def _conv_with_relu(shape):
    """A PrimFunc computing relu(blocked_conv2d(x) + bias) as FuseOps would hand it over, and its inputs."""
    placeholders, conv, args, reference = _random_conv(shape)
    relu = te.compute(conv.shape, lambda *i: tvm.tirx.max(conv(*i), tvm.tirx.const(0, "float32")), name="relu")
    return te.create_prim_func([*placeholders, relu]), args, np.maximum(reference, 0)


@pytest.mark.parametrize("shape", [(1, 3, 33, 33, 32, 7, 2, 3, 1), (2, 5, 9, 11, 16, 3, 1, 1, 1),
                                   (1, 16, 14, 14, 48, 1, 1, 0, 1)], ids=str)
def test_blocked_output_matches_reference(shape):
    """NCHW16c output (a stem written into a max pool): the reference's channels regrouped."""
    placeholders, conv, args, reference = _random_conv(shape, blocked_output=True)
    n, o, *spatial = reference.shape
    want = reference.reshape(n, o // ops.CHANNEL_BLOCK, ops.CHANNEL_BLOCK, *spatial).transpose(0, 1, 3, 4, 2)
    func = te.create_prim_func([*placeholders, conv])
    scheduled = schedules.apply_default_schedules(tvm.IRModule({"main": func}), resolve("host").target)
    assert scheduled["main"].attrs[schedules.SCHEDULED_ATTR]
    _run(scheduled, "host", args, want)


def test_blocked_output_needs_whole_channel_blocks():
    data = te.placeholder((1, 3, 8, 8), name="data")
    blocked = te.placeholder((2, 3, 3, 3, ops.CHANNEL_BLOCK), name="weight")
    with pytest.raises(WrpnError, match="whole blocks"):
        ops.blocked_conv2d(data, blocked, te.placeholder((24,), name="bias"), blocked_output=True)


def _run(mod, target: str, args, want) -> None:
    executable = tvm.compile(mod, target=resolve(target).target)
    out = tvm.runtime.tensor(np.zeros(want.shape, "float32"))
    executable["main"](*[tvm.runtime.tensor(a) for a in args], out)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("target", ["host", "x86-avx2"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_default_schedule_matches_reference(shape, target):
    func, args, want = _conv_with_relu(shape)
    scheduled = schedules.apply_default_schedules(tvm.IRModule({"main": func}), resolve(target).target)
    assert scheduled["main"].attrs[schedules.SCHEDULED_ATTR]
    _run(scheduled, target, args, want)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tuning_candidates_match_reference(seed):
    func, args, want = _conv_with_relu(SHAPES[1 + seed])
    for space in tuning_spaces(func, "cpu", ops.FP32_CONV2D_RULE, "wrpn_fp32_conv2d", seed):
        _run(space.mod, "host", args, want)


def _asm(target: str) -> str:
    func, _, _ = _conv_with_relu((1, 32, 14, 14, 64, 3, 1, 1, 1))
    mod = schedules.apply_default_schedules(tvm.IRModule({"main": func}), resolve(target).target)
    return tvm.compile(mod, target=resolve(target).target).mod.inspect_source("asm")


def test_avx2_build_is_an_fma_tile_without_avx512():
    asm = _asm("x86-avx2")
    assert re.search(r"\bvfmadd231ps\t[^\n]*%ymm", asm) and "zmm" not in asm


def test_aarch64_build_is_a_neon_fma_tile():
    assert re.search(r"\bfmla\tv\d+\.4s", _asm("rasp4"))


def test_default_tile_fits_the_register_file():
    for registers in (fp32_conv.AVX512_REGISTERS, fp32_conv.AVX2_REGISTERS, fp32_conv.ARM_REGISTERS):
        for blocks, columns in [(4, 112), (32, 7), (1, 13), (8, 56)]:
            tile_blocks, tile_columns = fp32_conv.default_tile(blocks, columns, registers)
            assert blocks % tile_blocks == 0 and columns % tile_columns == 0
            assert tile_blocks * registers.vectors_per_block * tile_columns <= registers.accumulators


class _PlainNet(torch.nn.Module):
    """What a user brings: no wrpn_tvm import, a biased conv, batch norms, a stride-2 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 20, 5, stride=2, padding=2, bias=True)
        self.bn1 = torch.nn.BatchNorm2d(20)
        self.conv = torch.nn.Conv2d(20, 24, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(24)
        self.down = torch.nn.Conv2d(20, 24, 1, stride=1, bias=False)
        self.head = torch.nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.stem(x)))
        x = torch.relu(self.bn2(self.conv(x)) + self.down(x))
        return self.head(x.mean(dim=(2, 3)))


def test_plain_model_convs_fold_their_batch_norms_and_match_torch(tmp_path):
    from wrpn_tvm import build, runtime

    torch.manual_seed(0)
    model = _PlainNet()
    for bn in (model.bn1, model.bn2):  # statistics away from the identity, so a lost fold shows
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    model.eval()
    x = torch.rand(1, 3, 23, 23)
    program = tmp_path / "plain.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(program))
    result = build.compile_model(program, "host", tmp_path / "plain.so")
    got = runtime.run(result.library, [x.numpy()])[0]
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert [layer.kernel for layer in result.layers if layer.op == "conv2d"] == [
        "blocked conv (bias + batch_norm folded)", "blocked conv (batch_norm folded)", "blocked conv"]

    from wrpn_tvm import pipeline

    spec = resolve("host")
    lowered, _, _ = pipeline.prepare_module(program, spec)
    names = [gvar.name_hint for gvar in lowered.functions]
    assert sum(name.startswith("wrpn_fp32_conv2d") for name in names) == 3
    assert not any("batch_norm" in name for name in names)


class _StemNet(torch.nn.Module):
    """A torchvision-style stem a user brings: conv, batch norm, ReLU, 3x3/2 max pool; a second
    conv and pool after it with channels off the 16-channel block."""

    def __init__(self, stem_channels: int, ceil_mode: bool = False):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, stem_channels, 7, stride=2, padding=3, bias=False)
        self.bn = torch.nn.BatchNorm2d(stem_channels)
        self.pool = torch.nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=ceil_mode)
        self.conv = torch.nn.Conv2d(stem_channels, 20, 3, padding=1)
        self.head = torch.nn.Linear(20, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn(self.stem(x))))
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("stem_channels, blocked, ceil_mode", [(32, True, False), (32, True, True), (24, False, False)])
def test_a_stem_into_a_max_pool_writes_blocks_and_matches_torch(tmp_path, stem_channels, blocked, ceil_mode):
    """The stem writes NCHW16c and its pool runs in that layout where its channels fill blocks
    (batch 2: the pool's schedule then has a batch loop; odd sizes, with ceil_mode a last window
    that overhangs); channels that do not stay NCHW."""
    from wrpn_tvm import build, pipeline, runtime
    from wrpn_tvm.lowering.fp32 import BLOCKED_LAYOUT

    torch.manual_seed(stem_channels)
    model = _StemNet(stem_channels, ceil_mode)
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(2, 3, 37, 35)
    program = tmp_path / "stem.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(program))
    result = build.compile_model(program, "host", tmp_path / "stem.so")
    got = runtime.run(result.library, [x.numpy()])[0]
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    kinds = [layer.kernel for layer in result.layers if layer.op == "conv2d"]
    written = f", written {BLOCKED_LAYOUT} into a max pool in that layout" if blocked else ""
    assert kinds[0] == "blocked conv (batch_norm folded)" + written
    assert kinds[1] == "blocked conv (bias folded)"  # its ReLU and pool read 20 channels: not whole blocks

    lowered, _, _ = pipeline.prepare_module(program, resolve("host"))
    pools = [b.value for block in lowered["main"].body.blocks for b in block.bindings
             if isinstance(b.value, tvm.relax.Call) and getattr(b.value.op, "name", "") == "relax.nn.max_pool2d"]
    assert [str(pool.attrs.layout) for pool in pools] == [BLOCKED_LAYOUT if blocked else "NCHW", "NCHW"]
