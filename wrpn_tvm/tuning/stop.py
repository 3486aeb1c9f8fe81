"""Stopping a tuning job cleanly: on Ctrl-C or when its time budget is spent.

MetaSchedule's tuning loop runs in C++ and calls back into Python, so a KeyboardInterrupt raised
inside a callback surfaces as a failed candidate rather than stopping the job. Instead, Ctrl-C
(or the deadline) sets a flag; each task's search strategy sees it at its next turn and ends,
so the batches already in flight are measured and written before `tune` returns. A second Ctrl-C
aborts at once (the records written so far stay valid: the log is appended line by line).
"""

import contextlib
import signal
import threading
import time


class StopRequest:
    """Set by Ctrl-C or by a time budget; polled by SkipRecordedSearch between batches."""

    def __init__(self, budget_seconds: float | None = None):
        self.deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
        self.reason: str | None = None
        self._event = threading.Event()

    def request(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def requested(self) -> bool:
        if not self._event.is_set() and self.deadline is not None and time.monotonic() >= self.deadline:
            self.request("time budget spent")
        return self._event.is_set()


@contextlib.contextmanager
def stop_on_interrupt(stop: StopRequest, stream):
    """While inside, the first Ctrl-C asks the job to stop after its batches in flight."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return

    def handler(_signum, _frame):
        print("[tune] Ctrl-C: stopping after the batches in flight (Ctrl-C again to abort now)",
              file=stream, flush=True)
        stop.request("interrupted")
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
