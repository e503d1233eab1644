"""Every activation, loss, regulariser and VJP rule against central finite differences (float64),
and the shown formulas against the computed gradients."""

import numpy as np
import pytest
import sympy as sp
from conftest import assert_formulas_are_computed, compiled, make_data

import symnet as sn

x = sp.Symbol("x")
ACTIVATIONS = {
    "sigmoid": sn.sigmoid, "tanh": sn.tanh, "relu": sn.relu, "leaky_relu": sn.leaky_relu(0.1),
    "elu": sn.elu(1.0), "softplus": sn.softplus, "hard_sigmoid": sn.hard_sigmoid,
    "hard_tanh": sn.hard_tanh, "swish": sn.swish, "gelu": sn.gelu, "identity": sn.identity,
    "prelu": sn.prelu, "maxout": sn.maxout(3),
    "custom": sn.activation("cube_tanh", sp.tanh(x) ** 3 + x / 4, x),
}


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_gradients_match_finite_differences(name, xy):
    X, Y = xy
    h = sn.dense(X, 5, ACTIVATIONS[name])
    out = sn.dense(h, 3)
    model = compiled(sn.mse(out, Y), X, Y, prediction=out)
    Xb, Yb = make_data(kind="real", seed=1)
    Xb *= 2  # reach the saturated and clipped regions of the hard functions
    assert sn.gradcheck(model, Xb, Yb) < 1e-6
    assert_formulas_are_computed(model, Xb, Yb)


def _two_layer(X, act=sn.tanh):
    return sn.dense(sn.dense(X, 5, act), 3)


LOSSES = {
    "mse": (lambda out, Y: sn.mse(out, Y), "real"),
    "sse": (lambda out, Y: sn.sse(sn.sigmoid(out), Y), "prob"),
    "cross_entropy": (lambda out, Y: sn.cross_entropy(sn.softmax(out), Y), "prob"),
    "softmax_cross_entropy": (lambda out, Y: sn.softmax_cross_entropy(out, Y), "onehot"),
    "binary_cross_entropy": (lambda out, Y: sn.binary_cross_entropy(sn.sigmoid(out), Y), "prob"),
    # (log∘hard_sigmoid)′ has 1/0 in a Piecewise: SymPy's search for an output form raised
    "cross_entropy_of_hard_sigmoid": (lambda out, Y: sn.cross_entropy(sn.hard_sigmoid(out), Y),
                                      "prob"),
    "log_softmax": (lambda out, Y: -sn.sum(sp.HadamardProduct(Y, sn.log_softmax(out))) / sn.batch,
                    "onehot"),
}


@pytest.mark.parametrize("name", LOSSES)
def test_loss_gradients_match_finite_differences(name, xy):
    X, Y = xy
    build, kind = LOSSES[name]
    out = _two_layer(X)
    model = compiled(build(out, Y), X, Y, prediction=out)
    Xb, Yb = make_data(kind=kind, seed=2)
    assert sn.gradcheck(model, Xb, Yb) < 1e-6
    assert_formulas_are_computed(model, Xb, Yb)


@pytest.mark.parametrize("reg", ["l1", "l2"])
def test_regulariser_gradients_match_finite_differences(reg, xy):
    X, Y = xy
    out = _two_layer(X)
    penalty = getattr(sn, reg)(0.05, *sn.weights(out))
    model = compiled(sn.mse(out, Y) + penalty, X, Y, prediction=out)
    Xb, Yb = make_data(kind="real", seed=3)
    assert sn.gradcheck(model, Xb, Yb) < 1e-6
    assert_formulas_are_computed(model, Xb, Yb)


def test_regularisers_penalise_weights_only(xy):
    X, Y = xy
    out = _two_layer(X)
    assert [w.name for w in sn.weights(out)] == ["W1", "W2"]
    with pytest.raises(sn.DeclarationError, match="needs the weight matrices"):
        sn.l2(0.1)


