"""Remote mistakes get a prompt, true, one-line answer; several libraries are compared in one run."""

import threading
import time

import numpy as np
import pytest

from test_load import KEY, _server_argv, _spawn, _stop, spawn_tracker, tracker_with_one_server  # noqa: F401 (fixture)
from wrpn_tvm import runtime
from wrpn_tvm.cli import main
from wrpn_tvm.errors import WrpnError
from wrpn_tvm.remote import daemons
from wrpn_tvm.remote.session import DeviceSpec, DeviceTimeout, registered_devices


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("wrpn-tvm: error: ") and "\n" not in err, err
    return err


def test_a_key_no_device_has_is_refused_at_once_naming_the_keys(capsys, library, tracker_with_one_server):
    tracker, _ = tracker_with_one_server
    started = time.monotonic()
    err = _one_line_error(capsys, ["bench", str(library), "--tracker", tracker, "--key", "nokey", "--timeout", "300"])
    assert time.monotonic() - started < 30, "asked the tracker first, did not wait for the request"
    assert "no device is registered under key 'nokey'" in err and KEY in err and "--wait-for-device" in err
    # The tracker holds no pending request afterwards: the real key still serves at once.
    assert runtime.run(library, [np.zeros((1, 1, 8, 8), np.float32)], DeviceSpec(tracker=tracker, key=KEY, timeout=60))


def test_a_tracker_registered_server_reached_directly_says_how_to_reach_it(library, tracker_with_one_server):
    _, server = tracker_with_one_server
    port = server.args[server.args.index("--port") + 1]
    with pytest.raises(WrpnError, match="registered with an RPC tracker .*--tracker HOST:PORT --key KEY"):
        runtime.run(library, [np.zeros((1, 1, 8, 8), np.float32)], DeviceSpec(rpc=f"127.0.0.1:{port}", timeout=30))


def test_waiting_for_a_device_under_a_key(tmp_path):
    tracker_port, server_port = daemons.free_port(), daemons.free_port()
    tracker = spawn_tracker(tracker_port)
    server = None
    try:
        address = f"127.0.0.1:{tracker_port}"
        with pytest.raises(DeviceTimeout, match="no device registered under key"):
            registered_devices(DeviceSpec(tracker=address, key=KEY, timeout=1, wait_for_device=True))
        found = {}
        waiter = threading.Thread(target=lambda: found.update(n=registered_devices(
            DeviceSpec(tracker=address, key=KEY, timeout=60, wait_for_device=True))))
        waiter.start()
        server = _spawn(_server_argv(server_port, address))
        waiter.join(90)
        assert found.get("n") == 1
    finally:
        for proc in (server, tracker):
            if proc is not None:
                _stop(proc)


def test_device_start_on_a_busy_port_refuses_before_starting(capsys, native_rpc_server):
    _, address = native_rpc_server
    port = address.rsplit(":", 1)[1]
    err = _one_line_error(capsys, ["device", "start", "--port", port])
    assert "already in use" in err and "starting" not in capsys.readouterr().out


def test_several_libraries_are_timed_round_robin(library, tmp_path):
    twin = tmp_path / "twin.so"
    twin.write_bytes(library.read_bytes())
    (tmp_path / "twin.so.json").write_text((library.parent / (library.name + ".json")).read_text())
    result = runtime.compare([library, twin], repeat=4, number=2, json_path=tmp_path / "c.json")
    assert [len(result.timings[str(lib)].runs_ms) for lib in (library, twin)] == [4, 4]
    assert "round-robin" in result.table() and (tmp_path / "c.json").is_file()
    with pytest.raises(WrpnError, match="each library once"):
        runtime.compare([library, library])


def test_compare_torch_refuses_a_program_with_other_inputs(library, tmp_path):
    import torch

    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    torch.export.save(torch.export.export(mlp, (torch.zeros(1, 12),)), str(tmp_path / "mlp.pt2"))
    with pytest.raises(WrpnError, match="takes inputs float32\\[1, 12\\], the library float32\\[1, 1, 8, 8\\]"):
        runtime.bench(library, repeat=1, number=1, compare_torch=tmp_path / "mlp.pt2")
