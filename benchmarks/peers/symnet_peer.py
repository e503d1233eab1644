"""symnet: the workload declared in SymPy, compiled to numba kernels.

A measured round is one ``model.fit`` call, timed around the call as a user waits for it, as
every other peer's round is its whole loop: an epoch (``epochs=1``) for the minibatch
workloads, ``w.steps_per_round`` full-batch steps (``epochs=1000``) for tiny.
"""

from __future__ import annotations

import resource
import time

import symnet as sn

ACTIVATIONS = {"sigmoid": sn.sigmoid, "relu": sn.relu, "identity": None}
OPTIMIZERS = {"adagrad": lambda lr: sn.optim.AdaGrad(lr=lr),
              "adam": lambda lr: sn.optim.Adam(lr=lr),
              "sgd_momentum": lambda lr: sn.optim.SGD(lr=lr, momentum=0.9)}


def build(w, dtype="float32", backend="numba", dropout=True):
    X, Y = sn.Input("X", w.sizes[0]), sn.Input("Y", w.sizes[-1])
    h = X
    for k, units in enumerate(w.sizes[1:-1], start=1):
        z = sn.dense(h, units, name=str(k))
        h = ACTIVATIONS[w.activation](sn.batch_norm(z, str(k)) if w.norm else z)
        h = sn.dropout(h, w.rate(k) if dropout else 0)
    out = sn.dense(h, w.sizes[-1], ACTIVATIONS[w.output], name=str(len(w.sizes) - 1))
    loss = {"sse": sn.sse, "mse": sn.mse, "softmax_ce": sn.softmax_cross_entropy}[w.loss](out, Y)
    return sn.compile(loss, inputs=[X], targets=[Y], prediction=out, dtype=dtype, seed=0,
                      optimizer=OPTIMIZERS[w.optimizer](w.lr), backend=backend)


def setup(w, data, backend="numba") -> tuple[float, float]:
    """Seconds from the declaration to the first trained step, on a throwaway model, and the
    symbolic part of them."""
    Xtr, Ytr = data[:2]
    batch = w.batch or len(Xtr)
    start = time.perf_counter()
    first = build(w, backend=backend)
    first.fit(Xtr[:batch], Ytr[:batch], epochs=1, batch_size=batch, shuffle=False, verbose=False)
    return time.perf_counter() - start, first.symbolic_seconds


def fit_round(model, w, Xtr, Ytr, r: int) -> float:
    """Wall seconds of round ``r``: one ``fit`` call. Its shuffling seed, ``1 + r``, gives the
    permutations every other peer uses in that round (``workloads.round_rng``)."""
    start = time.perf_counter()
    model.fit(Xtr, Ytr, epochs=w.steps_per_round, batch_size=w.batch or len(Xtr),
              shuffle=w.shuffle, seed=1 + r, verbose=False)
    return time.perf_counter() - start


def measured_model(w, params0, backend="numba"):
    """The model that is measured, from the shared initial parameters, its kernels loaded (from
    the cache the throwaway model filled) before the first round, as every JIT peer's are."""
    model = build(w, backend=backend)
    for k, v in params0.items():
        model.params[k][...] = v
    model.compile_kernels()
    return model


def train(w, data, params0, backend="numba"):
    Xtr, Ytr = data[:2]
    setup_s, symbolic_s = setup(w, data, backend)
    model = measured_model(w, params0, backend)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rounds = [fit_round(model, w, Xtr, Ytr, r) for r in range(w.epochs)]
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"setup_s": setup_s, "round_s": rounds, "params": model.params,
            "running": model.running, "symbolic_s": symbolic_s, "peak_growth_mb": growth}


def grads(w, params, X, Y):
    model = build(w, dtype="float64", backend="numpy", dropout=False)  # the peers' masks differ
    for k, v in params.items():
        model.params[k][...] = v
    return model.loss_and_grad(X, Y)[1]
