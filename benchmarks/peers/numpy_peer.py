"""Hand-written vectorised NumPy: forward, backward and the optimizer as array expressions."""

from __future__ import annotations

import time

import numpy as np

from ..workloads import minibatches, timed_rounds, without_blocks

applicable = without_blocks  # the plain MLP only


def act(w, z, last):
    if last:
        return 1 / (1 + np.exp(-z)) if w.output == "sigmoid" else z
    return np.maximum(z, 0) if w.activation == "relu" else 1 / (1 + np.exp(-z))


def loss_and_grads(w, ps, X, Y):
    L = len(w.sizes) - 1
    hs = [X]
    for k in range(1, L + 1):
        hs.append(act(w, hs[-1] @ ps[f"W{k}"] + ps[f"b{k}"], k == L))
    out, n = hs[-1], len(X)
    if w.loss == "softmax_ce":
        z = out - out.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = -np.sum(Y * (z - lse)) / n
        d = (np.exp(z - lse) - Y) / n
    else:
        scale = n if w.loss == "sse" else out.size
        loss = np.sum((out - Y) ** 2) / scale
        d = 2 * (out - Y) / scale
        if w.output == "sigmoid":
            d = d * out * (1 - out)
    grads = {}
    for k in range(L, 0, -1):
        grads[f"W{k}"] = hs[k - 1].T @ d
        grads[f"b{k}"] = d.sum(axis=0, keepdims=True)
        if k > 1:
            a = hs[k - 1]
            d = (d @ ps[f"W{k}"].T) * ((a > 0) if w.activation == "relu" else a * (1 - a))
    return loss, grads


class Optimizer:
    """torch.optim's AdaGrad, Adam and SGD with momentum, in place on NumPy arrays."""

    def __init__(self, w, ps):
        self.w, self.t = w, 0
        self.s1 = {k: np.zeros_like(v) for k, v in ps.items()}
        self.s2 = {k: np.zeros_like(v) for k, v in ps.items()}

    def step(self, ps, grads):
        w, self.t = self.w, self.t + 1
        for k, g in grads.items():
            s1, s2 = self.s1[k], self.s2[k]
            if w.optimizer == "adagrad":
                s1 += g * g
                ps[k] -= w.lr * g / (np.sqrt(s1) + 1e-10)
            elif w.optimizer == "adam":
                s1 *= 0.9
                s1 += 0.1 * g
                s2 *= 0.999
                s2 += 0.001 * g * g
                c1, c2 = 1 - 0.9**self.t, np.sqrt(1 - 0.999**self.t)
                ps[k] -= (w.lr / c1) * s1 / (np.sqrt(s2) / c2 + 1e-8)
            else:
                s1 *= 0.9
                s1 += g
                ps[k] -= w.lr * s1


def train(w, data, params0):
    Xtr, Ytr = data[:2]
    B = w.batch or len(Xtr)
    start = time.perf_counter()
    ps = {k: v.copy() for k, v in params0.items()}
    Optimizer(w, ps).step(ps, loss_and_grads(w, ps, Xtr[:B], Ytr[:B])[1])
    setup = time.perf_counter() - start
    ps = {k: v.copy() for k, v in params0.items()}
    opt = Optimizer(w, ps)

    def run_epoch(order):
        for idx in minibatches(order, B):
            opt.step(ps, loss_and_grads(w, ps, Xtr[idx], Ytr[idx])[1])

    rounds = timed_rounds(w, len(Xtr), run_epoch)
    return {"setup_s": setup, "round_s": rounds, "params": ps}
