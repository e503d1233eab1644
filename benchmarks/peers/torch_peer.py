"""PyTorch eager with torch.optim: the same network, loss, optimizer and batches."""

from __future__ import annotations

import time

import torch

from ..workloads import minibatches, timed_rounds


def build(w, params, dtype=torch.float32, dropout=True):
    """The parameters as tensors and the training loss; ``running``, the batch norms' running
    statistics (torch.nn.BatchNorm1d's buffers), is updated by every loss evaluation."""
    ps = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in params.items()}
    L = len(w.sizes) - 1
    act = torch.relu if w.activation == "relu" else torch.sigmoid
    F = torch.nn.functional
    running = {}
    for k in range(1, L):
        if w.norm:
            running[f"running_mean{k}"] = torch.zeros(w.sizes[k], dtype=dtype)
            running[f"running_var{k}"] = torch.ones(w.sizes[k], dtype=dtype)

    def loss_fn(X, Y):
        h = X
        for k in range(1, L + 1):
            h = h @ ps[f"W{k}"] + ps[f"b{k}"]
            if k < L:
                if w.norm:
                    h = F.batch_norm(h, running[f"running_mean{k}"], running[f"running_var{k}"],
                                     ps[f"gamma{k}"][0], ps[f"beta{k}"][0], training=True)
                h = act(h)
                if dropout and w.rate(k):
                    h = F.dropout(h, w.rate(k))
            elif w.output == "sigmoid":
                h = torch.sigmoid(h)
        if w.loss == "sse":
            return ((h - Y) ** 2).sum() / len(X)
        if w.loss == "mse":
            return torch.nn.functional.mse_loss(h, Y)
        return torch.nn.functional.cross_entropy(h, Y)  # Y one-hot: probabilities as targets

    loss_fn.running = running
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
            "params": {k: v.detach().numpy() for k, v in ps.items()},
            "running": {k: v.numpy()[None] for k, v in loss_fn.running.items()}}


def grads(w, params, X, Y):
    ps, loss_fn = build(w, params, torch.float64, dropout=False)
    loss_fn(torch.from_numpy(X), torch.from_numpy(Y)).backward()
    return {k: v.grad.numpy() for k, v in ps.items()}
