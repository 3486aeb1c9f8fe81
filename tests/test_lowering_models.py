"""Whole models through lower_wrpn + compile, against PyTorch: hand-written and zoo networks on random data.

Every model gets BN statistics away from the identity so the folded epilogue is really exercised.
The heavier zoo configurations are marked slow.
"""

import re

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from torch.nn import functional as F

from wrpn_tvm import build, ops, runtime
from wrpn_tvm.cli import main as cli_main
from wrpn_tvm.frontend import to_relax
from wrpn_tvm.lowering import lower_wrpn
from wrpn_tvm.nn import build_model, export_model
from wrpn_tvm.pipeline import fuse_module
from wrpn_tvm.targets import resolve
from test_lowering_recognition import _quantize, on_grid
from layer_reports import recognized


def randomize_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = module.num_features
            module.running_mean.copy_(torch.rand(c, generator=g) * 0.6 - 0.3)
            module.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=g) * 0.7 + 0.3)
            module.bias.data.copy_(torch.rand(c, generator=g) * 0.5)
    return model.eval()


class HandWritten(nn.Module):
    """A WRPN network written from scratch: 2-bit and 1-bit convs, max pool, a bit-serial dense, FP32 ends."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 24, 3, padding=1)  # 2-bit weights with a bias
        self.bn2 = nn.BatchNorm2d(24)
        self.conv1 = nn.Conv2d(24, 40, 3, stride=2, padding=1, bias=False)  # binary weights
        self.bn1 = nn.BatchNorm2d(40)
        self.dense = nn.Linear(40 * 3 * 3, 32, bias=False)  # 3-bit weights
        self.bnd = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, 10)
        with torch.no_grad():
            for layer, bits in ((self.conv2, 2), (self.conv1, 1), (self.dense, 3)):
                layer.weight.copy_(on_grid(layer.weight.shape, bits, g))

    def forward(self, x):
        x = _quantize(self.bn0(self.stem(x)), 2)
        x = _quantize(self.bn2(self.conv2(x)), 1)
        x = F.max_pool2d(_quantize(self.bn1(self.conv1(x)), 2), 2)
        x = _quantize(self.bnd(self.dense(torch.flatten(x, 1))), 2)
        return self.head(x)


def assert_matches_pytorch(model, x, out):
    """Each sample's logits equal PyTorch's, evaluated in float32 or in float64.

    The integer part is exact, so the only freedom is a quantizer input that lands within float32
    rounding of a level boundary: PyTorch float32 may round it one way, float64 and the compiled
    model the other, and the flipped level propagates. Either reference is then a right answer.
    """
    with torch.no_grad():
        ref32 = model(x).numpy()
        ref64 = model.double()(x.double()).numpy()
    model.float()
    tolerance = 1e-3 * np.abs(ref32).max()
    close = [np.allclose(o, r32, rtol=1e-3, atol=tolerance) or np.allclose(o, r64, rtol=1e-3, atol=tolerance)
             for o, r32, r64 in zip(out, ref32, ref64)]
    assert all(close), f"samples {[i for i, c in enumerate(close) if not c]} differ from PyTorch"
    return ref32


def compile_and_compare(model, x, tmp_path, name):
    """Export, compile for host with compile_model (what `wrpn-tvm compile` runs), run, compare with PyTorch."""
    path = tmp_path / f"{name}.pt2"
    torch.export.save(export_model(model, x), str(path))
    result = build.compile_model(path, "host", tmp_path / f"{name}.so")
    (out,) = runtime.run(result.library, [x.numpy()])
    assert_matches_pytorch(model, x, out)
    return result


def test_hand_written_module_compiles_and_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    model = randomize_batch_norm(HandWritten())
    result = compile_and_compare(model, torch.rand(8, 1, 12, 12), tmp_path, "handwritten")
    assert recognized(result.layers) == ["fp32", "conv2d a2/w2", "conv2d a1/w1", "dense a2/w3", "fp32"]


# Each kernel's input stage: bit-planes for bit-serial, int8 levels for the int8 dot product.
PACKS = [("bit-serial", "bitpack"), ("int8-dot", "int8_levels")]


@pytest.mark.parametrize("kernels, pack", PACKS)
def test_next_layers_pack_fuses_into_the_epilogue(kernels, pack):
    """conv2 -> quantizer -> conv1: conv1's input is packed straight from conv2's int32 accumulator."""
    model = randomize_batch_norm(HandWritten())
    mod, _ = lower_wrpn(to_relax(export_model(model, torch.rand(1, 1, 12, 12))), resolve("host"), kernels)
    calls = [b.value for b in mod["main"].body.blocks[0].bindings if "call_tir" in str(getattr(b.value, "op", ""))]
    fused = [c for c in calls if c.args[0].name_hint.startswith(f"wrpn_epilogue_{pack}")]
    assert len(fused) == 1
    accumulator = fused[0].args[1].fields[0]
    assert accumulator.ty.dtype == "int32"


def _conv_kernels(mod) -> dict:
    """{name: PrimFunc} of the lowered module's bit-serial conv kernels."""
    return {gvar.name_hint: func for gvar, func in mod.functions_items()
            if isinstance(func, tvm.tirx.PrimFunc) and gvar.name_hint.startswith("wrpn_conv2d")}


