"""A user's mistake gets one clear line on stderr and a non-zero exit, never a traceback."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from wrpn_tvm import build
from wrpn_tvm.cli import main
from wrpn_tvm.nn import build_model, export_model


@pytest.fixture(scope="module")
def tiny_program(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = build_model("smallcnn", width=0.5).eval()
    path = folder / "tiny.pt2"
    torch.export.save(export_model(model, torch.zeros(1, 1, 28, 28)), str(path))
    return path


@pytest.fixture(scope="module")
def tiny_library(tiny_program):
    return build.compile_model(tiny_program, "host", tiny_program.with_suffix(".so")).library


def _fails_with_one_line(capsys, argv, expected):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("wrpn-tvm: error: ") and "\n" not in err and "Traceback" not in err, err
    assert expected in err, err


def test_missing_model(capsys, tmp_path):
    _fails_with_one_line(capsys, ["compile", str(tmp_path / "nope.pt2"), "-o", str(tmp_path / "o.so")], "no such file")


def test_not_a_program(capsys, tmp_path):
    bogus = tmp_path / "notes.pt2"
    bogus.write_text("these are not weights")
    _fails_with_one_line(capsys, ["compile", str(bogus), "-o", str(tmp_path / "o.so")], "not a torch.export program")


def test_unknown_target(capsys, tiny_program, tmp_path):
    _fails_with_one_line(capsys, ["compile", str(tiny_program), "--target", "rasp9", "-o", str(tmp_path / "o.so")],
                         "unknown target 'rasp9'")


def test_failed_compile_keeps_the_existing_library(capsys, tiny_library, tmp_path):
    before = tiny_library.read_bytes()
    bogus = tmp_path / "broken.pt2"
    bogus.write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    assert main(["compile", str(bogus), "-o", str(tiny_library)]) == 1
    assert tiny_library.read_bytes() == before


def test_unreachable_rpc(capsys, tiny_library, tmp_path):
    from wrpn_tvm.remote.daemons import free_port

    port = free_port()
    _fails_with_one_line(capsys, ["bench", str(tiny_library), "--rpc", f"127.0.0.1:{port}"], "cannot reach the RPC server")
    _fails_with_one_line(capsys, ["bench", str(tiny_library), "--tracker", f"127.0.0.1:{port}", "--key", "pi"],
                         "cannot reach the RPC tracker")


def test_bad_device_arguments(capsys, tiny_program, tiny_library, tmp_path):
    _fails_with_one_line(capsys, ["bench", str(tiny_library), "--tracker", "127.0.0.1:9190"], "--tracker needs --key")
    _fails_with_one_line(capsys, ["bench", str(tiny_library), "--rpc", "nowhere"], "bad address")
    _fails_with_one_line(capsys, ["bench", str(tiny_library), "--key", "pi"], "--key needs --tracker")
    _fails_with_one_line(capsys, ["tune", str(tiny_program), "--log-dir", str(tmp_path / "log"), "--key", "pi"],
                         "--key needs --tracker")
    assert not (tmp_path / "log").exists()


def test_run_with_wrong_input_shape(capsys, tiny_library, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 1, 7, 7), dtype="float32"))
    _fails_with_one_line(capsys, ["run", str(tiny_library), "--input", str(x), "-o", str(tmp_path / "y.npy")], "shape")


def test_run_refuses_pickled_input(capsys, tiny_library, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _fails_with_one_line(capsys, ["run", str(tiny_library), "--input", str(x), "-o", str(tmp_path / "y.npy")], "not a readable")


def test_run_writes_output(capsys, tiny_library, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32))
    assert main(["run", str(tiny_library), "--input", str(x), "-o", str(tmp_path / "y.npy")]) == 0
    assert np.load(tmp_path / "y.npy").shape == (1, 10)


def test_aarch64_library_needs_a_device(capsys, tiny_program, tmp_path):
    library = build.compile_model(tiny_program, "rasp4", tmp_path / "pi.so").library
    _fails_with_one_line(capsys, ["bench", str(library)], "--rpc or --tracker")


def test_a_library_using_an_instruction_this_cpu_lacks_is_refused(capsys, tiny_library, tmp_path):
    """Its sidecar says what it was built for; loading it would crash at the first such instruction."""
    import json
    import shutil

    from wrpn_tvm.targets import isa_features, resolve

    if "amx-fp16" in isa_features(resolve("host").target):
        pytest.skip("this CPU has AMX-FP16, the feature the test claims the library uses")
    library = tmp_path / "granite.so"
    shutil.copy(tiny_library, library)
    meta = json.loads((tiny_library.parent / (tiny_library.name + ".json")).read_text())
    meta["target"] = {"name": "custom", "cross_compiler": None,
                      "json": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v4", "mattr": ["+amx-fp16"]}}
    (tmp_path / "granite.so.json").write_text(json.dumps(meta))
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 28, 28), np.float32))
    for argv in (["bench", str(library)], ["run", str(library), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]):
        # The features this CPU lacks among those the target implies (amx-fp16, and amx-tile off Intel).
        _fails_with_one_line(capsys, argv, "amx-fp16")
        _fails_with_one_line(capsys, argv, "; rebuild with --target host")


def test_device_dying_mid_bench_is_a_clear_error(capsys, tiny_library, native_rpc_server):
    proc, address = native_rpc_server

    def kill_soon():
        time.sleep(3)
        os.killpg(proc.pid, 9)

    threading.Thread(target=kill_soon, daemon=True).start()
    start = time.monotonic()
    assert main(["bench", str(tiny_library), "--rpc", address, "--repeat", "100000", "--number", "100", "--timeout", "60"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("wrpn-tvm: error: ") and "\n" not in err
    assert time.monotonic() - start < 90


def test_no_traceback_from_the_console_script(tmp_path):
    result = subprocess.run([sys.executable, "-m", "wrpn_tvm", "compile", str(tmp_path / "x.pt2"), "-o", "y.so"],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"wrpn-tvm: error: {tmp_path / 'x.pt2'}: no such file"]
