"""Winograd F(2x2, 3x3) int8 conv (`ops.int8_winograd`): bit-exact against the numpy reference conv on
awkward shapes for each x86 dot kernel it runs on (VNNI, AVX-512BW, AVX2), at the extreme levels
its transforms must hold, fused with an epilogue writing NHWC levels or an NCHW float map, and
through the compiler with `--kernels int8-winograd` on a network written in plain PyTorch."""

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import te

from test_amx import SAPPHIRE_RAPIDS
from test_int8_dot import SKYLAKE, HOST_DOT, _levels_pack_reference
from test_lowering_models import randomize_batch_norm
from test_lowering_recognition import _quantize, on_grid
from kernel_cases import random_weights
from wrpn_tvm import build, ops, runtime
from wrpn_tvm.errors import WrpnError
from wrpn_tvm.frontend import to_relax
from wrpn_tvm.kernel_kinds import BITSERIAL, INT8_DOT, INT8_WINOGRAD
from wrpn_tvm.lowering import lower_wrpn
from wrpn_tvm.lowering.report import WINOGRAD
from wrpn_tvm.pipeline import compile_prim_func
from wrpn_tvm.targets import resolve
from schedules import int8_winograd as winograd_template

TARGETS = {"host": HOST_DOT, "x86-avx2": "x86-avx2", "avx512bw": SKYLAKE}
# (abits, wbits, channels, out_channels, padding, batch, height, width): channels off every
# multiple of 4/16/64 and out channels off 16 and 8, odd and non-square images (a last tile half
# outside), pad 0 and asymmetric, batch 2, the widest levels the transforms hold (5/4), binary.
CASES = [
    (2, 2, 37, 21, 1, 1, 9, 9),
    (4, 4, 130, 40, 1, 2, 7, 11),
    (2, 4, 20, 24, 0, 1, 8, 8),
    (4, 2, 66, 17, (0, 1, 2, 1), 1, 10, 9),
    (5, 4, 12, 33, 1, 1, 6, 6),
    (1, 1, 64, 16, 1, 1, 5, 3),
]


def _inputs(layout, x, w, abits):
    """NHWC uint8 levels (channels padded), the transformed weights and the correction."""
    batch, channels, height, width = x.shape
    data = np.zeros((batch, height, width, ops.int8_dot.padded_channels(channels, layout)), np.uint8)
    data[..., :channels] = x.transpose(0, 2, 3, 1)
    return [data, *ops.prepack_winograd_weight(w, abits, layout)]


def _placeholders(inputs):
    return [te.placeholder(a.shape, str(a.dtype), name=name) for a, name in zip(inputs, ("data", "w", "correction"))]


def _run(func, spec, inputs, out_shape, dtype) -> np.ndarray:
    device = tvm.cpu(0)
    out = tvm.runtime.tensor(np.zeros(out_shape, dtype), device)
    compile_prim_func(func, spec)["main"](*(tvm.runtime.tensor(a, device) for a in inputs), out)
    return out.numpy()


def _case(case, seed):
    abits, wbits, channels, out_channels, padding, batch, height, width = case
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2**abits, (batch, channels, height, width))
    w = random_weights(rng, wbits, (out_channels, channels, 3, 3))
    return x, w


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_winograd_conv_is_exact(target, case):
    abits, wbits, _, out_channels, padding, *_ = case
    x, w = _case(case, CASES.index(case))
    spec = resolve(TARGETS[target])
    inputs = _inputs(ops.int8_layout(spec.target), x, w, abits)
    data, weight, correction = _placeholders(inputs)
    out = ops.int8_winograd_conv2d(data, weight, correction, out_channels, padding, (abits, wbits))
    want = ops.conv2d_levels_reference(x, w, abits, wbits, 1, padding)
    got = _run(te.create_prim_func([data, weight, correction, out]), spec, inputs,
               [int(d) for d in out.shape], np.int32)
    assert np.array_equal(got.transpose(0, 3, 1, 2), want)


@pytest.fixture
def channel_groups(monkeypatch):
    """The other weight form and template structure on small layers: the direct weights, transformed
    in the kernel per group of one weight block, each group computing its GEMMs for every tile of the
    map (what layers with large weights get)."""
    monkeypatch.setattr(ops.int8_winograd, "IN_KERNEL_TRANSFORM_BYTES", 0)
    monkeypatch.setattr(winograd_template, "GROUP_WEIGHT_BYTES", 1)


