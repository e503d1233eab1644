"""Data sets: scikit-learn's bundled digits, and MNIST-format IDX directories (Fashion-MNIST)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from .errors import DataError

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def one_hot(labels, classes: int | None = None) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    classes = int(labels.max()) + 1 if classes is None else classes
    return np.eye(classes, dtype=np.float32)[labels]


def load_digits(test_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's 8×8 digits (1 797 images), pixels scaled to [0, 1], labels one-hot.

    Returns ``(Xtr, Ytr), (Xte, Yte)`` with a seeded, stratification-free split."""
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    X = (data.data / 16.0).astype(np.float32)
    Y = one_hot(data.target, 10)
    order = np.random.default_rng(seed).permutation(len(X))
    cut = int(len(X) * (1 - test_fraction))
    tr, te = order[:cut], order[cut:]
    return (X[tr], Y[tr]), (X[te], Y[te])


def read_idx(path) -> np.ndarray:
    """One IDX file (plain or gzipped), as an array of its declared type and shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read the IDX file {path}: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise DataError(f"{path} is not an IDX file (it does not start with 0x0000 and a known "
                        f"type code)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path} is truncated or padded: its header promises shape {shape} "
                        f"({expected} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).exists():
            return directory / name
    return None


def load_idx(directory, flatten: bool = True):
    """An MNIST-format directory (MNIST, Fashion-MNIST, KMNIST, EMNIST: ``train-images-idx3-ubyte``
    and the three other files, plain or ``.gz``) as ``(Xtr, Ytr), (Xte, Yte)``: pixels scaled to
    [0, 1] float32 rows (784 for 28×28), labels one-hot over the classes 0 … k − 1, k one more
    than the largest label of either split."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory} is not a directory; point load_idx at the folder that holds "
                        f"train-images-idx3-ubyte(.gz) and the three other MNIST-format files")
    splits = []
    for images, labels in SPLITS.values():
        paths = [_find(directory, stem) for stem in (images, labels)]
        missing = [stem for stem, p in zip((images, labels), paths) if p is None]
        if missing:
            raise DataError(f"{directory} has no {' or '.join(missing)} (plain or .gz); an "
                            f"MNIST-format directory holds the train- and t10k- images and labels")
        X, y = read_idx(paths[0]), read_idx(paths[1])
        _check_split(X, y, *paths)
        splits.append((X.astype(np.float32) / 255.0, y))
    classes = max(int(y.max()) for _, y in splits) + 1
    return tuple((X.reshape(len(X), -1) if flatten else X, one_hot(y, classes))
                 for X, y in splits)


def _check_split(X: np.ndarray, y: np.ndarray, images: Path, labels: Path) -> None:
    if X.ndim < 2 or len(X) == 0:
        raise DataError(f"{images.name} holds no images (its shape is {X.shape}); MNIST-format "
                        f"images are an array of shape (images, rows, columns)")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{labels.name} holds {y.dtype} labels of shape {y.shape}; MNIST-format "
                        f"labels are one integer per image (IDX type ubyte, shape (images,))")
    if len(X) != len(y):
        raise DataError(f"{images.name} has {len(X)} images but {labels.name} has "
                        f"{len(y)} labels")
    if y.min() < 0:
        raise DataError(f"{labels.name} has the label {int(y.min())}; class labels are "
                        f"0, 1, 2, … (one-hot columns)")


def load_fashion_mnist(directory=FASHION_MNIST, flatten: bool = True):
    """Fashion-MNIST (60 000 + 10 000 images of 28×28) from ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(
            f"Fashion-MNIST is not in {directory}. On Debian or Ubuntu install it with "
            f"`sudo apt-get install dataset-fashion-mnist`, or download the four IDX files "
            f"and pass their folder: load_fashion_mnist('path/to/dir')")
    return load_idx(directory, flatten)
