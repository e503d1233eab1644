"""IDX reading (plain and gzipped), Fashion-MNIST's location, and the demo on an IDX directory."""

import gzip
import struct

import numpy as np
import pytest

import symnet as sn
from symnet.cli import main


def write_idx(path, array, gz=False):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)


def idx_dir(tmp_path, rows=(60, 20), gz=False):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for prefix, n in zip(("train", "t10k"), rows):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = (rng.integers(0, 40, (n, 4, 4)) + labels[:, None, None] * 20).astype(np.uint8)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    return tmp_path


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_reads_plain_and_gzipped_files(tmp_path, gz):
    (Xtr, Ytr), (Xte, Yte) = sn.datasets.load_idx(idx_dir(tmp_path, gz=gz))
    assert Xtr.shape == (60, 16) and Ytr.shape == (60, 10) and Xte.shape == (20, 16)
    assert Xtr.dtype == np.float32 and Xtr.min() >= 0 and Xtr.max() <= 1
    np.testing.assert_array_equal(Ytr.argmax(1), np.arange(60) % 10)


def test_truncated_and_foreign_idx_files_are_refused(tmp_path):
    idx_dir(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(sn.DataError, match="truncated or padded"):
        sn.datasets.load_idx(tmp_path)
    path.write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(sn.DataError, match="not an IDX file"):
        sn.datasets.load_idx(tmp_path)


def test_labels_beyond_nine_are_classes_and_malformed_labels_are_refused(tmp_path):
    """load_idx one-hot encoded over ten classes: a label of 10 or more raised numpy's
    IndexError, labels of shape (n, 1) gave a 3-D Y, and a file of no images numpy's reshape
    error."""
    idx_dir(tmp_path)
    labels = (np.arange(60) % 26).astype(np.uint8)  # EMNIST letters: 26 classes
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    (Xtr, Ytr), (Xte, Yte) = sn.datasets.load_idx(tmp_path)
    assert Ytr.shape == (60, 26) and Yte.shape == (20, 26)
    np.testing.assert_array_equal(Ytr.argmax(1), labels)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:, None])
    with pytest.raises(sn.DataError, match=r"train-labels-idx1-ubyte holds uint8 labels of "
                                           r"shape \(60, 1\); .* one integer per image"):
        sn.datasets.load_idx(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((0, 4, 4), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(0, np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    with pytest.raises(sn.DataError, match=r"t10k-images-idx3-ubyte holds no images"):
        sn.datasets.load_idx(tmp_path)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    with pytest.raises(sn.DataError, match="apt-get install dataset-fashion-mnist"):
        sn.datasets.load_fashion_mnist(tmp_path / "absent")
    monkeypatch.setattr(sn.datasets, "FASHION_MNIST", tmp_path / "absent")
    monkeypatch.setattr(sn.datasets.load_fashion_mnist, "__defaults__", (tmp_path / "absent", True))
    assert main(["demo", "--data", "fashion-mnist"]) == 2  # the fix as this command's option
    assert "pass their folder: symnet demo --data path/to/dir" in capsys.readouterr().err
    assert main(["demo", "--data", str(tmp_path / "nowhere")]) == 2
    assert "is not a directory; pass --data the folder that holds" in capsys.readouterr().err


def test_fashion_mnist_when_installed():
    if not sn.datasets.FASHION_MNIST.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    (Xtr, Ytr), (Xte, Yte) = sn.datasets.load_fashion_mnist()
    assert Xtr.shape == (60000, 784) and Xte.shape == (10000, 784) and Ytr.shape == (60000, 10)


def test_demo_trains_on_an_idx_directory(tmp_path, capsys):
    assert main(["demo", "--data", str(idx_dir(tmp_path)), "--epochs", "2", "--quiet",
                 "--backend", "numpy", "--hidden", "8"]) == 0
    out = capsys.readouterr().out
    assert "60 training and 20 test images of 16 pixels" in out and "test accuracy" in out
