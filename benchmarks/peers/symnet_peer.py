"""symnet: the workload declared in SymPy, compiled to numba kernels."""

from __future__ import annotations

import resource
import time

import numpy as np

import symnet as sn
from codegen import pace

ACTIVATIONS = {"sigmoid": sn.sigmoid, "relu": sn.relu, "identity": None}
OPTIMIZERS = {"adagrad": lambda lr: sn.optim.AdaGrad(lr=lr),
              "adam": lambda lr: sn.optim.Adam(lr=lr),
              "sgd_momentum": lambda lr: sn.optim.SGD(lr=lr, momentum=0.9)}


def build(w, dtype="float32", backend="numba"):
    X, Y = sn.Input("X", w.sizes[0]), sn.Input("Y", w.sizes[-1])
    h = X
    for k, units in enumerate(w.sizes[1:-1], start=1):
        h = sn.dense(h, units, ACTIVATIONS[w.activation], name=str(k))
    out = sn.dense(h, w.sizes[-1], ACTIVATIONS[w.output], name=str(len(w.sizes) - 1))
    loss = {"sse": sn.sse, "mse": sn.mse, "softmax_ce": sn.softmax_cross_entropy}[w.loss](out, Y)
    return sn.compile(loss, inputs=[X], targets=[Y], prediction=out, dtype=dtype, seed=0,
                      optimizer=OPTIMIZERS[w.optimizer](w.lr), backend=backend)


def train(w, data, params0):
    Xtr, Ytr = data[:2]
    batch = w.batch or len(Xtr)
    start = time.perf_counter()
    first = build(w)  # a throwaway model: declaration, compile, JIT and one trained step
    first.fit(Xtr[:batch], Ytr[:batch], epochs=1, batch_size=batch, shuffle=False, verbose=False)
    setup = time.perf_counter() - start
    model = build(w)
    for k, v in params0.items():
        model.params[k][...] = v
    epochs = w.epochs * w.steps_per_round
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    hist = model.fit(Xtr, Ytr, epochs=epochs, batch_size=batch, shuffle=w.shuffle, seed=1,
                     verbose=False)
    wall = time.perf_counter() - start
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    seconds = np.reshape(hist.seconds, (w.epochs, w.steps_per_round)).sum(axis=1)
    return {"setup_s": setup, "round_s": list(seconds), "params": model.params,
            "fit_overhead_s": (wall - float(np.sum(seconds))) / w.epochs,
            "symbolic_s": first.symbolic_seconds, "peak_growth_mb": growth,
            "one_thread_share": one_thread_share(model, batch)}


def one_thread_share(model, batch) -> float | None:
    """The share of training rows that ran on one thread rather than with the helper
    (codegen.pace, with ``SYMNET_POOL=auto``); None where nothing chose (the default, or no
    helper: tiny, or one OpenBLAS thread)."""
    tune = getattr(model._runner(), "tuning", {}).get(batch)
    rows = None if tune is None else int(tune[pace.ROWS_H] + tune[pace.ROWS_S])
    return float(tune[pace.ROWS_S] / rows) if rows else None


def grads(w, params, X, Y):
    model = build(w, dtype="float64", backend="numpy")
    for k, v in params.items():
        model.params[k][...] = v
    return model.loss_and_grad(X, Y)[1]
