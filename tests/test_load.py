"""Load: several clients (threads and processes) running `run` and `bench` against one device at once.

Through a tracker they queue and all complete correctly; against a bare RPC server each either
completes or gets one clear error line; the server serves again afterwards in both cases.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from wrpn_tvm import runtime
from wrpn_tvm.errors import WrpnError
from wrpn_tvm.remote import daemons, rpc_server
from wrpn_tvm.remote.session import DeviceSpec, tracker_summary

pytestmark = pytest.mark.timeout(600)
KEY = "native-load"
THREADS = int(os.environ.get("WRPN_LOAD_THREADS", "3"))
PROCESSES = int(os.environ.get("WRPN_LOAD_PROCESSES", "2"))  # each runs one `run` and one `bench`


@pytest.fixture(scope="module")
def sample(library, tmp_path_factory):
    x = np.random.default_rng(1).random((1, 1, 8, 8), dtype=np.float32)
    path = tmp_path_factory.mktemp("load-input") / "x.npy"
    np.save(path, x)
    return x, path, runtime.run(library, [x])[0]


def _spawn(argv):
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _wait(condition, what, seconds=90):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not come up"
        time.sleep(0.3)


def _server_argv(port, tracker=None):
    return rpc_server.command(port, tracker=tracker, key=KEY if tracker else None)


def spawn_tracker(port):
    """TVM's tracker on loopback, once it accepts connections."""
    tracker = _spawn([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                      "--port-end", str(port + 1)])
    _wait(lambda: daemons.port_open("127.0.0.1", port), "the tracker")
    return tracker


@pytest.fixture
def tracker_with_one_server():
    tracker_port, server_port = daemons.free_port(), daemons.free_port()
    tracker = spawn_tracker(tracker_port)
    server = None
    try:
        address = f"127.0.0.1:{tracker_port}"
        server = _spawn(_server_argv(server_port, address))

        def registered():
            servers = tracker_summary("127.0.0.1", tracker_port).get("server_info", [])
            return any(entry.get("key") == f"server:{KEY}" for entry in servers)

        _wait(registered, "the server's registration")
        yield address, server
    finally:
        for proc in (server, tracker):
            if proc is not None:
                _stop(proc)


def _cli(args, timeout):
    return subprocess.Popen([sys.executable, "-m", "wrpn_tvm", *args, "--timeout", str(timeout)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _clients(library, sample, tmp_path, device_args, timeout):
    """THREADS in-process `runtime.run` calls and PROCESSES pairs of `wrpn-tvm run` / `bench`, all at once.
    Returns (thread outcomes: outputs or WrpnError, [(argv, returncode, stdout, stderr)], output paths)."""
    x, x_path, _ = sample
    processes, outputs = [], []
    for i in range(PROCESSES):
        outputs.append(tmp_path / f"y{i}.npy")
        processes.append(_cli(["run", str(library), "--input", str(x_path), "-o", str(outputs[-1]), *device_args], timeout))
        processes.append(_cli(["bench", str(library), "--repeat", "3", "--number", "2", *device_args], timeout))
    device = DeviceSpec(**dict(zip(("rpc", "tracker", "key"), _device_fields(device_args))), timeout=timeout)

    def one_run(_):
        try:
            return runtime.run(library, [x], device)[0]
        except WrpnError as err:
            return err

    with ThreadPoolExecutor(THREADS) as pool:
        thread_outcomes = list(pool.map(one_run, range(THREADS)))
    finished = []
    for proc in processes:
        out, err = proc.communicate(timeout=timeout * 4 + 60)
        finished.append((proc.args, proc.returncode, out, err))
    return thread_outcomes, finished, outputs


def _device_fields(device_args):
    options = dict(zip(device_args[::2], device_args[1::2]))
    return options.get("--rpc"), options.get("--tracker"), options.get("--key")


def test_clients_queue_through_the_tracker_and_all_complete(library, sample, tmp_path, tracker_with_one_server):
    address, server = tracker_with_one_server
    x, _, expected = sample
    threads, processes, outputs = _clients(library, sample, tmp_path, ["--tracker", address, "--key", KEY], timeout=240)
    for outcome in threads:
        assert not isinstance(outcome, WrpnError), outcome
        np.testing.assert_allclose(outcome, expected, rtol=1e-6)
    for argv, code, out, err in processes:
        assert code == 0, (argv, err)
    for path in outputs:
        np.testing.assert_allclose(np.load(path), expected, rtol=1e-6)
    assert server.poll() is None
    np.testing.assert_allclose(runtime.run(library, [x], DeviceSpec(tracker=address, key=KEY, timeout=60))[0], expected, rtol=1e-6)


def test_clients_on_a_bare_server_complete_or_fail_clearly(library, sample, tmp_path, native_rpc_server):
    proc, address = native_rpc_server
    x, _, expected = sample
    threads, processes, outputs = _clients(library, sample, tmp_path, ["--rpc", address], timeout=60)
    for outcome in threads:
        if isinstance(outcome, WrpnError):
            assert "\n" not in str(outcome)
        else:
            np.testing.assert_allclose(outcome, expected, rtol=1e-6)
    for (argv, code, out, err), path in zip(processes, [p for p in outputs for _ in (0, 1)]):
        if code == 0 and argv[3] == "run":
            np.testing.assert_allclose(np.load(path), expected, rtol=1e-6)
        elif code != 0:
            lines = err.strip().splitlines()
            assert code == 1 and len(lines) == 1 and lines[0].startswith("wrpn-tvm: error: "), (argv, err)
    assert proc.poll() is None, "the RPC server crashed under load"
    np.testing.assert_allclose(runtime.run(library, [x], DeviceSpec(rpc=address, timeout=60))[0], expected, rtol=1e-6)


def test_an_idle_connection_does_not_block_the_device(library, sample, native_rpc_server):
    _, address = native_rpc_server
    x, _, expected = sample
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port))):
        time.sleep(1)  # the server has accepted it and waits for its handshake
        outputs = runtime.run(library, [x], DeviceSpec(rpc=address, timeout=10))
    np.testing.assert_allclose(outputs[0], expected, rtol=1e-6)
