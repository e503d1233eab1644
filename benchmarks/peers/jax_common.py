"""The workload's loss and optimizer in JAX, shared by the step-loop and scan peers."""

from __future__ import annotations

import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)  # float64 gradients for the agreement check


def loss_fn(w):
    L = len(w.sizes) - 1
    act = jax.nn.relu if w.activation == "relu" else jax.nn.sigmoid

    def loss(ps, X, Y):
        h = X
        for k in range(1, L + 1):
            h = h @ ps[f"W{k}"] + ps[f"b{k}"]
            if k < L:
                h = act(h)
            elif w.output == "sigmoid":
                h = jax.nn.sigmoid(h)
        if w.loss == "sse":
            return jnp.sum((h - Y) ** 2) / X.shape[0]
        if w.loss == "mse":
            return jnp.mean((h - Y) ** 2)
        return -jnp.sum(Y * jax.nn.log_softmax(h)) / X.shape[0]

    return loss


def init_state(w, ps):
    zeros = {k: jnp.zeros_like(v) for k, v in ps.items()}
    return (zeros, zeros, jnp.zeros((), jnp.int32))


def update(w, ps, g, state):
    """torch.optim's formulas: AdaGrad, Adam, SGD with momentum."""
    s1, s2, t = state
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
    return ps, (s1, s2, t)


def make_step(w):
    grad = jax.value_and_grad(loss_fn(w))

    def step(ps, state, X, Y):
        loss, g = grad(ps, X, Y)
        ps, state = update(w, ps, g, state)
        return ps, state, loss

    return step


def grads(w, params, X, Y):
    ps = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
    g = jax.grad(loss_fn(w))(ps, jnp.asarray(X, jnp.float64), jnp.asarray(Y, jnp.float64))
    return {k: jax.device_get(v) for k, v in g.items()}
