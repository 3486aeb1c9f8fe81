"""The demo's whole pipeline at a reduced size: train, compile for host and rasp4, run, compare, bench, report."""

import json

import pytest

from wrpn_tvm.demo import MODELS, demo


@pytest.mark.emulator
def test_demo_at_reduced_size(tmp_path, emulated_pool, monkeypatch, capsys):
    # First as on a CPU that no shipped tuning log applies to: the demo runs untuned and says so.
    monkeypatch.setattr("wrpn_tvm.tuning.shipped.find_shipped_log", lambda model, spec: None)
    results = demo(tmp_path / "report", epochs=1, host_images=20, pi_images=4, repeat=2, rpc=emulated_pool.direct)
    index = (tmp_path / "report" / "index.md").read_text()
    assert "untuned (template defaults): no shipped tuning log applies to this target's CPU" in capsys.readouterr().out
    assert "Compiled untuned (template defaults) for the host" in index
    assert "none: no shipped tuning log applies to this target's CPU" in index
    assert (tmp_path / "report" / "latency.png").stat().st_size > 0
    assert json.loads((tmp_path / "report" / "results.json").read_text())["test_images"] == 20
    for model in MODELS:
        entry = results["models"][model.name]
        assert entry["host"]["images"] == 20 and entry["host"]["top1_agreement"] >= 0.95
        assert entry["rasp4_remote"]["images"] == 4
        assert entry["bench_host"]["tvm"]["median_ms"] > 0 and entry["bench_host"]["torch"]["median_ms"] > 0
        assert model.label in index
    assert "conv2d a2/w2" in index  # the per-layer report of the WRPN model
    assert "other processes' CPU share, load average" in index  # timings say how quiet the machine was
    # A second run reuses the trained models instead of training again.
    programs = sorted((tmp_path / "report" / "models").glob("*.pt2"))
    written = [p.stat().st_mtime_ns for p in programs]
    monkeypatch.undo()
    again = demo(tmp_path / "report", epochs=1, host_images=20, pi_images=0, repeat=2, rpc=emulated_pool.direct)
    assert [p.stat().st_mtime_ns for p in programs] == written
    # With the shipped logs, this host (any AVX2 or AVX-512 x86 CPU) finds one for the WRPN model.
    assert again["models"]["wrpn-2x-a2w2"]["tuning_log_host"].startswith("smallcnn-2x-a2w2-x86-avx")
