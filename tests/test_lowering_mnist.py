"""Real data: a WRPN 2x 2/2 small CNN trained on MNIST-5k, compiled with bit-serial layers, against PyTorch.

The default test trains briefly on part of the training split (the agreement of compiler and
PyTorch is what is checked, not the accuracy itself); the slow one trains on all of it. Both
evaluate the 1000 held-out test images, compiled with batch 200.
"""

import dataclasses

import numpy as np
import pytest
import torch

from wrpn_tvm import build, runtime
from wrpn_tvm.data import load_dataset
from wrpn_tvm.nn import export_model, load_checkpoint, model_from_checkpoint
from wrpn_tvm.remote.session import DeviceSpec
from wrpn_tvm.train import latest_checkpoint, train

BATCH = 200


def _trained(tmp_path, train_images, epochs):
    data = load_dataset("mnist5k", seed=0)
    if train_images is not None:
        data = dataclasses.replace(data, x_train=data.x_train[:train_images], y_train=data.y_train[:train_images])
    output = tmp_path / "mnist.pt2"
    train("smallcnn", 2.0, 2, 2, data, epochs, output, seed=0, progress=False)
    checkpoint = latest_checkpoint(output)
    model = model_from_checkpoint(load_checkpoint(checkpoint), checkpoint).eval()
    program = tmp_path / "mnist-batch.pt2"
    torch.export.save(export_model(model, torch.from_numpy(data.x_test[:BATCH])), str(program))
    return model, program, data


@pytest.fixture(scope="module")
def quick_mnist(tmp_path_factory):
    return _trained(tmp_path_factory.mktemp("mnist-quick"), train_images=1500, epochs=2)


def _run_batches(library, x, device=DeviceSpec()):
    usable = len(x) - len(x) % BATCH
    return np.concatenate([runtime.run(library, [x[i:i + BATCH]], device)[0] for i in range(0, usable, BATCH)]), usable


def check_agreement(model, library, data, device=DeviceSpec()):
    logits, n = _run_batches(library, data.x_test, device)
    with torch.no_grad():
        ref = model(torch.from_numpy(data.x_test[:n])).numpy()
    labels = data.y_test[:n]
    agreement = np.mean(logits.argmax(1) == ref.argmax(1))
    ours, theirs = np.mean(logits.argmax(1) == labels), np.mean(ref.argmax(1) == labels)
    assert n >= 1000 and agreement >= 0.998, f"top-1 agreement {agreement:.4f} on {n} images"
    assert abs(ours - theirs) <= 0.001, f"accuracy {ours:.4f} vs PyTorch {theirs:.4f}"
    close = np.all(np.isclose(logits, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max()), axis=1)
    assert close.mean() >= 0.99, f"logits close on only {close.mean():.3f} of the images"
    return agreement, ours, theirs


def test_mnist_2x_2_2_on_host_agrees_with_pytorch(quick_mnist, tmp_path):
    model, program, data = quick_mnist
    result = build.compile_model(program, "host", tmp_path / "mnist.so")
    assert sum(layer.is_bitserial for layer in result.layers) == 2
    check_agreement(model, result.library, data)


@pytest.mark.emulator
def test_mnist_2x_2_2_on_emulated_rasp4_agrees_with_pytorch(quick_mnist, emulated_pool, tmp_path):
    model, program, data = quick_mnist
    result = build.compile_model(program, "rasp4", tmp_path / "mnist-rasp4.so")
    check_agreement(model, result.library, data, DeviceSpec(rpc=emulated_pool.direct, timeout=600))


@pytest.mark.slow
def test_mnist_2x_2_2_fully_trained_on_host_agrees_with_pytorch(tmp_path):
    model, program, data = _trained(tmp_path, train_images=None, epochs=6)
    result = build.compile_model(program, "host", tmp_path / "mnist.so")
    agreement, ours, theirs = check_agreement(model, result.library, data)
    assert theirs > 0.9  # a trained model, not a constant guess: the agreement means something
