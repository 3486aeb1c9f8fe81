"""Where a compiled model runs: this machine, an RPC server (`--rpc HOST:PORT`), or a tracker's pool (`--tracker HOST:PORT --key KEY`).

Every remote step has a deadline: a device that hangs or dies gives a one-line WrpnError, never a
hung process. Remote steps run on a few reused worker threads (as many as run at once); one stuck
inside the RPC library is abandoned there, and only that one.
"""

import os
import queue
import socket
import struct
import threading
from dataclasses import dataclass

from ..errors import WrpnError, one_line
from . import daemons

DEFAULT_TIMEOUT_S = 300.0


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise WrpnError(f"bad address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class DeviceSpec:
    """A device to run on. Neither rpc nor tracker: this machine."""

    rpc: str | None = None
    tracker: str | None = None
    key: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    wait_for_device: bool = False  # with a tracker: wait (up to timeout) for a device to register under key

    def __post_init__(self):
        if self.rpc and self.tracker:
            raise WrpnError("give either --rpc or --tracker, not both")
        if self.tracker and not self.key:
            raise WrpnError("--tracker needs --key (the device key the boards registered under)")
        if self.key and not self.tracker:
            raise WrpnError("--key needs --tracker")
        if self.wait_for_device and not self.tracker:
            raise WrpnError("--wait-for-device needs --tracker and --key")
        if self.timeout <= 0:
            raise WrpnError("--timeout must be positive")
        for address in (self.rpc, self.tracker):
            if address:
                parse_address(address)

    @property
    def is_local(self) -> bool:
        return not (self.rpc or self.tracker)

    def describe(self) -> str:
        if self.rpc:
            return f"rpc://{self.rpc}"
        if self.tracker:
            return f"tracker://{self.tracker} key={self.key}"
        return "local"


class DeviceTimeout(WrpnError):
    """A remote step outlived its deadline; its thread still blocks inside the RPC library."""


class _Worker:
    """A long-lived daemon thread that runs the calls given to it, one at a time.

    The TVM runtime keeps a thread pool per calling thread, which outlives the thread; calls made
    on a fresh thread each time would leave that pool behind on every call. Reused workers keep
    the process's thread count flat."""

    def __init__(self):
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="wrpn-deadline", daemon=True).start()

    def _serve(self) -> None:
        while True:
            fn, outcome, done = self.inbox.get()
            try:
                outcome["value"] = fn()
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
                outcome["error"] = err
            finally:
                del fn
                done.set()


_IDLE_WORKERS: list = []  # as many as calls were ever in flight at once, less those stuck on a device
_WORKERS_LOCK = threading.Lock()


def with_deadline(fn, seconds: float, what: str):
    """Run fn() on a reused worker thread and return its result, or raise DeviceTimeout if it takes
    longer than `seconds` (the worker, stuck in the RPC library, is then never reused)."""
    with _WORKERS_LOCK:
        worker = _IDLE_WORKERS.pop() if _IDLE_WORKERS else _Worker()
    outcome: dict = {}
    done = threading.Event()
    worker.inbox.put((fn, outcome, done))
    if not done.wait(seconds):
        raise DeviceTimeout(f"{what} did not finish within {seconds:.0f} s: the device hangs or is gone")
    with _WORKERS_LOCK:
        _IDLE_WORKERS.append(worker)
    if "error" in outcome:
        raise as_error(outcome["error"], what) from None
    return outcome.get("value")


def as_error(err: BaseException, what: str) -> WrpnError:
    """The one-line WrpnError for an exception raised while doing `what` on a device."""
    return err if isinstance(err, WrpnError) else WrpnError(f"{what} failed: {one_line(err)}")


_CONNECT_LOCK = threading.Lock()  # one connect at a time, so the sockets it opens are its own


def _tcp_sockets() -> set:
    import psutil

    process = psutil.Process()
    connections = process.net_connections(kind="tcp") if hasattr(process, "net_connections") else process.connections("tcp")
    return {c.fd for c in connections if c.fd >= 0}


def _open_session(open_fn):
    """open_fn() (an RPC session), remembering the TCP sockets it opened (see bound_waits)."""
    with _CONNECT_LOCK:
        before = _tcp_sockets()
        session = open_fn()
        session.wrpn_sockets = sorted(_tcp_sockets() - before)
    return session