def _word_dtype(func) -> str:
    """The dtype of a conv kernel's first argument, the packed activations, as TVMScript prints it."""
    return re.search(r'def \w+\(\w+: T\.Buffer\(.*?, "(\w+)"', func.script()).group(1)


def _weight_rank(func) -> int:
    """The rank of a conv kernel's second argument, its packed weights (6: blocked by output channels)."""
    shapes = re.findall(r'T\.Buffer\(\((.*?)\), "\w+"\)', func.script())
    return len(re.findall(r"T\.int64\(\d+\)", shapes[1]))


def test_avx512_convs_sum_each_shift_group_apart_in_32_bit_words():
    """Where VPOPCNTQ counts zmm registers, every conv with multi-bit weights keeps an accumulator
    per shift group (its combine stage is in the kernel's function) and counts 32-bit words: it
    reads the packed 64-bit words through a view as twice as many 32-bit halves, with its weights
    blocked by 16 output channels. Other targets keep one sum over 64-bit words (32-bit on CUDA,
    which never views) and plain weights."""
    model = randomize_batch_norm(build_model("resnet18", 2.0, 2, 2, in_channels=3, image_size=32))
    program = to_relax(export_model(model, torch.rand(1, 3, 32, 32)))

    def lowered(target):
        mod, reports = lower_wrpn(program, resolve(target), "bit-serial")
        kernels = _conv_kernels(mod)
        split = sum(ops.SHIFT_COMBINE in func.script() for func in kernels.values())
        word_dtypes = {_word_dtype(func) for func in kernels.values()}
        ranks = {_weight_rank(func) for func in kernels.values()}
        return len(kernels), split, word_dtypes, ranks, "memory.view" in mod["main"].script(), reports

    kernels, split, dtypes, ranks, views, reports = lowered("x86-avx512")
    assert kernels == split > 0 and dtypes == {"uint32"} and ranks == {6} and views
    assert sum(r.is_bitserial for r in reports) == 19
    for target, word in (("x86-avx2", "uint64"), ("rasp4", "uint64"), ("cuda", "uint32")):
        kernels, split, dtypes, ranks, views, _ = lowered(target)
        assert kernels > 0 and split == 0 and dtypes == {word} and ranks == {5} and not views, target


