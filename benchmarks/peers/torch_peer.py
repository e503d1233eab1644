"""PyTorch eager with torch.optim: the same network, loss, optimizer and batches."""

from __future__ import annotations

import time

import torch

from ..workloads import minibatches, timed_rounds


def build(w, params, dtype=torch.float32):
    ps = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in params.items()}
    L = len(w.sizes) - 1
    act = torch.relu if w.activation == "relu" else torch.sigmoid

    def loss_fn(X, Y):
        h = X
        for k in range(1, L + 1):
            h = h @ ps[f"W{k}"] + ps[f"b{k}"]
            if k < L:
                h = act(h)
            elif w.output == "sigmoid":
                h = torch.sigmoid(h)
        if w.loss == "sse":
            return ((h - Y) ** 2).sum() / len(X)
        if w.loss == "mse":
            return torch.nn.functional.mse_loss(h, Y)
        return torch.nn.functional.cross_entropy(h, Y)  # Y one-hot: probabilities as targets

    return ps, loss_fn


def optimizer(w, params):
    if w.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=w.lr)
    if w.optimizer == "adam":
        return torch.optim.Adam(params, lr=w.lr)
    return torch.optim.SGD(params, lr=w.lr, momentum=0.9)


def train(w, data, params0):
    torch.set_num_threads(2)
    Xtr, Ytr = (torch.from_numpy(a) for a in data[:2])
    B = w.batch or len(Xtr)

    def step(ps, loss_fn, opt, X, Y):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(X, Y)
        loss.backward()
        opt.step()
        return loss

    start = time.perf_counter()
    ps, loss_fn = build(w, params0)
    step(ps, loss_fn, optimizer(w, list(ps.values())), Xtr[:B], Ytr[:B])
    setup = time.perf_counter() - start
    ps, loss_fn = build(w, params0)
    opt = optimizer(w, list(ps.values()))

    def run_epoch(order):
        for idx in minibatches(torch.from_numpy(order), B):
            step(ps, loss_fn, opt, Xtr[idx], Ytr[idx])

    rounds = timed_rounds(w, len(Xtr), run_epoch)
    return {"setup_s": setup, "round_s": rounds,
            "params": {k: v.detach().numpy() for k, v in ps.items()}}


def grads(w, params, X, Y):
    ps, loss_fn = build(w, params, torch.float64)
    loss_fn(torch.from_numpy(X), torch.from_numpy(Y)).backward()
    return {k: v.grad.numpy() for k, v in ps.items()}
