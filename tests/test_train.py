"""Training, checkpoints, resume, export and the train/export command lines."""

import json
import subprocess
import sys

import pytest
import torch

from wrpn_tvm.cli import main
from wrpn_tvm.errors import WrpnError
from wrpn_tvm.nn import load_checkpoint, model_from_checkpoint
from wrpn_tvm.train import checkpoint_dir, train

# smallcnn on the 8x8 digits at half width: a whole epoch takes well under a second
TINY = dict(model_name="smallcnn", width=0.5, abits=2, wbits=2, dataset="digits", batch_size=32)


def test_tiny_training_lowers_the_loss(tmp_path):
    result = train(**TINY, epochs=3, output=tmp_path / "m.pt2", progress=False)
    losses = [epoch["train_loss"] for epoch in result["history"]]
    assert losses[-1] < 0.8 * losses[0]
    assert result["test_accuracy"] > 0.5  # 10 classes: chance is 0.1


def test_resume_repeats_an_uninterrupted_run(tmp_path):
    straight = train(**TINY, epochs=2, output=tmp_path / "a.pt2", progress=False)
    train(**TINY, epochs=1, output=tmp_path / "b.pt2", progress=False)
    resumed = train(**TINY, epochs=2, output=tmp_path / "b.pt2", resume=True, progress=False)
    assert resumed["history"] == straight["history"]
    one = load_checkpoint(checkpoint_dir(tmp_path / "a.pt2") / "epoch-0002.pt")
    two = load_checkpoint(checkpoint_dir(tmp_path / "b.pt2") / "epoch-0002.pt")
    assert one["model"].keys() == two["model"].keys()
    assert all(torch.equal(one["model"][key], two["model"][key]) for key in one["model"])


def test_outputs_program_sidecar_and_checkpoints(tmp_path):
    output = tmp_path / "m.pt2"
    result = train(**TINY, epochs=1, output=output, progress=False)
    sidecar = json.loads((tmp_path / "m.json").read_text())
    assert sidecar["input_shape"] == [1, 1, 8, 8] and sidecar["dtype"] == "float32"
    assert (sidecar["model"], sidecar["width"], sidecar["abits"], sidecar["wbits"]) == ("smallcnn", 0.5, 2, 2)
    assert sidecar["test_accuracy"] == result["test_accuracy"] and sidecar["dataset"] == "digits"
    # the saved program computes what the checkpointed model computes
    model = model_from_checkpoint(load_checkpoint(checkpoint_dir(output) / "epoch-0001.pt")).eval()
    program = torch.export.load(str(output))
    x = torch.rand(1, 1, 8, 8)
    assert torch.equal(program.module()(x), model(x))


def test_resume_refuses_other_settings(tmp_path):
    train(**TINY, epochs=1, output=tmp_path / "m.pt2", progress=False)
    with pytest.raises(WrpnError, match="wbits"):
        train(**{**TINY, "wbits": 4}, epochs=2, output=tmp_path / "m.pt2", resume=True, progress=False)


def _cli_error(capsys, argv):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("wrpn-tvm: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("flag,value,message", [
    ("--abits", "0", "1..8 or 32"), ("--wbits", "9", "1..8 or 32"), ("--abits", "16", "1..8 or 32"),
    ("--width", "0", "width"), ("--width", "-2", "width"),
    ("--dataset", "/no/such/folder", "unknown dataset"), ("--epochs", "0", "epochs"),
])
def test_train_cli_rejects_bad_input(tmp_path, capsys, flag, value, message):
    argv = ["train", "--model", "smallcnn", "--dataset", "digits", "--epochs", "1", "-o", str(tmp_path / "m.pt2")]
    argv += [flag, value]
    assert message in _cli_error(capsys, argv)


def test_corrupt_checkpoint_is_one_clear_error(tmp_path, capsys):
    output = tmp_path / "m.pt2"
    checkpoint_dir(output).mkdir()
    (checkpoint_dir(output) / "epoch-0001.pt").write_bytes(b"\x80\x02garbage")
    argv = ["train", "--model", "smallcnn", "--dataset", "digits", "--epochs", "2", "-o", str(output), "--resume"]
    assert "corrupt" in _cli_error(capsys, argv)
    argv = ["export", "--model", "smallcnn", "--checkpoint", str(checkpoint_dir(output) / "epoch-0001.pt"),
            "-o", str(output)]
    assert "corrupt" in _cli_error(capsys, argv)


def test_train_then_export_cli(tmp_path, capsys):
    output = tmp_path / "m.pt2"
    argv = ["train", "--model", "smallcnn", "--width", "0.5", "--abits", "4", "--wbits", "1", "--dataset", "digits",
            "--epochs", "1", "--batch-size", "64", "-o", str(output)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "epoch 1/1" in captured.err and "loss" in captured.err and "acc" in captured.err
    assert json.loads(captured.out)["abits"] == 4
    exported = tmp_path / "again.pt2"
    argv = ["export", "--model", "smallcnn", "--width", "0.5", "--abits", "4", "--wbits", "1",
            "--checkpoint", str(checkpoint_dir(output) / "epoch-0001.pt"), "-o", str(exported)]
    assert main(argv) == 0
    x = torch.rand(1, 1, 8, 8)
    assert torch.equal(torch.export.load(str(exported)).module()(x), torch.export.load(str(output)).module()(x))
    argv[argv.index("--wbits") + 1] = "2"
    assert "wbits=1" in _cli_error(capsys, argv)


def test_console_exit_code(tmp_path):
    entry = "import sys; from wrpn_tvm.cli import main; sys.exit(main())"  # what the wrpn-tvm console script runs
    result = subprocess.run([sys.executable, "-c", entry, "export", "--model", "smallcnn", "--abits", "0",
                             "-o", str(tmp_path / "m.pt2")], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == "wrpn-tvm: error: activation bits must be 1..8 or 32 (full precision), got 0\n"