def test_layers_with_large_weights_take_direct_weights_and_run_in_channel_groups():
    """ResNet-18 2x: 56x56x128 (256 KiB transformed) and 28x28x256 (1 MiB) by rows with their
    weights transformed ahead; 14x14x512 (4 MiB) and 7x7x1024 (16 MiB) transform theirs in the
    kernel, per group of 512 KiB."""
    layout = ops.int8_layout(resolve("x86-avx512").target)
    in_kernel = ops.int8_winograd.transforms_weights_in_kernel
    assert not in_kernel(128, 128, layout) and not in_kernel(256, 256, layout)
    assert in_kernel(512, 512, layout) and in_kernel(1024, 1024, layout)
    levels = np.ones((512, 512, 3, 3), np.int64)
    weight, correction = ops.prepack_winograd_weight(levels, 2, layout)
    assert weight.shape == ops.prepack_int8_weight(levels, layout).shape and correction.shape == (2, 2, 512)
    assert ops.prepack_winograd_weight(levels[:256, :256], 2, layout)[0].shape == (16, 16, 64, 16, 4)
    assert winograd_template.channel_group_blocks(32, 512, 16) == 4  # 14x14x512: 512 KiB a group
    assert winograd_template.channel_group_blocks(3, 4096, 16) == 1


def test_both_weight_forms_have_one_correction():
    """The offset's correction comes from the transformed weights' sums whichever form the kernel gets."""
    layout = ops.int8_layout(resolve("x86-avx512").target)
    w = random_weights(np.random.default_rng(2), 4, (40, 130, 3, 3))
    transformed, ahead = ops.prepack_winograd_weight(w, 4, layout, in_kernel=False)
    direct, in_kernel = ops.prepack_winograd_weight(w, 4, layout, in_kernel=True)
    assert np.array_equal(ahead, in_kernel) and transformed.ndim == 5 and direct.ndim == 6


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CASES[:4], ids=str)
def test_winograd_conv_in_channel_groups_is_exact(target, case, channel_groups):
    assert ops.prepack_winograd_weight(np.zeros((16, 4, 3, 3), np.int64), 2,
                                       ops.int8_layout(resolve(TARGETS[target]).target))[0].ndim == 6
    test_winograd_conv_is_exact(target, case)


def test_channel_groups_writing_levels_and_nchw_floats_are_exact(channel_groups):
    test_winograd_conv_writing_the_next_layers_levels_is_exact(CASES[0])
    test_winograd_conv_writing_an_nchw_float_map_is_exact()


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("abits, wbits", [(4, 4), (5, 4), (2, 2)])
@pytest.mark.parametrize("sign", [1, -1])
def test_extreme_levels_are_exact(target, abits, wbits, sign):
    """Every activation at its top level and every weight at +W or -W: the transforms' extremes
    (6 A in uint8, 9 W in int8, vpmaddubsw pair sums) and the correction at its largest."""
    top, weight_top = 2**abits - 1, max(1, 2 ** (wbits - 1) - 1)
    x = np.full((1, 64, 6, 6), top)
    w = np.full((16, 64, 3, 3), sign * weight_top)
    w[:, :, 1, 1] *= -1  # the centre tap opposite: positive and negative transformed weights
    spec = resolve(TARGETS[target])
    inputs = _inputs(ops.int8_layout(spec.target), x, w, abits)
    data, weight, correction = _placeholders(inputs)
    out = ops.int8_winograd_conv2d(data, weight, correction, 16, 1, (abits, wbits))
    got = _run(te.create_prim_func([data, weight, correction, out]), spec, inputs, [1, 6, 6, 16], np.int32)
    assert np.array_equal(got.transpose(0, 3, 1, 2), ops.conv2d_levels_reference(x, w, abits, wbits, 1, 1))


@pytest.mark.parametrize("case", CASES[:4], ids=str)
def test_winograd_conv_writing_the_next_layers_levels_is_exact(case):
    """Fused with the next layer's 4-bit pack (NHWC uint8), as FuseOps fuses them in a model: the
    epilogue runs on the row pair the tile loop computed (dyadic scales keep the floats exact)."""
    abits, wbits, channels, out_channels, padding, batch, height, width = case
    x, w = _case(case, 11)
    spec = resolve(HOST_DOT)
    layout = ops.int8_layout(spec.target)
    rng = np.random.default_rng(7)
    multiplier = (rng.integers(1, 9, out_channels) / 64).astype(np.float32)
    offset = (rng.integers(-8, 9, out_channels) / 32).astype(np.float32)
    inputs = _inputs(layout, x, w, abits) + [multiplier, offset]
    data, weight, correction = _placeholders(inputs[:3])
    m = te.placeholder((out_channels,), "float32", name="m")
    o = te.placeholder((out_channels,), "float32", name="o")
    conv = ops.int8_winograd_conv2d(data, weight, correction, out_channels, padding, (abits, wbits))
    top = tvm.tirx.const(15.0, "float32")

    def level(n, c, h, v):
        value = conv[n, h, v, c].astype("float32") * m[c] + o[c]
        clipped = tvm.tirx.min(tvm.tirx.max(value, tvm.tirx.const(0.0, "float32")), tvm.tirx.const(1.0, "float32"))
        return tvm.tirx.nearbyint(clipped * top)

    acc = ops.conv2d_levels_reference(x, w, abits, wbits, 1, padding)
    levels = ops.int8_levels_of(level, (batch, out_channels, *acc.shape[2:]), layout)
    want = _levels_pack_reference(acc, multiplier, offset, 4, layout)
    got = _run(te.create_prim_func([data, weight, correction, m, o, levels]), spec, inputs, want.shape, want.dtype)
    assert np.array_equal(got, want)


