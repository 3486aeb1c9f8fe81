"""Quantizers written the way people train them, in plain PyTorch (the models import nothing of
wrpn_tvm): quantizers inside forward(), straight-through estimators, scaled, PACT and fake-quant
activation quantizers, per-tensor / per-channel / ternary / binary weight grids. Each spelling on
its own, a model that mixes them, and random spellings, scales and bit widths drawn by hypothesis:
exported as they are, compiled for the host, every quantized layer bit-serial with the bits the
model has, logits equal to PyTorch's (float32 or float64, see assert_matches_pytorch).
"""

import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from wrpn_tvm import build, runtime
from wrpn_tvm.cli import main as cli_main
from wrpn_tvm.frontend import to_relax
from wrpn_tvm.lowering import lower_wrpn
from wrpn_tvm.targets import resolve
from test_lowering_models import assert_matches_pytorch, randomize_batch_norm
from layer_reports import recognized

EXAMPLES = int(os.environ.get("WRPN_SPELLING_EXAMPLES", "6"))


class RoundSTE(torch.autograd.Function):
    """round with a straight-through gradient, as a custom autograd Function (exports as its forward)."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def _ste(x, q):
    return x + (q - x).detach()


# Activation quantizers: (x, levels n, clip a as a number, the same clip as a learned parameter) -> quantized x.
def act_clamp(x, n, a, alpha):
    return torch.round(torch.clamp(x, 0, a) * n / a) * a / n


def act_hardtanh(x, n, a, alpha):
    step = a / n
    return torch.round(F.hardtanh(x, 0.0, a) / step) * step


def act_min_max(x, n, a, alpha):
    clipped = torch.minimum(torch.maximum(x, torch.tensor(0.0)), alpha)
    return torch.round(clipped * (n / alpha)) * (alpha / n)


def act_pact_detach(x, n, a, alpha):
    clipped = F.relu(x) - F.relu(x - alpha)  # PACT, with a learned alpha
    return _ste(clipped, torch.round(clipped * n / alpha) * alpha / n)


def act_autograd_function(x, n, a, alpha):
    clipped = torch.clamp(x, 0, a) / alpha
    return RoundSTE.apply(clipped * n) / n * alpha


def act_fake_quant(x, n, a, alpha):
    return torch.fake_quantize_per_tensor_affine(x, a / n, 0, 0, n)


def act_fake_quant_tensor_qparams(x, n, a, alpha):
    scale = (alpha / n).detach().reshape(1).float()
    return torch.fake_quantize_per_tensor_affine(x, scale, torch.zeros(1, dtype=torch.int32), 0, n)


def act_select_clamp(x, n, a, alpha):
    """Brevitas's QuantReLU spelling: relu, divide by the scale, round, clamp the levels with where."""
    scale = alpha / n
    levels = torch.round(F.relu(x) / scale + 0.0)
    levels = torch.where(levels > n, torch.tensor(float(n)), levels)
    levels = torch.where(levels < 0, torch.tensor(0.0), levels)
    return (levels - 0.0) * scale


ACTIVATIONS = {f.__name__.removeprefix("act_"): f for f in (
    act_clamp, act_hardtanh, act_min_max, act_pact_detach, act_autograd_function, act_fake_quant,
    act_fake_quant_tensor_qparams, act_select_clamp)}


# Weight quantizers: (w, bits) -> quantized w, computed in forward() from the trained float weight.
def weight_wrpn_detach(w, bits):
    n = 2 ** (bits - 1) - 1
    return _ste(w, torch.round(torch.clamp(w, -1, 1) * n) / n)


def weight_per_tensor_scale(w, bits):
    n = 2 ** (bits - 1) - 1
    scale = w.abs().max() / n
    return torch.round(w / scale) * scale


def weight_per_channel_scale(w, bits):
    n = 2 ** (bits - 1) - 1
    scale = torch.amax(w.abs(), dim=tuple(range(1, w.dim())), keepdim=True) / n
    return torch.clamp(torch.round(w / scale), -n, n) * scale


def weight_per_channel_fake_quant(w, bits):
    n = 2 ** (bits - 1) - 1
    scale = torch.amax(w.detach().abs(), dim=tuple(range(1, w.dim()))).float() / n
    return torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(w.shape[0], dtype=torch.int32), 0, -n, n)


def weight_per_tensor_fake_quant(w, bits):
    n = 2 ** (bits - 1) - 1
    scale = (w.detach().abs().max() / n).reshape(1)
    return torch.fake_quantize_per_tensor_affine(w, scale, torch.zeros(1, dtype=torch.int32), -n, n)


