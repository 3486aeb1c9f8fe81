"""Property: no WRPN-style model compiles to a silently wrong answer.

Hypothesis draws small networks: a full-precision first conv, 1-3 quantized conv blocks (random
channels 1-40, activation and weight bits 1-8 mixed, kernel 1/3/5, stride 1/2, padding 0-2,
residual add, batch norm, max/avg pooling either in the float domain or between the quantizer
and the conv), an optional quantized dense, and a full-precision final linear. Weights are frozen
on the WRPN grid, or deliberately off it (random floats, or a 10-bit grid), and so are some
activation quantizers (10 bits). Each model is exported, compiled for host and run: its logits
must match PyTorch, its top-1 must agree wherever PyTorch's top two are apart, and every layer
must be either bit-serial with bits the model really has, or FP32 with a reason.

CI runs a fixed, derandomized set of examples; a longer search is
`WRPN_PROPERTY_EXAMPLES=500 pytest tests/test_property_models.py` (see benchmarks/results/reliability.md).
"""

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from wrpn_tvm import build, runtime
from wrpn_tvm.nn import export_model

EXAMPLES = int(os.environ.get("WRPN_PROPERTY_EXAMPLES", "8"))
WIDE_BITS = 10  # past the 8 bits the lowering accepts: such layers must stay FP32
BATCH = 3
CLASSES = 10
RTOL = 1e-3  # the project's whole-model tolerance (tests/test_lowering_models.py)


def quantize(x, bits):
    """The WRPN activation quantizer, spelled as wrpn_tvm.nn.export freezes it."""
    x = torch.clamp(x, 0, 1)
    if bits == 1:
        return torch.round(x)
    n = 2**bits - 1
    return torch.round(x * n) / n


def grid_weights(shape, kind, bits, generator):
    """'grid': on the WRPN grid of `bits` (+-alpha per channel at 1 bit); 'wide': the 10-bit grid; 'off': random floats."""
    if kind == "off":
        return torch.randn(shape, generator=generator) * 0.3
    if kind == "grid" and bits == 1:
        alpha = torch.rand(shape[0], *([1] * (len(shape) - 1)), generator=generator) * 0.5 + 0.05
        return torch.where(torch.rand(shape, generator=generator) > 0.5, alpha, -alpha)
    top = 2 ** ((WIDE_BITS if kind == "wide" else bits) - 1) - 1
    return torch.randint(-top, top + 1, shape, generator=generator).float() / top


@dataclass(frozen=True)
class Block:
    """quantize(abits) [-> pool, when pool_before] -> conv -> [bn] -> [+ input] -> [pool, when not pool_before]."""

    channels: int
    abits: int
    wbits: int
    weight_kind: str  # grid | wide | off
    kernel: int
    stride: int
    padding: int
    batch_norm: bool
    residual: bool
    pool: str  # none | max | avg
    pool_before: bool  # between the quantizer and the conv (max keeps the grid, avg leaves it)

    @property
    def surely_bitserial(self) -> bool:
        return self.weight_kind == "grid" and self.abits <= 8 and not (self.pool != "none" and self.pool_before)


@dataclass(frozen=True)
class Spec:
    in_channels: int
    size: int
    stem_channels: int
    blocks: tuple
    dense: "tuple | None"  # (features, abits, wbits) of a quantized hidden dense layer
    head_abits: int
    seed: int


