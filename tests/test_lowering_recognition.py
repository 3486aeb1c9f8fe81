"""WRPN lowering, recognition side: quantizer spellings, weight grids, epilogue folding, FP32 reasons.

No compilation here: these check what lower_wrpn decides for each layer, on hand-written modules
(not built from wrpn_tvm.nn), so the pattern matching does not depend on one exporter's spelling.
"""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from wrpn_tvm.frontend import to_relax
from wrpn_tvm.lowering import lower_wrpn
from wrpn_tvm.lowering.weight_grid import detect_weight_grid
from wrpn_tvm.targets import resolve
from layer_reports import recognized


def _quantize(x, bits, spelling="clamp"):
    if spelling == "clamp":
        x = torch.clamp(x, 0, 1)
    elif spelling == "minmax":
        x = torch.minimum(torch.maximum(x, torch.tensor(0.0)), torch.tensor(1.0))
    elif spelling == "relu-min":
        x = torch.minimum(F.relu(x), torch.tensor(1.0))
    if bits == 1:
        return torch.round(x)
    n = 2**bits - 1
    if spelling == "minmax":
        return torch.round(n * x) * (1.0 / n)  # scale on the left, unscale as a multiply
    return torch.round(x * n) / n


def on_grid(shape, bits, generator):
    """Random weights frozen on the WRPN grid of `bits` (per-channel +-alpha at 1 bit)."""
    if bits == 1:
        alpha = torch.rand(shape[0], *([1] * (len(shape) - 1)), generator=generator) + 0.1
        return torch.where(torch.rand(shape, generator=generator) > 0.5, alpha, -alpha)
    top = 2 ** (bits - 1) - 1
    return torch.randint(-top, top + 1, shape, generator=generator).float() / top


