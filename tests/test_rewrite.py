"""Each rewrite rule: the rewritten formula, and unchanged numbers."""

import numpy as np
import pytest
import sympy as sp

import symnet as sn
from symnet import rewrite as rw
from symnet.formulas import text
from symnet.functions import Elementwise, x

n = sn.batch
Z = sp.MatrixSymbol("Z", n, 3)
Y = sp.MatrixSymbol("Y", n, 3)
A = sp.MatrixSymbol("A", n, 3)
rng = np.random.default_rng(0)
VALUES = {"Z": rng.normal(size=(4, 3)) * 3, "Y": rng.uniform(size=(4, 3)),
          "A": rng.normal(size=(4, 3))}


def check(rule, before, after_text, ctx=None, values=VALUES):
    after = rw.rewrite(before, [rule], ctx)
    assert text(after) == after_text
    np.testing.assert_allclose(sn.evaluate(after, values, 4), sn.evaluate(before, values, 4),
                               rtol=1e-12, atol=1e-12)
    return after


def rule(name):
    return next(r for r in rw.FORWARD + rw.ADJOINT if r.name == name)


def test_compose_elementwise():
    check(rule("compose_elementwise"), sn.log(sp.OneMatrix(n, 3) - sn.sigmoid(Z)),
          "log(1 − σ(Z))")


def test_stable_log_sigmoid():
    composed = rw.rewrite(sn.log(sp.OneMatrix(n, 3) - sn.sigmoid(Z)), [rule("compose_elementwise")])
    check(rule("stable_log_sigmoid"), composed, "−softplus(Z)")
    composed = rw.rewrite(sn.log(sn.sigmoid(Z)), [rule("compose_elementwise")])
    assert text(composed) == "log(σ(Z))"
    check(rule("stable_log_sigmoid"), composed, "−softplus(−Z)")


def test_stable_log_sigmoid_is_finite_where_the_naive_form_is_not():
    big = {"Z": np.array([[1000.0, -1000.0, 0.0]])}
    naive = sn.evaluate(sn.log(sn.sigmoid(Z)), big)
    stable = sn.evaluate(rw.simplify_forward(sn.log(sn.sigmoid(Z))), big)
    assert not np.isfinite(naive).all()
    np.testing.assert_allclose(stable, [[0.0, -1000.0, -np.log(2)]], atol=1e-12)


@pytest.mark.parametrize("written", ["lambda", "activation"])
def test_stable_log_sigmoid_sees_a_sigmoid_written_out(written):
    """σ as 1/(1 + exp(−x)), in a Lambda or an activation of the user's: log σ(Z) was NaN at
    Z = 17 in float32 and its δ was (Y − σ)/((cosh + 1)∘(σ − 1)∘σ)/(2n), inf·0 further out."""
    body = 1 / (1 + sp.exp(-x))
    sig = (Elementwise(sp.Lambda(x, body), Z) if written == "lambda"
           else sn.activation("mysig", body, x)(Z))
    for declared, after_text in ((sn.log(sig), "−softplus(−Z)"),
                                 (sn.log(sp.OneMatrix(n, 3) - sig), "−softplus(Z)")):
        composed = rw.rewrite(declared, [rule("compose_elementwise")])
        check(rule("stable_log_sigmoid"), composed, after_text)
        big = {"Z": np.array([[1000.0, -1000.0, 17.0]], dtype=np.float32)}
        assert np.isfinite(sn.evaluate(rw.simplify_forward(declared), big, dtype="float32")).all()


def test_stable_logsumexp():
    """log of the row sums of exp, written out, is logsumexp: finite where exp overflows."""
    written = sn.log(sn.exp(Z) * sp.OneMatrix(3, 1))
    after = check(rule("stable_logsumexp"), written, "logsumexp(Z)")
    big = {"Z": np.array([[1000.0, 0.0, -1000.0]])}
    assert not np.isfinite(sn.evaluate(written, big)).all()
    np.testing.assert_allclose(sn.evaluate(after, big), [[1000.0]])
    X, T, W = sn.Input("X", 3), sn.Input("T", 3), sp.MatrixSymbol("W", 3, 3)
    cross_entropy = (sn.sum(sn.log(sn.exp(X * W) * sp.OneMatrix(3, 1)))
                     - sn.sum(sp.hadamard_product(X * W, T))) / n  # by hand: the textbook δ
    model = sn.compile(cross_entropy, inputs=[X], targets=[T], backend="numpy")
    assert "δ1 = (softmax(Z1) − T)/n" in model.formulas()


