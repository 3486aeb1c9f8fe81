"""WRPN quantizers, layers, widening and the model zoo (wrpn_tvm.nn)."""

import numpy as np
import pytest
import torch
from torch import nn

from wrpn_tvm.errors import WrpnError
from wrpn_tvm.nn import (MODEL_NAMES, WRPNAct, WRPNConv2d, WRPNLinear, build_model, quantize_activation,
                         quantize_weight)

BITS = range(1, 9)


def reference_activation(a: np.ndarray, k: int) -> np.ndarray:
    """The paper's activation quantizer in float64 numpy (round half to even, as torch.round)."""
    clipped = np.clip(a, 0, 1)
    if k == 1:
        return np.round(clipped)
    n = 2**k - 1
    return np.round(clipped * n) / n


def reference_weight(w: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        alpha = np.abs(w).reshape(len(w), -1).mean(axis=1).reshape((-1,) + (1,) * (w.ndim - 1))
        return np.where(w >= 0, alpha, -alpha)
    n = 2 ** (k - 1) - 1
    return np.round(np.clip(w, -1, 1) * n) / n


@pytest.mark.parametrize("k", BITS)
def test_activation_values_and_levels(k):
    a = torch.linspace(-0.5, 1.5, 4001, dtype=torch.float64)
    q = quantize_activation(a, k)
    np.testing.assert_allclose(q.numpy(), reference_activation(a.numpy(), k), rtol=0, atol=1e-12)
    levels = torch.unique(q)
    assert len(levels) == 2**k
    integer = levels * (2**k - 1)
    assert torch.equal(integer, torch.round(integer)) and integer.min() == 0 and integer.max() == 2**k - 1


@pytest.mark.parametrize("k", range(2, 9))
def test_weight_values_and_levels(k):
    w = torch.linspace(-1.5, 1.5, 6000, dtype=torch.float64).reshape(3, 2000)
    q = quantize_weight(w, k)
    np.testing.assert_allclose(q.numpy(), reference_weight(w.numpy(), k), rtol=0, atol=1e-12)
    n = 2 ** (k - 1) - 1
    integer = torch.unique(q) * n
    assert torch.allclose(integer, torch.round(integer))
    assert torch.equal(torch.round(integer), torch.arange(-n, n + 1, dtype=q.dtype))


def test_binary_weights_are_plus_minus_channel_mean():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3)
    w[0, 0, 0, 0] = 0.0  # sign(0) must give +alpha, never 0
    q = quantize_weight(w, 1)
    np.testing.assert_allclose(q.numpy(), reference_weight(w.numpy(), 1), rtol=1e-6)
    for channel in range(4):
        alpha = w[channel].abs().mean()
        assert set(torch.unique(q[channel]).tolist()) == {-alpha.item(), alpha.item()}
    assert q[0, 0, 0, 0] > 0


@pytest.mark.parametrize("k", BITS)
def test_straight_through_gradients(k):
    x = torch.linspace(-0.5, 1.5, 401, requires_grad=True)
    upstream = torch.randn(401)
    quantize_activation(x, k).backward(upstream)
    inside = ((x >= 0) & (x <= 1)).detach()
    assert torch.equal(x.grad, upstream * inside)

    w = torch.linspace(-1.5, 1.5, 402).reshape(2, 201).requires_grad_()
    upstream = torch.randn(2, 201)
    quantize_weight(w, k).backward(upstream)
    inside = ((w >= -1) & (w <= 1)).detach()
    assert torch.equal(w.grad, upstream * inside)


def test_full_precision_is_identity():
    x = torch.randn(5, 7)
    assert quantize_activation(x, 32) is x and quantize_weight(x, 32) is x


@pytest.mark.parametrize("bits", [0, 9, 16, 31, 33, -1, True, 2.0, "4"])
def test_invalid_bits_rejected(bits):
    with pytest.raises(WrpnError, match="1..8 or 32"):
        quantize_activation(torch.zeros(1), bits)
    with pytest.raises(WrpnError, match="1..8 or 32"):
        build_model("smallcnn", abits=bits)
    with pytest.raises(WrpnError, match="1..8 or 32"):
        WRPNConv2d(1, 1, 1, wbits=bits)


@pytest.mark.parametrize("width", [0, -1, 0.0, float("nan"), "wide"])
def test_invalid_width_rejected(width):
    with pytest.raises(WrpnError, match="width"):
        build_model("smallcnn", width=width)


def test_build_model_rejects_unknown_name_and_tiny_images():
    with pytest.raises(WrpnError, match="unknown model"):
        build_model("vgg16")
    with pytest.raises(WrpnError, match="image size"):
        build_model("resnet18", image_size=16)
    with pytest.raises(WrpnError, match="image size"):
        build_model("alexnet", image_size=32)


def _layers(model):
    """Each layer as (type and hyper-parameters, channel counts), in definition order."""
    layers = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            layers.append(((type(module), module.kernel_size, module.stride, module.padding, getattr(module, "wbits", 32)),
                           [module.in_channels, module.out_channels]))
        elif isinstance(module, nn.Linear):
            layers.append(((type(module), getattr(module, "wbits", 32)), [module.in_features, module.out_features]))
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
            layers.append(((type(module),), [module.num_features]))
        elif isinstance(module, (WRPNAct, nn.MaxPool2d)):
            layers.append(((type(module), getattr(module, "bits", None), getattr(module, "kernel_size", None)), []))
    return layers


@pytest.mark.parametrize("name,size", [("smallcnn", 28), ("resnet18", 32), ("alexnet", 63)])
def test_widening_changes_filter_counts_only(name, size):
    narrow = _layers(build_model(name, width=0.25, abits=2, wbits=2, image_size=size))
    wide = _layers(build_model(name, width=0.5, abits=2, wbits=2, image_size=size))
    assert [kind for kind, _ in narrow] == [kind for kind, _ in wide]
    narrow_counts = [count for _, counts in narrow for count in counts]
    wide_counts = [count for _, counts in wide for count in counts]
    # the network's input channels and class count stay; every other filter / feature count doubles
    assert wide_counts[0] == narrow_counts[0] and wide_counts[-1] == narrow_counts[-1]
    assert wide_counts[1:-1] == [2 * count for count in narrow_counts[1:-1]]


@pytest.mark.parametrize("name,size", [("smallcnn", 28), ("resnet18", 32), ("resnet34", 32), ("alexnet", 63)])
def test_first_and_last_layers_full_precision(name, size):
    model = build_model(name, width=0.25, abits=2, wbits=1, image_size=size, in_channels=3, num_classes=7)
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert type(weighted[0]) is nn.Conv2d and type(weighted[-1]) is nn.Linear
    assert all(isinstance(m, (WRPNConv2d, WRPNLinear)) and m.wbits == 1 for m in weighted[1:-1])
    assert all(m.bits == 2 for m in model.modules() if isinstance(m, WRPNAct))
    out = model.eval()(torch.rand(2, 3, size, size))
    assert out.shape == (2, 7)


def test_model_names():
    assert set(MODEL_NAMES) == {"smallcnn", "resnet18", "resnet34", "alexnet"}