class TwoLayer(nn.Module):
    """FP32 conv -> BN -> quantizer -> conv under test -> BN (+ bias) -> ReLU."""

    def __init__(self, abits=2, wbits=2, spelling="clamp", groups=1, dilation=1, weight=None, bias=False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.abits, self.spelling = abits, spelling
        self.first = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv = nn.Conv2d(8, 16, 3, padding=dilation, groups=groups, dilation=dilation, bias=bias)
        self.bn2 = nn.BatchNorm2d(16)
        with torch.no_grad():
            self.conv.weight.copy_(on_grid(self.conv.weight.shape, wbits, g) if weight is None else weight)

    def forward(self, x):
        x = _quantize(self.bn1(self.first(x)), self.abits, self.spelling)
        return F.relu(self.bn2(self.conv(x)))


def reports_of(module, shape=(1, 3, 8, 8)):
    program = torch.export.export(module.eval(), (torch.rand(shape),))
    _, reports = lower_wrpn(to_relax(program), resolve("host"))
    return reports


@pytest.mark.parametrize(
    "spelling,abits,wbits",
    [("clamp", 1, 1), ("clamp", 4, 2), ("clamp", 8, 8), ("minmax", 2, 2), ("minmax", 1, 3), ("relu-min", 3, 1)],
)
def test_hand_written_quantizer_spellings_are_recognized(spelling, abits, wbits):
    first, second = reports_of(TwoLayer(abits, wbits, spelling))
    assert not first.is_bitserial and "not a WRPN-quantized activation" in first.reason
    assert recognized([second]) == [f"conv2d a{abits}/w{wbits}"]


def test_bias_and_batch_norm_fold_into_the_epilogue():
    report = reports_of(TwoLayer(bias=True))[1]
    assert report.reason.startswith("epilogue: scale + bias + batch_norm;")


@pytest.mark.parametrize(
    "kwargs,reason",
    [
        (dict(abits=12), "activation quantizer has 12 bits (> 8)"),
        (dict(groups=2), "groups=2"),
        (dict(dilation=2), "dilation=[2, 2]"),
        (dict(weight=torch.rand(16, 8, 3, 3) - 0.5), "weights lie on no WRPN grid"),
        (dict(weight=torch.randint(-300, 301, (16, 8, 3, 3)).float() / 511), "weights lie on no WRPN grid"),
    ],
    ids=["12-bit-activations", "groups", "dilation", "off-grid", "10-bit-weights"],
)
def test_unsupported_layers_stay_fp32_and_say_why(kwargs, reason):
    if kwargs.get("groups") == 2:
        kwargs["weight"] = on_grid((16, 4, 3, 3), 2, torch.Generator().manual_seed(1))
    report = reports_of(TwoLayer(**kwargs))[1]
    assert report.lowered_to == "fp32"
    assert reason in report.reason
    assert reason in str(report)


def test_an_unscale_that_differs_from_the_scale_is_a_quantizer_with_another_level_value():
    """round(clip(x, 0, 1) * 3) / 5 has levels 0..3 worth 1/5 each: 2 bits, the 1/5 folds into the epilogue."""

    class Rescaled(TwoLayer):
        def forward(self, x):
            x = torch.round(torch.clamp(self.bn1(self.first(x)), 0, 1) * 3) / 5
            return self.bn2(self.conv(x))

    assert recognized(reports_of(Rescaled())[1:]) == ["conv2d a2/w2"]


@pytest.mark.parametrize(
    "quantize,reason",
    [
        (lambda x: torch.round(x * 3) / 3, "has no upper clip: its levels are unbounded"),
        (lambda x: torch.round(torch.clamp(x, max=1) * 3) / 3, "has no lower clip"),
        (lambda x: torch.round(torch.clamp(x, -1, 1) * 3) / 3, "has a non-zero zero point: 0.0 is level 3 of 0..6"),
        (lambda x: torch.clamp(x, 0, 1) * 3, "not a WRPN-quantized activation (no clip -> round quantizer"),
    ],
    ids=["unclipped", "no-lower-clip", "signed", "no-round"],
)
def test_what_is_no_quantizer_says_why(quantize, reason):
    class Unquantized(TwoLayer):
        def forward(self, x):
            return self.bn2(self.conv(quantize(self.bn1(self.first(x)))))

    report = reports_of(Unquantized())[1]
    assert not report.is_bitserial and reason in report.reason


def test_average_pooling_between_quantizer_and_conv_keeps_fp32():
    """An average of levels is not a level: such an input must not be packed as if it were."""

    class AvgPooled(TwoLayer):
        def forward(self, x):
            x = _quantize(self.bn1(self.first(x)), 2)
            return self.bn2(self.conv(F.avg_pool2d(x, 2)))

    assert not reports_of(AvgPooled())[1].is_bitserial


def test_max_pooling_and_flatten_between_quantizer_and_layer_are_seen_through():
    class PooledDense(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = nn.Conv2d(3, 8, 3, padding=1)
            self.dense = nn.Linear(8 * 4 * 4, 10, bias=False)
            with torch.no_grad():
                self.dense.weight.copy_(on_grid(self.dense.weight.shape, 1, torch.Generator().manual_seed(2)))

        def forward(self, x):
            x = F.max_pool2d(_quantize(self.first(x), 3), 2)
            return self.dense(torch.flatten(x, 1))

    first, dense = reports_of(PooledDense())
    assert (dense.op, dense.lowered_to) == ("dense", "bit-serial dense a3/w1")
    assert str(dense).startswith("layer  1  dense  128->10")


@pytest.mark.parametrize("bits", range(1, 9))
def test_weight_grid_detection_picks_the_smallest_k(bits):
    g = torch.Generator().manual_seed(bits)
    weight = on_grid((6, 5, 3, 3), bits, g).numpy()
    grid = detect_weight_grid(weight)
    assert grid is not None and grid.bits <= bits
    np.testing.assert_allclose(grid.levels * grid.scale[:, None, None, None], weight, rtol=1e-6)
    if bits >= 2:  # both extreme levels present: nothing smaller fits
        weight.flat[0], weight.flat[1] = 1.0, -1.0
        weight.flat[2] = 0.0
        assert detect_weight_grid(weight).bits == max(bits, 2)


def test_weight_grid_rejects_off_grid_and_degenerate_weights():
    assert detect_weight_grid(np.array([[0.3, -0.31, 0.1234567]], dtype=np.float32)) is None
    assert detect_weight_grid(np.array([[0.3, -0.31]], dtype=np.float32)).bits == 6  # 30 and -31 hundredths
    assert detect_weight_grid(np.array([[0.5, np.nan]], dtype=np.float32)) is None
    levels_9bit = np.arange(-255, 256, dtype=np.float32).reshape(7, 73) / 255
    assert detect_weight_grid(levels_9bit) is None


@pytest.mark.parametrize(
    "steps,round_is_level",
    [
        ([("maximum", 0.0), ("minimum", 1.0), ("multiply", 3.0), ("round", 0.0), ("divide", 3.0)], True),
        ([("maximum", 0.0), ("minimum", 1.0), ("multiply", 15.0), ("round", 0.0), ("multiply", 1 / 15)], True),
        ([("maximum", 0.0), ("minimum", 1.0), ("multiply", 3.0), ("round", 0.0), ("divide", 5.0)], True),
        # fake_quantize: the clamp after the round decides the level of what rounds past 0..3.
        ([("multiply", 3.0), ("round", 0.0), ("maximum", 0.0), ("minimum", 3.0), ("divide", 3.0)], False),
    ],
    ids=["wrpn-divide", "wrpn-multiply", "rescaled", "clamp-after-round"],
)
def test_the_level_is_the_round_where_the_unscale_gives_it_back(steps, round_is_level):
    """The packed level skips the steps after the round (a divide and a second round per element of
    every pack) exactly when that is the same level on every input, ties and clip edges included."""
    from tvm import te

    from wrpn_tvm.lowering.quantizer import Step, _analyze

    steps = [Step(op, constant) for op, constant in steps]
    quantizer = _analyze(steps, source=None)
    assert quantizer.round_is_level is round_is_level
    x = np.concatenate([np.linspace(-0.7, 1.7, 40001, dtype=np.float32),
                        (np.arange(-3, 8, dtype=np.float32) + np.float32(0.5)) / np.float32(3.0)])
    values = x
    for step in steps:
        values = step.numpy(values)
    want = np.rint(values * np.float32(1 / quantizer.scale))
    data = te.placeholder((x.size,), "float32")
    expr = str(quantizer.level_from_source(data[0]))
    assert (" / " in expr) is not round_is_level, expr
    at = next(i for i, step in enumerate(steps) if step.op == "round")
    got = x
    for step in steps[:at + 1] if round_is_level else steps:
        got = step.numpy(got)
    got = got if round_is_level else np.rint(got * np.float32(1 / quantizer.scale))
    np.testing.assert_array_equal(got, want)


def test_reports_count_each_layers_multiply_accumulates():
    class Counted(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.grouped = nn.Conv2d(8, 6, 1, groups=2)
            self.dense = nn.Linear(6 * 4 * 4, 5)

        def forward(self, x):
            return self.dense(torch.flatten(self.grouped(self.conv(x)), 1))

    conv, grouped, dense = reports_of(Counted(), shape=(2, 3, 8, 8))
    assert conv.macs == 2 * 8 * 4 * 4 * (3 * 3 * 3)
    assert grouped.macs == 2 * 6 * 4 * 4 * 4  # 4 input channels per group
    assert dense.macs == 2 * 96 * 5