def weight_ternary(w, bits):
    """Ternary weight networks: threshold 0.7 mean|w|, one alpha per tensor (2 bits whatever `bits` says)."""
    threshold = 0.7 * w.abs().mean()
    mask = (w.abs() > threshold).float()
    alpha = (w.abs() * mask).sum() / mask.sum()
    return _ste(w, alpha * torch.sign(w) * mask)


def weight_binary_per_tensor(w, bits):
    alpha = w.abs().mean()
    return torch.where(w >= 0, alpha, -alpha)


def weight_binary_per_channel(w, bits):
    alpha = w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
    return _ste(w, torch.where(w >= 0, alpha, -alpha))


WEIGHTS = {f.__name__.removeprefix("weight_"): f for f in (
    weight_wrpn_detach, weight_per_tensor_scale, weight_per_channel_scale, weight_per_channel_fake_quant,
    weight_per_tensor_fake_quant, weight_ternary, weight_binary_per_tensor, weight_binary_per_channel)}
FIXED_BITS = {"ternary": 2, "binary_per_tensor": 1, "binary_per_channel": 1}


class QuantizedNet(nn.Module):
    """FP32 stem -> BN -> act quantizer -> conv (quantized in forward) -> BN -> ReLU -> max pool ->
    act quantizer -> linear (quantized in forward) -> BN -> FP32 head. Any spelling per quantizer."""

    def __init__(self, acts, weights, abits, wbits, alpha=2.0, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.acts, self.weights, self.abits, self.wbits = acts, weights, abits, wbits
        self.clip, self.alpha = float(alpha), nn.Parameter(torch.tensor(float(alpha)))
        self.stem, self.bn0 = nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12)
        self.conv, self.bn1 = nn.Conv2d(12, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.dense, self.bn2 = nn.Linear(16 * 4 * 4, 24), nn.BatchNorm1d(24)
        self.head = nn.Linear(24, 10)
        with torch.no_grad():  # spread over [-1, 1], and past it once, so WRPN's grid uses all its levels
            for layer, spread in ((self.conv, 4), (self.dense, 8)):
                layer.weight.mul_(spread)
                layer.weight.view(-1)[0] = 1.5
        randomize_batch_norm(self, seed)

    def _act(self, i, x):
        return ACTIVATIONS[self.acts[i]](x, 2 ** self.abits[i] - 1, self.clip, self.alpha)

    def _weight(self, i, w):
        return WEIGHTS[self.weights[i]](w, self.wbits[i])

    def forward(self, x):
        x = self._act(0, self.bn0(self.stem(x)) * 2)
        x = F.max_pool2d(F.relu(self.bn1(F.conv2d(x, self._weight(0, self.conv.weight), padding=1))), 2)
        x = self._act(1, torch.flatten(x, 1))
        x = self.bn2(F.linear(x, self._weight(1, self.dense.weight), self.dense.bias))
        return self.head(x)

    def expected(self) -> list:
        """What each conv/dense must become, in program order."""
        layers = [("conv2d", 0), ("dense", 1)]
        bits = [(self.abits[i], FIXED_BITS.get(self.weights[i], self.wbits[i])) for _, i in layers]
        return ["fp32", *[f"{op} a{a}/w{w}" for (op, _), (a, w) in zip(layers, bits)], "fp32"]


def compile_and_check(model: QuantizedNet, tmp_path, batch=4):
    x = torch.rand(batch, 3, 8, 8)
    program = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model.eval(), (x,)), str(program))
    result = build.compile_model(program, "host", tmp_path / "model.so")
    assert recognized(result.layers) == model.expected(), [str(layer) for layer in result.layers]
    (out,) = runtime.run(result.library, [x.numpy()])
    assert_matches_pytorch(model, x, out)
    return result


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_each_activation_spelling_lowers_and_matches_pytorch(act, tmp_path):
    compile_and_check(QuantizedNet((act, act), ("wrpn_detach", "wrpn_detach"), (2, 3), (2, 2), alpha=1.5), tmp_path)


@pytest.mark.parametrize("weight", sorted(WEIGHTS))
def test_each_weight_spelling_lowers_and_matches_pytorch(weight, tmp_path):
    compile_and_check(QuantizedNet(("clamp", "clamp"), (weight, weight), (2, 2), (2, 4)), tmp_path)


def test_a_model_mixing_spellings(tmp_path):
    model = QuantizedNet(("pact_detach", "fake_quant"), ("ternary", "per_channel_fake_quant"), (4, 2), (2, 3), alpha=3.0)
    compile_and_check(model, tmp_path)


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(acts=st.lists(st.sampled_from(sorted(ACTIVATIONS)), min_size=2, max_size=2),
       weights=st.lists(st.sampled_from(sorted(WEIGHTS)), min_size=2, max_size=2),
       abits=st.lists(st.integers(1, 8), min_size=2, max_size=2),
       wbits=st.lists(st.integers(2, 8), min_size=2, max_size=2),
       alpha=st.floats(0.25, 6.0), seed=st.integers(0, 1000))
