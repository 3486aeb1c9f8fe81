"""The staged conv and dense bitpack on x86 (schedules/staged_bitpack.py, x86.pack_word): a fused
epilogue's levels computed once per pixel (per row of a dense layer's input), each plane's word
gathered by vpmovmskb. Bit-exact against the numpy reference on awkward shapes, for the host's code
(AVX-512 here) and AVX2 code; staged exactly where it applies.
(The NEON implementation's tests read aarch64 code: tests/test_arm_asm.py.) A staged pack is no
tuning task: the build schedules it as untuned."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tvm

import schedules
from kernel_cases import dense_epilogue_bitpack, dense_epilogue_bitpack_case, epilogue_bitpack_case
from wrpn_tvm.pipeline import compile_prim_func
from wrpn_tvm.targets import resolve

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("arm_hot_loops", REPO / "benchmarks" / "arm_hot_loops.py")
arm_hot_loops = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(arm_hot_loops)

# Run here, so the host's own ISA (AVX-512 on the CI machines) and AVX2, which every such CPU runs.
TARGETS = ("host", "x86-avx2")
# (image, channels, activation bits): full and partial words, 1 to 8 planes, 16-channel groups
# past the last channel, channels off those groups (a partial group, one channel past one), odd images.
STAGED = [(56, 128, 2), (28, 256, 4), (7, 1024, 2), (7, 64, 3), (9, 16, 4), (5, 48, 2), (6, 96, 1), (7, 64, 1),
          (3, 32, 8), (5, 80, 2), (5, 24, 2), (3, 100, 3), (3, 65, 2)]
# Not staged: one plane of one partial word.
UNSTAGED = [(5, 48, 1)]
# (rows, channels, activation bits) of a dense layer's input: batch 1 and more, partial words and groups.
DENSE = [(1, 512, 2), (1, 4096, 1), (8, 1024, 4), (1, 100, 2), (3, 17, 3), (2, 70, 1), (1, 16, 8)]


def _exact(target: str, size: int, channels: int, abits: int, seed: int) -> None:
    args, want = epilogue_bitpack_case(np.random.default_rng(seed), size, channels, abits)
    executable = compile_prim_func(arm_hot_loops.epilogue_bitpack(size, channels, abits), resolve(target))
    out = tvm.runtime.tensor(np.zeros(want.shape, dtype=np.uint64))
    executable.mod["main"](*(tvm.runtime.tensor(a) for a in args), out)
    np.testing.assert_array_equal(out.numpy(), want)


def _scheduled_script(target: str, size: int, channels: int, abits: int) -> str:
    mod = tvm.IRModule({"main": arm_hot_loops.epilogue_bitpack(size, channels, abits)})
    return schedules.apply_default_schedules(mod, resolve(target).target)["main"].script()


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("size, channels, abits", STAGED + UNSTAGED)
def test_fused_bitpack_is_exact(target, size, channels, abits):
    _exact(target, size, channels, abits, seed=size * channels + abits)


@pytest.mark.parametrize("size, channels, abits", STAGED)
def test_fused_bitpack_is_staged_and_gathered_by_movemask(size, channels, abits):
    script = _scheduled_script("x86-avx2", size, channels, abits)
    assert "wrpn_levels_local" in script and script.count("llvm.x86.avx2.pmovmskb") >= 2


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("rows, channels, abits", DENSE)
def test_dense_bitpack_is_exact_and_staged(target, rows, channels, abits):
    args, want = dense_epilogue_bitpack_case(np.random.default_rng(rows * channels + abits), rows, channels, abits)
    func = dense_epilogue_bitpack(rows, channels, abits)
    executable = compile_prim_func(func, resolve(target))
    out = tvm.runtime.tensor(np.zeros(want.shape, dtype=np.uint64))
    executable.mod["main"](*(tvm.runtime.tensor(a) for a in args), out)
    np.testing.assert_array_equal(out.numpy(), want)
    script = schedules.apply_default_schedules(tvm.IRModule({"main": func}), resolve("x86-avx2").target)["main"].script()
    assert "wrpn_levels_local" in script and "llvm.x86.avx2.pmovmskb" in script


@pytest.mark.parametrize("size, channels, abits", UNSTAGED)
def test_other_packs_keep_the_generic_template(size, channels, abits):
    assert "pmovmskb" not in _scheduled_script("x86-avx2", size, channels, abits)


@pytest.mark.parametrize("target", ['{"kind": "llvm", "mcpu": "x86-64"}', '{"kind": "llvm", "mtriple": "aarch64-linux-gnu"}'])
def test_cpu_targets_without_avx2_keep_the_generic_pack(target):
    """vpmovmskb ymm is AVX2: an x86-64 baseline or a non-x86 "cpu" target must not get it."""
    assert "pmovmskb" not in _scheduled_script(target, 28, 128, 2)


@pytest.fixture(scope="module")
def hand_written_program(tmp_path_factory):
    """A WRPN network in plain PyTorch whose dense layer's 2-bit input pack is staged on every CPU,
    and whose first quantized conv's NCHW pack is staged on ARM (pixels of a row)."""
    import torch

    from test_lowering_models import HandWritten, randomize_batch_norm
    from wrpn_tvm.nn import export_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("staged") / "hand.pt2"
    torch.export.save(export_model(randomize_batch_norm(HandWritten()), torch.rand(4, 1, 12, 12)), str(path))
    return path


@pytest.mark.parametrize("target, staged", [
    ("host", {"fused_reshape_wrpn_bitpack1"}),
    ("rasp4", {"fused_reshape_wrpn_bitpack1", "wrpn_bitpack"}),
    ("cuda", set()),  # every GPU template samples its threads
])
def test_a_staged_pack_is_no_tuning_task_and_builds_as_untuned(hand_written_program, target, staged):
    """A staged pack has no decision to tune, and the generic pack that tuning would offer instead
    timed faster alone and slower in the model: the build schedules it before the database applies."""
    from wrpn_tvm.kernel_kinds import BITSERIAL
    from wrpn_tvm.pipeline import fuse_module, is_scheduled, prepare_module, tunable_module
    from wrpn_tvm.tuning.tasks import extract_tasks

    spec = resolve(target)
    mod = prepare_module(hand_written_program, spec, BITSERIAL)[0]
    tunable = tunable_module(mod, spec)
    fixed = {gv.name_hint for gv, func in tunable.functions.items()
             if isinstance(func, tvm.tirx.PrimFunc) and is_scheduled(func)}
    assert fixed == staged
    assert not fixed & {task.task_name for task in extract_tasks(mod, spec)}
    untuned = schedules.apply_default_schedules(fuse_module(mod, spec), spec.target)
    for name in fixed:
        tvm.ir.assert_structural_equal(tunable[name], untuned[name])
