"""HIPS autograd: the loss written with autograd.numpy, gradients by reverse mode, the
optimizer as in the NumPy peer."""

from __future__ import annotations

import time

import autograd
import autograd.numpy as anp

from ..workloads import minibatches, timed_rounds, without_blocks
from .numpy_peer import Optimizer

applicable = without_blocks  # the plain MLP only


def loss_fn(w):
    L = len(w.sizes) - 1

    def loss(ps, X, Y):
        h = X
        for k in range(1, L + 1):
            h = anp.dot(h, ps[f"W{k}"]) + ps[f"b{k}"]
            if k < L:
                h = anp.maximum(h, 0) if w.activation == "relu" else 1 / (1 + anp.exp(-h))
            elif w.output == "sigmoid":
                h = 1 / (1 + anp.exp(-h))
        if w.loss == "softmax_ce":
            z = h - anp.max(h, axis=1, keepdims=True)
            return -anp.sum(Y * (z - anp.log(anp.sum(anp.exp(z), axis=1, keepdims=True)))) / len(X)
        return anp.sum((h - Y) ** 2) / (len(X) if w.loss == "sse" else h.size)

    return loss


def train(w, data, params0):
    Xtr, Ytr = data[:2]
    B = w.batch or len(Xtr)
    start = time.perf_counter()
    grad = autograd.grad(loss_fn(w))
    ps = {k: v.copy() for k, v in params0.items()}
    Optimizer(w, ps).step(ps, grad(ps, Xtr[:B], Ytr[:B]))
    setup = time.perf_counter() - start
    ps = {k: v.copy() for k, v in params0.items()}
    opt = Optimizer(w, ps)

    def run_epoch(order):
        for idx in minibatches(order, B):
            opt.step(ps, grad(ps, Xtr[idx], Ytr[idx]))

    rounds = timed_rounds(w, len(Xtr), run_epoch)
    return {"setup_s": setup, "round_s": rounds, "params": ps}


def grads(w, params, X, Y):
    return autograd.grad(loss_fn(w))(params, X, Y)
