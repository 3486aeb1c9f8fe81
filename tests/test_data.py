"""Datasets without downloads and their seeded, stratified split (wrpn_tvm.data)."""

import numpy as np
import pytest
from PIL import Image

from wrpn_tvm.data import load_dataset
from wrpn_tvm.errors import WrpnError


def _check_arrays(data, channels, size):
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.shape[1:] == (channels, size, size) and len(x) == len(y)
        assert x.min() >= 0 and x.max() <= 1
        assert y.min() >= 0 and y.max() < data.num_classes


def test_mnist5k_split_is_stratified():
    data = load_dataset("mnist5k")
    _check_arrays(data, 1, 28)
    assert (len(data.y_train), len(data.y_test)) == (4000, 1000)
    assert np.bincount(data.y_test).tolist() == [100] * 10
    assert data.x_train.max() == 1.0


def test_digits_split_is_deterministic_per_seed():
    first, again, other = load_dataset("digits", seed=3), load_dataset("digits", seed=3), load_dataset("digits", seed=4)
    _check_arrays(first, 1, 8)
    assert np.array_equal(first.x_test, again.x_test) and np.array_equal(first.y_train, again.y_train)
    assert not np.array_equal(first.x_test, other.x_test)
    # stratified: each class's test share is within one image of the 20% target
    totals = np.bincount(first.y_train) + np.bincount(first.y_test)
    assert np.all(np.abs(np.bincount(first.y_test) - 0.2 * totals) <= 1)
    assert len(first.y_train) + len(first.y_test) == 1797


def test_npz_uint8_channels_last(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(20, 6, 6, 3), dtype=np.uint8)
    y = np.array(["cat", "dog"] * 10)
    np.savez(tmp_path / "set.npz", x=x, y=y)
    data = load_dataset(tmp_path / "set.npz", test_fraction=0.25)
    _check_arrays(data, 3, 6)
    assert data.classes == ["cat", "dog"] and len(data.y_test) == 5
    # every test image is one of the source images, scaled to [0, 1]
    source = {tuple((image.transpose(2, 0, 1) / 255.0).astype(np.float32).ravel()) for image in x}
    assert all(tuple(image.ravel()) in source for image in data.x_test)


def test_image_folder(tmp_path):
    for label, value in (("zero", 0), ("one", 255)):
        (tmp_path / label).mkdir()
        for index in range(4):
            Image.fromarray(np.full((5, 5), value, dtype=np.uint8), mode="L").save(tmp_path / label / f"{index}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    data = load_dataset(tmp_path, test_fraction=0.5)
    _check_arrays(data, 1, 5)
    assert data.classes == ["one", "zero"]
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        assert np.all(x.reshape(len(x), -1).mean(axis=1) == (y == 0))  # "one" images are white


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "missing", "unknown dataset"),
    (lambda p: (p / "x.txt").write_text("1") and p / "x.txt", "neither a folder"),
    (lambda p: (p / "bad.npz").write_bytes(b"not a zip") and p / "bad.npz", "cannot read"),
    (lambda p: np.savez(p / "nox.npz", y=np.zeros(4)) or p / "nox.npz", "arrays named x and y"),
    (lambda p: np.savez(p / "range.npz", x=np.full((4, 3, 3), 2.0), y=np.arange(4) % 2) or p / "range.npz", r"\[0, 1\]"),
    (lambda p: np.savez(p / "one.npz", x=np.zeros((4, 3, 3)), y=np.zeros(4)) or p / "one.npz", "at least 2 classes"),
    (lambda p: p, "no class folders"),
])
def test_bad_datasets_raise_one_clear_error(tmp_path, make, message):
    with pytest.raises(WrpnError, match=message):
        load_dataset(make(tmp_path))
