"""The benchmark workloads of design.md, and what every peer shares: data, initial parameters
and the shuffling order of every epoch, so that all peers compute the same maths."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Workload:
    name: str
    sizes: tuple[int, ...]  # input, hidden..., output
    activation: str  # on every hidden layer
    output: str  # "sigmoid" (seed002) or "identity"
    loss: str  # "sse" (per-row sum of squares, mean over rows), "softmax_ce", "mse"
    optimizer: str  # "adagrad", "adam", "sgd_momentum"
    lr: float
    batch: int | None  # None: full batch
    init: str  # "uniform" (U(−1, 1)) or "he" (N(0, 2/fan_in)); biases are zero
    data: str  # "fashion-mnist" or "line"
    epochs: int  # measured rounds (the first, then the steady ones)
    steps_per_round: int = 1  # full-batch workloads: steps per measured round
    shuffle: bool = True
    norm: bool = False  # batch norm (torch.nn.BatchNorm1d's defaults) before each hidden activation
    dropout: tuple[float, ...] = ()  # per hidden layer, after its activation (0: none)

    @property
    def classification(self) -> bool:
        return self.data == "fashion-mnist"

    @property
    def blocks(self) -> bool:
        """Batch norm or dropout: what only symnet, PyTorch and JAX express here."""
        return self.norm or any(self.dropout)

    def rate(self, k: int) -> float:
        """Hidden layer ``k``'s dropout rate (k from 1)."""
        return self.dropout[k - 1] if k <= len(self.dropout) else 0.0


WORKLOADS = {
    w.name: w for w in [
        Workload("seed002", (784, 32, 32, 10), "sigmoid", "sigmoid", "sse", "adagrad", 0.1, 100,
                 "uniform", "fashion-mnist", epochs=4),
        Workload("adam-relu", (784, 256, 128, 10), "relu", "identity", "softmax_ce", "adam", 1e-3,
                 128, "he", "fashion-mnist", epochs=4),
        Workload("wide", (784, 1024, 1024, 10), "relu", "identity", "softmax_ce", "sgd_momentum",
                 0.01, 512, "he", "fashion-mnist", epochs=4),
        Workload("tiny", (1, 10, 1), "relu", "identity", "mse", "adam", 1e-3, None, "he", "line",
                 epochs=4, steps_per_round=1000, shuffle=False),
        Workload("bn-dropout", (784, 256, 128, 10), "relu", "identity", "softmax_ce", "adam", 1e-3,
                 128, "he", "fashion-mnist", epochs=4, norm=True, dropout=(0.2, 0.0)),
    ]
}


def without_blocks(w: Workload) -> str | None:
    """``applicable(w)`` of the peers that implement the plain MLP only."""
    return "not applicable: this peer has no batch norm or dropout" if w.blocks else None


def load_data(w: Workload):
    """``(Xtr, Ytr, Xte, Yte)`` in float32."""
    if w.data == "fashion-mnist":
        import symnet as sn

        (Xtr, Ytr), (Xte, Yte) = sn.datasets.load_fashion_mnist()
        return Xtr, Ytr, Xte, Yte
    rng = np.random.default_rng(0)  # y = 2x + 1 + U(0, 1) noise, 100 samples
    X = rng.uniform(-1, 1, (100, 1)).astype(np.float32)
    Y = (2 * X + 1 + rng.uniform(0, 1, (100, 1))).astype(np.float32)
    return X, Y, X, Y


def initial_params(w: Workload, seed: int = 0) -> dict[str, np.ndarray]:
    """``{"W1": …, "b1": …, …}``: weights by the workload's scheme, zero biases; with batch
    norm its gains ``gamma{k}`` at 1 and shifts ``beta{k}`` at 0."""
    rng = np.random.default_rng(seed)
    params = {}
    for k, (fan_in, fan_out) in enumerate(zip(w.sizes, w.sizes[1:]), start=1):
        if w.init == "uniform":
            W = rng.uniform(-1, 1, (fan_in, fan_out))
        else:
            W = rng.normal(0, np.sqrt(2 / fan_in), (fan_in, fan_out))
        params[f"W{k}"] = W.astype(np.float32)
        params[f"b{k}"] = np.zeros((1, fan_out), np.float32)
        if w.norm and k < len(w.sizes) - 1:
            params[f"gamma{k}"] = np.ones((1, fan_out), np.float32)
            params[f"beta{k}"] = np.zeros((1, fan_out), np.float32)
    return params


def round_rng(r: int) -> np.random.Generator:
    """The shuffling generator of measured round ``r``, the same for every peer: each epoch of
    the round takes its next permutation (symnet: ``fit(..., seed=1 + r)`` draws the same)."""
    return np.random.default_rng(1 + r)


def timed_rounds(w: Workload, rows: int, run_epoch, sync=None) -> list[float]:
    """Seconds of each measured round: ``run_epoch(order)`` for each epoch of the round, with a
    fresh permutation per epoch (from ``round_rng``) or the identity; ``sync()`` waits for work
    a peer dispatches asynchronously."""
    rounds = []
    for r in range(w.epochs):
        rng = round_rng(r)
        begin = time.perf_counter()
        for _ in range(w.steps_per_round):
            run_epoch(rng.permutation(rows) if w.shuffle else np.arange(rows))
        if sync is not None:
            sync()
        rounds.append(time.perf_counter() - begin)
    return rounds


def minibatches(order, batch: int):
    """Consecutive slices of ``order``, ``batch`` rows each (the last may be short)."""
    return (order[s:s + batch] for s in range(0, len(order), batch))


def flops_per_epoch(w: Workload, rows: int) -> float:
    """GEMM FLOPs of one epoch: forward (1 product per layer) and backward (2, the first layer's
    input gradient excepted), 2 FLOPs per multiply-add."""
    pairs = list(zip(w.sizes, w.sizes[1:]))
    per_row = sum(2 * a * b for a, b in pairs) * 3 - 2 * pairs[0][0] * pairs[0][1]
    return per_row * rows * w.steps_per_round


def layers(sizes) -> str:
    """``784-512×3-10``: the layer widths, a run of three or more equal widths as width×count."""
    parts, i = [], 0
    while i < len(sizes):
        j = i
        while j < len(sizes) and sizes[j] == sizes[i]:
            j += 1
        parts += [f"{sizes[i]}×{j - i}"] if j - i >= 3 else [str(sizes[i])] * (j - i)
        i = j
    return "-".join(parts)
