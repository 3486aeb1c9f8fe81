"""Tuning under faults: one job per log dir (a second is refused, a killed holder leaves no stale
lock), and a log cut mid-line by a killed job resumes with every complete record kept once.
"""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from wrpn_tvm.errors import WrpnError
from wrpn_tvm.targets import resolve
from wrpn_tvm.tuning import tune
from wrpn_tvm.tuning.database import RECORD_FILE, WORKLOAD_FILE, open_database, read_log
from wrpn_tvm.tuning.log_timing import IN_MODEL, WARM, mark_timing
from wrpn_tvm.tuning.lock import exclusive
from test_fuzz_loaders import _write_tuning_log

HOLD_LOCK = ("import sys; from wrpn_tvm.tuning.lock import exclusive\n"
             "with exclusive(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()")


@pytest.fixture
def lock_holder(tmp_path):
    """Another process (a running `tune` job, as far as the lock can tell) holding tmp_path/log's lock."""
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(log_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield log_dir, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_second_job_on_a_log_dir_is_refused_naming_the_first(lock_holder):
    log_dir, holder = lock_holder
    with pytest.raises(WrpnError, match=f"in use by another tuning job \\(pid {holder.pid}\\)"):
        with exclusive(log_dir):
            pass


def test_tune_refuses_a_locked_log_dir_and_leaves_it_alone(lock_holder, tmp_path):
    log_dir, _ = lock_holder
    _write_tuning_log(log_dir)
    mark_timing(log_dir, IN_MODEL)  # as the holder's job would have: the lock, not the timing, refuses
    before = {name: (log_dir / name).read_bytes() for name in (WORKLOAD_FILE, RECORD_FILE)}
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU()).eval()
    program = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 6, 6),)), str(program))
    with pytest.raises(WrpnError, match="in use by another tuning job"):
        tune(program, "host", trials=2, log_dir=log_dir)
    assert {name: (log_dir / name).read_bytes() for name in before} == before


def test_killed_holder_leaves_no_stale_lock(lock_holder):
    log_dir, holder = lock_holder
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with exclusive(log_dir):
        assert (log_dir / ".tune.lock").read_text().strip() == str(os.getpid())


@pytest.mark.parametrize("cut", [1, 10, 100, -2])
def test_log_cut_mid_record_resumes_with_each_complete_record_once(tmp_path, cut):
    """A job killed while appending leaves a partial last line; resuming keeps every complete record, once."""
    from tvm.s_tir.meta_schedule.database import JSONDatabase

    log_dir = tmp_path / "log"
    _write_tuning_log(log_dir)
    records = (log_dir / RECORD_FILE).read_text().splitlines()
    partial = records[0][:cut]  # the first record again, as the killed job was writing it a second time
    (log_dir / RECORD_FILE).write_text("".join(line + "\n" for line in records) + partial)
    open_database(log_dir, resolve("host"), WARM)  # written by hand: no timing marker
    kept = [json.loads(line) for line in (log_dir / RECORD_FILE).read_text().splitlines()]
    assert [json.dumps(r, sort_keys=True) for r in kept] == [json.dumps(json.loads(r), sort_keys=True) for r in records]
    assert len(JSONDatabase(work_dir=str(log_dir), module_equality="structural").get_all_tuning_records()) == len(records)
    assert read_log(log_dir).skipped_lines == 0
