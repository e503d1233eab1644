"""A hand-written numba kernel of the same maths: one jitted call per epoch (gather, forward,
backward, optimizer update for every minibatch), fused loops, preallocated buffers. The
practical limit of writing it by hand, and symnet's reference for speed."""

from __future__ import annotations

import math
import time

import numba as nb
import numpy as np

from codegen.intrinsics.fpmode import FTZ_DAZ, get_fpmode, set_fpmode

from ..workloads import timed_rounds, without_blocks

applicable = without_blocks  # the plain MLP only


def make_epoch(w):
    """The epoch kernel for workload ``w``, with its activation, loss and optimizer frozen in."""
    relu = w.activation == "relu"
    sigmoid_out = w.output == "sigmoid"
    loss_kind = {"sse": 0, "mse": 1, "softmax_ce": 2}[w.loss]
    opt = {"adagrad": 0, "adam": 1, "sgd_momentum": 2}[w.optimizer]
    lr = np.float32(w.lr)

    @nb.njit(fastmath=True, cache=False)
    def step_update(P, G, S1, S2, t):
        b1t = 1.0 - 0.9**t
        b2t = math.sqrt(1.0 - 0.999**t)
        for i in range(P.shape[0]):
            for j in range(P.shape[1]):
                g = G[i, j]
                if opt == 0:
                    S1[i, j] += g * g
                    P[i, j] -= lr * g / (math.sqrt(S1[i, j]) + np.float32(1e-10))
                elif opt == 1:
                    S1[i, j] = np.float32(0.9) * S1[i, j] + np.float32(0.1) * g
                    S2[i, j] = np.float32(0.999) * S2[i, j] + np.float32(0.001) * g * g
                    P[i, j] -= (lr / b1t) * S1[i, j] / (math.sqrt(S2[i, j]) / b2t
                                                        + np.float32(1e-8))
                else:
                    S1[i, j] = np.float32(0.9) * S1[i, j] + g
                    P[i, j] -= lr * S1[i, j]

    @nb.njit(fastmath=True, cache=False)
    def epoch(X, Y, order, B, Ws, bs, S1w, S2w, S1b, S2b, t, As, Ds, gWs, gbs, Xb, Yb):
        mode = get_fpmode()  # flush subnormals to zero, as XLA does
        set_fpmode(mode | np.uint32(FTZ_DAZ))
        N = X.shape[0]
        L = len(Ws)
        total = 0.0
        for start in range(0, N, B):
            n = min(B, N - start)
            for r in range(n):
                for j in range(X.shape[1]):
                    Xb[r, j] = X[order[start + r], j]
                for j in range(Y.shape[1]):
                    Yb[r, j] = Y[order[start + r], j]
            x = Xb[:n]
            for k in range(L):  # forward
                a = As[k][:n]
                np.dot(x, Ws[k], a)
                b = bs[k]
                last = k == L - 1
                for i in range(n):
                    for j in range(a.shape[1]):
                        z = a[i, j] + b[0, j]
                        if last:
                            a[i, j] = 1 / (1 + math.exp(-z)) if sigmoid_out else z
                        elif relu:
                            a[i, j] = z if z > 0 else 0
                        else:
                            a[i, j] = 1 / (1 + math.exp(-z))
                x = a
            out, d, y = As[L - 1][:n], Ds[L - 1][:n], Yb[:n]
            loss = 0.0
            for i in range(n):  # loss and output delta
                if loss_kind == 2:
                    top = out[i, 0]
                    for j in range(out.shape[1]):
                        top = max(top, out[i, j])
                    s = 0.0
                    for j in range(out.shape[1]):
                        s += math.exp(out[i, j] - top)
                    lse = top + math.log(s)
                    for j in range(out.shape[1]):
                        loss += y[i, j] * (lse - out[i, j])
                        d[i, j] = (math.exp(out[i, j] - lse) - y[i, j]) / n
                else:
                    scale = 2.0 / n if loss_kind == 0 else 2.0 / (n * out.shape[1])
                    for j in range(out.shape[1]):
                        e = out[i, j] - y[i, j]
                        loss += e * e
                        d[i, j] = scale * e * (out[i, j] * (1 - out[i, j]) if sigmoid_out else 1)
            total += loss / n if loss_kind != 1 else loss / (n * out.shape[1])
            for k in range(L - 1, -1, -1):  # backward
                d = Ds[k][:n]
                prev = Xb[:n] if k == 0 else As[k - 1][:n]
                np.dot(prev.T, d, gWs[k])
                gb = gbs[k]
                for j in range(d.shape[1]):
                    gb[0, j] = 0
                for i in range(n):
                    for j in range(d.shape[1]):
                        gb[0, j] += d[i, j]
                if k > 0:
                    dp = Ds[k - 1][:n]
                    np.dot(d, Ws[k].T, dp)
                    for i in range(n):
                        for j in range(dp.shape[1]):
                            a = prev[i, j]
                            dp[i, j] *= (1.0 if a > 0 else 0.0) if relu else a * (1 - a)
            t += 1
            for k in range(L):
                step_update(Ws[k], gWs[k], S1w[k], S2w[k], t)
                step_update(bs[k], gbs[k], S1b[k], S2b[k], t)
        set_fpmode(mode)
        return t, total

    return epoch


def train(w, data, params0):
    Xtr, Ytr = data[:2]
    B = w.batch or len(Xtr)
    L = len(w.sizes) - 1

    def state(params):
        Ws = tuple(params[f"W{k}"].copy() for k in range(1, L + 1))
        bs = tuple(params[f"b{k}"].copy() for k in range(1, L + 1))
        zeros = lambda ps: tuple(np.zeros_like(p) for p in ps)  # noqa: E731
        As = tuple(np.zeros((B, u), np.float32) for u in w.sizes[1:])
        return [Ws, bs, zeros(Ws), zeros(Ws), zeros(bs), zeros(bs), As, zeros(As), zeros(Ws),
                zeros(bs), np.zeros((B, w.sizes[0]), np.float32),
                np.zeros((B, w.sizes[-1]), np.float32)]

    start = time.perf_counter()
    epoch = make_epoch(w)
    s = state(params0)  # a throwaway copy: JIT and one trained step
    epoch(Xtr[:B], Ytr[:B], np.arange(B), B, *s[:6], 0, *s[6:])
    setup = time.perf_counter() - start
    s = state(params0)
    step = [0]  # optimizer steps taken, carried from epoch to epoch

    def run_epoch(order):
        step[0], _ = epoch(Xtr, Ytr, order, B, *s[:6], step[0], *s[6:])

    rounds = timed_rounds(w, len(Xtr), run_epoch)
    params = {}
    for k in range(L):
        params[f"W{k + 1}"], params[f"b{k + 1}"] = s[0][k], s[1][k]
    return {"setup_s": setup, "round_s": rounds, "params": params}