class WideLayer(nn.Module):
    """Plain PyTorch: a 2/2 conv over 256 channels, long enough for AVX-512's shift-group form."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.stem = nn.Conv2d(3, 256, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(256)
        self.conv = nn.Conv2d(256, 40, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(40)
        self.head = nn.Linear(40, 10)
        with torch.no_grad():
            self.conv.weight.copy_(on_grid(self.conv.weight.shape, 2, g))

    def forward(self, x):
        x = _quantize(self.bn0(self.stem(x)), 2)
        x = _quantize(self.bn(self.conv(x)), 2)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class AwkwardLayers(nn.Module):
    """Plain PyTorch with channel counts that are not word multiples: 20 channels are one 64-bit
    word but only one 32-bit word, so the 32-bit form's weights get a zero word beside their own."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(6)
        self.stem = nn.Conv2d(3, 20, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(20)
        self.conv = nn.Conv2d(20, 36, 3, stride=2, padding=1, bias=False)  # a2/w2
        self.bn1 = nn.BatchNorm2d(36)
        self.pointwise = nn.Conv2d(36, 100, 1, bias=False)  # a4/w3
        self.bn2 = nn.BatchNorm2d(100)
        self.head = nn.Linear(100, 10)
        with torch.no_grad():
            self.conv.weight.copy_(on_grid(self.conv.weight.shape, 2, g))
            self.pointwise.weight.copy_(on_grid(self.pointwise.weight.shape, 3, g))

    def forward(self, x):
        x = _quantize(self.bn0(self.stem(x)), 2)
        x = _quantize(self.bn1(self.conv(x)), 4)
        x = _quantize(self.bn2(self.pointwise(x)), 2)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_32_bit_shift_group_convs_over_odd_channel_counts_match_pytorch(tmp_path):
    """Compiled for this host (on an AVX-512 CPU, the 32-bit shift-group form; the x86-avx512 lowering
    is checked to give it), the model computes PyTorch's logits."""
    torch.manual_seed(0)
    model, x = randomize_batch_norm(AwkwardLayers()), torch.rand(2, 3, 11, 11)
    program = export_model(model, x)
    mod, reports = lower_wrpn(to_relax(program), resolve("x86-avx512"), "bit-serial")
    assert [r.lowered_to for r in reports if r.is_bitserial] == ["bit-serial conv2d a2/w2", "bit-serial conv2d a4/w3"]
    assert {_word_dtype(func) for func in _conv_kernels(mod).values()} == {"uint32"}
    path = tmp_path / "awkward.pt2"
    torch.export.save(program, str(path))
    result = build.compile_model(path, "host", tmp_path / "awkward.so", kernels="bit-serial")
    (out,) = runtime.run(result.library, [x.numpy()])
    assert_matches_pytorch(model, x, out)


def test_shift_group_conv_in_a_plain_pytorch_model_matches_pytorch(tmp_path):
    """Lowered for AVX-512 the conv takes the shift-group form; compiled for this host (the same
    form on an AVX-512 CPU) the model computes PyTorch's logits."""
    torch.manual_seed(0)
    model, x = randomize_batch_norm(WideLayer()), torch.rand(2, 3, 9, 9)
    program = export_model(model, x)
    mod, reports = lower_wrpn(to_relax(program), resolve("x86-avx512"), "bit-serial")
    assert [r.lowered_to for r in reports if r.is_bitserial] == ["bit-serial conv2d a2/w2"]
    assert any(ops.SHIFT_COMBINE in func.script() for _, func in mod.functions_items()
               if isinstance(func, tvm.tirx.PrimFunc))
    path = tmp_path / "wide.pt2"
    torch.export.save(program, str(path))
    result = build.compile_model(path, "host", tmp_path / "wide.so", kernels="bit-serial")
    (out,) = runtime.run(result.library, [x.numpy()])
    assert_matches_pytorch(model, x, out)


@pytest.mark.parametrize("kernels, pack", PACKS)
def test_resnet_glue_fuses_so_only_the_first_pack_reads_a_float_map(kernels, pack):
    """Residual adds, BN and the quantizer between quantized layers fold into the packing kernels."""
    model = randomize_batch_norm(build_model("resnet18", 0.25, 2, 2, in_channels=3, image_size=32))
    mod, reports = lower_wrpn(to_relax(export_model(model, torch.rand(1, 3, 32, 32))), resolve("host"), kernels)
    packs = [b.value.args[0].name_hint for b in mod["main"].body.blocks[0].bindings
             if pack in getattr(getattr(b.value, "args", [None])[0], "name_hint", "")]
    plain = [name for name in packs if not name.startswith(f"wrpn_epilogue_{pack}")]
    assert len(plain) == 1  # after the FP32 stem's max pool
    # one pack per block input (8; a shortcut conv shares its block's) and per block-internal activation (8)
    assert len(packs) == 8 + 8 and sum(r.is_bitserial for r in reports) == 19
    fused = fuse_module(mod, resolve("host"))
    float_maps = [b.value.args[0].name_hint for b in fused["main"].body.blocks[0].bindings
                  if "call_tir" in str(getattr(b.value, "op", "")) and b.var.ty.dtype == "float32"]
    # The stem conv and its max pool (NCHW16c), the last block's output, its average and the
    # classifier: the first block's quantized shortcut is recomputed in the packs that add it, never
    # written. Bit-serial only: the pooled map back in NCHW, which the first block's residual reads
    # besides the pack (the int8 path's residual reads the pack's levels, so the pack transposes it).
    assert len(float_maps) == (6 if kernels == "bit-serial" else 5), float_maps


def test_int8_convs_write_the_next_levels_and_residuals_read_levels(tmp_path):
    """With the int8 kernel, a conv whose output feeds only the next int8 pack computes that pack
    (FuseOps fuses the two: the pack is one compute of its accumulators) and writes uint8 levels,
    never int32 sums; a residual's quantized shortcut is read back from the levels its block's first
    conv reads, so no float map is written between quantized layers. The same logits, bit for bit,
    as the bit-serial build."""
    torch.manual_seed(0)
    model = randomize_batch_norm(build_model("resnet18", 0.25, 4, 2, in_channels=3, image_size=32))
    x = torch.rand(2, 3, 32, 32)
    program = export_model(model, x)
    mod, _ = lower_wrpn(to_relax(program), resolve("host"), "int8-dot")
    fused = fuse_module(mod, resolve("host"))
    calls = [(b.value.args[0].name_hint, str(b.var.ty.dtype)) for b in fused["main"].body.blocks[0].bindings
             if "call_tir" in str(getattr(b.value, "op", ""))]
    convs = [(name, dtype) for name, dtype in calls if "int8_conv2d" in name]
    assert len(convs) == 19
    # Each stage entry's second 3x3 conv and its 1x1 shortcut conv feed one pack that reads both
    # accumulators: FuseOps fuses it into one of them at most. Every other conv writes levels.
    assert sum(dtype == "int32" for _, dtype in convs) <= 6
    standalone_packs = [name for name, dtype in calls if dtype == "uint8" and "conv2d" not in name]
    assert len(standalone_packs) <= 1 + 3  # the stem's pooled map, and at most one per stage entry
    float_maps = [name for name, dtype in calls if dtype == "float32"]
    # The stem conv, its max pool, the last block's output, its average and the classifier.
    assert len(float_maps) == 5, float_maps
    path = tmp_path / "resnet.pt2"
    torch.export.save(program, str(path))
    (int8,) = runtime.run(build.compile_model(path, "host", tmp_path / "int8.so", kernels="int8-dot").library,
                          [x.numpy()])
    (bitserial,) = runtime.run(build.compile_model(path, "host", tmp_path / "bs.so", kernels="bit-serial").library,
                               [x.numpy()])
    assert np.array_equal(int8, bitserial)


ZOO_FAST = [("smallcnn", 2.0, 2, 2, 28), ("resnet18", 0.5, 2, 2, 32)]
ZOO_SLOW = [
    ("resnet18", 1.0, 4, 2, 32), ("resnet18", 2.0, 4, 4, 32), ("resnet18", 1.0, 1, 1, 32),
    ("resnet34", 0.5, 2, 2, 32), ("alexnet", 0.25, 2, 2, 63), ("smallcnn", 3.0, 1, 1, 28),
]


def _zoo_case(tmp_path, name, width, abits, wbits, size):
    torch.manual_seed(1)
    model = randomize_batch_norm(build_model(name, width, abits, wbits, in_channels=3, image_size=size))
    result = compile_and_compare(model, torch.rand(4, 3, size, size), tmp_path, name)
    quantized = [layer for layer in result.layers if layer.is_bitserial]
    assert len(quantized) == len(result.layers) - 2  # all but the first and last layer
    assert all(layer.lowered_to.endswith(f"a{abits}/w{wbits}") for layer in quantized)


@pytest.mark.parametrize("name,width,abits,wbits,size", ZOO_FAST)
def test_zoo_model_matches_pytorch(tmp_path, name, width, abits, wbits, size):
    _zoo_case(tmp_path, name, width, abits, wbits, size)


@pytest.mark.slow
@pytest.mark.parametrize("name,width,abits,wbits,size", ZOO_SLOW)
def test_zoo_model_matches_pytorch_slow(tmp_path, name, width, abits, wbits, size):
    _zoo_case(tmp_path, name, width, abits, wbits, size)


def test_compile_explain_lists_every_layer(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "hand.pt2"
    torch.export.save(export_model(randomize_batch_norm(HandWritten()), torch.rand(1, 1, 12, 12)), str(path))
    assert cli_main(["compile", str(path), "--target", "host", "-o", str(tmp_path / "hand.so"), "--explain"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("layer  0  conv2d 3x3/1 pad 1, 1->16") and "fp32 as blocked conv (bias + batch_norm folded)  (input is not a WRPN" in lines[0]
    # Without AMX the int8-dot conv runs as Winograd, which the line names after its bits.
    assert "conv2d a2/w2" in lines[1] and "(epilogue: scale + bias + batch_norm; kernel by cost model: int8-dot" in lines[1]
    assert "conv2d a1/w1" in lines[2] and "input packed in its producer's epilogue" in lines[2]
    assert "bit-serial dense a2/w3" in lines[3] and "producer" not in lines[3]  # max pool + flatten in between
    assert lines[4].startswith("layer  4  dense  32->10") and "fp32  (weights lie on no WRPN grid" in lines[4]


def test_corrupt_program_is_one_line_and_exit_1(tmp_path, capsys):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert cli_main(["compile", str(bad), "--target", "host", "-o", str(tmp_path / "bad.so")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("wrpn-tvm: error:") and "\n" not in err


@pytest.mark.slow
@pytest.mark.parametrize("target", ["rasp3b", "rasp5", "x86-avx2", "cuda"])
def test_lowered_model_compiles_for_every_target_family(tmp_path, target):
    """Compile only (running needs the device): the lowering is target-independent up to the word size."""
    path = tmp_path / "hand.pt2"
    torch.export.save(export_model(randomize_batch_norm(HandWritten()), torch.rand(2, 1, 12, 12)), str(path))
    result = build.compile_model(path, target, tmp_path / f"hand-{target}.so")
    assert [layer.is_bitserial for layer in result.layers] == [False, True, True, True, False]
    assert result.library.stat().st_size > 0
