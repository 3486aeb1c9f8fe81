"""How a tuning log's run times were taken: a job adds to a log only times taken the same way.

A log's best record must be the best of comparable times. Three ways:
* "in-model": a CPU candidate timed as it runs in the model (measure.in_model_timing), on this
  host or a device over RPC. Timed so, a conv can take 1.5x its warm time.
* "warm": MetaSchedule's default evaluator (warm caches, averaged over 100 ms): GPU jobs, and every
  CPU log tuned before wrpn-tvm timed as in the model, the shipped logs among them.
* "estimated": `tune --estimate` ranked candidates by their estimated time on a Raspberry Pi.

A measured job writes `timing.json` before its first record. An estimated job writes
`estimated.json` (the board, core, clock, threads and llvm-mca model that estimated the times) and a
README.md titled as estimated. A log dir with records and neither marker was timed warm. `compile`
applies a log of any kind, and says when its records are estimated.
"""

import json
import os
from pathlib import Path

from ..errors import WrpnError
from ..fileio import write_text_atomic

IN_MODEL, WARM, ESTIMATED = "in-model", "warm", "estimated"
TIMING_FILE = "timing.json"
MARKER_FILE = "estimated.json"
README_FILE = "README.md"
README_TITLE = "# ESTIMATED tuning log"

_JOBS = {IN_MODEL: "a job timing CPU candidates as in the model", WARM: "a job timing candidates warm",
         ESTIMATED: "an estimated job (--estimate)"}


def estimated_info(log_dir: "str | os.PathLike") -> "dict | None":
    """The marker's contents where the log is estimated ({} if unreadable: its presence decides), else None."""
    return _read(Path(log_dir) / MARKER_FILE)


def log_timing(log_dir: "str | os.PathLike", has_records: bool) -> "str | None":
    """How the log's run times were taken; None for a log with none (it takes a job of any kind)."""
    if estimated_info(log_dir) is not None:
        return ESTIMATED
    marker = _read(Path(log_dir) / TIMING_FILE)
    if marker is not None and marker.get("timing") in (IN_MODEL, WARM):
        return marker["timing"]
    return WARM if has_records else None


def describe(info: dict) -> str:
    """`rasp4 (Cortex-A72 at 1.5 GHz, 4 threads, llvm-mca cortex-a72)`, from what the marker holds."""
    if not info.get("board"):
        return "a board"
    return (f"{info['board']} ({info.get('core', '?')} at {info.get('clock_ghz', '?')} GHz, "
            f"{info.get('threads', '?')} threads, llvm-mca {info.get('mca_cpu', '?')})")


def check_timing(log_dir: Path, has_records: bool, timing: str) -> None:
    """Refuse a job whose way of timing differs from that of the run times the log holds."""
    held = log_timing(log_dir, has_records)
    if held is None or held == timing:
        return
    if held == ESTIMATED:
        holds = f"ESTIMATED run times (`wrpn-tvm tune --estimate`, {describe(estimated_info(log_dir))})"
    elif held == WARM:
        holds = ("measured run times timed warm (MetaSchedule's default, as every CPU job timed before "
                 "wrpn-tvm timed candidates as in the model)")
    else:
        holds = "measured run times timed as in the model (caches flushed but the input's)"
    raise WrpnError(f"{log_dir} holds {holds}; {_JOBS[timing]} never adds to it: use another --log-dir")


def mark_timing(log_dir: Path, timing: str) -> None:
    """Say how a measured job times its candidates (before its first record)."""
    note = ("each candidate timed as in the model: every argument but the input flushed from the caches, "
            "one call per timing" if timing == IN_MODEL else "MetaSchedule's default: warm caches, calls averaged")
    write_text_atomic(log_dir / TIMING_FILE, json.dumps({"timing": timing, "note": note}, indent=2) + "\n")


def mark_estimated(log_dir: Path, board, threads: int, calibration: str) -> None:
    """Write the marker and the README's label (before a title of the user's own, if there is one)."""
    info = {"timing": ESTIMATED, "board": board.name, "core": board.core, "clock_ghz": board.clock_ghz,
            "threads": threads, "mca_cpu": board.mca_cpu, "note": board.note, "calibration": calibration}
    write_text_atomic(log_dir / MARKER_FILE, json.dumps(info, indent=2) + "\n")
    readme = log_dir / README_FILE
    label = _readme(info)
    if readme.exists():
        existing = readme.read_text(errors="replace")
        if not existing.startswith(README_TITLE):
            label += "\n" + existing
    write_text_atomic(readme, label)


def _read(path: Path) -> "dict | None":
    """A marker's contents ({} if unreadable: its presence decides), None where there is none."""
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _readme(info: dict) -> str:
    return f"""{README_TITLE}: {info['board']} ({info['core']}), no board attached

Every run time in this log is an ESTIMATE, not a measurement. `wrpn-tvm tune --estimate` ran no
candidate on a device: it ranked them by wrpn-tvm's cycle estimate for {describe(info)}: a
counting run under qemu-user (exact trip counts) times llvm-mca 14 cycles per basic block, at the
board's stock clock, assuming every load hits L1 and perfect thread scaling.
{f'Board note: {info["note"]}.' if info.get("note") else ''}
{info['calibration']}

- A measured tuning job (`--rpc`, `--tracker`) refuses to add to this log, and an estimated job
  refuses to add to a measured one: tune on a board into another --log-dir for measured records.
- `wrpn-tvm compile --tuning-log` applies it, saying that its records are estimated.
- `{MARKER_FILE}` holds the same facts for programs.
"""
