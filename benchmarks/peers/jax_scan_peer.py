"""JAX with one ``lax.scan`` over the minibatches of an epoch (one dispatch per epoch; a short
last batch is one more jitted step)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from ..workloads import round_rng
from .jax_common import grads, init_state, make_step, running_of

__all__ = ["grads", "train"]


def make_epoch(w, rows, B):
    step = make_step(w)
    full = rows // B

    def epoch(ps, state, X, Y, order):
        def body(carry, idx):
            ps, state = carry
            ps, state, loss = step(ps, state, X[idx], Y[idx])
            return (ps, state), loss

        batches = order[:full * B].reshape(full, B)
        (ps, state), losses = jax.lax.scan(body, (ps, state), batches)
        if rows % B:
            idx = order[full * B:]
            ps, state, _ = step(ps, state, X[idx], Y[idx])
        return ps, state, losses

    return epoch


def train(w, data, params0):
    Xtr, Ytr = (jnp.asarray(a) for a in data[:2])
    rows = len(Xtr)
    B = w.batch or rows
    start = time.perf_counter()
    ps = {k: jnp.asarray(v) for k, v in params0.items()}
    if w.steps_per_round > 1:  # full batch: scan over the steps of a round
        step = make_step(w)

        def run(ps, state, X, Y, order):
            def body(carry, _):
                ps, state, loss = step(*carry, X, Y)
                return (ps, state), loss

            (ps, state), losses = jax.lax.scan(body, (ps, state), None, w.steps_per_round)
            return ps, state, losses
    else:
        run = make_epoch(w, rows, B)
    run = jax.jit(run)
    order0 = jnp.arange(rows)
    compiled = run.lower(ps, init_state(w, ps), Xtr, Ytr, order0).compile()
    setup = time.perf_counter() - start
    state = init_state(w, ps)
    rounds = []
    for r in range(w.epochs):
        begin = time.perf_counter()
        order = jnp.asarray(round_rng(r).permutation(rows) if w.shuffle else np.arange(rows))
        ps, state, _ = compiled(ps, state, Xtr, Ytr, order)
        jax.block_until_ready(ps)
        rounds.append(time.perf_counter() - begin)
    return {"setup_s": setup, "round_s": rounds,
            "params": {k: np.asarray(v) for k, v in ps.items()}, "running": running_of(state)}
