"""The training options: --init-from (widening, fitting to the grid), distillation, augmentation, warm-up,
validation split and early stopping."""

import numpy as np
import pytest
import torch

from wrpn_tvm.cli import main
from wrpn_tvm.data import load_dataset, random_shift, split_validation
from wrpn_tvm.errors import WrpnError
from wrpn_tvm.nn import build_model, load_checkpoint, model_from_checkpoint, quantize_weight
from wrpn_tvm.nn import transfer
from wrpn_tvm.nn.transfer import init_from, model_from_source
from wrpn_tvm.train import _lr_at, checkpoint_dir, distillation_loss, train

TINY = dict(model_name="smallcnn", abits=32, wbits=32, dataset="digits", batch_size=32, progress=False)


def _config(width, abits=32, wbits=32, model="smallcnn"):
    return {"model": model, "width": float(width), "abits": abits, "wbits": wbits, "num_classes": 10,
            "in_channels": 1, "image_size": 8}


def _model(width, abits=32, wbits=32, seed=0):
    torch.manual_seed(seed)
    return build_model("smallcnn", width=width, abits=abits, wbits=wbits, image_size=8)


def _calibrate(model, x):
    """Give every batch norm non-trivial running statistics, so eval mode is a real test."""
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


@pytest.fixture(scope="module")
def fp32_program(tmp_path_factory):
    """A trained FP32 1x model (digits, 8x8): its .pt2 and its last checkpoint."""
    output = tmp_path_factory.mktemp("fp32") / "fp32.pt2"
    train(**TINY, width=1, epochs=2, output=output)
    return output


@pytest.mark.parametrize("width", [1, 2, 3, 1.5])
def test_widening_fp32_preserves_the_function(monkeypatch, width):
    # Without the symmetry-breaking noise, Net2Net widening computes exactly what the source computes.
    monkeypatch.setattr(transfer, "COPY_NOISE", 0.0)
    x = torch.rand(16, 1, 8, 8)
    source = _calibrate(_model(1, seed=1), x)
    wide = _model(width, seed=2)
    init_from(wide, _config(width), _config(1), source.state_dict())
    wide.eval()
    with torch.no_grad():
        assert torch.allclose(wide(x), source(x), atol=1e-5)


def test_widening_copies_filters_and_breaks_symmetry():
    source = _model(1, seed=1)
    wide = _model(2, seed=2)
    init_from(wide, _config(2), _config(1), source.state_dict())
    src, dst = source.conv1.weight, wide.conv1.weight  # full precision: loaded as is
    assert torch.equal(dst[:16], src)  # the originals are exact
    assert not torch.equal(dst[16:], src) and torch.allclose(dst[16:], src, atol=0.5 * src.std().item())
    # the classifier reads 2x the features: each source input column split over its two copies
    assert torch.allclose(wide.fc.weight[:, :64] + wide.fc.weight[:, 64:], source.fc.weight, atol=1e-6)


@pytest.mark.parametrize("wbits", [4, 2, 1])
def test_quantized_weights_are_fitted_to_the_grid(wbits):
    # Kaiming-sized FP32 weights would all quantize to 0 on a coarse grid; after init_from they spread
    # over it, and each channel's quantized weights point the way the FP32 ones do.
    source = _model(1, seed=1)
    assert source.conv2.weight.abs().max() < 0.5
    model = _model(1, abits=2, wbits=wbits, seed=2)
    init_from(model, _config(1, 2, wbits), _config(1), source.state_dict())
    quantized = quantize_weight(model.conv2.weight, wbits).detach()
    assert (quantized != 0).float().mean() > 0.4
    assert model.conv2.weight.abs().max() <= 1.0 + 1e-6 if wbits == 1 else True
    cosine = torch.nn.functional.cosine_similarity(quantized.flatten(1), source.conv2.weight.flatten(1), dim=1)
    assert cosine.min() > 0.7, cosine.min()
    # the full-precision first and last layers are copied unchanged
    assert torch.equal(model.conv1.weight, source.conv1.weight) and torch.equal(model.fc.weight, source.fc.weight)