n = sn.batch
A4 = sp.MatrixSymbol("X", n, 4)
Y3 = sp.MatrixSymbol("Y", n, 3)
W = sp.MatrixSymbol("W", 4, 3)
V = sp.MatrixSymbol("V", 3, 3)
b = sp.MatrixSymbol("b", 1, 3)
ONES = sp.OneMatrix(n, 1)

# One loss per VJP rule, each exercising that matrix operation on a parameter path.
RULES = {
    "matmul": sn.sum(sn.square(A4 * W * V - Y3)) / n,
    "matadd_broadcast": sn.sum(sn.square(A4 * W + ONES * b - Y3)) / n,
    "hadamard": sn.sum(sp.HadamardProduct(A4 * W, A4 * W * V, Y3)) / n,
    "hadamard_power": sn.sum(sp.HadamardPower(A4 * W - Y3, 3)) / n,
    "transpose": sn.sum(sn.square((A4 * W).T * Y3 - V)) / n,
    "elementwise": sn.sum(sn.tanh(A4 * W) - Y3) / n,
    "logsumexp": sn.sum(sn.logsumexp(A4 * W + ONES * b)) / n,
    "scalar_multiple": sn.sum(sn.square(3 * (A4 * W) - Y3 / 2)) / n,
    "sympy_applyfunc": sn.sum((A4 * W).applyfunc(sp.sin) - Y3) / n,
}


@pytest.mark.parametrize("name", RULES)
def test_vjp_rule_matches_finite_differences(name):
    reads_y = Y3 in RULES[name].free_symbols  # logsumexp's loss does not
    model = sn.compile(RULES[name], inputs=[A4], targets=[Y3] if reads_y else [],
                       dtype="float64", seed=0, backend="numpy")
    Xb, Yb = make_data(kind="real", seed=4)
    assert sn.gradcheck(model, Xb, Yb if reads_y else None) < 1e-6
    assert_formulas_are_computed(model, Xb, Yb if reads_y else None)


def test_raw_sympy_network_equals_sugar():
    """The design's raw SymPy declaration and the sn.dense one give the same gradients."""
    X = sp.MatrixSymbol("X", n, 4)
    Y = sp.MatrixSymbol("Y", n, 1)
    W1, b1 = sp.MatrixSymbol("W1", 4, 8), sp.MatrixSymbol("b1", 1, 8)
    W2 = sp.MatrixSymbol("W2", 8, 1)
    A1 = sn.tanh(X * W1 + sp.OneMatrix(n, 1) * b1)
    loss = sn.sum(sn.square(A1 * W2 - Y)) / n
    raw = sn.compile(loss, inputs=[X], targets=[Y], dtype="float64", seed=0, backend="numpy")
    Xs, Ys = sn.Input("X", 4), sn.Input("Y", 1)
    out = sn.dense(sn.dense(Xs, 8, sn.tanh), 1)
    sugar = sn.compile(sn.sse(out, Ys), inputs=[Xs], targets=[Ys], dtype="float64", seed=0,
                       backend="numpy")
    for k, value in raw.params.items():  # same W1, b1, W2; the sugar's extra b2 is zero
        sugar.params[k][...] = value
    sugar.params["b2"][...] = 0
    Xb, Yb = make_data(cols=4, out=1, kind="real")
    l1, g1 = raw.loss_and_grad(Xb, Yb)
    l2, g2 = sugar.loss_and_grad(Xb, Yb)
    assert l1 == pytest.approx(l2)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-12)


def test_float32_model_agrees_with_float64():
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    out = _two_layer(X, sn.sigmoid)
    m = sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y], seed=0)
    Xb, Yb = make_data()
    loss32, g32 = m.loss_and_grad(Xb, Yb)
    loss64, g64 = m.loss_and_grad(Xb, Yb, dtype="float64")
    assert g32["W1"].dtype == np.float32
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    np.testing.assert_allclose(g32["W1"], g64["W1"], rtol=1e-3, atol=1e-6)


