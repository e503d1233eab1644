"""The simplifier produces the textbook backprop equations."""

import numpy as np
import sympy as sp
from conftest import assert_formulas_are_computed, backward_text, compiled, make_data

import symnet as sn
from symnet.functions import Elementwise


def classic(act=sn.sigmoid):
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    h1 = sn.dense(X, 5, act, name="1")
    h2 = sn.dense(h1, 5, act, name="2")
    out = sn.dense(h2, 3, name="3")
    return compiled(sn.softmax_cross_entropy(out, Y), X, Y, prediction=out)


def test_sigmoid_backprop_uses_its_output_and_no_exp():
    model = classic()
    text = backward_text(model)
    assert "δ1 = (δ2·W2ᵀ) ∘ (A1∘(1 - A1))" in text
    assert "δ2 = (δ3·W3ᵀ) ∘ (A2∘(1 - A2))" in text
    for eq in model.derivation.backward[1:]:
        assert not any(isinstance(a, sp.exp) for e in sp.preorder_traversal(eq.rhs)
                       if isinstance(e, Elementwise) for a in sp.preorder_traversal(e.body()))
    assert_formulas_are_computed(model, *make_data())


def test_tanh_backprop_is_one_minus_output_squared():
    assert "∘ (1 - A1^2)" in backward_text(classic(sn.tanh))


def test_softmax_cross_entropy_adjoint_is_softmax_minus_targets_over_n():
    model = classic()
    delta3 = model.derivation.backward[0]
    assert delta3.label == "δ3"
    assert sn.formulas.text(delta3.rhs) == "(softmax(Z3) - Y)/n"


def test_bias_gradients_are_column_sums_of_delta():
    model = classic()
    grads = {p.name: sn.formulas.text(eq.rhs) for p, eq in model.derivation.gradients.items()}
    assert grads == {"W1": "Xᵀ·δ1", "b1": "colsum(δ1)", "W2": "A1ᵀ·δ2", "b2": "colsum(δ2)",
                     "W3": "A2ᵀ·δ3", "b3": "colsum(δ3)"}
    ones = sp.OneMatrix(sn.batch, 1).T
    delta1 = model.derivation.backward[-1].lhs
    assert model.derivation.gradients[sp.MatrixSymbol("b1", 1, 5)].rhs == ones * delta1


def test_formulas_text_latex_and_raw_form():
    model = classic()
    text = model.formulas()
    assert text.splitlines()[0] == "Forward:"
    assert "Z1 = X·W1 + 𝟙·b1" in text and "A1 = sigmoid(Z1)" in text
    assert "Update:" in text
    raw = model.formulas(raw=True)
    assert "raw: (δ2·W2ᵀ) ∘ (exp(-Z1)/(1 + exp(-Z1))^2)" in raw
    latex = model.latex()
    assert r"\delta_{1} &= " in latex and r"\sigma\left(Z_{1}\right)" in latex
    assert model._repr_latex_().startswith("$$")


def test_gradients_are_expressions_in_inputs_targets_and_parameters_only():
    model = classic()
    allowed = {"X", "Y", "W1", "b1", "W2", "b2", "W3", "b3"}
    for p, expr in model.gradients.items():
        names = {s.name for s in expr.free_symbols if isinstance(s, sp.MatrixSymbol)}
        assert names <= allowed, (p, names)
        assert expr.shape == p.shape


def test_shared_subexpressions_are_computed_once():
    """A1 feeds both the next layer and σ′; softmax(Z3)'s logsumexp is the loss's one."""
    model = classic()
    prog = model._programs["loss_and_grad"]
    ops = [ins.op.value for ins in prog.instrs]
    assert ops.count("logsumexp") == 1
    assert ops.count("gemm") == 3 + 2 + 3  # forward, δ propagation, weight gradients
    np.testing.assert_allclose(sn.gradcheck(model, *make_data()), 0, atol=1e-6)
