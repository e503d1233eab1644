"""PyTensor (Theano's successor): a symbolic graph with shared parameters and optimizer state,
compiled by ``pytensor.function`` in its default mode (C); ``pytensor_numba_peer`` compiles the
same graph with ``mode="NUMBA"``."""

from __future__ import annotations

import os
import tempfile
import time

# float32 by default, and fresh compile caches for the cold figures (set before the import):
# base_compiledir too, where PyTensor's numba mode keeps its cache
_cold = tempfile.mkdtemp(prefix="pt-")
os.environ["PYTENSOR_FLAGS"] = (f"floatX=float32,base_compiledir={_cold},compiledir={_cold}/c,"
                                + os.environ.get("PYTENSOR_FLAGS", ""))

import numpy as np  # noqa: E402
import pytensor  # noqa: E402
import pytensor.tensor as pt  # noqa: E402

from ..workloads import minibatches, timed_rounds, without_blocks  # noqa: E402

applicable = without_blocks  # the plain MLP only

MODE = None  # pytensor's default: FAST_RUN with the C backend


def graph(w, ps, X, Y):
    L = len(w.sizes) - 1
    h = X
    for k in range(1, L + 1):
        h = h @ ps[f"W{k}"] + ps[f"b{k}"]
        if k < L:
            h = pt.maximum(h, 0) if w.activation == "relu" else pt.sigmoid(h)
        elif w.output == "sigmoid":
            h = pt.sigmoid(h)
    if w.loss == "softmax_ce":
        return -pt.sum(Y * pt.special.log_softmax(h, axis=1)) / X.shape[0]
    return pt.sum((h - Y) ** 2) / (X.shape[0] if w.loss == "sse" else h.size)


def updates(w, ps, grads):
    out = []
    t = pytensor.shared(np.float32(0), name="t")
    t1 = t + 1
    out.append((t, t1))
    for p, g in zip(ps.values(), grads):
        s1 = pytensor.shared(np.zeros_like(p.get_value()))
        if w.optimizer == "adagrad":
            s = s1 + g * g
            out += [(s1, s), (p, p - w.lr * g / (pt.sqrt(s) + 1e-10))]
        elif w.optimizer == "adam":
            s2 = pytensor.shared(np.zeros_like(p.get_value()))
            m, v = 0.9 * s1 + 0.1 * g, 0.999 * s2 + 0.001 * g * g
            c1, c2 = 1 - 0.9**t1, pt.sqrt(1 - 0.999**t1)
            out += [(s1, m), (s2, v), (p, p - (w.lr / c1) * m / (pt.sqrt(v) / c2 + 1e-8))]
        else:
            buf = 0.9 * s1 + g
            out += [(s1, buf), (p, p - w.lr * buf)]
    return out


def compile_step(w, params0):
    ps = {k: pytensor.shared(v if k.startswith("W") else v.reshape(-1), name=k)
          for k, v in params0.items()}
    X, Y = pt.matrix("X", dtype="float32"), pt.matrix("Y", dtype="float32")
    loss = graph(w, ps, X, Y)
    step = pytensor.function([X, Y], loss, updates=updates(w, ps, pt.grad(loss, list(ps.values()))),
                             mode=MODE)
    return ps, step


def train(w, data, params0):
    Xtr, Ytr = data[:2]
    B = w.batch or len(Xtr)
    start = time.perf_counter()
    _, step = compile_step(w, params0)
    step(Xtr[:B], Ytr[:B])
    setup = time.perf_counter() - start
    ps, step = compile_step(w, params0)  # the same graph again: PyTensor's cache makes it quick

    def run_epoch(order):
        for idx in minibatches(order, B):
            step(Xtr[idx], Ytr[idx])

    rounds = timed_rounds(w, len(Xtr), run_epoch)
    params = {k: v.get_value().reshape(params0[k].shape) for k, v in ps.items()}
    return {"setup_s": setup, "round_s": rounds, "params": params}


def grads(w, params, X, Y):
    ps = {k: pytensor.shared(v if k.startswith("W") else v.reshape(-1), name=k)
          for k, v in params.items()}
    Xs, Ys = pt.matrix("X", dtype="float64"), pt.matrix("Y", dtype="float64")
    loss = graph(w, ps, Xs, Ys)
    out = pytensor.function([Xs, Ys], pt.grad(loss, list(ps.values())), mode=MODE)(X, Y)
    return {k: g.reshape(params[k].shape) for k, g in zip(ps, out)}
