"""A model trained the way people write quantization-aware training in plain PyTorch (quantizers in
forward(), detach straight-through estimators, a learned PACT clip, ternary weights), trained on
MNIST-5k, exported as it is (no freezing, no wrpn_tvm in the model), compiled for the host and for
a Raspberry Pi 4: every quantized conv / dense bit-serial, top-1 agreement with PyTorch >= 99.8%
on the 1000 test images, on the host and on the emulated Pi.

The default run trains two short epochs on part of the training split (agreement of compiler and
PyTorch is what is checked); the slow one trains on all of it and also checks accuracy.
"""

import dataclasses

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from wrpn_tvm import build
from wrpn_tvm.data import load_dataset
from wrpn_tvm.remote.session import DeviceSpec
from test_lowering_mnist import BATCH, check_agreement
from layer_reports import recognized


def _ste(x, q):
    return x + (q - x).detach()


def pact(x, alpha, bits):
    """PACT: clip to a learned [0, alpha], 2^k - 1 levels, straight-through round."""
    clipped = F.relu(x) - F.relu(x - alpha)
    n = 2**bits - 1
    return _ste(clipped, torch.round(clipped * n / alpha) * alpha / n)


def wrpn_weight(w, bits):
    n = 2 ** (bits - 1) - 1
    return _ste(w, torch.round(torch.clamp(w, -1, 1) * n) / n)


def ternary_weight(w):
    threshold = 0.7 * w.abs().mean()
    mask = (w.abs() > threshold).float()
    alpha = (w.abs() * mask).sum() / mask.sum()
    return _ste(w, alpha * torch.sign(w) * mask)


class QATNet(nn.Module):
    """FP32 stem, a 2/2 WRPN conv, a 4-bit-activation ternary conv, a 2/2 dense, FP32 head."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv1, self.bn1 = nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.fc, self.bn3 = nn.Linear(32 * 7 * 7, 64, bias=False), nn.BatchNorm1d(64)
        self.head = nn.Linear(64, 10)
        self.alphas = nn.Parameter(torch.tensor([2.0, 2.0, 2.0]))
        for layer in (self.conv1, self.fc):  # WRPN trains weights in [-1, 1]: its clip and levels live there
            nn.init.uniform_(layer.weight, -1, 1)

    def forward(self, x):
        x = pact(self.bn0(self.stem(x)), self.alphas[0], 2)
        x = F.max_pool2d(self.bn1(F.conv2d(x, wrpn_weight(self.conv1.weight, 2), padding=1)), 2)
        x = pact(x, self.alphas[1], 4)
        x = F.max_pool2d(self.bn2(F.conv2d(x, ternary_weight(self.conv2.weight), padding=1)), 2)
        x = pact(torch.flatten(x, 1), self.alphas[2], 2)
        return self.head(self.bn3(F.linear(x, wrpn_weight(self.fc.weight, 2))))


EXPECTED = ["fp32", "conv2d a2/w2", "conv2d a4/w2", "dense a2/w2", "fp32"]


def train(model, train_images, epochs, seed=0):
    """A few epochs of Adam on MNIST-5k (the first `train_images` of its training split, or all)."""
    torch.manual_seed(seed)
    data = load_dataset("mnist5k", seed=seed)
    if train_images is not None:
        data = dataclasses.replace(data, x_train=data.x_train[:train_images], y_train=data.y_train[:train_images])
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval(), data


def export_as_is(model, data, folder):
    program = folder / "qat.pt2"
    torch.export.save(torch.export.export(model, (torch.from_numpy(data.x_test[:BATCH]),)), str(program))
    return program


def compile_and_agree(trained, expected, target, output, device=DeviceSpec()):
    """Compile (model, program, data) for the target: every layer as expected, and (agreement, our
    accuracy, PyTorch's) on the test set, checked by check_agreement."""
    model, program, data = trained
    result = build.compile_model(program, target, output)
    assert recognized(result.layers) == expected, [str(layer) for layer in result.layers]
    assert result.warnings == []
    return check_agreement(model, result.library, data, device)


@pytest.fixture(scope="module")
def quick_qat(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qat")
    model, data = train(QATNet(), train_images=2000, epochs=2)
    return model, export_as_is(model, data, folder), data


def test_plain_pytorch_qat_on_host_agrees_with_pytorch(quick_qat, tmp_path):
    agreement, ours, theirs = compile_and_agree(quick_qat, EXPECTED, "host", tmp_path / "qat.so")
    assert theirs > 0.5  # it learned: agreement is not that of a constant guess


@pytest.mark.emulator
def test_plain_pytorch_qat_on_emulated_rasp4_agrees_with_pytorch(quick_qat, emulated_pool, tmp_path):
    compile_and_agree(quick_qat, EXPECTED, "rasp4", tmp_path / "qat-rasp4.so", DeviceSpec(rpc=emulated_pool.direct, timeout=600))


@pytest.mark.slow
def test_plain_pytorch_qat_fully_trained_on_host_agrees_with_pytorch(tmp_path):
    model, data = train(QATNet(), train_images=None, epochs=6)
    trained = model, export_as_is(model, data, tmp_path), data
    agreement, ours, theirs = compile_and_agree(trained, EXPECTED, "host", tmp_path / "qat.so")
    assert theirs > 0.9  # a trained model, not a constant guess: the agreement means something
