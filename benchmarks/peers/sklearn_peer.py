"""scikit-learn's MLPClassifier / MLPRegressor, where a workload fits them.

They have no AdaGrad and no sigmoid output with squared error (seed002), initialise with their
own Glorot-uniform scheme, and MLPRegressor's loss is half the MSE (the same minimiser; Adam is
nearly invariant to the factor). Each epoch is one ``partial_fit`` (shuffled minibatches).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
from sklearn.neural_network import MLPClassifier, MLPRegressor


def applicable(w):
    if w.blocks:
        return "not applicable: scikit-learn's MLP has no batch norm or dropout"
    if w.optimizer == "adagrad" or w.output == "sigmoid":
        return "not applicable: scikit-learn's MLP has no AdaGrad and no sigmoid output with SSE"
    return None


def build(w, rows):
    kwargs = dict(hidden_layer_sizes=w.sizes[1:-1], activation=w.activation, alpha=0.0,
                  batch_size=w.batch or rows, learning_rate_init=w.lr, shuffle=w.shuffle,
                  random_state=0)
    if w.optimizer == "adam":
        kwargs.update(solver="adam")
    else:
        kwargs.update(solver="sgd", momentum=0.9, nesterovs_momentum=False)
    return (MLPClassifier if w.classification else MLPRegressor)(**kwargs)


def train(w, data, params0):
    Xtr, Ytr = data[:2]
    y = Ytr.argmax(1) if w.classification else Ytr.ravel()
    extra = {"classes": np.arange(Ytr.shape[1])} if w.classification else {}
    B = w.batch or len(Xtr)
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    build(w, len(Xtr)).partial_fit(Xtr[:B], y[:B], **extra)
    setup = time.perf_counter() - start
    model = build(w, len(Xtr))
    rounds = []
    for _ in range(w.epochs):
        begin = time.perf_counter()
        for _ in range(w.steps_per_round):
            model.partial_fit(Xtr, y, **extra)
        rounds.append(time.perf_counter() - begin)
    params = {}
    for k, (W, b) in enumerate(zip(model.coefs_, model.intercepts_), start=1):
        params[f"W{k}"], params[f"b{k}"] = W, b[None, :]
    return {"setup_s": setup, "round_s": rounds, "params": params}
