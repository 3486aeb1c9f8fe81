"""Tuning jobs end to end on a tiny model: tune, compile with the log, resume, remote devices."""

import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.database import PyDatabase
from tvm_ffi import structural_hash

from wrpn_tvm import pipeline
from wrpn_tvm.cli import main
from wrpn_tvm.remote import daemons, rpc_server
from wrpn_tvm.remote.session import DeviceSpec
from wrpn_tvm.targets import resolve
from wrpn_tvm.tuning import load_database, tune_module
from wrpn_tvm.tuning.tasks import extract_tasks


class TinyDense(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 16)

    def forward(self, x):
        return torch.relu(self.fc(x))


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tune") / "tiny.pt2"
    torch.export.save(torch.export.export(TinyDense().eval(), (torch.randn(1, 64),)), str(path))
    return path


@pytest.fixture(scope="module")
def tuned(program, tmp_path_factory):
    """`wrpn-tvm tune` for 4 trials, then again asking 8: the second run resumes the first."""
    log_dir = tmp_path_factory.mktemp("log")
    assert main(["tune", str(program), "--trials", "4", "--log-dir", str(log_dir), "--seed", "0"]) == 0
    first = len(load_database(log_dir, resolve("host")).get_all_tuning_records())
    assert main(["tune", str(program), "--trials", "8", "--log-dir", str(log_dir), "--seed", "1"]) == 0
    return log_dir, first


def _candidate_hashes(database):
    return [structural_hash(record.as_measure_candidate().sch.mod) for record in database.get_all_tuning_records()]


@derived_object
class HitCountingDatabase(PyDatabase):
    """Forwards to a database and notes which functions the build pipeline found a tuned schedule for."""

    def __init__(self, inner):
        self.inner = inner
        self.hits = set()

    def has_workload(self, mod):
        return self.inner.has_workload(mod)

    def commit_workload(self, mod):
        return self.inner.commit_workload(mod)

    def commit_tuning_record(self, record):
        self.inner.commit_tuning_record(record)

    def get_top_k(self, workload, top_k):
        return self.inner.get_top_k(workload, top_k)

    def get_all_tuning_records(self):
        return self.inner.get_all_tuning_records()

    def query_tuning_record(self, mod, target, workload_name):
        return self._hit(self.inner.query_tuning_record(mod, target, workload_name), workload_name)

    def query_schedule(self, mod, target, workload_name):
        return self._hit(self.inner.query_schedule(mod, target, workload_name), workload_name)

    def query_ir_module(self, mod, target, workload_name):
        return self._hit(self.inner.query_ir_module(mod, target, workload_name), workload_name)

    def __len__(self):
        return len(self.inner)

    def _hit(self, found, name):
        if found is not None:
            self.hits.add(str(name))
        return found


def test_tune_writes_a_log_that_compile_applies(program, tuned, tmp_path, capsys):
    log_dir, first = tuned
    assert first == 4
    spec = resolve("host")
    mod, _layers, _inputs = pipeline.prepare_module(program, spec)
    tuned_names = {task.task_name for task in extract_tasks(mod, spec)}
    database = HitCountingDatabase(load_database(log_dir, spec))
    pipeline.build_module(mod, spec, database)
    assert tuned_names and tuned_names <= database.hits  # compile found every tuned function in the log
    assert main(["compile", str(program), "--tuning-log", str(log_dir), "-o", str(tmp_path / "tiny.so")]) == 0
    assert (tmp_path / "tiny.so").stat().st_size > 0
    assert f"tuning log: records for all {len(tuned_names)} tunable kernels" in capsys.readouterr().out


def test_compile_says_which_kernels_a_log_does_not_cover(tuned, tmp_path):
    """A log of other workloads (here: another layer size) applies to nothing, and compile says so
    rather than building untuned kernels in silence."""
    from wrpn_tvm.build import compile_model

    log_dir, _first = tuned
    other = tmp_path / "other.pt2"
    torch.export.save(torch.export.export(torch.nn.Linear(32, 8).eval(), (torch.randn(1, 32),)), str(other))
    coverage = compile_model(other, "host", tmp_path / "other.so", tuning_log=log_dir).log_coverage
    assert coverage.tuned == [] and coverage.untuned
    assert coverage.line().startswith(f"tuning log: records for 0 of {len(coverage.untuned)} tunable kernels; "
                                      f"at template defaults")
    assert compile_model(other, "host", tmp_path / "plain.so").log_coverage is None


