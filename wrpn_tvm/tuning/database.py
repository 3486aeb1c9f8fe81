"""Tuning logs: MetaSchedule's own JSON database files in a log dir, read defensively.

A log dir holds `database_workload.json` (one workload per line) and
`database_tuning_record.json` (one record per line: `[workload line index, record]`), so TVM's
own tools read it too. TVM aborts on the first bad line, and a killed job can leave a truncated
last line, so every line is parsed here first: a bad line is reported (file and line number) and
skipped, and records are renumbered when a workload line before them was dropped.

MetaSchedule itself never checks a record's target when it applies a database, so a log tuned
for one CPU would silently be applied to any other; `check_target` applies a log only to targets
whose CPU has every instruction-set feature of the CPU it was tuned for (the code it replays may
use any of them), and refuses the rest.
"""

import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import WrpnError, one_line
from ..fileio import write_text_atomic
from ..targets import TargetSpec, cpu_label, missing_features
from .log_timing import check_timing, describe, estimated_info

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
# What makes code built for one target wrong or slow on another; num-cores is left out (a
# schedule tuned on 2 cores is valid on 4), so is the tag.
_IDENTITY_KEYS = ("kind", "mtriple", "mcpu", "mattr", "arch")


class CorruptLineWarning(UserWarning):
    """A line of a tuning log that does not parse; it is skipped."""


@dataclass
class TuningLog:
    """The valid lines of a log dir, records renumbered to the kept workload lines."""

    log_dir: Path
    workload_lines: list[str] = field(default_factory=list)
    record_lines: list[str] = field(default_factory=list)
    workloads: list = field(default_factory=list)  # ms.database.Workload per kept workload line
    records: list = field(default_factory=list)  # (workload index, ms.database.TuningRecord)
    targets: dict = field(default_factory=dict)  # identity (frozen) -> the Target its records were tuned for
    skipped_lines: int = 0
    blank_lines: int = 0  # harmless to us, fatal to TVM's JSONDatabase: a reason to rewrite the files

    @property
    def is_empty(self) -> bool:
        return not self.workload_lines and not self.record_lines


def target_identity(target) -> tuple:
    """The fields of a target that decide whether a tuned schedule applies to it."""
    from tvm.target import Target

    config = dict((target if isinstance(target, Target) else Target(target)).export())
    identity = []
    for key in _IDENTITY_KEYS:
        if key in config:
            value = config[key]
            identity.append((key, tuple(sorted(str(v) for v in value)) if isinstance(value, (list, tuple)) else str(value)))
    return tuple(identity)


def describe_identity(identity: tuple) -> str:
    return " ".join(f"{key}={','.join(value) if isinstance(value, tuple) else value}" for key, value in identity)


def _warn_line(path: Path, number: int, why: str) -> None:
    warnings.warn(f"{path}:{number}: {why}; skipping this line", CorruptLineWarning, stacklevel=3)


