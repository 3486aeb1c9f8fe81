"""Tuning by the cycle estimate (`tune --estimate`, no board) and the logs it writes; TVM's pooling
annotations tuned without its `Unknown schedule rule` warning.

The estimates' counting runs go through the emulated Pi's aarch64 Python (prepared by scripts/setup.sh).
"""

import json
import os

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from wrpn_tvm import pipeline
from wrpn_tvm.cli import main
from wrpn_tvm.errors import WrpnError
from wrpn_tvm.estimate import BOARDS
from wrpn_tvm.targets import resolve
from wrpn_tvm.tuning import load_database
from wrpn_tvm.tuning.database import RECORD_FILE, open_database
from wrpn_tvm.tuning.log_timing import ESTIMATED, IN_MODEL, MARKER_FILE, README_TITLE, mark_estimated
from wrpn_tvm.tuning.job import tune_tasks
from wrpn_tvm.tuning.tasks import extract_tasks

needs_emulator = pytest.mark.skipif(os.environ.get("WRPN_TVM_SKIP_EMULATOR") == "1", reason="WRPN_TVM_SKIP_EMULATOR=1")
ROWS, COLS = 37, 53


class ConvPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.conv(x)), 2)


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tune-estimate") / "convpool.pt2"
    torch.export.save(torch.export.export(ConvPool().eval(), (torch.rand(1, 1, 8, 8),)), str(path))
    return path


def tasks_of(program, preset):
    spec = resolve(preset)
    mod, _layers, _inputs = pipeline.prepare_module(program, spec)
    return spec, extract_tasks(mod, spec)


def sum_of_squares(parallel: bool):
    """B[i] = sum_j A[i, j]^2: the same kernel with its rows run serially or split over threads."""
    from tvm import s_tir
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def main(A: T.Buffer((ROWS, COLS), "float32"), B: T.Buffer((ROWS,), "float32")):
        for i, j in T.grid(ROWS, COLS):
            with T.sblock("B"):
                vi, vj = T.axis.remap("SR", [i, j])
                with T.init():
                    B[vi] = T.float32(0)
                B[vi] = B[vi] + A[vi, vj] * A[vi, vj]

    sch = s_tir.Schedule(main)
    if parallel:
        sch.parallel(sch.get_loops(sch.get_sblock("B"))[0])
    return sch.mod


def estimated_log(folder, spec):
    """A log dir with one record for spec's target, marked as estimated, as `tune --estimate` leaves it."""
    from tvm import s_tir
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.database import JSONDatabase, TuningRecord

    mod = sum_of_squares(parallel=False)
    folder.mkdir(exist_ok=True)
    database = JSONDatabase(work_dir=str(folder), module_equality="structural")
    database.commit_tuning_record(TuningRecord(s_tir.Schedule(mod).trace, database.commit_workload(mod), [1e-6],
                                               spec.target, ArgInfo.from_prim_func(mod["main"])))
    board = BOARDS[spec.name]
    mark_estimated(folder, board, board.cores, "calibration: none")
    return folder


@needs_emulator
def test_the_runner_estimates_each_candidate_without_a_board():
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    from wrpn_tvm.tuning.builder import make_builder
    from wrpn_tvm.tuning.estimate_runner import EstimateRunner

    spec = resolve("rasp4")
    mods = [sum_of_squares(parallel=False), sum_of_squares(parallel=True)]
    built = make_builder(spec).build([BuilderInput(mod, spec.target) for mod in mods])
    assert all(result.error_msg is None for result in built)
    inputs = [RunnerInput(result.artifact_path, "llvm", ArgInfo.from_prim_func(mod["main"])) for result, mod in zip(built, mods)]
    inputs.append(RunnerInput(str(built[0].artifact_path) + ".missing", "llvm", inputs[0].args_info))
    serial, parallel, missing = [future.result() for future in EstimateRunner(BOARDS["rasp4"], 4).run(inputs)]
    assert serial.error_msg is None and parallel.error_msg is None
    # ROWS x COLS dependent multiply-adds: at least one cycle each on one core, at 1.5 GHz.
    assert ROWS * COLS / 1.5e9 < serial.run_secs[0] < 1e-3
    assert parallel.run_secs[0] < serial.run_secs[0]  # 4 threads share the rows
    assert missing.run_secs is None and "estimate failed" in missing.error_msg  # the batch's other candidates still count