def test_winograd_conv_writing_an_nchw_float_map_is_exact():
    """An epilogue writing NCHW floats (a residual block's output): the output's channels loop sits
    between its batch and its rows, and the template moves it inside the row pairs."""
    case = CASES[1]
    abits, wbits, channels, out_channels, padding, batch, height, width = case
    x, w = _case(case, 3)
    spec = resolve(HOST_DOT)
    inputs = _inputs(ops.int8_layout(spec.target), x, w, abits)
    data, weight, correction = _placeholders(inputs)
    conv = ops.int8_winograd_conv2d(data, weight, correction, out_channels, padding, (abits, wbits))
    scaled = te.compute((batch, out_channels, height, width),
                        lambda n, c, h, v: conv[n, h, v, c].astype("float32") * 0.5, name="epilogue")
    got = _run(te.create_prim_func([data, weight, correction, scaled]), spec, inputs,
               (batch, out_channels, height, width), np.float32)
    assert np.array_equal(got, ops.conv2d_levels_reference(x, w, abits, wbits, 1, padding).astype(np.float32) * 0.5)


def test_which_convs_the_transforms_take():
    layout = ops.int8_layout(resolve("x86-avx512").target)
    assert ops.winograd_fits(4, 4) and ops.winograd_fits(5, 4) and ops.winograd_fits(1, 1)
    assert not ops.winograd_fits(6, 2)  # 6 x 63 > 255
    assert not ops.winograd_fits(2, 5)  # 9 x 15 > 127
    assert ops.winograd_applies((3, 3), 1, (14, 14), 16, layout, 2, 2)
    assert ops.winograd_applies((3, 3), 1, (7, 7), 16, layout, 2, 2)  # 16 tiles
    assert not ops.winograd_applies((3, 3), 1, (6, 6), 16, layout, 2, 2)  # 9 tiles: not measured
    assert not ops.winograd_applies((3, 3), 1, (14, 14), 15, layout, 2, 2)  # less than a block of channels
    assert not ops.winograd_applies((3, 3), 2, (28, 28), 16, layout, 2, 2)
    assert not ops.winograd_applies((1, 1), 1, (28, 28), 16, layout, 2, 2)
    assert not ops.winograd_applies((3, 3), 1, (28, 28), 16, ops.int8_layout(resolve("rasp5").target), 2, 2)
    with pytest.raises(WrpnError, match="3x3"):
        ops.prepack_winograd_weight(np.zeros((4, 4, 1, 1), np.int64), 2, layout)
    data = te.placeholder((1, 6, 6, 16), "uint8", name="data")
    weight, correction = ops.prepack_winograd_weight(np.zeros((8, 16, 3, 3), np.int64), 2, layout)
    with pytest.raises(WrpnError, match="at least 16 output channels"):
        ops.int8_winograd_conv2d(data, te.placeholder(weight.shape, "int8"), te.placeholder(correction.shape, "int32"),
                                 8, 1, (2, 2))


@pytest.mark.parametrize("sign", [1, -1])
def test_extreme_levels_transformed_in_the_kernel_are_exact(sign, channel_groups):
    """The in-kernel transform adds in int8: 9 W at the widest weights the transforms take."""
    test_extreme_levels_are_exact("host", 5, 4, sign)


