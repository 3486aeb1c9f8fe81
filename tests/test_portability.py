"""Tuning logs travel between CPUs: a log applies to any CPU with every feature of the CPU it was
tuned on (with a note), is refused otherwise, and the shipped logs are found installed or not."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tvm.target import Target

from test_tuning_database import _write_log
from wrpn_tvm.errors import WrpnError
from wrpn_tvm.targets import TargetSpec, missing_features, resolve
from wrpn_tvm.tuning import load_database
from wrpn_tvm.tuning.shipped import find_shipped_log, resolve_log, shipped_logs

REPO = Path(__file__).resolve().parent.parent


def _host_on(mcpu: str, triple: str = "x86_64-linux-gnu") -> TargetSpec:
    """The `host` preset as it resolves on a machine whose CPU LLVM calls mcpu."""
    return TargetSpec("host", Target({"kind": "llvm", "mtriple": triple, "mcpu": mcpu, "num-cores": 2}), None)


def test_a_log_applies_to_a_cpu_with_a_superset_of_its_features(tmp_path, capsys):
    _write_log(tmp_path, _host_on("znver4").target)
    database = load_database(tmp_path, _host_on("znver5"))
    assert len(database.get_all_tuning_records()) == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "znver4" in err and "znver5" in err and "re-tune" in err, err


def test_a_log_is_refused_on_a_cpu_that_lacks_one_of_its_features(tmp_path):
    _write_log(tmp_path, _host_on("znver4").target)
    with pytest.raises(WrpnError, match="may use .*avx512vpopcntdq.*which host \\(haswell\\) lacks"):
        load_database(tmp_path, _host_on("haswell"))


def test_a_log_is_refused_on_another_architecture(tmp_path):
    _write_log(tmp_path, _host_on("znver4").target)
    with pytest.raises(WrpnError, match="another architecture"):
        load_database(tmp_path, resolve("rasp4"))
    with pytest.raises(WrpnError, match="another architecture"):
        load_database(tmp_path, _host_on("cortex-a72", "aarch64-linux-gnu"))


def test_strict_target_keeps_the_exact_match(tmp_path):
    _write_log(tmp_path, _host_on("znver4").target)
    assert len(load_database(tmp_path, _host_on("znver4"), strict_target=True).get_all_tuning_records()) == 4
    with pytest.raises(WrpnError, match="--strict-target"):
        load_database(tmp_path, _host_on("znver5"), strict_target=True)


def test_isa_presets_run_on_every_cpu_of_their_level():
    avx512, avx2 = resolve("x86-avx512").target, resolve("x86-avx2").target
    for cpu in ("znver4", "znver5", "icelake-server", "sapphirerapids"):
        assert missing_features(avx512, _host_on(cpu).target) == frozenset(), cpu
    for cpu in ("haswell", "znver2", "znver3", "alderlake", "znver4"):
        assert missing_features(avx2, _host_on(cpu).target) == frozenset(), cpu
    assert "avx512vpopcntdq" in missing_features(avx512, _host_on("znver3").target)
    avx_vnni = resolve("x86-avx2-vnni").target
    for cpu in ("alderlake", "meteorlake", "arrowlake", "sapphirerapids", "znver5"):
        assert missing_features(avx_vnni, _host_on(cpu).target) == frozenset(), cpu
    for cpu in ("haswell", "znver3", "znver4"):  # Zen 4 has AVX512-VNNI, not the VEX-encoded AVX-VNNI
        assert missing_features(avx_vnni, _host_on(cpu).target) == {"avxvnni"}, cpu


def test_every_shipped_log_is_for_an_isa_preset_and_applies_here():
    logs = shipped_logs()
    assert {log.name for log in logs} >= {"smallcnn-2x-a2w2-x86-avx512", "resnet18-2x-a2w2-x86-avx512"}
    here = resolve("host")
    for log in logs:
        preset = next(name for name in ("x86-avx512", "x86-avx2") if log.name.endswith(name))
        assert len(load_database(log, resolve(preset), strict_target=True).get_all_tuning_records()) > 0
        # Every x86 CI machine has AVX2; the test suite's host must be able to use what fits it.
        if not missing_features(resolve(preset).target, here.target):
            load_database(log, here)


READ_EVERY_SHIPPED_LOG = """
import warnings
from wrpn_tvm.tuning.database import CorruptLineWarning, read_log
from wrpn_tvm.tuning.shipped import shipped_logs
warnings.simplefilter("error", CorruptLineWarning)
for log in shipped_logs():
    print(log.name, read_log(log).skipped_lines)