def read_log(log_dir: "str | os.PathLike") -> TuningLog:
    """Parse both files of a log dir, keeping only lines TVM can load; missing files mean an empty log."""
    from tvm.s_tir.meta_schedule.database import TuningRecord, Workload
    from tvm.target import Target

    from ..pipeline import register_replay_intrinsics  # a record's trace may name a template's intrinsic

    log = TuningLog(Path(log_dir))
    workload_path, record_path = log.log_dir / WORKLOAD_FILE, log.log_dir / RECORD_FILE
    kept_index: dict[int, int] = {}  # workload line index in the file -> index among kept lines
    for number, line in _lines(workload_path):
        if not line:
            log.blank_lines += 1
            continue
        try:
            obj = json.loads(line)
            if not (isinstance(obj, list) and len(obj) == 2 and all(isinstance(x, str) for x in obj)):
                raise ValueError("not a [hash, module] pair")
            workload = Workload.from_json(obj)
        except Exception as err:  # json, TVM's decoder and the shape check all fail differently
            _warn_line(workload_path, number, f"corrupt workload ({one_line(err, last=True, limit=120)})")
            log.skipped_lines += 1
            continue
        kept_index[number - 1] = len(log.workloads)
        log.workloads.append(workload)
        log.workload_lines.append(line)
    target_cache: dict[str, tuple] = {}
    replayable: set[tuple[int, str]] = set()  # (workload, target) pairs whose intrinsics are registered
    for number, line in _lines(record_path):
        if not line:
            log.blank_lines += 1
            continue
        try:
            obj = json.loads(line)
            if not (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], int) and isinstance(obj[1], list)):
                raise ValueError("not a [workload index, record] pair")
            if obj[0] not in kept_index:
                raise ValueError(f"refers to workload line {obj[0] + 1}, which is missing or corrupt")
            index = kept_index[obj[0]]
            target_json = json.dumps(obj[1][2], sort_keys=True)
            if target_json not in target_cache:
                target_cache[target_json] = (target_identity(obj[1][2]), Target(obj[1][2]))
            # Registering a staged pack's intrinsic parses TVMScript: only for workloads with records.
            if (index, target_json) not in replayable:
                register_replay_intrinsics(log.workloads[index].mod, target_cache[target_json][1])
                replayable.add((index, target_json))
            record = TuningRecord.from_json(obj[1], log.workloads[index])
        except Exception as err:  # as above
            _warn_line(record_path, number, f"corrupt tuning record ({one_line(err, last=True, limit=120)})")
            log.skipped_lines += 1
            continue
        identity, tuned_for = target_cache[target_json]
        log.targets.setdefault(identity, tuned_for)
        log.records.append((index, record))
        log.record_lines.append(json.dumps([index, obj[1]], separators=(",", ":")))
    return log


def _lines(path: Path):
    """(1-based line number, stripped text) of every line of a file, blank ones included (TVM
    numbers workloads by line, blank or not); none when the file does not exist."""
    if not path.exists():
        return
    try:
        data = path.read_bytes()
    except OSError as err:
        raise WrpnError(f"{path}: cannot read the tuning log ({err.strerror})") from None
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the newline that ends the last line does not start another
    for number, raw in enumerate(lines, start=1):
        yield number, raw.decode("utf-8", errors="replace").strip()


def has_records(log_dir: "str | os.PathLike") -> bool:
    """Whether the log dir's record file has a line (a quick look, before the log is read in full)."""
    return any(line for _, line in _lines(Path(log_dir) / RECORD_FILE))


def check_target(log: TuningLog, spec: TargetSpec, strict: bool = False) -> list[str]:
    """Refuse a log with records that spec's target may not run; return one note per CPU the log
    was tuned on that differs from spec's but has no feature spec's lacks. `strict` refuses
    every record not tuned for exactly spec's target."""
    wanted = target_identity(spec.target)
    here = f"{spec.name} ({cpu_label(spec.target)})"
    notes = []
    for identity, tuned_for in log.targets.items():
        if identity == wanted:
            continue
        there = f"{log.log_dir} was tuned for {cpu_label(tuned_for)}"
        if strict:
            raise WrpnError(f"{there}, not for {here} ({describe_identity(wanted)}), and --strict-target "
                            "asks for an exact match; tune a log for this target with `wrpn-tvm tune`")
        try:
            missing = missing_features(tuned_for, spec.target)
        except Exception:  # noqa: BLE001 - LLVM rejects a CPU it does not know in several ways
            raise WrpnError(f"{there}, a CPU this LLVM does not know; use a log tuned for {here}") from None
        if missing is None:
            raise WrpnError(f"{there} ({describe_identity(identity)}), another architecture than {here}; "
                            "use a log tuned for this target or tune one with `wrpn-tvm tune`")
        if missing:
            raise WrpnError(f"{there}, whose code may use {', '.join(sorted(missing))}, which {here} lacks; "
                            "use a log tuned for this target or tune one with `wrpn-tvm tune`")
        notes.append(f"{there}; {here} has every feature it uses, so it applies: re-tune for best speed on this CPU")
    return notes


