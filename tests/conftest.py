"""Shared fixtures: exported models, native RPC servers, the emulated Raspberry Pi pool.

The emulated devices (qemu-user, aarch64 TVM) are started once per test session, in parallel,
because importing TVM under emulation takes about a minute on 2 cores. They are required: when
scripts/setup.sh has not prepared the emulator the tests fail with the command to run, unless
WRPN_TVM_SKIP_EMULATOR=1 says to skip them on purpose.
"""

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import torch

from wrpn_tvm import build
from wrpn_tvm.remote import daemons, emulator, rpc_server, tracker
from wrpn_tvm.tuning.intrinsics import import_tensor_intrinsics

EMULATOR_KEY = "rasp4-test"


@dataclass
class EmulatedPool:
    direct: str  # HOST:PORT of a device for --rpc
    tracker: str  # HOST:PORT of a tracker with two devices under EMULATOR_KEY
    key: str
    tracker_devices: list


@pytest.fixture(scope="session", autouse=True)
def isolated_state(tmp_path_factory):
    """Keep service state (pid files, logs) out of the user's ~/.cache, but reuse the prepared emulator."""
    prepared_home = daemons.state_dir()
    os.environ["WRPN_TVM_HOME"] = str(tmp_path_factory.mktemp("wrpn-home"))
    if (prepared_home / "emulator-aarch64").exists():
        os.symlink(prepared_home / "emulator-aarch64", daemons.state_dir() / "emulator-aarch64")
    yield
    for service in daemons.all_services():
        daemons.stop(service.name)


@pytest.fixture(scope="session")
def emulated_pool(isolated_state):
    if os.environ.get("WRPN_TVM_SKIP_EMULATOR") == "1":
        pytest.skip("WRPN_TVM_SKIP_EMULATOR=1")
    if not emulator.is_prepared():
        pytest.fail("the emulated Raspberry Pi is not prepared: run scripts/setup.sh")
    tracker_port = daemons.free_port()
    tracker.start(tracker_port)
    ports = [daemons.free_port() for _ in range(3)]
    tracker_address = f"127.0.0.1:{tracker_port}"
    with ThreadPoolExecutor(3) as pool:
        # Generous: three qemu processes importing TVM at once on 2 cores.
        jobs = [pool.submit(emulator.start, ports[0], "rasp4", timeout=600)]
        jobs += [pool.submit(emulator.start, port, "rasp4", tracker_address, EMULATOR_KEY, timeout=600) for port in ports[1:]]
        for job in jobs:
            job.result()
    yield EmulatedPool(f"127.0.0.1:{ports[0]}", tracker_address, EMULATOR_KEY, ports[1:])
    for port in ports:
        emulator.stop(port)
    tracker.stop(tracker_port)


@pytest.fixture(scope="session")
def tensor_intrinsics():
    """For tests that make a MetaSchedule TuneContext themselves: its first use in a process imports
    TVM's tensor intrinsics, 1-2 minutes under pytest unless imported this way first (a tuning job does)."""
    import_tensor_intrinsics()


@pytest.fixture(scope="session")
def library(tmp_path_factory):
    """A one-conv model compiled for this host: what the remote-fault and load tests send to devices."""
    folder = tmp_path_factory.mktemp("conv-library")
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).eval()
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 8, 8),)), str(folder / "tiny.pt2"))
    return build.compile_model(folder / "tiny.pt2", "host", folder / "tiny.so").library


@pytest.fixture
def native_rpc_server():
    """A native x86 TVM RPC server on loopback: a fast, killable stand-in for a board."""
    port = daemons.free_port()
    proc = subprocess.Popen(rpc_server.command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not daemons.port_open("127.0.0.1", port):
        assert proc.poll() is None and time.monotonic() < deadline, "the RPC server did not start"
        time.sleep(0.2)
    yield proc, f"127.0.0.1:{port}"
    if proc.poll() is None:
        os.killpg(proc.pid, 9)
    proc.wait()
