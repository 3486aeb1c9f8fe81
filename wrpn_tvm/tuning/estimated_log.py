"""Which kind of run times a tuning log holds: measured (the default) or ESTIMATED (`tune --estimate`).

An estimated job writes `estimated.json` (the board, core, clock, threads and llvm-mca model that
estimated the times) and a README.md titled as estimated into the log dir before its first
record. A log dir with that marker is estimated; one with records and no marker is measured. A
job never adds records of the other kind: a best record must be the best of comparable times, and
an estimate is off a board's real time by an unknown factor. `compile` says when it applies
estimated records.
"""

import json
import os
from pathlib import Path

from ..errors import WrpnError
from ..fileio import write_text_atomic

MARKER_FILE = "estimated.json"
README_FILE = "README.md"
README_TITLE = "# ESTIMATED tuning log"


def estimated_info(log_dir: "str | os.PathLike") -> "dict | None":
    """The marker's contents where the log is estimated ({} if unreadable: its presence decides), else None."""
    path = Path(log_dir) / MARKER_FILE
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def describe(info: dict) -> str:
    """`rasp4 (Cortex-A72 at 1.5 GHz, 4 threads, llvm-mca cortex-a72)`, from what the marker holds."""
    if not info.get("board"):
        return "a board"
    return (f"{info['board']} ({info.get('core', '?')} at {info.get('clock_ghz', '?')} GHz, "
            f"{info.get('threads', '?')} threads, llvm-mca {info.get('mca_cpu', '?')})")


def check_kind(log_dir: Path, has_records: bool, estimated: bool) -> None:
    """Refuse a job whose kind of run times differs from those the log holds."""
    info = estimated_info(log_dir)
    if info is not None and not estimated:
        raise WrpnError(f"{log_dir} holds ESTIMATED run times (`wrpn-tvm tune --estimate`, {describe(info)}); "
                        "a measured job never adds to it: use another --log-dir")
    if info is None and estimated and has_records:
        raise WrpnError(f"{log_dir} holds measured run times; an estimated job (--estimate) never adds to it: "
                        "use another --log-dir")


def mark_estimated(log_dir: Path, board, threads: int, calibration: str) -> None:
    """Write the marker and the README's label (before a title of the user's own, if there is one)."""
    info = {"timing": "estimated", "board": board.name, "core": board.core, "clock_ghz": board.clock_ghz,
            "threads": threads, "mca_cpu": board.mca_cpu, "note": board.note, "calibration": calibration}
    write_text_atomic(log_dir / MARKER_FILE, json.dumps(info, indent=2) + "\n")
    readme = log_dir / README_FILE
    label = _readme(info)
    if readme.exists():
        existing = readme.read_text(errors="replace")
        if not existing.startswith(README_TITLE):
            label += "\n" + existing
    write_text_atomic(readme, label)


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
