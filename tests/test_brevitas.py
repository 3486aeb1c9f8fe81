"""Brevitas models (an optional test dependency: `pip install brevitas`), exported with torch.export
as they are: 2-bit and 4-bit QuantConv2d / QuantReLU / QuantLinear lower bit-serial and match
PyTorch; a setting that cannot (a non-zero zero point) says exactly that; a Brevitas model trained
on MNIST-5k agrees with PyTorch on the host and on the emulated Pi.
"""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

brevitas_nn = pytest.importorskip("brevitas.nn")
from brevitas.quant import ShiftedUint8ActPerTensorFloat  # noqa: E402

from wrpn_tvm import build, runtime  # noqa: E402
from wrpn_tvm.frontend import to_relax  # noqa: E402
from wrpn_tvm.lowering import lower_wrpn  # noqa: E402
from wrpn_tvm.remote.session import DeviceSpec  # noqa: E402
from wrpn_tvm.targets import resolve  # noqa: E402
from test_lowering_models import assert_matches_pytorch, randomize_batch_norm  # noqa: E402
from test_qat_mnist import compile_and_agree, export_as_is, train  # noqa: E402
from layer_reports import recognized  # noqa: E402


class BrevitasNet(nn.Module):
    """FP32 stem -> QuantReLU -> QuantConv2d -> BN -> max pool -> QuantReLU -> QuantLinear -> BN -> FP32 head."""

    def __init__(self, abits, wbits, per_channel=False, channels=(16, 32), image=8, hidden=32):
        super().__init__()
        weights = dict(weight_bit_width=wbits, weight_scaling_per_output_channel=per_channel, bias=False)
        self.stem, self.bn0 = nn.Conv2d(1, channels[0], 3, padding=1), nn.BatchNorm2d(channels[0])
        self.act0 = brevitas_nn.QuantReLU(bit_width=abits)
        self.conv, self.bn1 = brevitas_nn.QuantConv2d(channels[0], channels[1], 3, padding=1, **weights), nn.BatchNorm2d(channels[1])
        self.act1 = brevitas_nn.QuantReLU(bit_width=abits)
        self.fc, self.bn2 = brevitas_nn.QuantLinear(channels[1] * (image // 2) ** 2, hidden, **weights), nn.BatchNorm1d(hidden)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x):
        x = self.act0(self.bn0(self.stem(x)))
        x = self.act1(F.max_pool2d(self.bn1(self.conv(x)), 2))
        return self.head(self.bn2(self.fc(torch.flatten(x, 1))))


@pytest.mark.parametrize("abits,wbits,per_channel", [(2, 2, False), (4, 4, False), (2, 4, True)],
                         ids=["a2w2", "a4w4", "a2w4-per-channel"])
def test_brevitas_models_lower_bit_serial_and_match_pytorch(abits, wbits, per_channel, tmp_path):
    torch.manual_seed(0)
    model = randomize_batch_norm(BrevitasNet(abits, wbits, per_channel))
    x = torch.rand(4, 1, 8, 8)
    program = tmp_path / "brevitas.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(program))
    result = build.compile_model(program, "host", tmp_path / "brevitas.so")
    assert recognized(result.layers) == ["fp32", f"conv2d a{abits}/w{wbits}", f"dense a{abits}/w{wbits}", "fp32"]
    (out,) = runtime.run(result.library, [x.numpy()])
    assert_matches_pytorch(model, x, out)


def test_a_brevitas_zero_point_is_named_as_the_reason():
    model = nn.Sequential(brevitas_nn.QuantIdentity(act_quant=ShiftedUint8ActPerTensorFloat, bit_width=2),
                          brevitas_nn.QuantConv2d(4, 8, 3, weight_bit_width=2, bias=False))
    torch.manual_seed(0)
    model.train()
    for _ in range(5):  # the zero point is learned from statistics of inputs that go negative
        model(torch.randn(8, 4, 8, 8) * 2 - 1)
    program = torch.export.export(model.eval(), (torch.randn(1, 4, 8, 8),))
    (report,) = lower_wrpn(to_relax(program), resolve("host"))[1]
    assert not report.is_bitserial
    assert report.reason.startswith("the quantizer before it has a non-zero zero point: 0.0 is level ")


@pytest.fixture(scope="module")
def trained_brevitas(tmp_path_factory):
    model, data = train(BrevitasNet(2, 2, channels=(16, 32), image=28, hidden=64), train_images=2000, epochs=2)
    return model, export_as_is(model, data, tmp_path_factory.mktemp("brevitas")), data


EXPECTED = ["fp32", "conv2d a2/w2", "dense a2/w2", "fp32"]


def test_brevitas_trained_on_mnist_agrees_with_pytorch_on_host(trained_brevitas, tmp_path):
    agreement, ours, theirs = compile_and_agree(trained_brevitas, EXPECTED, "host", tmp_path / "brevitas.so")
    assert theirs > 0.5  # it learned: agreement is not that of a constant guess


@pytest.mark.emulator
def test_brevitas_trained_on_mnist_agrees_with_pytorch_on_emulated_rasp4(trained_brevitas, emulated_pool, tmp_path):
    device = DeviceSpec(rpc=emulated_pool.direct, timeout=600)
    compile_and_agree(trained_brevitas, EXPECTED, "rasp4", tmp_path / "brevitas-rasp4.so", device)
