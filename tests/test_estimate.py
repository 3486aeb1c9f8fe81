"""`wrpn-tvm estimate`: structure, not speed (how close the figures are is benchmarks/arm_estimate.py's job).

The counting runs go through qemu-user: ARM libraries through the emulated Pi's Python (prepared
by scripts/setup.sh), x86 ones through qemu-x86_64.
"""

import json
import os
import re
import subprocess

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from wrpn_tvm.build import compile_model
from wrpn_tvm.cli import main
from wrpn_tvm.errors import WrpnError
from wrpn_tvm.estimate import estimate, estimate_x86, mca, profile

needs_emulator = pytest.mark.skipif(os.environ.get("WRPN_TVM_SKIP_EMULATOR") == "1", reason="WRPN_TVM_SKIP_EMULATOR=1")
ROWS, COLS = 37, 53


def sum_of_squares_library(folder, preset):
    """A hand-checkable kernel: B[i] = sum_j A[i, j]^2 over a 37 x 53 loop nest, one call."""
    import tvm
    from tvm.script import ir as I
    from tvm.script import relax as R
    from tvm.script import tirx as T
    from tvm.support import cc

    from wrpn_tvm.targets import resolve

    @I.ir_module
    class SumOfSquares:
        @T.prim_func
        def sum_sq(A: T.Buffer((ROWS, COLS), "float32"), B: T.Buffer((ROWS,), "float32")):
            for i in range(ROWS):
                B[i] = T.float32(0)
                for j in range(COLS):
                    B[i] = B[i] + A[i, j] * A[i, j]

        @R.function
        def main(a: R.Tensor((ROWS, COLS), "float32")):
            cls = SumOfSquares
            return R.call_tir(cls.sum_sq, (a,), R.Tensor((ROWS,), "float32"))

    spec = resolve(preset)
    library = folder / f"sum_sq-{preset}.so"
    tvm.compile(SumOfSquares, target=spec.target).export_library(
        str(library), fcompile=cc.cross_compiler(spec.cross_compiler) if spec.cross_compiler else None)
    target = {key: str(spec.target.attrs[key]) for key in ("mtriple", "mcpu")}
    (folder / f"{library.name}.json").write_text(json.dumps(
        {"target": {"name": preset, "json": {"kind": "llvm", **target}},
         "inputs": [{"name": "a", "shape": [ROWS, COLS], "dtype": "float32"}]}))
    return library


def multiply_adds(text: str) -> int:
    """How many float multiply-adds one instruction does (its vector lanes)."""
    if re.match(r"(fmadd|vfmadd\w*ss)\b", text):
        return 1
    if re.match(r"vfmadd\w*ps\b", text):
        return 8 if "%ymm" in text else 4
    if re.match(r"fmla\b", text):
        return 4 if ".4s" in text else 2
    return 0


@pytest.mark.parametrize("preset,outer_runs", [
    pytest.param("rasp4", ROWS, marks=needs_emulator),  # scalar: the outer loop's body runs once per row
    pytest.param("x86-avx2", None, marks=pytest.mark.slow),  # LLVM vectorizes over the rows here
])
def test_counts_match_the_tir_loop_extents(tmp_path, preset, outer_runs):
    prof = profile(sum_of_squares_library(tmp_path, preset))
    # However LLVM unrolled, vectorized and fused the loops, one multiply-add runs per (i, j).
    done = sum(runs * sum(multiply_adds(insn.text) for insn in block.instructions)
               for block, runs in zip(prof.blocks, prof.executions))
    assert done == ROWS * COLS
    hot_runs, hot = max(zip(prof.executions, prof.blocks), key=lambda pair: pair[0] * len(pair[1].instructions))
    assert hot.kernel == "sum_sq" and outer_runs in (None, hot_runs)


class QuantizedConvs(nn.Module):
    """FP32 conv, then a 2-bit quantizer and a conv with 2-bit weights: lowered to bit-serial kernels."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.first = nn.Conv2d(1, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randint(-1, 2, self.conv.weight.shape, generator=generator).float())

    def forward(self, x):
        x = torch.round(torch.clamp(self.first(x), 0, 1) * 3) / 3
        return F.relu(self.conv(x))


@pytest.fixture(scope="module")
def wrpn_library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("estimate")
    torch.export.save(torch.export.export(QuantizedConvs().eval(), (torch.rand(1, 1, 16, 16),)), str(folder / "q.pt2"))
    return compile_model(folder / "q.pt2", "aarch64", folder / "q.so").library


def library_kernels(library) -> set:
    symbols = subprocess.run(["aarch64-linux-gnu-nm", "--defined-only", str(library)], capture_output=True, text=True).stdout
    return {name[len("__tvm_ffi_"):] for _, kind, name in (line.split() for line in symbols.splitlines())
            if kind in "TtWw" and name.startswith("__tvm_ffi_")}


@needs_emulator
def test_every_kernel_gets_an_estimate_on_every_board(wrpn_library, tmp_path, capsys):
    figures = tmp_path / "estimate.json"
    assert main(["estimate", str(wrpn_library), "--json", str(figures)]) == 0  # aarch64 preset: all three boards
    printed = capsys.readouterr().out
    assert "ESTIMATED" in printed and "x86 calibration" in printed
    boards = json.loads(figures.read_text())["boards"]
    assert set(boards) == {"rasp3b", "rasp4", "rasp5"}
    for name, board in boards.items():
        assert f"{name}: {board['core']}" in printed
        kernels = {kernel["kernel"]: kernel for kernel in board["kernels"]}
        assert set(kernels) == library_kernels(wrpn_library) and any(k.startswith("wrpn_conv2d_a2w2") for k in kernels)
        assert all(k["calls"] >= 1 and 0 < k["ms_4_threads"] <= k["ms_1_thread"] for k in kernels.values())
        assert board["ms_4_threads"] < board["ms_1_thread"]


def test_llvm_mca_leaves_out_what_it_cannot_read():
    result = mca.block_cycles([["add x1, x1, #1", "(bad)"], ["(bad)"], ["cnt v0.16b, v0.16b"]],
                              "aarch64-linux-gnu", "cortex-a72")
    assert result.dropped == 2 and result.cycles[1] == 0.0
    assert result.cycles[0] > 0 and result.cycles[2] > 0


def test_refuses_what_it_cannot_estimate(tmp_path, library):
    with pytest.raises(WrpnError, match="estimate is for ARM libraries"):
        estimate(library)  # conftest's one-conv library, built for host
    with pytest.raises(WrpnError, match="x86 estimates need a library built for x86-avx2"):
        estimate_x86(library, 3.0, 1)
    (tmp_path / "lone.so").write_bytes(b"")
    assert main(["estimate", str(tmp_path / "lone.so")]) == 1
    assert main(["estimate", str(tmp_path / "missing.so")]) == 1


def test_a_custom_target_s_attributes_count_against_the_board(tmp_path):
    """A library built for a custom aarch64 target with +dotprod: Cortex-A53 (rasp3b) lacks it, and
    the sidecar's attributes, not only its CPU, say so (the same reading the runtime does)."""
    library = tmp_path / "custom.so"
    library.write_bytes(b"")
    (tmp_path / "custom.so.json").write_text(json.dumps({"target": {
        "name": "custom", "json": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a53",
                                   "mattr": "('+neon', '+dotprod')"}}}))
    with pytest.raises(WrpnError, match="uses dotprod, which the Cortex-A53 \\(rasp3b\\) lacks"):
        estimate(library, ["rasp3b"])