def load_database(log_dir: "str | os.PathLike", spec: TargetSpec, strict_target: bool = False):
    """An in-memory MetaSchedule database of a log dir's valid records, for compiling.

    Refuses (WrpnError) a missing dir, an empty log and a log that spec's target cannot run (any
    other target with `strict_target`); a log tuned on another compatible CPU is applied with a
    note on stderr. Skips corrupt lines with a warning. Use it as `with database: MetaScheduleApplyDatabase()(mod)`.
    The files are never modified (committed logs may be read-only).
    """
    from tvm.s_tir.meta_schedule.database import MemoryDatabase, TuningRecord

    from ..pipeline import amx_available

    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        raise WrpnError(f"{log_dir}: no such tuning log directory")
    log = read_log(log_dir)
    if not log.records:
        raise WrpnError(f"{log_dir}: no usable tuning records (expected {RECORD_FILE} written by `wrpn-tvm tune`)")
    for note in check_target(log, spec, strict=strict_target):
        print(f"wrpn-tvm: note: {note}", file=sys.stderr)
    estimated = estimated_info(log_dir)
    if estimated is not None:
        print(f"wrpn-tvm: note: {log_dir} holds ESTIMATED run times ({describe(estimated)}; no board): "
              "its schedules were ranked by the estimate, not by measurement", file=sys.stderr)
    database = MemoryDatabase()
    workloads = [database.commit_workload(workload.mod) for workload in log.workloads]
    on_tiles = _convs_on_amx_tiles(log, spec)
    left_out = 0
    for index, record in log.records:
        if index in on_tiles and not amx_available(record.target):
            left_out += 1
            continue
        database.commit_tuning_record(
            TuningRecord(record.trace, workloads[index], record.run_secs, record.target, record.args_info)
        )
    if left_out:
        print(f"wrpn-tvm: note: {log_dir}: {left_out} record(s) of int8-dot convs were tuned without AMX tiles; "
              f"{spec.name} runs those convs on its tiles, untuned (re-tune for best speed on this CPU)", file=sys.stderr)
    return database


def _convs_on_amx_tiles(log: "TuningLog", spec: TargetSpec) -> set:
    """Indices of the log's workloads that hold an int8 conv spec's target runs on AMX tiles (none
    where it has no AMX): a record tuned for a CPU without AMX schedules them on VNNI, at a
    quarter of the tiles' speed or less."""
    from ..pipeline import amx_available, holds_tiled_conv

    if not amx_available(spec.target):
        return set()
    return {index for index, workload in enumerate(log.workloads) if holds_tiled_conv(workload.mod)}


def open_database(log_dir: "str | os.PathLike", spec: TargetSpec, timing: str):
    """The log dir's JSONDatabase for a tuning job, which appends to it record by record.

    Refuses a log of another target, and a log whose run times were taken another way than the
    job's `timing` (log_timing's kinds). Corrupt lines are dropped from the files first (atomically),
    because the JSONDatabase would abort on them and appending after a truncated line would
    corrupt the next record too.
    """
    from tvm.s_tir.meta_schedule.database import JSONDatabase

    log_dir = Path(log_dir)
    log = read_log(log_dir)
    foreign = [tuned_for for identity, tuned_for in log.targets.items() if identity != target_identity(spec.target)]
    if foreign:  # a job appends records measured here: they must not join records of another CPU
        raise WrpnError(f"{log_dir} was tuned for {cpu_label(foreign[0])}, not for {spec.name} ({cpu_label(spec.target)}); "
                        "a tuning job extends a log of its own target only: use another --log-dir")
    check_timing(log_dir, bool(log.records), timing)
    if log.skipped_lines or log.blank_lines:
        rewrite_lines(log_dir / WORKLOAD_FILE, log.workload_lines)
        rewrite_lines(log_dir / RECORD_FILE, log.record_lines)
    try:
        return JSONDatabase(work_dir=str(log_dir), module_equality="structural")
    except Exception as err:  # TVM's InternalError and friends, for a log it cannot parse
        raise WrpnError(f"{log_dir}: MetaSchedule cannot open this tuning log: {one_line(err, last=True, limit=120)}") from None


def rewrite_lines(path: Path, lines: list[str]) -> None:
    """Replace a log file with these lines, atomically (a kill leaves the old file or the new)."""
    write_text_atomic(path, "".join(line + "\n" for line in lines))
