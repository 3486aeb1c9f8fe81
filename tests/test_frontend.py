import json
import zipfile

import pytest
import torch

from wrpn_tvm import frontend, pt2
from wrpn_tvm.errors import WrpnError


@pytest.fixture(scope="module")
def program_path(tmp_path_factory):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU()).eval()
    path = tmp_path_factory.mktemp("frontend") / "tiny.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 8, 8),)), str(path))
    return path


def test_load_and_import(program_path):
    program = pt2.load_program(program_path)
    specs = pt2.input_specs(program)
    assert [(s.shape, s.dtype) for s in specs] == [((1, 1, 8, 8), "float32")]
    mod = frontend.to_relax(program)
    assert "main" in [gv.name_hint for gv in mod.get_global_vars()]


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("content", [b"", b"\x00" * 100, b"PK\x03\x04 truncated zip", bytes(range(256)) * 8])
def test_damaged_files_are_refused(tmp_path, content):
    with pytest.raises(WrpnError):
        pt2.load_program(_write(tmp_path / "bad.pt2", content))


def test_missing_file(tmp_path):
    with pytest.raises(WrpnError, match="no such file"):
        pt2.load_program(tmp_path / "absent.pt2")


def test_a_zip_that_is_not_a_program(tmp_path):
    path = tmp_path / "other.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "hi")
    with pytest.raises(WrpnError, match="not a torch.export program"):
        pt2.load_program(path)


def test_truncated_program(tmp_path, program_path):
    data = program_path.read_bytes()
    with pytest.raises(WrpnError):
        pt2.load_program(_write(tmp_path / "cut.pt2", data[: len(data) // 2]))


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/wrpn-pwned",))


def test_pickled_objects_in_a_program_never_run(tmp_path, program_path):
    """A stranger's .pt2 whose weights are pickles (use_pickle) or opaque objects must not execute code."""
    import pickle

    marker = "/tmp/wrpn-pwned"
    import os

    if os.path.exists(marker):
        os.remove(marker)
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(program_path) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("_weights_config.json"):
                config = json.loads(data)
                for entry in config["config"].values():
                    entry["use_pickle"] = True
                data = json.dumps(config).encode()
            elif "/data/weights/weight_" in item.filename:
                data = pickle.dumps(_Exploit())
            dst.writestr(item, data)
    with pytest.raises(WrpnError):
        pt2.load_program(evil)
    assert not os.path.exists(marker)

    opaque = tmp_path / "opaque.pt2"
    with zipfile.ZipFile(program_path) as src, zipfile.ZipFile(opaque, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item.filename))
        root = src.namelist()[0].split("/")[0]
        dst.writestr(f"{root}/data/constants/opaque_obj_0", pickle.dumps(_Exploit()))
    with pytest.raises(WrpnError, match="pickled"):
        pt2.load_program(opaque)
    assert not os.path.exists(marker)
