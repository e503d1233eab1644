import os

import numpy as np
import pytest
import sympy as sp

import symnet as sn


def make_data(n=5, cols=4, out=3, kind="onehot", seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, cols))
    if kind == "onehot":
        Y = np.eye(out)[rng.integers(0, out, n)]
    elif kind == "prob":
        Y = rng.uniform(0.05, 0.95, size=(n, out))
    else:
        Y = rng.normal(size=(n, out))
    return X, Y


@pytest.fixture(scope="session", autouse=True)
def kernel_cache(tmp_path_factory):
    """One on-disk kernel cache per test run: tests share compiled kernels, runs do not. The
    pytest-xdist workers of a run share it too (their temporary directories have one parent)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    (root / "kernels").mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SYMNET_CACHE_DIR", str(root / "kernels"))
        yield


def deep_residual(layers):
    """(loss, X, Y, out): ``layers`` residual layers, each tanh(batch norm(dense) + h) then
    dropout 0.1, 4 → 3 wide → 2, softmax cross-entropy: a graph that reads most nodes twice or
    three times."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 2)
    h = sn.dense(X, 3, sn.tanh, name="0")
    for k in range(1, layers + 1):
        h = sn.dropout(sn.tanh(sn.batch_norm(sn.dense(h, 3, name=str(k)), str(k)) + h), 0.1)
    out = sn.dense(h, 2, name="out")
    return sn.softmax_cross_entropy(out, Y), X, Y, out


def compiled(loss, X, Y, prediction=None, seed=0, backend="numpy", constants=None,
             optimizer=None):
    """A float64 model; the numpy reference backend unless a test is about the kernels."""
    return sn.compile(loss, inputs=[X], targets=[Y], prediction=prediction, dtype="float64",
                      seed=seed, backend=backend, constants=constants, optimizer=optimizer)


def assert_formulas_are_computed(model, Xb, Yb):
    """sn.evaluate of every shown gradient equals what loss_and_grad computes."""
    _, grads = model.loss_and_grad(Xb, Yb) if Yb is not None else model.loss_and_grad(Xb)
    values = {"X": Xb, "Y": Yb, **model.params, **model.constants}
    for p, expr in model.gradients.items():
        np.testing.assert_allclose(sn.evaluate(expr, values), grads[p.name], rtol=1e-9,
                                   atol=1e-12, err_msg=f"gradient of {p}")


@pytest.fixture
def xy():
    return sn.Input("X", 4), sn.Input("Y", 3)


def backward_text(model):
    return "\n".join(f"{eq.label} = {sn.formulas.text(eq.rhs)}"
                     for eq in model.derivation.backward)


__all__ = ["assert_formulas_are_computed", "backward_text", "compiled", "make_data", "sp"]