def test_random_spellings_scales_and_bit_widths(acts, weights, abits, wbits, alpha, seed, tmp_path_factory):
    compile_and_check(QuantizedNet(acts, weights, abits, wbits, alpha, seed), tmp_path_factory.mktemp("spelling"))


def _reports(model, x):
    _, reports = lower_wrpn(to_relax(torch.export.export(model.eval(), (x,))), resolve("host"))
    return reports


def test_average_pooling_between_quantizer_and_conv_is_named_as_the_cause():
    class AvgPooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 3)

        def forward(self, x):
            q = torch.round(torch.clamp(x, 0, 1) * 3) / 3
            return F.conv2d(F.avg_pool2d(q, 2), weight_wrpn_detach(self.conv.weight, 2))

    (report,) = _reports(AvgPooled(), torch.rand(1, 4, 8, 8))
    assert report.reason == "an avg-pool sits between the quantizer and this conv2d: averaged levels are off the grid"


def test_a_non_zero_zero_point_is_named_as_the_cause():
    class ZeroPoint(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 3)

        def forward(self, x):
            q = torch.fake_quantize_per_tensor_affine(x, 0.1, 2, 0, 15)
            return F.conv2d(q, weight_wrpn_detach(self.conv.weight, 2))

    (report,) = _reports(ZeroPoint(), torch.rand(1, 4, 8, 8))
    assert not report.is_bitserial and "has a non-zero zero point: 0.0 is level 2 of 0..15" in report.reason


def test_weights_computed_from_the_input_are_not_constants():
    class Dynamic(nn.Module):
        def forward(self, x):
            q = torch.round(torch.clamp(x, 0, 1) * 3) / 3
            return F.conv2d(q, torch.round(x[:2, :4, :3, :3]))

    (report,) = _reports(Dynamic(), torch.rand(4, 4, 8, 8))
    assert report.reason == "weight is not a constant"


def test_fake_quant_and_reduction_converters_compute_what_pytorch_does(tmp_path):
    """The ops TVM 0.27 cannot import, in every form an export leaves them, against PyTorch bit for bit."""

    class QuantOps(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("scale", torch.tensor([0.07]))
            self.register_buffer("zero_point", torch.tensor([3], dtype=torch.int32))
            self.register_buffer("channel_scales", torch.tensor([0.05, 0.11, 0.2]))
            self.register_buffer("channel_zero_points", torch.tensor([0, 2, -1], dtype=torch.int32))

        def forward(self, x):
            tensor_qparams = torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, 0, 15)
            per_channel = torch.fake_quantize_per_channel_affine(x, self.channel_scales, self.channel_zero_points, 1, -8, 7)
            per_tensor = torch.fake_quantize_per_tensor_affine(x, 0.1, 1, 0, 7)
            ranges = torch.amax(x, dim=(2, 3), keepdim=True) - torch.amin(x, dim=(2, 3), keepdim=True)
            return torch.cat([tensor_qparams, per_channel, per_tensor, ranges.expand_as(x)], dim=1)

    model = QuantOps().eval()
    x = torch.randn(2, 3, 5, 5)
    program = tmp_path / "ops.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(program))
    library = build.compile_model(program, "host", tmp_path / "ops.so").library
    (out,) = runtime.run(library, [x.numpy()])
    with torch.no_grad():
        np.testing.assert_array_equal(out, model(x).numpy())


def test_compile_prints_a_summary_and_warns_about_train_mode_and_no_bit_serial_layer(tmp_path, capsys):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).train()
    program = tmp_path / "train-mode.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(2, 1, 8, 8),)), str(program))
    assert cli_main(["compile", str(program), "--target", "host", "-o", str(tmp_path / "m.so")]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "0 of 1 conv/dense layers quantized; 1 fp32: --explain gives the reasons"
    warnings = captured.err.splitlines()
    assert warnings[0].startswith("wrpn-tvm: warning: 1 batch norm layer(s) were exported in train mode")
    assert warnings[1].startswith("wrpn-tvm: warning: no conv/dense layer runs bit-serially")


def test_importing_raises_no_deprecation_warning_of_torch():
    program = torch.export.export(nn.Sequential(nn.Conv2d(1, 2, 3)).eval(), (torch.rand(1, 1, 8, 8),))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        to_relax(program)
