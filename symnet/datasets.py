"""Data sets: scikit-learn's bundled digits."""

from __future__ import annotations

import numpy as np


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
