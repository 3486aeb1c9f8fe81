"""Remote faults: devices that never answer, answer garbage, drop or stall the connection at any
point of a run, or freeze mid-bench, give one clear WrpnError within the timeout, never a hang
(the module's pytest timeout is the hang detector); and RPC services refuse public addresses
unless told, with a warning when told.
"""

import json
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from wrpn_tvm import runtime
from wrpn_tvm.cli import main
from wrpn_tvm.errors import WrpnError
from wrpn_tvm.remote import daemons, rpc_server
from wrpn_tvm.remote.session import DeviceSpec

pytestmark = pytest.mark.timeout(300)
FAULT_TIMEOUT_S = 4.0  # the --timeout given to every faulty call


class FakeDevice:
    """A TCP listener on loopback that plays a broken board: `behaviour(conn)` handles each connection."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = []
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        try:
            self.behaviour(conn, self.closed)
        except OSError:
            pass

    def close(self):
        """Close every connection, so the client threads that a deadline abandoned finish too."""
        self.closed.set()
        self.listener.close()
        for conn in self.connections:
            conn.close()


def never_answers(conn, closed):
    closed.wait()


def hangs_up(conn, closed):
    conn.close()


def answers_garbage(conn, closed):
    conn.sendall(bytes(range(256)) * 64)
    closed.wait()


def answers_bad_key_length(conn, closed):
    """TVM's RPC magic (0xFF271), then a negative length for the server's key."""
    conn.recv(64)
    conn.sendall((0xFF271).to_bytes(4, "little") + (-5).to_bytes(4, "little", signed=True))
    closed.wait()


@pytest.mark.parametrize("behaviour", [never_answers, hangs_up, answers_garbage, answers_bad_key_length])
@pytest.mark.parametrize("command", ["run", "bench"])
def test_broken_device_is_one_clear_error(library, tmp_path, capsys, behaviour, command):
    device = FakeDevice(behaviour)
    try:
        argv = [command, str(library), "--rpc", device.address, "--timeout", str(FAULT_TIMEOUT_S)]
        if command == "run":
            np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), "float32"))
            argv += ["--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("wrpn-tvm: error: ") and "\n" not in err, err
        assert not (tmp_path / "y.npy").exists()
    finally:
        device.close()


def test_tracker_that_never_answers_is_one_clear_error(library, capsys):
    tracker = FakeDevice(never_answers)
    try:
        assert main(["bench", str(library), "--tracker", tracker.address, "--key", "pi",
                     "--timeout", str(FAULT_TIMEOUT_S)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("wrpn-tvm: error: ") and "\n" not in err and "did not finish" in err, err
    finally:
        tracker.close()


# A TCP proxy in its own process (TVM holds the GIL in some blocking RPC calls, so an in-process
# proxy thread could never forward the reply the client waits for). It forwards loopback traffic
# to a real RPC server and, once CUT bytes (both ways together) have passed, drops the connection
# or stalls it (keeps it open, forwards nothing more); CUT < 0 forwards everything. It prints its
# port, then, when its stdin closes, the number of bytes it forwarded.
PROXY_SOURCE = r"""
import socket, sys, threading
upstream_port, cut, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
lock, forwarded, sockets = threading.Lock(), [0], []
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)

def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            with lock:
                allowed = len(data) if cut < 0 else max(0, cut - forwarded[0])
                forwarded[0] += min(len(data), allowed)
            dst.sendall(data[:allowed])
            if allowed < len(data):
                if mode == "drop":
                    break
                threading.Event().wait()
    except OSError:
        pass
    for sock in (src, dst):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

def accept():
    while True:
        client, _ = listener.accept()
        upstream = socket.create_connection(("127.0.0.1", upstream_port))
        sockets.extend([client, upstream])
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()