def test_resume_adds_records_and_never_remeasures(tuned, capsys):
    log_dir, _first = tuned
    database = load_database(log_dir, resolve("host"))
    assert len(database.get_all_tuning_records()) == 8
    hashes = _candidate_hashes(database)
    assert len(set(hashes)) == len(hashes)


def test_a_host_log_says_how_it_was_timed_and_takes_no_warm_records(program, tuned, tmp_path, capsys):
    """Warm times (MetaSchedule's default, and every CPU log tuned before) run faster than the same
    code timed as in the model: mixed in one log, the best record would be the wrong one."""
    import shutil

    from wrpn_tvm.tuning.database import RECORD_FILE, WORKLOAD_FILE
    from wrpn_tvm.tuning.log_timing import TIMING_FILE

    log_dir, _first = tuned
    assert json.loads((log_dir / TIMING_FILE).read_text())["timing"] == "in-model"
    warm = tmp_path / "warm"
    warm.mkdir()
    for name in (WORKLOAD_FILE, RECORD_FILE):  # the same records without the marker: a log from before
        shutil.copy(log_dir / name, warm / name)
    before = (warm / RECORD_FILE).read_text()
    assert main(["tune", str(program), "--trials", "12", "--log-dir", str(warm)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "timed warm" in error and "use another --log-dir" in error
    assert (warm / RECORD_FILE).read_text() == before and not (warm / TIMING_FILE).exists()


def test_cpu_candidates_are_timed_as_in_the_model_on_this_host_and_over_rpc():
    from wrpn_tvm.tuning.measure import IN_MODEL_CALLS, make_runner

    runners = [make_runner(resolve("host"), DeviceSpec()), make_runner(resolve("rasp4"), DeviceSpec(rpc="127.0.0.1:9"))]
    for config in (runner.evaluator_config for runner in runners):
        assert config.enable_cpu_cache_flush and config.number == 1 and config.repeat == IN_MODEL_CALLS


def test_every_task_measures_its_template_default_first(tuned):
    """So a tuned build can never pick a schedule slower than the untuned compile's (as measured)."""
    from wrpn_tvm.tuning.search import default_candidate

    log_dir, _first = tuned
    spec = resolve("host")
    records = load_database(log_dir, spec).get_all_tuning_records()
    firsts = {}
    for record in records:
        firsts.setdefault(structural_hash(record.workload.mod), record)
    assert firsts
    for record in firsts.values():
        default = default_candidate(record.workload.mod, spec.target)
        assert default is not None
        assert structural_hash(record.as_measure_candidate().sch.mod) == structural_hash(default.sch.mod)


LUCKY_SECONDS = 1e-12  # a timing that does not come back (no kernel runs in 1 ps)


def _log_with_a_lucky_record(tuned_dir, tmp_path) -> tuple:
    """(log dir, its records as JSON, index of the one made lucky): a copy of a tuned log whose
    slowest record is given LUCKY_SECONDS, so that it leads."""
    import shutil

    from wrpn_tvm.tuning.database import RECORD_FILE, WORKLOAD_FILE
    from wrpn_tvm.tuning.log_timing import TIMING_FILE

    log_dir = tmp_path / "log"
    log_dir.mkdir()
    for name in (WORKLOAD_FILE, RECORD_FILE, TIMING_FILE):
        shutil.copy(tuned_dir / name, log_dir / name)
    records = [json.loads(line) for line in (log_dir / RECORD_FILE).read_text().splitlines()]
    slowest = max(range(len(records)), key=lambda i: sum(records[i][1][1]))
    records[slowest][1][1] = [LUCKY_SECONDS] * len(records[slowest][1][1])
    (log_dir / RECORD_FILE).write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
    return log_dir, records, slowest


def test_a_job_ends_by_timing_each_tasks_leading_records_again(program, tuned, tmp_path, capsys):
    """A record timed in a moment that does not come back would pick the build's schedule; timed
    again at the job's end, it keeps its real time and loses the lead."""
    from wrpn_tvm.tuning.database import RECORD_FILE

    log_dir, records, slowest = _log_with_a_lucky_record(tuned[0], tmp_path)
    assert main(["tune", str(program), "--trials", str(len(records) + 2), "--log-dir", str(log_dir)]) == 0
    out = capsys.readouterr().out
    assert "[tune] timed the leading records of" in out and "(another record leads)" in out
    lines = (log_dir / RECORD_FILE).read_text().splitlines()
    assert len(lines) == len(records) + 2  # times replaced in place: no record added or lost
    retimed = json.loads(lines[slowest])[1][1]
    assert min(retimed) > 1000 * LUCKY_SECONDS
    best = min(sum(map(float, r.run_secs)) / len(r.run_secs) for r in load_database(log_dir, resolve("host")).get_all_tuning_records())
    assert best > 1000 * LUCKY_SECONDS


def test_confirm_only_times_the_leading_records_again_without_new_trials(program, tuned, tmp_path, capsys):
    """`tune --confirm-only` on a log with a lucky record: no candidate searched, the record gets
    its real time, the other records stay as they were."""
    from wrpn_tvm.tuning.database import RECORD_FILE

    log_dir, records, slowest = _log_with_a_lucky_record(tuned[0], tmp_path)
    assert main(["tune", str(program), "--confirm-only", "--log-dir", str(log_dir)]) == 0
    out = capsys.readouterr().out
    assert "no new trials" in out and "(another record leads)" in out and "timed " in out
    lines = [json.loads(line) for line in (log_dir / RECORD_FILE).read_text().splitlines()]
    assert len(lines) == len(records)
    assert min(lines[slowest][1][1]) > 1000 * LUCKY_SECONDS
    untouched = [i for i in range(len(records)) if lines[i][1][1] == records[i][1][1]]
    assert slowest not in untouched and untouched  # only leaders were timed again


def test_confirming_times_each_tasks_default_again_with_its_first_leaders():
    """A task's first record is its template default, timed in the job's first batch: the first pass
    times it again with the leaders, once, so that the build compares tuned records with an untuned
    time taken alike."""
    from wrpn_tvm.tuning.confirm import _next_to_retime

    positions = [0, 3, 5, 7, 9]  # log order
    seconds = {0: 5.0, 3: 1.0, 5: 2.0, 7: 3.0, 9: 4.0}
    assert _next_to_retime(positions, seconds, {}) == [3, 5, 7, 0]
    retimed = {3: [9.0], 5: [8.0], 7: [7.0], 0: [6.0]}
    seconds.update({3: 9.0, 5: 8.0, 7: 7.0, 0: 6.0})
    assert _next_to_retime(positions, seconds, retimed) == [9]  # it leads untimed now; the default is done
    seconds[0] = 1.5
    assert _next_to_retime(positions, seconds, retimed) == []  # the re-timed default leads
    assert _next_to_retime([0, 1], {0: 1.0, 1: 2.0}, {}) == [0, 1]  # a leading default is asked once


def test_a_spent_time_budget_stops_the_job_cleanly(program, tmp_path, capsys):
    assert main(["tune", str(program), "--trials", "64", "--max-minutes", "0.0001", "--log-dir", str(tmp_path)]) == 0
    assert "stopped early (time budget spent)" in capsys.readouterr().out


def test_a_finished_job_measures_nothing_more(program, tuned, capsys):
    log_dir, _first = tuned
    assert main(["tune", str(program), "--trials", "8", "--log-dir", str(log_dir)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert len(load_database(log_dir, resolve("host")).get_all_tuning_records()) == 8


def _start_server(tracker_port, key, log):
    port = daemons.free_port()
    return subprocess.Popen(
        rpc_server.command(port, tracker=f"127.0.0.1:{tracker_port}", key=key),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


@pytest.fixture
def two_devices(tmp_path):
    """A tracker with two native x86 RPC servers under one key; each server's log is kept."""
    import tvm.rpc

    tracker_port = daemons.free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                               str(tracker_port), "--port-end", str(tracker_port + 1)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    logs = [tmp_path / "device-a.log", tmp_path / "device-b.log"]
    try:
        deadline = time.monotonic() + 120
        while not daemons.port_open("127.0.0.1", tracker_port):
            assert time.monotonic() < deadline, "the tracker did not start"
            time.sleep(0.2)
        procs += [_start_server(tracker_port, "tiny", open(log, "w")) for log in logs]
        while len(tvm.rpc.connect_tracker("127.0.0.1", tracker_port).summary()["server_info"]) < 2:
            assert time.monotonic() < deadline, "the RPC servers did not register"
            time.sleep(0.5)
        yield f"127.0.0.1:{tracker_port}", procs[1:], logs
    finally:
        for proc in procs:
            if proc.poll() is None:
                daemons.os.killpg(proc.pid, 9)
            proc.wait()


# Kills the device the moment it loads its first candidate, i.e. mid-measurement (a separate
# process, so that the tuner holding the GIL cannot delay it).
KILL_ON_FIRST_LOAD = """
import os, sys, time
log, pid = sys.argv[1], int(sys.argv[2])
while "load_module" not in open(log).read():
    time.sleep(0.005)
os.killpg(pid, 9)
"""


def test_devices_share_the_measurements_and_a_dead_one_does_not_end_the_job(tmp_path, two_devices, monkeypatch):
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig

    from wrpn_tvm.tuning import measure

    tracker, servers, logs = two_devices
    # A tiny candidate's 20 timed calls end within the killer's reaction time: a quarter second
    # of timing per candidate makes sure that device B dies with one in flight.
    monkeypatch.setattr(measure, "in_model_timing", lambda: EvaluatorConfig(
        number=1, repeat=5, min_repeat_ms=50, enable_cpu_cache_flush=True))
    killer = subprocess.Popen([sys.executable, "-c", KILL_ON_FIRST_LOAD, str(logs[1]), str(servers[1].pid)])
    try:
        mod = pipeline.prepare_module(_tiny_program(tmp_path), resolve("host"))[0]
        device = DeviceSpec(tracker=tracker, key="tiny")
        result = tune_module(mod, resolve("host"), 8, tmp_path / "log", device, seed=0, trials_per_batch=4)
        assert killer.wait(timeout=60) == 0
    finally:
        if killer.poll() is None:
            killer.kill()
    assert servers[1].wait(timeout=10) == -9  # device B was used, then died
    records = load_database(tmp_path / "log", resolve("host")).get_all_tuning_records()
    assert len(records) == result.measured == 8  # every candidate is in the log, failed or not
    failed = sum(1 for record in records if float(record.run_secs[0]) >= 1e9)
    assert failed >= 1  # B's candidate in flight
    assert sum(result.run_errors.values()) == failed  # and the job said so
    assert len(records) - failed >= 5  # device A carried on
    assert logs[0].read_text().count("load_module") >= 5


def _tiny_program(tmp_path):
    path = tmp_path / "tiny.pt2"
    torch.manual_seed(0)
    torch.export.save(torch.export.export(TinyDense().eval(), (torch.randn(1, 64),)), str(path))
    return path


@pytest.mark.slow
@pytest.mark.emulator
def test_tuning_for_a_pi_measures_on_two_emulated_devices(tmp_path, emulated_pool):
    """Cross-compiled candidates timed on the emulated Raspberry Pis behind the tracker."""
    result_dir = tmp_path / "log"
    assert main(["tune", str(_tiny_program(tmp_path)), "--target", "rasp4", "--trials", "4", "--trials-per-batch", "4",
                 "--log-dir", str(result_dir), "--tracker", emulated_pool.tracker, "--key", emulated_pool.key,
                 "--timeout", "300"]) == 0
    records = load_database(result_dir, resolve("rasp4")).get_all_tuning_records()
    assert len(records) == 4
    assert any(float(record.run_secs[0]) < 1e9 for record in records)


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGKILL"])
def test_an_interrupted_job_keeps_its_records_and_resumes(tmp_path, signal_name):
    """Ctrl-C or a kill after the first measured batch: the batch stays in the log, a re-run finishes the job."""
    import signal

    program, log_dir = _tiny_program(tmp_path), tmp_path / "log"
    command = [sys.executable, "-c", "import sys; from wrpn_tvm.cli import main; sys.exit(main())", "tune", str(program), "--trials", "12", "--trials-per-batch", "4",
               "--log-dir", str(log_dir), "--seed", "0"]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    for line in job.stdout:  # the default alone (1/12), then batches of 4: stop after the first batch
        done = re.match(r"\[tune\] (\d+)/", line)
        if done and int(done.group(1)) >= 4:
            job.send_signal(getattr(signal, signal_name))
            break
    assert job.wait(timeout=120) == (130 if signal_name == "SIGINT" else -9)
    kept = len(load_database(log_dir, resolve("host")).get_all_tuning_records())
    assert 4 <= kept < 12
    assert main(["tune", str(program), "--trials", "12", "--log-dir", str(log_dir), "--seed", "1"]) == 0
    assert len(load_database(log_dir, resolve("host")).get_all_tuning_records()) == 12


def _log_records(log_dir) -> set:
    """(workload, candidate) hash pairs of the complete records in a log dir."""
    import warnings

    from wrpn_tvm.tuning.database import read_log

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a killed job's cut last line is reported and skipped
        log = read_log(log_dir)
    return {(structural_hash(log.workloads[index].mod), structural_hash(record.as_measure_candidate().sch.mod))
            for index, record in log.records}


def test_kills_at_random_moments_lose_no_completed_record(tmp_path):
    """`wrpn-tvm tune` killed (SIGKILL) at seeded random moments, three times, then run to the end."""
    import random
    import signal

    from tvm.s_tir.meta_schedule.database import JSONDatabase

    program, log_dir = _tiny_program(tmp_path), tmp_path / "log"
    command = [sys.executable, "-m", "wrpn_tvm", "tune", str(program), "--trials", "16", "--trials-per-batch", "2",
               "--log-dir", str(log_dir), "--seed", "0"]
    kept: set = set()
    for delay in (random.Random(0).uniform(5, 60) for _ in range(3)):
        job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            job.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
        now = _log_records(log_dir) if log_dir.exists() else set()
        assert kept <= now  # no record completed before a kill was lost by a later run
        kept = now
    assert subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600).returncode == 0
    final = _log_records(log_dir)
    # A job's last batch is not cut short at the budget, so a kill that split a batch can add one more.
    assert kept <= final and 16 <= len(final) < 16 + 2
    reloaded = JSONDatabase(work_dir=str(log_dir), module_equality="structural")  # MetaSchedule's own reader
    hashes = _candidate_hashes(reloaded)
    assert len(hashes) == len(set(hashes)) == len(final)  # every record once


class BigAndSmall(torch.nn.Module):
    """One matmul that dominates the model's time and one that hardly matters."""

    def __init__(self):
        super().__init__()
        self.big = torch.nn.Linear(1024, 1024)
        self.small = torch.nn.Linear(1024, 4)

    def forward(self, x):
        return self.small(torch.relu(self.big(x)))


def test_a_short_budget_goes_to_the_task_that_dominates(tmp_path):
    program = tmp_path / "big_and_small.pt2"
    torch.manual_seed(0)
    torch.export.save(torch.export.export(BigAndSmall().eval(), (torch.randn(8, 1024),)), str(program))
    spec = resolve("host")
    mod = pipeline.prepare_module(program, spec)[0]
    result = tune_module(mod, spec, 14, tmp_path / "log", seed=0, trials_per_batch=4, stream=sys.stderr)
    assert result.measured == 14  # the budget is spent exactly: no batch is cut past it
    by_share = sorted(result.tasks, key=lambda task: -(task.best_seconds or 0))
    assert all(task.measured >= 1 for task in result.tasks)  # every default measured: the shares are known
    assert by_share[0].measured == max(task.measured for task in result.tasks) > 1
