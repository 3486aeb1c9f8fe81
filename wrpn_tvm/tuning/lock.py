"""One tuning job per log dir: two jobs appending to the same JSON files would interleave lines.

An advisory `flock` on `DIR/.tune.lock`; the kernel releases it when the holder exits, however it
exits, so a killed job never leaves a stale lock behind.
"""

import contextlib
import fcntl
import os
from pathlib import Path

from ..errors import WrpnError

LOCK_FILE = ".tune.lock"


@contextlib.contextmanager
def exclusive(log_dir: "str | os.PathLike"):
    """Hold the log dir's lock for the block; WrpnError at once if another job holds it."""
    path = Path(log_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise WrpnError(
                f"{log_dir} is in use by another tuning job (pid {holder}); wait for it to finish or use another --log-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