def test_log_of_softmax_becomes_log_softmax():
    after = rw.simplify_forward(sn.log(sn.softmax(Z)))
    assert text(after) == "log_softmax(Z)"
    np.testing.assert_allclose(sn.evaluate(after, VALUES), sn.evaluate(sn.log(sn.softmax(Z)), VALUES))


def test_drop_identity():
    check(rule("drop_identity"), Elementwise(sp.Lambda(x, x), Z), "Z")


def test_sympy_canonical():
    W = sp.MatrixSymbol("W", 3, 3)
    product = sp.MatMul(Z, W)
    check(rule("sympy_canonical"), sp.Transpose(sp.Transpose(product)), "Z·W",
          values={**VALUES, "W": np.eye(3) * 2})
    check(rule("sympy_canonical"), sp.Transpose(product), "Wᵀ·Zᵀ",
          values={**VALUES, "W": np.eye(3) * 2})


def test_hadamard_ones():
    ones = sp.OneMatrix(n, 3)
    check(rule("hadamard_ones"), sp.HadamardProduct(ones / n, Y), "Y/n")


def test_constant_elementwise():
    check(rule("constant_elementwise"), Elementwise(sp.Lambda(x, sp.Integer(2)), Z), "2·𝟙")


def test_simplify_scalar():
    messy = Elementwise(sp.Lambda(x, sp.sin(x) ** 2 + sp.cos(x) ** 2 + x), Z)
    check(rule("simplify_scalar"), messy, "Z + 1")


@pytest.mark.parametrize("act, expected", [
    (sn.sigmoid, "A∘(1 − A)"), (sn.tanh, "1 − A²"), (sn.exp, "A"),
    (sn.softplus, "1 − exp(−A)"),
    # as cheap, but read off the activation, so the pre-activation Z need not be stored
    (sn.relu, "[A > 0]"),
    (sn.leaky_relu(0.1), "[A > 0] + 0.1·[A ≤ 0]"),
])
def test_output_form(act, expected):
    fwd = act(Z)
    deriv = Elementwise(sp.Lambda(x, sp.diff(fwd.body(), x)), Z)
    values = {**VALUES, "A": sn.evaluate(fwd, VALUES)}
    check(rule("output_form"), deriv, expected, ctx={Z: [(A, fwd.fn)]}, values=values)


@pytest.mark.parametrize("act", [sn.gelu, sn.hard_tanh])
def test_output_form_is_not_used_when_no_cheaper_form_exists(act):
    # hard_tanh′ = [|x| ≤ 1] is not [|hard_tanh(x)| ≤ 1]: SymPy must refuse that substitution
    fwd = act(Z)
    deriv = Elementwise(sp.Lambda(x, sp.diff(fwd.body(), x)), Z)
    assert rw.rewrite(deriv, [rule("output_form")], {Z: [(A, fwd.fn)]}) == deriv


def test_another_activation_of_the_same_pre_activation_is_not_solved_for(monkeypatch):
    """Two branches on shared weights put relu′(Z) beside tanh's output A = tanh(Z). The search
    sought relu′ at tanh's inverse, and SymPy's simplify of that Piecewise ran for minutes; the
    inverse is now sought for an activation's own derivative only (σ′ → A∘(1 − A) still is)."""
    solved = []
    solve = sp.solve
    monkeypatch.setattr(sp, "solve", lambda *a, **k: solved.append(a) or solve(*a, **k))
    relu_prime = sp.diff(sn.relu(Z).body(), x)
    assert rw._search_output_derivative(sn.tanh(x), relu_prime) is None
    assert solved == []
    sigmoid_prime = sp.diff(sn.sigmoid(Z).body(), x)
    form = rw._search_output_derivative(sn.sigmoid(x), sigmoid_prime)
    assert float(form(0.3)) == pytest.approx(0.3 * (1 - 0.3))  # y(1 − y) at y = 0.3
    assert solved  # σ′ is not a function of σ(x) as written: its form comes from the inverse


