"""The workload's loss and optimizer in JAX, shared by the step-loop and scan peers."""

from __future__ import annotations

import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)  # float64 gradients for the agreement check


KEY = jax.random.PRNGKey(0)  # dropout: step t's masks come from fold_in(KEY, t)


def loss_fn(w, dropout=True):
    """``loss(ps, X, Y, key, running) → (loss, running)``: batch norm on the batch's statistics,
    as torch.nn.BatchNorm1d trains, returning the updated running ones; dropout from ``key``."""
    L = len(w.sizes) - 1
    act = jax.nn.relu if w.activation == "relu" else jax.nn.sigmoid

    def loss(ps, X, Y, key, running):
        running = dict(running)
        h = X
        for k in range(1, L + 1):
            h = h @ ps[f"W{k}"] + ps[f"b{k}"]
            if k < L:
                if w.norm:
                    mean, var = jnp.mean(h, 0, keepdims=True), jnp.var(h, 0, keepdims=True)
                    h = (h - mean) / jnp.sqrt(var + 1e-5) * ps[f"gamma{k}"] + ps[f"beta{k}"]
                    n = X.shape[0]
                    for name, stat in (("mean", mean), ("var", var * n / (n - 1))):
                        r = running[f"running_{name}{k}"]
                        running[f"running_{name}{k}"] = 0.9 * r + 0.1 * jax.lax.stop_gradient(stat)
                h = act(h)
                if dropout and w.rate(k):
                    kept = jax.random.bernoulli(jax.random.fold_in(key, k), 1 - w.rate(k), h.shape)
                    h = jnp.where(kept, h / (1 - w.rate(k)), 0)
            elif w.output == "sigmoid":
                h = jax.nn.sigmoid(h)
        if w.loss == "sse":
            out = jnp.sum((h - Y) ** 2) / X.shape[0]
        elif w.loss == "mse":
            out = jnp.mean((h - Y) ** 2)
        else:
            out = -jnp.sum(Y * jax.nn.log_softmax(h)) / X.shape[0]
        return out, running

    return loss


def init_running(w, dtype=jnp.float32):
    return {f"running_{name}{k}": jnp.full((1, w.sizes[k]), start, dtype)
            for k in range(1, len(w.sizes) - 1) if w.norm
            for name, start in (("mean", 0.0), ("var", 1.0))}


def init_state(w, ps):
    zeros = {k: jnp.zeros_like(v) for k, v in ps.items()}
    return (zeros, zeros, jnp.zeros((), jnp.int32), init_running(w))


def update(w, ps, g, state):
    """torch.optim's formulas: AdaGrad, Adam, SGD with momentum."""
    s1, s2, t, running = state
    t = t + 1
    if w.optimizer == "adagrad":
        s1 = {k: s1[k] + g[k] ** 2 for k in ps}
        ps = {k: ps[k] - w.lr * g[k] / (jnp.sqrt(s1[k]) + 1e-10) for k in ps}
    elif w.optimizer == "adam":
        s1 = {k: 0.9 * s1[k] + 0.1 * g[k] for k in ps}
        s2 = {k: 0.999 * s2[k] + 0.001 * g[k] ** 2 for k in ps}
        tf = t.astype(jnp.float32)
        c1, c2 = 1 - 0.9**tf, jnp.sqrt(1 - 0.999**tf)
        ps = {k: ps[k] - (w.lr / c1) * s1[k] / (jnp.sqrt(s2[k]) / c2 + 1e-8) for k in ps}
    else:
        s1 = {k: 0.9 * s1[k] + g[k] for k in ps}
        ps = {k: ps[k] - w.lr * s1[k] for k in ps}
    return ps, (s1, s2, t, running)


def make_step(w):
    grad = jax.value_and_grad(loss_fn(w), has_aux=True)

    def step(ps, state, X, Y):
        s1, s2, t, running = state
        (loss, running), g = grad(ps, X, Y, jax.random.fold_in(KEY, t), running)
        ps, state = update(w, ps, g, (s1, s2, t, running))
        return ps, state, loss

    return step


def grads(w, params, X, Y):
    ps = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
    g = jax.grad(lambda *a: loss_fn(w, dropout=False)(*a)[0])(
        ps, jnp.asarray(X, jnp.float64), jnp.asarray(Y, jnp.float64), KEY,
        init_running(w, jnp.float64))
    return {k: jax.device_get(v) for k, v in g.items()}


def running_of(state) -> dict:
    """The batch norms' running statistics in a trained state, as NumPy arrays."""
    return {k: jax.device_get(v) for k, v in state[3].items()}
