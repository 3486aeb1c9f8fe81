"""Activation memory read off the compiled program (wrpn_tvm.memory): bytes written per inference
and planned workspace, in the sidecar, in `bench --json`, and at another batch without codegen."""

import json

import pytest
import torch
from torch import nn

from wrpn_tvm import artifact, build, memory, runtime
from wrpn_tvm.cli import main
from wrpn_tvm.errors import WrpnError
from wrpn_tvm.kernel_kinds import BITSERIAL, INT8_DOT
from wrpn_tvm.nn import export_model
from wrpn_tvm.nn.layers import WRPNAct, WRPNConv2d


class Tiny(nn.Module):
    """An FP32 first conv, then one quantized conv: 1x1x8x8 -> 1x8x8x8 -> 1x16x8x8."""

    def __init__(self, bits):
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), WRPNAct(bits)
        self.conv2 = WRPNConv2d(8, 16, 3, padding=1, bias=False, wbits=bits)
        self.bn2, self.act2 = nn.BatchNorm2d(16), WRPNAct(bits)

    def forward(self, x):
        return self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))


# By hand, per inference at batch 1 (float32 4 B, int32 4 B, uint64 8 B):
FP32_WRITES = [8 * 8 * 8 * 4,  # conv1, its batch norm folded in, + relu
               16 * 8 * 8 * 4]  # conv2, its batch norm folded in, + relu
WRPN_WRITES = [8 * 8 * 8 * 4,  # conv1 (stays FP32, its batch norm folded in)
               8 * 8 * 2 * 8,  # quantize + bitpack: 8x8 pixels, 2 bit-planes, 8 channels in one 64-bit word
               8 * 8 * 16 * 4,  # bit-serial conv2: int32 accumulators
               16 * 8 * 8 * 4]  # epilogue (scale, batch norm, quantizer): float32
WRPN_INT8_WRITES = [8 * 8 * 8 * 4,  # conv1
                    8 * 8 * 8 * 1,  # quantize to levels: one uint8 per channel and pixel
                    8 * 8 * 16 * 4,  # int8-dot conv2: int32 accumulators
                    16 * 8 * 8 * 4]  # epilogue
OUTPUT = 16 * 8 * 8 * 4  # main's result: allocated outside the plan


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("memory")
    paths = {}
    for name, bits in (("fp32", 32), ("wrpn", 2)):
        torch.manual_seed(0)
        paths[name] = folder / f"{name}.pt2"
        torch.export.save(export_model(Tiny(bits).eval(), torch.zeros(1, 1, 8, 8)), str(paths[name]))
    return paths


# The figures below are by hand for the bit-serial kernel; the host's cost model may pick either.
@pytest.fixture(scope="module")
def footprints(programs):
    return {"fp32": memory.program_footprints(programs["fp32"], batches=(1,)),
            "wrpn": memory.program_footprints(programs["wrpn"], batches=(1, 32), kernels=BITSERIAL)}


@pytest.fixture(scope="module")
def compiled(programs):
    return build.compile_model(programs["wrpn"], "host", programs["wrpn"].with_suffix(".so"), kernels=BITSERIAL)


def test_bytes_written_are_the_kernel_outputs(footprints):
    figures = {name: by_batch[1] for name, by_batch in footprints.items()}
    assert figures["fp32"].activation_bytes == sum(FP32_WRITES) and figures["fp32"].kernel_calls == len(FP32_WRITES)
    assert figures["wrpn"].activation_bytes == sum(WRPN_WRITES) and figures["wrpn"].kernel_calls == len(WRPN_WRITES)
    # The bit-packed activation the quantized conv reads is 1/2 of its float32 form here (8 of 64 bits
    # used per word), but its int32 accumulators and float epilogue are written in full, where the
    # FP32 conv writes its output once (epilogue fused): this WRPN model writes more in all.
    assert WRPN_WRITES[1] == FP32_WRITES[0] // 2
    assert figures["wrpn"].activation_bytes > figures["fp32"].activation_bytes
    assert figures["fp32"].output_bytes == figures["wrpn"].output_bytes == OUTPUT
    # The planner puts same-dtype tensors whose lifetimes do not overlap in one storage and never
    # shares across dtypes; main's result is not in the plan (FP32: only conv1's output is).
    assert (figures["fp32"].workspace_bytes, figures["fp32"].storages) == (8 * 8 * 8 * 4, 1)
    assert (figures["wrpn"].workspace_bytes, figures["wrpn"].storages) == (sum(WRPN_WRITES[:3]), 3)


def test_the_int8_dot_kernel_writes_levels_not_bit_planes(programs):
    figures = memory.program_footprints(programs["wrpn"], batches=(1,), kernels=INT8_DOT)[1]
    assert (figures.activation_bytes, figures.kernel_calls) == (sum(WRPN_INT8_WRITES), len(WRPN_INT8_WRITES))


def test_the_sidecar_carries_the_builds_own_figures(compiled, footprints):
    recorded = artifact.read_sidecar(compiled.library)["memory"]
    assert recorded == compiled.memory.to_json() == footprints["wrpn"][1].to_json()  # the build's = the analysis'
    assert recorded["batch"] == 1 and recorded["activation_bytes"] == sum(WRPN_WRITES)
    assert set(recorded) == {"batch", *artifact.MEMORY_COUNTS}


def test_bench_json_includes_them_and_reads_older_sidecars(compiled, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", str(compiled.library), "--repeat", "1", "--number", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["memory"] == compiled.memory.to_json()
    assert "activations written 11.0 KiB per inference (4 kernel calls)" in capsys.readouterr().out

    old = tmp_path / "old.so"  # a sidecar written before the field existed
    old.write_bytes(compiled.library.read_bytes())
    meta = json.loads(compiled.sidecar.read_text())
    del meta["memory"]
    artifact.sidecar_path(old).write_text(json.dumps(meta))
    assert runtime.bench(old, repeat=1, number=1).memory is None
    compared = runtime.compare([compiled.library, old], repeat=1, number=1)
    assert compared.memory == {str(compiled.library): compiled.memory.to_json(), str(old): None}
    assert compared.table().count("activations written") == 1

    meta["memory"] = {"activation_bytes": "lots"}
    artifact.sidecar_path(old).write_text(json.dumps(meta))
    with pytest.raises(WrpnError, match="'memory' must hold"):
        artifact.read_sidecar(old)


def test_batch_32_traces_the_program_again(footprints):
    figures = footprints["wrpn"]
    assert figures[32].batch == 32 and figures[32].kernel_calls == figures[1].kernel_calls
    assert figures[32].activation_bytes == 32 * figures[1].activation_bytes  # every tensor here is batch-leading


def test_a_batch_baked_into_the_program_is_refused(tmp_path):
    class Flat(nn.Module):
        def forward(self, x):
            return x.reshape(1, -1) * 2  # exported at batch 1, this keeps a leading 1 at any batch

    path = tmp_path / "flat.pt2"
    torch.export.save(torch.export.export(Flat(), (torch.zeros(1, 4),)), str(path))
    with pytest.raises(WrpnError, match="export it from PyTorch at batch 32"):
        memory.program_footprints(path, batches=(32,))


def test_a_size_that_is_not_static_gives_no_figure():
    import tvm
    from tvm import relax

    assert memory._tensor_bytes(relax.TensorType([2, 3], "int8")) == 6
    assert memory._tensor_bytes(relax.TensorType([tvm.tirx.Var("n", "int64"), 3], "float32")) is None
