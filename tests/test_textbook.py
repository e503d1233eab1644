"""The simplifier produces the textbook backprop equations."""

import numpy as np
import pytest
import sympy as sp
from conftest import assert_formulas_are_computed, backward_text, compiled, make_data

import symnet as sn
from symnet.functions import Elementwise


def classic(act=sn.sigmoid):
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    h1 = sn.dense(X, 5, act, name="1")
    h2 = sn.dense(h1, 5, act, name="2")
    out = sn.dense(h2, 3, name="3")
    return compiled(sn.softmax_cross_entropy(out, Y), X, Y, prediction=sn.softmax(out))


def test_sigmoid_backprop_uses_its_output_and_no_exp():
    model = classic()
    text = backward_text(model)
    assert "δ1 = (δ2·W2ᵀ) ∘ (A1∘(1 − A1))" in text
    assert "δ2 = (δ3·W3ᵀ) ∘ (A2∘(1 − A2))" in text
    for eq in model.derivation.backward[1:]:
        assert not any(isinstance(a, sp.exp) for e in sp.preorder_traversal(eq.rhs)
                       if isinstance(e, Elementwise) for a in sp.preorder_traversal(e.body()))
    assert_formulas_are_computed(model, *make_data())


def test_tanh_backprop_is_one_minus_output_squared():
    assert "∘ (1 − A1²)" in backward_text(classic(sn.tanh))


def test_softmax_cross_entropy_adjoint_is_softmax_minus_targets_over_n():
    model = classic()
    delta3 = model.derivation.backward[0]
    assert delta3.label == "δ3"
    assert sn.formulas.text(delta3.rhs) == "(softmax(Z3) − Y)/n"


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
    assert "Z1 = X·W1 + 𝟙·b1" in text and "A1 = σ(Z1)" in text
    assert "Update:" in text
    raw = model.formulas(raw=True)
    assert "raw: (δ2·W2ᵀ) ∘ (exp(−Z1)/(1 + exp(−Z1))²)" in raw
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


def deep(loss_of, act=(sn.tanh, sn.relu, sn.sigmoid), kind="onehot", penalty=1e-4):
    """The teacher's network: tanh → relu → sigmoid → output, with an L2 penalty."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    h = X
    for a in act:
        h = sn.dense(h, 4, a)
    out = sn.dense(h, 3)
    weights = [w for w in sn.weights(out) if w.name.startswith("W")]
    loss, prediction = loss_of(out, Y)
    model = compiled(loss + sn.l2(penalty, *weights), X, Y, prediction=prediction)
    data = make_data(kind=kind, seed=6)
    assert sn.gradcheck(model, *data) < 1e-6
    assert_formulas_are_computed(model, *data)
    return model


def softmax_ce(out, Y):
    return sn.softmax_cross_entropy(out, Y), sn.softmax(out)


def test_relu_derivative_is_an_iverson_bracket_in_text_latex_and_kernel_comments():
    model = deep(softmax_ce)
    assert "δ2 = (δ3·W3ᵀ) ∘ [A2 > 0]" in model.formulas()
    assert r"\circ \left[A_{2} > 0\right]" in model.latex()
    assert "Piecewise" not in model.formulas() + model.latex()
    kernels = sn.compile(model.loss_expr, inputs=model.inputs, targets=model.targets,
                         prediction=model.prediction_expr, backend="numba").source
    for source in (model.source, kernels):  # the numpy programs' listing, the numba module
        comments = [line for line in source.splitlines() if line.strip().startswith("#")]
        assert any(line.strip() == "# (δ3·W3ᵀ) ∘ [A2 > 0]" for line in comments)
        assert not any("Piecewise" in line for line in comments)


def test_penalty_gradients_fold_their_numbers():
    grads = [eq for eq in deep(softmax_ce).derivation.gradients.values()]
    assert sn.formulas.text(grads[0].rhs) == "Xᵀ·δ1 + 0.0001·W1"  # (λ/2)·(2·W1) folded
    assert sn.formulas.text(grads[6].rhs) == "A3ᵀ·δ4 + 0.0001·W4"


def test_equations_and_gradients_in_layer_order_prediction_before_loss():
    model = deep(softmax_ce)
    labels = [eq.label for eq in model.derivation.forward]
    assert labels == ["Z1", "A1", "Z2", "A2", "Z3", "A3", "Z4", "P", "L"]
    assert [p.name for p in model.derivation.gradients] == [
        "W1", "b1", "W2", "b2", "W3", "b3", "W4", "b4"]
    text = model.formulas()
    assert "P  = softmax(Z4)" in text
    assert "L  = (sum(logsumexp(Z4)) − sum(Z4 ∘ Y))/n + 5e-5·(sum(W1²) + sum(W2²) + sum(W3²)" \
           " + sum(W4²))" in text
    assert "δ4 = (softmax(Z4) − Y)/n" in text


def test_binary_cross_entropy_of_a_sigmoid_has_the_textbook_adjoint():
    model = deep(lambda out, Y: (sn.binary_cross_entropy(sn.sigmoid(out), Y), sn.sigmoid(out)),
                 kind="prob")
    text = model.formulas()
    assert "P  = σ(Z4)" in text
    assert "L  = sum(Y∘softplus(−Z4) + (1 − Y)∘softplus(Z4))/(3·n)" in text
    assert "δ4 = (σ(Z4) − Y)/(3·n)" in text
    assert "softplus" not in backward_text(model)


@pytest.mark.parametrize("loss, delta", [
    (sn.mse, "δP = 2·(P − Y)/(3·n)"), (sn.sse, "δP = 2·(P − Y)/n")])
def test_squared_error_adjoints_name_the_prediction(loss, delta):
    model = deep(lambda out, Y: (loss(out, Y), out), kind="real")
    text = model.formulas()
    assert "P  = A3·W4 + 𝟙·b4" in text and delta in text
    assert "δ3 = (δP·W4ᵀ) ∘ (A3∘(1 − A3))" in text