class PlainNet(nn.Module):
    """A WRPN network in plain PyTorch: 3x3 stride-1 convs on 12x12 maps (Winograd), a strided one
    and one on a 6x6 map (direct int8-dot), 2/2 and 4/2."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.stem, self.bn0 = nn.Conv2d(3, 36, 3, padding=1), nn.BatchNorm2d(36)
        self.conv1, self.bn1 = nn.Conv2d(36, 40, 3, padding=1, bias=False), nn.BatchNorm2d(40)
        self.conv2, self.bn2 = nn.Conv2d(40, 40, 3, padding=1, bias=False), nn.BatchNorm2d(40)
        self.down, self.bn3 = nn.Conv2d(40, 24, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(24)
        self.small, self.bn4 = nn.Conv2d(24, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24)
        with torch.no_grad():
            for layer in (self.conv1, self.conv2, self.down, self.small):
                layer.weight.copy_(on_grid(layer.weight.shape, 2, g))

    def forward(self, x):
        x = _quantize(self.bn0(self.stem(x)), 2)
        x = _quantize(self.bn1(self.conv1(x)), 4)
        x = self.bn2(self.conv2(x)) + 0.0
        x = _quantize(x, 2)
        x = _quantize(self.bn3(self.down(x)), 2)
        return self.bn4(self.small(x))


def test_compiler_runs_the_stride_1_convs_as_winograd(tmp_path):
    """`--kernels int8-winograd` on x86-avx512: the 12x12 convs in the Winograd domain, the strided
    and the 6x6 ones direct, and the model's output that of the direct int8-dot compile, bit for bit."""
    model = randomize_batch_norm(PlainNet()).eval()
    x = torch.rand(2, 3, 12, 12)
    path = tmp_path / "plain.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    winograd = build.compile_model(path, "x86-avx512", tmp_path / "winograd.so", kernels=INT8_WINOGRAD)
    kernels = [layer.kernel for layer in winograd.layers if layer.is_bitserial]
    assert kernels == [WINOGRAD, WINOGRAD, "", ""], [str(layer) for layer in winograd.layers]
    direct = build.compile_model(path, "x86-avx512", tmp_path / "direct.so", kernels="int8-dot")
    (got,) = runtime.run(winograd.library, [x.numpy()])
    (want,) = runtime.run(direct.library, [x.numpy()])
    assert np.array_equal(got, want)


def test_compiler_runs_winograd_with_the_weights_transformed_in_the_kernel(tmp_path, channel_groups):
    """The same network with every Winograd layer taking the direct weights (as large layers do)."""
    test_compiler_runs_the_stride_1_convs_as_winograd(tmp_path)


def _plain_net_module():
    model = randomize_batch_norm(PlainNet()).eval()
    return to_relax(torch.export.export(model, (torch.rand(1, 3, 12, 12),)))


def test_auto_runs_int8_dot_as_winograd_where_the_transforms_take_the_conv():
    """`auto` on x86-avx512 weighs int8-dot at the Winograd conv's cost where it applies: by the
    cost model (which puts the strided 2/2 conv's direct int8 form at 1.1x bit-serial's time), and
    with tuned records (the direct conv's, scaled by the cost model's ratio: the Winograd conv has
    no record). Records with int8-dot 1.2x bit-serial's time leave the strided and 6x6 convs
    bit-serial and run the 12x12 ones as Winograd (0.63 x 1.2 < 1)."""
    mod = _plain_net_module()
    spec = resolve("x86-avx512")
    _, reports = lower_wrpn(mod, spec, "auto")
    quantized = [report for report in reports if report.is_bitserial]
    assert [r.lowered_to.split(" ")[0] for r in quantized] == [INT8_DOT, INT8_DOT, BITSERIAL, INT8_DOT], \
        [str(r) for r in quantized]
    assert [r.kernel for r in quantized] == [WINOGRAD, WINOGRAD, "", ""]
    assert "(int8-dot as Winograd)" in quantized[0].reason
    records = {r.index: {BITSERIAL: 1.0e-3, INT8_DOT: 1.2e-3} for r in quantized}
    _, reports = lower_wrpn(mod, spec, "auto", records)
    quantized = [report for report in reports if report.is_bitserial]
    assert [r.lowered_to.split(" ")[0] for r in quantized] == [INT8_DOT, INT8_DOT, BITSERIAL, BITSERIAL]
    assert [r.kernel for r in quantized] == [WINOGRAD, WINOGRAD, "", ""]
    assert "int8-dot as Winograd 0.756 ms (its record x the cost model's 0.63)" in quantized[0].reason
    # An AMX build keeps its int8 convs direct (on tiles), a bit-serial one never looks at Winograd.
    _, reports = lower_wrpn(mod, resolve(SAPPHIRE_RAPIDS), "auto")
    assert all(report.kernel != WINOGRAD for report in reports)
    _, reports = lower_wrpn(mod, spec, BITSERIAL)
    assert all(report.kernel != WINOGRAD for report in reports)