@st.composite
def specs(draw):
    """A model whose shapes are valid by construction (kernels and pools shrink to fit the feature map)."""
    in_channels, size = draw(st.integers(1, 3)), draw(st.integers(4, 12))
    stem_channels = channels = draw(st.integers(1, 40))
    spatial, blocks = size, []
    for _ in range(draw(st.integers(1, 3))):
        residual = draw(st.booleans())
        kernel = draw(st.sampled_from([1, 3, 5]))
        pool = draw(st.sampled_from(["none", "none", "max", "avg"]))
        pool_before = draw(st.booleans()) and not residual
        if pool != "none" and pool_before:
            pool = pool if spatial >= 2 else "none"
            spatial = spatial // 2 if pool != "none" else spatial
        stride = 1 if residual else draw(st.sampled_from([1, 2]))
        padding = kernel // 2 if residual else draw(st.sampled_from([0, 1, 2]))
        if spatial + 2 * padding < kernel:  # never for a residual block: its padding is kernel // 2
            kernel = 1
        spatial = (spatial + 2 * padding - kernel) // stride + 1
        if pool != "none" and not pool_before:
            pool = pool if spatial >= 2 else "none"
            spatial = spatial // 2 if pool != "none" else spatial
        abits = draw(st.sampled_from(list(range(1, 9)) * 3 + [WIDE_BITS]))
        blocks.append(Block(
            channels=channels if residual else draw(st.integers(1, 40)),
            abits=abits,
            wbits=draw(st.integers(1, 8)),
            weight_kind=draw(st.sampled_from(["grid"] * 6 + ["wide", "off"])),
            kernel=kernel, stride=stride, padding=padding,
            batch_norm=draw(st.booleans()), residual=residual, pool=pool, pool_before=pool_before,
        ))
        channels = blocks[-1].channels
    dense = draw(st.none() | st.tuples(st.integers(1, 40), st.integers(1, 8), st.integers(1, 8)))
    return Spec(in_channels, size, stem_channels, tuple(blocks), dense, draw(st.integers(1, 8)), draw(st.integers(0, 2**16)))


def _pool(x, kind):
    return F.max_pool2d(x, 2) if kind == "max" else F.avg_pool2d(x, 2)


class RandomWRPN(nn.Module):
    def __init__(self, spec: Spec):
        super().__init__()
        g = torch.Generator().manual_seed(spec.seed)
        self.spec = spec
        self.stem = nn.Conv2d(spec.in_channels, spec.stem_channels, 3, padding=1)
        with torch.no_grad():
            self.stem.weight.copy_(torch.randn(self.stem.weight.shape, generator=g) * 0.4)
            self.stem.bias.copy_(torch.rand(spec.stem_channels, generator=g) * 0.5)
        self.stem_bn = nn.BatchNorm2d(spec.stem_channels)
        self.convs, self.bns = nn.ModuleList(), nn.ModuleList()
        channels = spec.stem_channels
        for block in spec.blocks:
            conv = nn.Conv2d(channels, block.channels, block.kernel, block.stride, block.padding, bias=False)
            with torch.no_grad():
                conv.weight.copy_(grid_weights(conv.weight.shape, block.weight_kind, block.wbits, g))
            self.convs.append(conv)
            self.bns.append(nn.BatchNorm2d(block.channels) if block.batch_norm else nn.Identity())
            channels = block.channels
        self.features = channels * spec_output_size(spec) ** 2
        if spec.dense is not None:
            features, _, wbits = spec.dense
            self.dense = nn.Linear(self.features, features, bias=False)
            with torch.no_grad():
                self.dense.weight.copy_(grid_weights(self.dense.weight.shape, "grid", wbits, g))
            self.dense_bn = nn.BatchNorm1d(features)
        self.head = nn.Linear(spec.dense[0] if spec.dense else self.features, CLASSES)

    def forward(self, x):
        x = self.stem_bn(self.stem(x))
        for block, conv, bn in zip(self.spec.blocks, self.convs, self.bns):
            q = quantize(x, block.abits)
            if block.pool != "none" and block.pool_before:
                q = _pool(q, block.pool)
            y = bn(conv(q))
            if block.residual:
                y = y + x
            if block.pool != "none" and not block.pool_before:
                y = _pool(y, block.pool)
            x = y
        x = torch.flatten(x, 1)
        if self.spec.dense is not None:
            x = self.dense_bn(self.dense(quantize(x, self.spec.dense[1])))
        return self.head(quantize(x, self.spec.head_abits))