threading.Thread(target=accept, daemon=True).start()
sys.stdin.read()
print(forwarded[0], flush=True)
"""


class FaultyProxy:
    def __init__(self, upstream_port: int, cut_after: int = -1, mode: str = "drop"):
        self.proc = subprocess.Popen([sys.executable, "-c", PROXY_SOURCE, str(upstream_port), str(cut_after), mode],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.address = f"127.0.0.1:{int(self.proc.stdout.readline())}"

    def close(self) -> int:
        """Stop the proxy (its connections close with it); the bytes it forwarded."""
        out, _ = self.proc.communicate("", timeout=30)
        return int(out.strip())



def drive_cuts(library: str, cuts: list) -> None:
    """Client side, in its own process: per cut, a fresh RPC server (so that no cut inherits the
    previous one's half-served session) and one run through a faulty proxy in front of it; one
    JSON line per cut on stdout."""
    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    expected = runtime.run(library, [x])[0]
    for mode, cut in cuts:
        port = daemons.free_port()
        server = subprocess.Popen(rpc_server.command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            _wait_for_port(port)
            proxy = FaultyProxy(port, cut, mode)
            try:
                outputs = runtime.run(library, [x], DeviceSpec(rpc=proxy.address, timeout=FAULT_TIMEOUT_S))
                outcome = "ok" if np.allclose(outputs[0], expected, rtol=1e-6) else "wrong outputs"
            except WrpnError as err:
                outcome = "error" if str(err).strip() and "\n" not in str(err) else f"bad message {str(err)!r}"
            proxy.close()
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        print(json.dumps({"mode": mode, "cut": cut, "outcome": outcome}), flush=True)


def _serves(library, x, expected, server, within_s: float) -> bool:
    """Whether a direct run succeeds within `within_s`."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            return bool(np.allclose(runtime.run(library, [x], DeviceSpec(rpc=server, timeout=8))[0], expected))
        except WrpnError:
            time.sleep(1)
    return False


def _wait_for_port(port: int, seconds: float = 60) -> None:
    for _ in range(int(seconds * 5)):
        if daemons.port_open("127.0.0.1", port):
            return
        time.sleep(0.2)
    raise AssertionError(f"no RPC server came up on port {port}")


def check_cuts(library: Path, native_rpc_server, fractions: dict) -> None:
    """Cut the byte stream of a whole remote run (handshake, upload, load, run, outputs) at the given
    fractions: each attempt returns the right outputs or one WrpnError line within its timeout.
    The client runs in its own process so that a hang is seen, not suffered."""
    _, address = native_rpc_server
    counting = FaultyProxy(int(address.rsplit(":", 1)[1]))
    runtime.run(library, [np.zeros((1, 1, 8, 8), "float32")], DeviceSpec(rpc=counting.address, timeout=60))
    total = counting.close()
    cuts = [(mode, int(total * f)) for mode, chosen in fractions.items() for f in chosen]
    driver = subprocess.Popen(
        [sys.executable, "-c", "import json, sys; sys.path.insert(0, sys.argv[1]); import test_remote_faults as t; "
                               "t.drive_cuts(sys.argv[2], json.loads(sys.argv[3]))",
         str(Path(__file__).parent), str(library), json.dumps(cuts)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
    # Per cut: a server's start-up, then the fault's timeout for each remote step (connect, upload, run).
    per_cut = 3 * FAULT_TIMEOUT_S + 60
    outcomes = []
    try:
        for cut in cuts:
            ready, _, _ = select.select([driver.stdout], [], [], per_cut + (30 if not outcomes else 0))
            line = driver.stdout.readline() if ready else ""
            assert line.startswith("{"), f"the client hung (or died) at cut {cut} of {total} bytes; before it: {outcomes}"
            outcomes.append(json.loads(line))
    finally:
        driver.kill()
        driver.wait()
    assert all(o["outcome"] in ("ok", "error") for o in outcomes), outcomes
    assert sum(o["outcome"] == "error" for o in outcomes) >= len(cuts) - 2, outcomes


@pytest.mark.timeout(600)
def test_connection_dropped_in_a_run(library, native_rpc_server):
    check_cuts(library, native_rpc_server, {"drop": (0.001, 0.5)})


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_connection_dropped_anywhere_in_a_run(library, native_rpc_server):
    check_cuts(library, native_rpc_server, {"drop": (0.0, 0.001, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999)})


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_connection_stalled_anywhere_in_a_run(library, native_rpc_server):
    check_cuts(library, native_rpc_server, {"stall": (0.005, 0.1, 0.3, 0.6, 0.9, 0.995)})


@pytest.mark.timeout(600)
def test_connection_stalled_at_the_end_of_a_run(library, native_rpc_server):
    """A device that stops answering after the outputs arrived, while the session is being closed."""
    check_cuts(library, native_rpc_server, {"stall": (0.995,)})


def test_server_survives_a_client_dropped_mid_upload(library, native_rpc_server):
    _, address = native_rpc_server
    x = np.zeros((1, 1, 8, 8), "float32")
    counting = FaultyProxy(int(address.rsplit(":", 1)[1]))
    expected = runtime.run(library, [x], DeviceSpec(rpc=counting.address, timeout=60))[0]
    proxy = FaultyProxy(int(address.rsplit(":", 1)[1]), counting.close() // 2, "drop")
    with pytest.raises(WrpnError):
        runtime.run(library, [x], DeviceSpec(rpc=proxy.address, timeout=FAULT_TIMEOUT_S))
    proxy.close()
    assert _serves(library, x, expected, address, within_s=15)


HANG_LIMIT_S = 45  # a faulty client process still alive after this long counts as hung


def _cli_in_a_process(argv: list) -> "tuple[int | None, str]":
    """(exit code, stderr) of `wrpn-tvm ARGV` in its own process; exit code None when it hung (then killed)."""
    proc = subprocess.Popen([sys.executable, "-m", "wrpn_tvm", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        return proc.wait(HANG_LIMIT_S), proc.stderr.read()
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None, proc.stderr.read()



def test_device_frozen_mid_bench_is_a_clear_error(library, native_rpc_server):
    proc, address = native_rpc_server
    freeze = threading.Timer(8.0, os.killpg, (proc.pid, signal.SIGSTOP))  # after the client's start-up and upload
    freeze.start()
    try:
        code, err = _cli_in_a_process(["bench", str(library), "--rpc", address, "--repeat", "100000", "--number", "100",
                                       "--timeout", str(FAULT_TIMEOUT_S + 4)])
    finally:
        freeze.cancel()
        os.killpg(proc.pid, signal.SIGCONT)
    assert code is not None, "wrpn-tvm bench hung on a frozen device"
    assert code == 1 and err.strip().startswith("wrpn-tvm: error: ") and "\n" not in err.strip(), err


def test_connection_stalled_mid_upload_is_a_clear_error(library, native_rpc_server, tmp_path):
    _, address = native_rpc_server
    counting = FaultyProxy(int(address.rsplit(":", 1)[1]))
    runtime.run(library, [np.zeros((1, 1, 8, 8), "float32")], DeviceSpec(rpc=counting.address, timeout=60))
    proxy = FaultyProxy(int(address.rsplit(":", 1)[1]), counting.close() // 2, "stall")
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), "float32"))
    try:
        code, err = _cli_in_a_process(["run", str(library), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"),
                                       "--rpc", proxy.address, "--timeout", str(FAULT_TIMEOUT_S)])
    finally:
        proxy.close()
    assert code is not None, "wrpn-tvm run hung on a stalled connection"
    assert code == 1 and err.strip().startswith("wrpn-tvm: error: ") and "\n" not in err.strip(), err


# ---------------------------------------------------------------------------- public binds


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "0", "192.168.1.10", "127.0.0.2", "::ffff:127.0.0.1"])
@pytest.mark.parametrize("command", [["device", "start", "--emulate", "rasp4"], ["tracker", "start"]])
def test_public_bind_needs_allow_public(capsys, host, command):
    port = daemons.free_port()
    running = {service.name for service in daemons.all_services()}  # e.g. the session's emulated pool
    assert main([*command, "--host", host, "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("wrpn-tvm: error: refusing to bind") and "--allow-public" in err, err
    assert not daemons.port_open("127.0.0.1", port)
    assert {service.name for service in daemons.all_services()} == running


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_needs_no_flag(host):
    assert daemons.check_bind_host(host, allow_public=False) == host


def test_allow_public_warns_that_rpc_runs_any_code():
    with pytest.warns(UserWarning, match="anyone who reaches it can run code"):
        assert daemons.check_bind_host("0.0.0.0", allow_public=True) == "0.0.0.0"


def test_tracker_start_with_allow_public_warns_and_binds_only_where_asked(recwarn):
    """127.0.0.2 is off the loopback list (so it needs the flag) yet unreachable from the network."""
    port = daemons.free_port()
    try:
        assert main(["tracker", "start", "--host", "127.0.0.2", "--port", str(port), "--allow-public"]) == 0
        assert any("anyone who reaches it can run code" in str(w.message) for w in recwarn)
        assert daemons.port_open("127.0.0.2", port) and not daemons.port_open("127.0.0.1", port)
    finally:
        main(["tracker", "stop", "--port", str(port)])