"""


def test_every_record_of_the_shipped_logs_replays_in_a_fresh_process():
    # A fresh process: records name intrinsics that only scheduling registers (the staged packs'),
    # and this process may have scheduled them already.
    out = subprocess.run([sys.executable, "-c", READ_EVERY_SHIPPED_LOG], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(out.stdout.splitlines()) >= 2 and all(line.endswith(" 0") for line in out.stdout.splitlines()), out.stdout


@pytest.mark.parametrize("cpu,expected", [
    ("znver5", "smallcnn-2x-a2w2-x86-avx512"),
    ("sapphirerapids", "smallcnn-2x-a2w2-x86-avx512"),
    ("haswell", None),  # no AVX2 log ships (see tuning_logs/README.md)
    ("core2", None),
])
def test_host_picks_the_best_shipped_log_that_applies(cpu, expected):
    found = find_shipped_log("smallcnn-2x-a2w2", _host_on(cpu))
    assert (found and found.name) == expected
    assert find_shipped_log("smallcnn-2x-a2w2", resolve("rasp4")) is None


def test_a_shipped_log_is_found_by_name():
    by_name = resolve_log("resnet18-2x-a2w2-x86-avx512")
    assert by_name.is_dir() and by_name.resolve() == (REPO / "tuning_logs" / "resnet18-2x-a2w2-x86-avx512").resolve()
    with pytest.raises(WrpnError, match="no such tuning log"):
        resolve_log("resnet18-9x-a2w2-x86-avx512")


def test_a_non_editable_install_finds_the_shipped_logs(tmp_path):
    """`pip install .` (not -e): compile with a shipped log by name, and the demo's lookup, from
    outside the checkout, with the installed copy of the package first on the path."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(site), str(REPO)], check=True, capture_output=True, timeout=600)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).eval()
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 8, 8),)), str(tmp_path / "m.pt2"))
    env = {**os.environ, "PYTHONPATH": str(site)}
    compiled = subprocess.run(
        [sys.executable, "-m", "wrpn_tvm", "compile", "m.pt2", "--target", "x86-avx512", "-o", "m.so",
         "--tuning-log", "smallcnn-2x-a2w2-x86-avx512"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert compiled.returncode == 0, compiled.stderr
    assert (tmp_path / "m.so").is_file()
    probe = ("import wrpn_tvm, wrpn_tvm.demo as d; from wrpn_tvm.resources import shipped_dir; "
             "print(wrpn_tvm.__file__); print(d.shipped_tuning_log(d.MODELS[1], 'x86-avx512')[0]); "
             "print((shipped_dir('benchmark_results') / 'accuracy_mnist5k.png').is_file())")
    found = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    module, log, plot = found.stdout.split()
    assert module.startswith(str(site)) and log.startswith(str(site)) and log.endswith("smallcnn-2x-a2w2-x86-avx512")
    assert plot == "True"


def _uncovered_tasks(program, log) -> list:
    """The tasks of a program that a log holds no record for, leaving out, on a host with AMX, the
    int8 convs its tiles run: a log tuned without AMX is not applied to them (`load_database`) and
    their compute takes AMX's shape (short rows sharing a tile)."""
    from tvm_ffi import structural_equal

    from wrpn_tvm.pipeline import amx_available, holds_tiled_conv, kernel_variants, prepare_module
    from wrpn_tvm.tuning.database import read_log
    from wrpn_tvm.tuning.tasks import extract_tasks

    spec = resolve("host")
    parsed = read_log(log)
    workloads = [parsed.workloads[index].mod for index in {index for index, _ in parsed.records}]
    tasks = extract_tasks([prepare_module(program, spec, kernels)[0] for kernels in kernel_variants(spec)], spec)
    on_tiles = {task.task_name for task in tasks if amx_available(spec.target) and holds_tiled_conv(task.dispatched[0])}
    uncovered = [task.task_name for task in tasks if task.task_name not in on_tiles
                 and not any(structural_equal(mod, task.dispatched[0]) for mod in workloads)]
    return uncovered


@pytest.mark.parametrize("model, options", [
    ("smallcnn", {}),
    pytest.param("resnet18", {"in_channels": 3, "num_classes": 1000, "seed": 0}, marks=pytest.mark.slow),
])
def test_the_shipped_logs_cover_every_task_of_their_model(tmp_path, model, options):
    """A change to the lowering changes the fused functions MetaSchedule keys its records on; a
    shipped log must then be re-tuned, or a build with it silently compiles those kernels untuned
    (and a conv whose kernels lack records is left to the cost model)."""
    from wrpn_tvm.nn import export

    program = tmp_path / f"{model}.pt2"
    export(model, 2.0, 2, 2, program, **options)
    assert _uncovered_tasks(program, resolve_log(f"{model}-2x-a2w2-x86-avx512")) == []