def spec_output_size(spec: Spec) -> int:
    size = spec.size
    for block in spec.blocks:
        if block.pool != "none" and block.pool_before:
            size //= 2
        size = (size + 2 * block.padding - block.kernel) // block.stride + 1
        if block.pool != "none" and not block.pool_before:
            size //= 2
    return size


def calibrate(model: RandomWRPN, x: torch.Tensor, seed: int) -> RandomWRPN:
    """Batch-norm statistics from the data, then perturbed: activations spread over the quantizer's
    range instead of saturating, and the folded epilogue is far from the identity."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            c = module.num_features
            module.running_mean += (torch.rand(c, generator=g) - 0.5) * 0.2
            module.running_var *= torch.rand(c, generator=g) + 0.5
            module.weight.data.copy_(torch.rand(c, generator=g) * 0.4 + 0.1)
            module.bias.data.copy_(torch.rand(c, generator=g) * 0.6)
    return model.eval()


def layer_expectations(spec: Spec, model: RandomWRPN):
    """(weight, activation bits, must be bit-serial) per conv2d / dense, in program order."""
    expected = [(model.stem.weight, None, False)]
    expected += [(conv.weight, block.abits, block.surely_bitserial) for block, conv in zip(spec.blocks, model.convs)]
    if spec.dense is not None:
        expected.append((model.dense.weight, spec.dense[1], True))
    expected.append((model.head.weight, spec.head_abits, False))
    return expected


def lies_on_grid(weight: torch.Tensor, bits: int) -> bool:
    """Each output channel is integer levels within the k-bit range times one scale of its own
    (+-alpha per channel at 1 bit); found by brute force over the level of the channel's largest weight."""
    w = weight.detach().double().reshape(weight.shape[0], -1)
    if bits == 1:
        alpha = w.abs().amax(1, keepdim=True)
        return bool((alpha > 0).all() and torch.allclose(w.abs(), alpha.expand_as(w), rtol=1e-6, atol=0))
    top = 2 ** (bits - 1) - 1
    for channel in w.abs():
        largest = channel.max()
        fits = [(channel / (largest / t) - (channel / (largest / t)).round()).abs().max() < 1e-3 for t in range(1, top + 1)]
        if largest > 0 and not any(fits):
            return False
    return True


def check_reports(reports, expected):
    assert len(reports) == len(expected), [str(r) for r in reports]
    for report, (weight, abits, must_lower) in zip(reports, expected):
        if report.is_bitserial:
            bits = report.lowered_to.rsplit(" ", 1)[1]  # "a2/w3"
            a, w = (int(part[1:]) for part in bits.split("/"))
            assert abits is not None and a == abits, f"{report}: the model quantizes its input to {abits} bits"
            assert lies_on_grid(weight, w), f"{report}: the weights are not on the {w}-bit grid"
        else:
            assert report.reason.strip(), f"{report}: FP32 without a reason"
            assert not must_lower, f"{report}: a plain WRPN layer was left FP32"


def check_logits(out: np.ndarray, ref: np.ndarray):
    scale = max(float(np.abs(ref).max()), 1e-6)
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=RTOL * scale)
    top2 = np.sort(ref, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > 4 * RTOL * scale  # a near tie may break either way within tolerance
    assert (out.argmax(1) == ref.argmax(1))[decisive].all()


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=specs())
def test_random_wrpn_models_compile_exactly(spec):
    torch.manual_seed(spec.seed)
    x = torch.rand(BATCH, spec.in_channels, spec.size, spec.size)
    model = calibrate(RandomWRPN(spec), x, spec.seed)
    with tempfile.TemporaryDirectory(prefix="wrpn-property-") as tmp:
        program = Path(tmp) / "model.pt2"
        torch.export.save(export_model(model, x), str(program))
        result = build.compile_model(program, "host", Path(tmp) / "model.so")
        (out,) = runtime.run(result.library, [x.numpy()])
    with torch.no_grad():
        ref = model(x).numpy()
    check_reports(result.layers, layer_expectations(spec, model))
    check_logits(out, ref)