def test_float64_request_on_a_float32_model_computes_in_float64():
    """loss_and_grad(dtype="float64") (what gradcheck uses) must not round the data to float32."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    out = _two_layer(X, sn.sigmoid)
    loss = sn.softmax_cross_entropy(out, Y)
    m32 = sn.compile(loss, inputs=[X], targets=[Y], seed=0, backend="numpy")
    m64 = sn.compile(loss, inputs=[X], targets=[Y], dtype="float64", seed=0, backend="numpy")
    for k, v in m32.params.items():
        m64.params[k][...] = v
    Xb, Yb = make_data(seed=5)
    loss32, g32 = m32.loss_and_grad(Xb, Yb, dtype="float64")
    loss64, g64 = m64.loss_and_grad(Xb, Yb)
    assert loss32 == pytest.approx(loss64, rel=1e-14)
    for k in g64:
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-12, atol=1e-15)


def test_one_unit_layers_with_penalties_match_finite_differences(xy):
    """1×1 weights: SymPy writes their 1×1 ones matrices as Identity(1)."""
    X, Y = xy
    h = sn.dense(sn.dense(X, 1, sn.sigmoid), 1, sn.tanh)
    out = sn.dense(h, 3)
    weights = [w for w in sn.weights(out) if w.name.startswith("W")]
    loss = sn.binary_cross_entropy(sn.sigmoid(out), Y) + sn.l1(1e-3, *weights) + sn.l2(0.1, *weights)
    model = compiled(loss, X, Y)
    Xb, Yb = make_data(kind="prob", seed=3)
    assert sn.gradcheck(model, Xb, Yb) < 1e-6
    assert_formulas_are_computed(model, Xb, Yb)


def test_a_product_and_its_negative_are_two_values(xy):
    """−X·W and X·W in one program: the GEMM that computes −1·(X·W) must not stand in for X·W
    (maxout declares both)."""
    X, Y = xy
    out = sn.dense(X, 3)
    W = next(w for w in sn.weights(out) if w.name.startswith("W"))
    model = compiled(sn.mse(sn.tanh(-X * W), Y) + sn.mse(out, Y), X, Y)
    Xb, Yb = make_data(kind="real", seed=5)
    assert sn.gradcheck(model, Xb, Yb) < 1e-6
    assert_formulas_are_computed(model, Xb, Yb)
    loss = float(sn.evaluate(model.derivation.expand(model.derivation.loss),
                             {"X": Xb, "Y": Yb, **model.params})[0, 0])
    assert model.loss_and_grad(Xb, Yb)[0] == pytest.approx(loss, rel=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_an_identity_matrix_in_the_network_is_computed(backend):
    """Z·(V + I), a residual written with SymPy's Identity: the lowering stopped with "symnet
    cannot compute Identity"; the kernels now fill its diagonal."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    W, b, V = (sp.MatrixSymbol(k, *s) for k, s in (("W", (4, 3)), ("b", (1, 3)), ("V", (3, 3))))
    loss = sn.mse((X * W + sp.OneMatrix(sn.batch, 1) * b) * (V + sp.Identity(3)), Y)
    model = sn.compile(loss, inputs=[X], targets=[Y], seed=0, backend=backend, dtype="float64")
    rng = np.random.default_rng(0)
    Xd, Yd = rng.normal(size=(10, 4)), rng.normal(size=(10, 3))
    p = model.params
    want = (((Xd @ p["W"] + p["b"]) @ (p["V"] + np.eye(3)) - Yd) ** 2).mean()
    assert model.loss_and_grad(Xd, Yd)[0] == pytest.approx(want, rel=1e-12)
    assert "L  = sum((Z1·(I + V) − Y)²)/(3·n)" in model.formulas()
    assert sn.gradcheck(model, Xd, Yd) < 1e-6
