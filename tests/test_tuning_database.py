"""Tuning logs without tuning: corrupt lines, the target check, repair for resuming, the job lock."""

import json
import warnings

import pytest
import tvm
from tvm import te
from tvm.s_tir import Schedule
from tvm.s_tir import meta_schedule as ms

from wrpn_tvm.errors import WrpnError
from wrpn_tvm.targets import resolve
from wrpn_tvm.tuning import load_database
from wrpn_tvm.tuning.database import RECORD_FILE, WORKLOAD_FILE, CorruptLineWarning, open_database, read_log
from wrpn_tvm.tuning.log_timing import IN_MODEL, WARM
from wrpn_tvm.tuning.lock import exclusive


def _matmul(n):
    a = te.placeholder((n, n), name="A")
    k = te.reduce_axis((0, n), name="k")
    c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * a[k, j], axis=k), name="C")
    return tvm.IRModule({"main": te.create_prim_func([a, c])})


def _write_log(log_dir, target, sizes=(16, 32), per_workload=2):
    """A real JSONDatabase with `per_workload` records (different tilings) per matmul size."""
    database = ms.database.JSONDatabase(work_dir=str(log_dir))
    for n in sizes:
        mod = _matmul(n)
        workload = database.commit_workload(mod)
        for choice in range(per_workload):
            sch = Schedule(mod)
            i, _, _ = sch.get_loops(sch.get_sblock("C"))
            sch.split(i, factors=[None, 2 ** (choice + 1)])
            args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
            database.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, [1e-3 * (choice + 1)], target, args))
    return database


@pytest.fixture
def host():
    return resolve("host")


def test_load_database_serves_the_best_record(tmp_path, host):
    _write_log(tmp_path, host.target)
    database = load_database(tmp_path, host)
    assert len(database.get_all_tuning_records()) == 4
    best = database.query_tuning_record(_matmul(16), host.target, "main")
    assert float(best.run_secs[0]) == pytest.approx(1e-3)


def test_truncated_and_garbage_lines_are_reported_and_skipped(tmp_path, host):
    _write_log(tmp_path, host.target)
    records = tmp_path / RECORD_FILE
    lines = records.read_text().splitlines()
    lines[1] = "not json at all"
    records.write_text("\n".join(lines) + "\n" + lines[2][: len(lines[2]) // 2])  # a killed job's last line
    with pytest.warns(CorruptLineWarning) as caught:
        database = load_database(tmp_path, host)
    messages = [str(w.message) for w in caught]
    assert any(f"{RECORD_FILE}:2:" in m for m in messages)
    assert any(f"{RECORD_FILE}:5:" in m for m in messages)
    assert len(database.get_all_tuning_records()) == 3


def test_records_of_a_corrupt_workload_are_dropped_and_the_rest_renumbered(tmp_path, host):
    _write_log(tmp_path, host.target)
    workloads = tmp_path / WORKLOAD_FILE
    first, second = workloads.read_text().splitlines()
    workloads.write_text(first[:40] + "\n" + second + "\n")
    with pytest.warns(CorruptLineWarning):
        log = read_log(tmp_path)
    assert len(log.workloads) == 1 and len(log.records) == 2
    assert all(json.loads(line)[0] == 0 for line in log.record_lines)


def test_open_database_repairs_the_files_so_tuning_can_append(tmp_path, host):
    _write_log(tmp_path, host.target)
    records = tmp_path / RECORD_FILE
    records.write_text(records.read_text()[:-25])  # truncated mid-line, no newline
    with pytest.warns(CorruptLineWarning):
        database = open_database(tmp_path, host, WARM)  # written by hand: no timing marker
    assert len(database.get_all_tuning_records()) == 3
    assert records.read_text().endswith("\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_log(tmp_path).records) == 3


def test_a_log_for_another_target_is_refused(tmp_path, host):
    _write_log(tmp_path, resolve("rasp4").target)
    with pytest.raises(WrpnError, match="tuned for cortex-a72.*another architecture than host"):
        load_database(tmp_path, host)
    with pytest.raises(WrpnError, match="tuned for"):
        open_database(tmp_path, host, IN_MODEL)


def test_num_cores_alone_does_not_make_another_target(tmp_path, host):
    config = dict(host.target.export())
    config["num-cores"] = 64
    _write_log(tmp_path, tvm.target.Target(config))
    assert len(load_database(tmp_path, host).get_all_tuning_records()) == 4


def test_missing_or_empty_log_dir_is_a_clear_error(tmp_path, host):
    with pytest.raises(WrpnError, match="no such tuning log directory"):
        load_database(tmp_path / "nope", host)
    with pytest.raises(WrpnError, match="no usable tuning records"):
        load_database(tmp_path, host)


def test_a_second_job_on_the_same_log_dir_is_refused(tmp_path):
    with exclusive(tmp_path):
        with pytest.raises(WrpnError, match="in use by another tuning job"):
            with exclusive(tmp_path):
                pass
    with exclusive(tmp_path):  # released when the first job ends
        pass
