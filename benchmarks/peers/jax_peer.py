"""JAX: one jitted train step per minibatch, driven from Python."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from .jax_common import grads, init_state, make_step

__all__ = ["grads", "train"]


def train(w, data, params0):
    Xtr, Ytr = (jnp.asarray(a) for a in data[:2])
    B = w.batch or len(Xtr)
    start = time.perf_counter()
    step = jax.jit(make_step(w))
    ps = {k: jnp.asarray(v) for k, v in params0.items()}
    jax.block_until_ready(step(ps, init_state(w, ps), Xtr[:B], Ytr[:B]))
    setup = time.perf_counter() - start
    state = init_state(w, ps)
    rng = np.random.default_rng(1)
    rounds = []
    for _ in range(w.epochs):
        begin = time.perf_counter()
        for _ in range(w.steps_per_round):
            order = rng.permutation(len(Xtr)) if w.shuffle else np.arange(len(Xtr))
            for s in range(0, len(Xtr), B):
                idx = order[s:s + B]
                ps, state, _ = step(ps, state, Xtr[idx], Ytr[idx])
        jax.block_until_ready(ps)
        rounds.append(time.perf_counter() - begin)
    return {"setup_s": setup, "round_s": rounds,
            "params": {k: np.asarray(v) for k, v in ps.items()}}