def test_a_network_whose_branches_share_weights_under_two_activations_trains():
    """The model behind the test above: both branches' layers share W1, b1, W2 and b2 by their
    names (sn.dense without name=), one branch with prelu after tanh, the other the reverse."""
    X, Yt = sn.Input("X", 4), sn.Input("Y", 2)
    left = sn.dense(sn.dense(X, 3, sn.prelu), 3, sn.tanh)
    right = sn.dense(sn.dense(X, 3, sn.tanh), 3, sn.prelu)
    model = sn.compile(sn.mse(sn.dense(left + right, 2, name="out"), Yt), inputs=[X],
                       targets=[Yt], dtype="float64", seed=0, backend="numpy")
    Xd, Yd = rng.normal(size=(6, 4)), rng.normal(size=(6, 2))
    assert sn.gradcheck(model, Xd, Yd) < 1e-6


def test_factor_scalar():
    check(rule("factor_scalar"), sn.softmax(Z) / n - Y / n, "(softmax(Z) − Y)/n")


def test_fold_numbers():
    W = sp.MatrixSymbol("W", 3, 3)
    penalty_adjoint = sp.MatMul(sp.Float(5e-5), Elementwise(sp.Lambda(x, 2 * x), W))
    check(rule("sympy_canonical"), rw.rewrite(penalty_adjoint, [rule("fold_numbers")]),
          "0.0001·W", values={**VALUES, "W": rng.normal(size=(3, 3))})
    residual = Elementwise(sp.Lambda(x, 2 * x - 2), Z)
    check(rule("fold_numbers"), residual, "2·(Z − 1)")


def test_absorb_sign():
    from symnet.functions import Entrywise

    y1 = sp.Symbol("x1", real=True)
    minus = sp.MatMul(-1 / n, Entrywise(sp.Lambda((x, y1), y1 - sn.sigmoid.function(x)), Z, Y))
    check(rule("absorb_sign"), minus, "(σ(Z) − Y)/n")


def test_keep_layers_and_regroup_layers():
    X, W = sp.MatrixSymbol("X", n, 2), sp.MatrixSymbol("W", 2, 3)
    b = sp.MatrixSymbol("b", 1, 3)
    layer = sp.MatAdd(X * W, sp.OneMatrix(n, 1) * b)
    values = {**VALUES, "X": rng.normal(size=(4, 2)), "W": rng.normal(size=(2, 3)),
              "b": rng.normal(size=(1, 3))}
    flat = layer - Y  # SymPy merges the layer into the difference
    assert text(flat) == "X·W + 𝟙·b − Y"
    check(rule("regroup_layers"), flat, "X·W + 𝟙·b − Y", ctx=frozenset({layer}), values=values)
    regrouped = rw.rewrite(flat, [rule("regroup_layers")], frozenset({layer}))
    assert regrouped.args[0] == layer or layer in regrouped.args
    kept = check(rule("keep_layers"), regrouped, "X·W + 𝟙·b − Y", values=values)
    assert layer in kept.args  # still a node of its own: the layer keeps its name


def test_fuse_entrywise_turns_binary_cross_entropy_into_one_function():
    loss = rw.rewrite(sn.binary_cross_entropy(sn.sigmoid(Z), Y),
                      [r for r in rw.FORWARD if r.name != "fuse_entrywise"])
    fused = check(rule("fuse_entrywise"), loss,
                  "−sum(−Y∘softplus(−Z) − (1 − Y)∘softplus(Z))/(3·n)")
    assert any(type(a).__name__ == "Entrywise" for a in sp.preorder_traversal(fused))
