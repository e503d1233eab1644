"""JAX: one jitted train step per minibatch, driven from Python."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from ..workloads import minibatches, timed_rounds
from .jax_common import grads, init_state, make_step, running_of

__all__ = ["grads", "train"]


def train(w, data, params0):
    Xtr, Ytr = (jnp.asarray(a) for a in data[:2])
    B = w.batch or len(Xtr)
    start = time.perf_counter()
    step = jax.jit(make_step(w))
    ps = {k: jnp.asarray(v) for k, v in params0.items()}
    jax.block_until_ready(step(ps, init_state(w, ps), Xtr[:B], Ytr[:B]))
    setup = time.perf_counter() - start
    carry = [ps, init_state(w, ps)]

    def run_epoch(order):
        for idx in minibatches(order, B):
            carry[0], carry[1], _ = step(*carry, Xtr[idx], Ytr[idx])

    rounds = timed_rounds(w, len(Xtr), run_epoch, sync=lambda: jax.block_until_ready(carry[0]))
    return {"setup_s": setup, "round_s": rounds,
            "params": {k: np.asarray(v) for k, v in carry[0].items()},
            "running": running_of(carry[1])}
