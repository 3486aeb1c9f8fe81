"""The whole compile / run / bench path for full-precision models, on the host and on the emulated Pi."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from wrpn_tvm import artifact, build, runtime
from wrpn_tvm.nn import build_model, export_model
from wrpn_tvm.remote.session import DeviceSpec

MODELS = {"smallcnn": dict(image_size=28, width=1.0), "resnet18": dict(image_size=32, width=0.25)}


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """name -> (.pt2 path, eager torch module, input) for FP32 models with random weights."""
    folder = tmp_path_factory.mktemp("programs")
    made = {}
    for name, cfg in MODELS.items():
        torch.manual_seed(0)
        model = build_model(name, width=cfg["width"], in_channels=1, image_size=cfg["image_size"]).eval()
        x = torch.rand(1, 1, cfg["image_size"], cfg["image_size"])
        path = folder / f"{name}.pt2"
        torch.export.save(export_model(model, x), str(path))
        made[name] = (path, model, x.numpy())
    return made


@pytest.fixture(scope="module")
def libraries(programs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("libs")
    return {(name, target): build.compile_model(path, target, folder / f"{name}-{target}.so").library
            for name, (path, _, _) in programs.items() for target in ("host", "rasp4")}


def _torch_logits(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("name", MODELS)
def test_host_matches_pytorch(programs, libraries, name):
    _, model, x = programs[name]
    (out,) = runtime.run(libraries[name, "host"], [x])
    np.testing.assert_allclose(out, _torch_logits(model, x), rtol=1e-4, atol=1e-4)


def test_rasp4_library_is_aarch64_with_sidecar(libraries):
    library = libraries["smallcnn", "rasp4"]
    assert library.read_bytes()[:4] == b"\x7fELF"
    assert library.read_bytes()[18] == 183  # e_machine EM_AARCH64
    meta = json.loads(artifact.sidecar_path(library).read_text())
    assert meta["inputs"] == [{"name": "x", "shape": [1, 1, 28, 28], "dtype": "float32"}]
    assert meta["target"]["name"] == "rasp4"
    assert {"tvm", "torch", "wrpn_tvm"} <= set(meta["versions"])


def test_library_loads_with_the_tvm_runtime_alone(libraries, programs):
    """No wrpn_tvm: what a deployment has (tvm itself may import torch when it is installed)."""
    library = libraries["smallcnn", "host"]
    x = programs["smallcnn"][2]
    np.save(library.with_suffix(".x.npy"), x)
    code = (
        "import sys, numpy as np, tvm\nfrom tvm import relax\n"
        f"vm = relax.VirtualMachine(tvm.runtime.load_module({str(library)!r}), tvm.cpu())\n"
        f"y = vm['main'](tvm.runtime.tensor(np.load({str(library.with_suffix('.x.npy'))!r})))\n"
        "assert 'wrpn_tvm' not in sys.modules\nprint(y.numpy().shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "(1, 10)"


@pytest.mark.emulator
@pytest.mark.parametrize("name", MODELS)
def test_emulated_pi_matches_pytorch(programs, libraries, emulated_pool, name):
    _, model, x = programs[name]
    (out,) = runtime.run(libraries[name, "rasp4"], [x], DeviceSpec(rpc=emulated_pool.direct))
    np.testing.assert_allclose(out, _torch_logits(model, x), rtol=1e-4, atol=1e-4)


@pytest.mark.emulator
def test_bench_on_emulated_pi_and_host(libraries, programs, emulated_pool, tmp_path):
    remote = runtime.bench(libraries["smallcnn", "rasp4"], DeviceSpec(rpc=emulated_pool.direct), repeat=3, number=2)
    assert len(remote.tvm.runs_ms) == 3 and remote.tvm.median_ms > 0
    local = runtime.bench(libraries["smallcnn", "host"], repeat=3, compare_torch=programs["smallcnn"][0],
                         json_path=tmp_path / "bench.json")
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["torch"]["median_ms"] > 0 and saved["speedup_vs_torch"] > 0
    assert local.torch is not None and "speed-up" in local.table()


@pytest.mark.emulator
def test_tracker_serves_two_bench_calls_on_two_devices(libraries, emulated_pool):
    from concurrent.futures import ThreadPoolExecutor

    device = DeviceSpec(tracker=emulated_pool.tracker, key=emulated_pool.key)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: runtime.bench(libraries["smallcnn", "rasp4"], device, repeat=2, number=1), range(2)))
    assert all(r.tvm.median_ms > 0 and r.device.startswith("tracker://") for r in results)
