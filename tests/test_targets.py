import os

import pytest

from wrpn_tvm.errors import WrpnError
from wrpn_tvm.targets import PRESET_NAMES, resolve


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_resolves(name):
    spec = resolve(name)
    assert spec.name == name
    assert spec.target.kind.name == ("cuda" if name == "cuda" else "llvm")


@pytest.mark.parametrize("name,mcpu", [("rasp3b", "cortex-a53"), ("rasp4", "cortex-a72"), ("rasp5", "cortex-a76")])
def test_raspberry_pi_presets_cross_compile_for_their_core(name, mcpu):
    spec = resolve(name)
    assert spec.cross_compiler == "aarch64-linux-gnu-gcc"
    assert str(spec.target.attrs["mtriple"]).startswith("aarch64")
    assert str(spec.target.attrs["mcpu"]) == mcpu
    assert "arm_cpu" in spec.target.keys


def test_rasp5_has_dotprod():
    assert "+dotprod" in list(resolve("rasp5").target.attrs["mattr"])


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_arch(arch):
    assert str(resolve(f"cuda:{arch}").target.attrs["arch"]) == arch
    assert str(resolve("cuda", cuda_arch=arch).target.attrs["arch"]) == arch


def test_raw_target_json_and_aarch64_detection():
    spec = resolve('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a55"}')
    assert spec.cross_compiler == "aarch64-linux-gnu-gcc"
    assert resolve('{"kind": "llvm"}').cross_compiler is None


@pytest.mark.parametrize("bad", ["pi9", "{not json", '{"kind": "nonsense"}', "cuda:sm_1"])
def test_bad_targets_are_one_line_errors(bad):
    with pytest.raises(WrpnError) as err:
        resolve(bad)
    assert "\n" not in str(err.value)


def test_tvm_runs_on_every_physical_core_by_default():
    """TVM alone halves the logical CPU count on x86 (assumed hyper-threading); importing wrpn_tvm first fixes that."""
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "TVM_NUM_THREADS"}
    probe = ("import psutil, wrpn_tvm, tvm; "
             "print(tvm.get_global_func('runtime.NumThreads')(), psutil.cpu_count(logical=False))")
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    threads, cores = done.stdout.split()[-2:]
    assert int(threads) == int(cores)