@needs_emulator
@pytest.mark.slow  # a tuning job under qemu: counting runs and a search, 2-6 minutes on 2 busy cores
def test_an_estimated_job_records_estimates_in_a_labelled_log(program, tmp_path, capfd):
    spec, tasks = tasks_of(program, "rasp4")
    assert any("pool" in task.task_name for task in tasks)
    result = tune_tasks(tasks, spec, 3, tmp_path, trials_per_batch=2, seed=0, estimate=True)
    assert result.estimated and result.measured == 3 and "ESTIMATED for rasp4" in result.device
    out, err = capfd.readouterr()
    assert "(estimated)" in out
    assert "Unknown schedule rule" not in out + err  # the model's max-pool was tuned without TVM's warning
    records = [json.loads(line)[1] for line in (tmp_path / RECORD_FILE).read_text().splitlines()]
    run_secs = [float(seconds) for record in records for seconds in record[1]]
    assert len(records) == len(run_secs) == 3 and all(0 < seconds < 1 for seconds in run_secs)  # none failed (1e10)
    marker = json.loads((tmp_path / MARKER_FILE).read_text())
    assert marker["timing"] == "estimated" and marker["board"] == "rasp4" and marker["mca_cpu"] == "cortex-a72"
    assert (tmp_path / "README.md").read_text().startswith(README_TITLE)
    # compile applies it and says its records are estimates
    assert main(["compile", str(program), "--target", "rasp4", "--tuning-log", str(tmp_path),
                 "-o", str(tmp_path / "convpool.so")]) == 0
    assert "holds ESTIMATED run times" in capfd.readouterr().err


def test_compile_says_a_log_holds_estimates(tmp_path, capsys):
    database = load_database(estimated_log(tmp_path, resolve("rasp4")), resolve("rasp4"))
    assert len(database.get_all_tuning_records()) == 1
    note = capsys.readouterr().err
    assert "holds ESTIMATED run times (rasp4 (Cortex-A72 at 1.5 GHz, 4 threads" in note


def test_estimated_and_measured_records_never_share_a_log(program, tmp_path, capsys):
    estimated = estimated_log(tmp_path / "estimated", resolve("rasp4"))
    measured = tmp_path / "measured"
    measured.mkdir()
    (measured / RECORD_FILE).write_text("[0, []]\n")  # any record line makes a log without the marker measured
    # A measured job (on a device) into an estimated log, and an estimated job into a measured one:
    # refused before the model is even read.
    assert main(["tune", "no-such.pt2", "--target", "rasp4", "--rpc", "127.0.0.1:9", "--log-dir", str(estimated)]) == 1
    assert main(["tune", "no-such.pt2", "--target", "rasp4", "--estimate", "--log-dir", str(measured)]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2
    assert "holds ESTIMATED run times" in errors[0] and "timing CPU candidates as in the model never adds to it" in errors[0]
    assert "holds measured run times timed warm" in errors[1] and "an estimated job (--estimate) never adds to it" in errors[1]
    # The same check under the job's lock, for a log that changed kind since.
    with pytest.raises(WrpnError, match="as in the model never adds to it"):
        open_database(estimated, resolve("rasp4"), IN_MODEL)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    open_database(fresh, resolve("rasp4"), ESTIMATED)  # an empty log dir takes any kind


@pytest.mark.parametrize("argv, message", [
    (["--target", "host", "--estimate"], "use --target rasp3b, rasp4, rasp5 (not host)"),
    (["--target", "rasp4", "--estimate", "--rpc", "127.0.0.1:9"], "--estimate runs nothing on a device"),
])
def test_estimate_refuses_what_it_cannot_estimate(argv, message, tmp_path, capsys):
    assert main(["tune", "no-such.pt2", *argv, "--log-dir", str(tmp_path)]) == 1
    assert message in capsys.readouterr().err


def test_every_pooling_annotation_has_a_rule_that_leaves_the_block_to_the_default_rules(program):
    import tvm
    from tvm import s_tir

    from wrpn_tvm.tuning.rules import POOL_RULES

    for key in ("cpu", "cuda"):  # x86 and aarch64 targets (keys arm_cpu, cpu) find the cpu rule
        for rule in POOL_RULES:
            assert tvm.get_global_func(f"s_tir.meta_schedule.{key}.meta_schedule.{rule}", allow_missing=True)
    _spec, tasks = tasks_of(program, "rasp4")
    pool = next(task for task in tasks if "pool" in task.task_name).dispatched[0]
    assert '"schedule_rule": "meta_schedule.pool_max"' in pool.script()
    sch = s_tir.Schedule(pool)
    apply = tvm.get_global_func("s_tir.meta_schedule.cpu.meta_schedule.pool_max")
    (scheduled,) = apply(sch, sch.get_sblock("pool_max"))
    assert '"schedule_rule"' not in scheduled.mod.script()


@pytest.mark.usefixtures("tensor_intrinsics")
def test_max_pool_design_spaces_come_without_the_unknown_schedule_rule_warning(program, capfd):
    """Where a tune printed `Unknown schedule rule "meta_schedule.pool_max"`: generating the task's
    design spaces, now with the rule tuning registers, which does what MetaSchedule did after warning."""
    from tvm.s_tir import meta_schedule as ms

    spec, tasks = tasks_of(program, "host")  # importing wrpn_tvm.tuning registered the rules
    pool = next(task for task in tasks if "pool" in task.task_name)
    spaces = ms.TuneContext(mod=pool.dispatched[0], target=spec.target,
                            space_generator="post-order-apply").generate_design_space()
    assert "Unknown schedule rule" not in "".join(capfd.readouterr())
    for space in spaces:
        trace = str(space.trace)
        # the annotation is dropped first, so the default rules after ApplyCustomRule schedule the block
        assert 'ann_key="schedule_rule"' in trace and "meta_schedule.parallel" in trace
        assert '"schedule_rule"' not in space.mod.script()
