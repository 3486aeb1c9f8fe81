"""`wrpn-tvm device` and `wrpn-tvm tracker`: background services on loopback, found again by later commands."""

import pytest

from wrpn_tvm.cli import main
from wrpn_tvm.remote.daemons import free_port


@pytest.mark.emulator
def test_device_status_lists_running_devices(capsys, emulated_pool):
    assert main(["device", "status"]) == 0
    out = capsys.readouterr().out
    assert emulated_pool.direct in out
    for port in emulated_pool.tracker_devices:
        assert f"127.0.0.1:{port}" in out and "board=rasp4" in out


def test_device_refuses_a_public_address_without_the_flag(capsys):
    assert main(["device", "start", "--host", "0.0.0.0", "--port", str(free_port())]) == 1
    assert "refusing to bind to 0.0.0.0" in capsys.readouterr().err


def test_device_refuses_a_busy_port(capsys, native_rpc_server):
    _, address = native_rpc_server
    assert main(["device", "start", "--port", address.split(":")[1]]) == 1
    assert "already in use" in capsys.readouterr().err


def test_stopping_nothing_is_not_an_error(capsys):
    port = free_port()
    assert main(["device", "stop", "--port", str(port)]) == 0
    assert f"no device was running on port {port}" in capsys.readouterr().out


def test_tracker_start_status_stop(capsys):
    port = str(free_port())
    assert main(["tracker", "start", "--port", port]) == 0
    try:
        assert f"tracker ready at 127.0.0.1:{port}" in capsys.readouterr().out
        assert main(["tracker", "status", "--port", port]) == 0
        assert "no devices registered" in capsys.readouterr().out
        assert main(["tracker", "start", "--port", port]) == 1
        assert "already running" in capsys.readouterr().err
    finally:
        assert main(["tracker", "stop", "--port", port]) == 0
    assert main(["tracker", "status", "--port", port]) == 1
    assert "no RPC tracker answers" in capsys.readouterr().err
    assert main(["tracker", "start", "--host", "10.1.2.3", "--port", port]) == 1