@pytest.mark.parametrize("source_config,message", [
    (_config(2), "cannot initialise a 1x model from the source, which is 2x"),
    ({**_config(1), "num_classes": 3}, "num_classes=3"),
    ({**_config(1), "model": "resnet18"}, "model='resnet18'"),
])
def test_init_from_refuses_what_cannot_be_loaded(source_config, message):
    source = build_model(source_config["model"], width=source_config["width"],
                         num_classes=source_config["num_classes"], image_size=32)
    with pytest.raises(WrpnError, match=message.replace("(", r"\(").replace(")", r"\)")):
        init_from(_model(1), _config(1), source_config, source.state_dict())


def test_init_from_refuses_a_wider_source_on_the_command_line(tmp_path, capsys):
    wide = tmp_path / "wide.pt2"
    train(**TINY, width=2, epochs=1, output=wide)
    argv = ["train", "--model", "smallcnn", "--dataset", "digits", "--epochs", "1", "--init-from", str(wide),
            "-o", str(tmp_path / "narrow.pt2")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "widening only adds filters, it never drops them" in err


def test_init_from_a_program_and_from_a_checkpoint_agree(fp32_program):
    checkpoint = sorted(checkpoint_dir(fp32_program).glob("epoch-*.pt"))[-1]
    a, b = _model(2, 2, 2, seed=3), _model(2, 2, 2, seed=3)
    torch.manual_seed(4)
    init_from(a, _config(2, 2, 2), *transfer.read_source(fp32_program))
    torch.manual_seed(4)
    init_from(b, _config(2, 2, 2), *transfer.read_source(checkpoint))
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_init_from_starts_near_the_source(fp32_program):
    # Starting from the FP32 weights, a 2x FP32 model is as accurate as its source after no training at all.
    data = load_dataset("digits", seed=0)
    source, config = model_from_source(fp32_program)
    wide = _model(2)
    init_from(wide, _config(2), config, source.state_dict())
    x, y = torch.from_numpy(data.x_test), data.y_test
    with torch.no_grad():
        source_acc = (source(x).argmax(1).numpy() == y).mean()
        wide_acc = (wide.eval()(x).argmax(1).numpy() == y).mean()
    assert source_acc > 0.5 and abs(wide_acc - source_acc) < 0.05


def test_distillation_loss_mixes_the_teacher_in():
    torch.manual_seed(0)
    logits, teacher = torch.randn(8, 10), torch.randn(8, 10)
    labels = torch.randint(0, 10, (8,))
    hard = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.equal(distillation_loss(logits, labels, None, 0.5, 4.0), hard)
    assert torch.equal(distillation_loss(logits, labels, teacher, 0.0, 4.0), hard)
    # a student that matches its teacher exactly pays only the hard part
    assert torch.allclose(distillation_loss(teacher, labels, teacher, 0.5, 4.0),
                          0.5 * torch.nn.functional.cross_entropy(teacher, labels))
    assert distillation_loss(logits, labels, teacher, 1.0, 4.0) > 0


def test_training_with_a_teacher_uses_it(fp32_program, tmp_path):
    # Same seed, same data order: only the loss differs, so the runs must differ.
    student = {**TINY, "width": 0.5, "abits": 2, "wbits": 2, "epochs": 1}
    plain = train(**student, output=tmp_path / "a.pt2")
    taught = train(**student, output=tmp_path / "b.pt2", teacher=fp32_program)
    again = train(**student, output=tmp_path / "c.pt2", teacher=fp32_program)
    assert taught["history"][0]["train_loss"] != plain["history"][0]["train_loss"]
    assert taught["history"] == again["history"] and taught["teacher"] == str(fp32_program)


def test_teacher_must_fit_the_data(fp32_program, tmp_path):
    with pytest.raises(WrpnError, match="image_size=8"):
        train(**{**TINY, "dataset": "mnist5k"}, width=1, epochs=1, output=tmp_path / "m.pt2", teacher=fp32_program)


def test_random_shift_moves_images_by_whole_pixels():
    x = np.zeros((200, 1, 8, 8), dtype=np.float32)
    x[:, 0, 3, 4] = 1.0  # one bright pixel
    shifted = random_shift(x, 2, np.random.default_rng(0))
    assert shifted.shape == x.shape and shifted.dtype == x.dtype
    positions = np.argwhere(shifted[:, 0] == 1.0)
    assert len(positions) == 200 and shifted.sum() == 200  # moved, never lost or duplicated
    dy, dx = positions[:, 1] - 3, positions[:, 2] - 4
    assert dy.min() == -2 and dy.max() == 2 and dx.min() == -2 and dx.max() == 2
    assert (dy != 0).mean() > 0.5
    assert random_shift(x, 0, np.random.default_rng(0)) is x
    assert np.array_equal(random_shift(x, 2, np.random.default_rng(0)), shifted)  # seeded


def test_warmup_then_cosine():
    assert _lr_at(0.5, 10, 1.0, warmup=2) == pytest.approx(0.25)
    assert _lr_at(2, 10, 1.0, warmup=2) == pytest.approx(1.0)
    assert _lr_at(6, 10, 1.0, warmup=2) == pytest.approx(0.5)
    assert _lr_at(5, 10, 1.0) == pytest.approx(0.5)


def test_validation_split_is_stratified_and_disjoint():
    data = load_dataset("digits", seed=0)
    smaller, x_val, y_val = split_validation(data, 0.1, seed=0)
    assert len(y_val) == round(0.1 * len(data.y_train)) and len(smaller.y_train) + len(y_val) == len(data.y_train)
    assert set(np.unique(y_val)) == set(range(10)) and smaller.x_test is data.x_test
    rows = {row.tobytes() for row in smaller.x_train}
    assert not any(row.tobytes() in rows for row in x_val)


def test_early_stopping_exports_the_best_validation_epoch(tmp_path):
    # a learning rate far too high makes validation accuracy jump around, so the best epoch is rarely the last
    result = train(**TINY, width=0.5, epochs=5, output=tmp_path / "m.pt2", val_fraction=0.2, patience=1, lr=0.3)
    history = result["history"]
    best = max(range(len(history)), key=lambda i: (history[i]["val_accuracy"], -i)) + 1
    assert result["exported_epoch"] == best and result["test_accuracy"] == history[best - 1]["test_accuracy"]
    assert len(history) == 5 or len(history) == best + 1  # stopped one epoch after the best
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    exported = load_checkpoint(checkpoint_dir(tmp_path / "m.pt2") / f"epoch-{best:04d}.pt")
    x = torch.rand(1, 1, 8, 8)
    assert torch.equal(program(x), model_from_checkpoint(exported).eval()(x))


def test_resume_with_options_repeats_an_uninterrupted_run(fp32_program, tmp_path):
    options = dict(TINY, width=1, abits=2, wbits=2, teacher=fp32_program, init_from=fp32_program,
                   augment_shift=1, warmup_epochs=1, val_fraction=0.1, epochs=3)
    straight = train(**options, output=tmp_path / "a.pt2")
    train(**options, output=tmp_path / "b.pt2")
    for later in ("epoch-0002.pt", "epoch-0003.pt"):  # as if stopped after the warm-up epoch
        (checkpoint_dir(tmp_path / "b.pt2") / later).unlink()
    with pytest.raises(WrpnError, match="augment_shift"):
        train(**{**options, "augment_shift": 2}, output=tmp_path / "b.pt2", resume=True)
    resumed = train(**options, output=tmp_path / "b.pt2", resume=True)
    assert resumed["history"] == straight["history"]


@pytest.mark.parametrize("flags,message", [
    (["--patience", "2"], "needs a validation split"),
    (["--val-fraction", "1.5"], "validation fraction"),
    (["--kd-weight", "2", "--teacher", "x.pt2"], "distillation loss weight"),
    (["--warmup-epochs", "3"], "warm-up (3 epochs) must be shorter"),
    (["--augment-shift", "-1"], "augmentation shift"),
    (["--teacher", "/no/such.pt2"], "no such file"),
    (["--init-from", "/no/such.pt"], "no such file"),
])
def test_train_cli_rejects_bad_options(tmp_path, capsys, flags, message):
    argv = ["train", "--model", "smallcnn", "--dataset", "digits", "--epochs", "2", "-o", str(tmp_path / "m.pt2")]
    assert main(argv + flags) == 1
    err = capsys.readouterr().err
    assert err.startswith("wrpn-tvm: error: ") and err.count("\n") == 1 and message in err, err