def bound_waits(session, seconds: float) -> None:
    """From now on, a read or write on the session's sockets gives up after `seconds`.

    Freeing a remote handle is a remote call made from a destructor, which holds Python's GIL
    while it waits: no Python-level deadline can interrupt it, so a device that stops answering
    then would hang the process. A kernel-level socket timeout (SO_RCVTIMEO/SO_SNDTIMEO) does:
    the wait fails, TVM drops the handle, and the process goes on."""
    timeval = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
    for fd in getattr(session, "wrpn_sockets", ()):
        try:
            with socket.socket(fileno=os.dup(fd)) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        except OSError:  # already closed
            pass


def tracker_summary(host: str, port: int, timeout: float = 10.0) -> dict:
    from tvm import rpc

    if not daemons.port_open(host, port, timeout=min(timeout, 3.0)):
        raise WrpnError(f"no RPC tracker answers at {host}:{port}")
    return with_deadline(lambda: rpc.connect_tracker(host, port).summary(), timeout, f"tracker {host}:{port}")


def servers_under_key(summary: dict, key: str) -> list[dict]:
    """The entries of a tracker summary for the servers registered under device key `key` (a
    server registers as "server:KEY" at its (address, port))."""
    return [entry for entry in summary.get("server_info", []) if entry.get("key") == f"server:{key}"]


TRACKER_POLL_S = 2.0


def registered_devices(device: DeviceSpec) -> int:
    """How many devices are registered under device.key at device.tracker (free or busy). None is
    a one-line error naming the keys the tracker does have, unless device.wait_for_device, which
    waits for one up to device.timeout. Asked before a request, which a tracker would otherwise
    keep pending, silently, for a key no device has."""
    import time

    host, port = parse_address(device.tracker)
    if not daemons.port_open(host, port, timeout=3.0):
        raise WrpnError(f"cannot reach the RPC tracker at {host}:{port}")
    deadline = time.monotonic() + device.timeout
    while True:
        summary = tracker_summary(host, port)
        count = len(servers_under_key(summary, device.key))
        if count or not device.wait_for_device:
            break
        if time.monotonic() > deadline:
            raise DeviceTimeout(f"no device registered under key {device.key!r} at {device.tracker} "
                                f"within {device.timeout:.0f} s")
        time.sleep(TRACKER_POLL_S)
    if not count:
        keys = sorted(str(entry.get("key", "")).removeprefix("server:") for entry in summary.get("server_info", []))
        has = f"its devices are under {', '.join(sorted(set(keys), key=keys.index))}" if keys else "it has no devices"
        raise WrpnError(f"no device is registered under key {device.key!r} at the tracker {device.tracker} ({has}); "
                        "use one of those keys, or --wait-for-device to wait for one")
    return count


# What TVM's client says when a server wants another key: a server registered with a tracker
# only takes the clients the tracker sends it (each with a one-time match key).
_KEY_MISMATCH = "cannot find server that matches key"


def connect(device: DeviceSpec):
    """Open an RPC session to the device (None for local)."""
    from tvm import rpc

    if device.is_local:
        return None
    if device.rpc:
        host, port = parse_address(device.rpc)
        if not daemons.port_open(host, port, timeout=3.0):
            raise WrpnError(f"cannot reach the RPC server at {host}:{port} (is the device running?)")
        try:
            return with_deadline(lambda: _open_session(lambda: rpc.connect(host, port, session_timeout=device.timeout)),
                                 min(device.timeout, 60.0), f"connecting to {device.rpc}")
        except WrpnError as err:
            if _KEY_MISMATCH not in str(err):
                raise
            raise WrpnError(f"the RPC server at {device.rpc} is registered with an RPC tracker and takes only the "
                            "clients it sends: use --tracker HOST:PORT --key KEY instead of --rpc "
                            "(`wrpn-tvm tracker status --port P` lists a tracker's keys)") from None
    host, port = parse_address(device.tracker)
    registered_devices(device)
    # A busy key queues at the tracker: wait as long as the whole call may take.
    return with_deadline(
        lambda: _open_session(lambda: rpc.connect_tracker(host, port).request(device.key, session_timeout=device.timeout)),
        device.timeout, f"requesting a '{device.key}' device from {device.tracker}")
