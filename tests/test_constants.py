"""sn.Constant: a coefficient (an L2 penalty's) that the kernels read at run time; its gradient
against central differences and torch, its formulas, its value changed without compiling."""

import pickle

import numpy as np
import pytest
import sympy as sp
from conftest import assert_formulas_are_computed

import symnet as sn
from symnet import serialize

torch = pytest.importorskip("torch")
ALPHA = sn.Constant("alpha")


def penalised(alpha, backend="numpy", dtype="float64", optimizer=None):
    """softmax cross-entropy of 4-5(tanh)-3 plus l2(alpha); alpha a number or the Constant."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    out = sn.dense(sn.tanh(sn.dense(X, 5, name="1")), 3, name="2")
    loss = sn.softmax_cross_entropy(out, Y) + sn.l2(ALPHA if alpha is None else alpha,
                                                    *sn.weights(out))
    return sn.compile(loss, inputs=[X], targets=[Y], prediction=out, dtype=dtype, seed=0,
                      backend=backend, optimizer=optimizer or sn.optim.SGD(lr=0.1),
                      constants={ALPHA: 0.3} if alpha is None else None)


def data(rows=12):
    rng = np.random.default_rng(0)
    return rng.normal(size=(rows, 4)), np.eye(3)[rng.integers(0, 3, rows)]


def test_the_formulas_name_the_constant_and_compute_what_is_shown():
    model = penalised(None)
    assert_formulas_are_computed(model, *data())
    lines = model.formulas()
    for line in ("L  = (sum(logsumexp(P)) − sum(P ∘ Y))/n + (sum(W1²) + sum(W2²))·alpha/2",
                 "∂L/∂W1 = (𝟙·alpha·𝟙) ∘ W1 + Xᵀ·δ1"):
        assert line in lines, line


def test_sn_evaluate_takes_a_constant_as_the_number_compile_took():
    """constants={alpha: 0.3} is a number, and sn.evaluate asked for a 1×1 array of it."""
    model = penalised(None)
    X, Y = data()
    values = {"X": X, "Y": Y, **model.params}
    W1 = next(p for p in model.gradients if p.name == "W1")
    np.testing.assert_array_equal(
        sn.evaluate(model.gradients[W1], {**values, "alpha": 0.3}),
        sn.evaluate(model.gradients[W1], {**values, "alpha": np.array([[0.3]])}))


def test_a_1x1_transpose_and_cancelling_coefficients_are_rewritten():
    """transpose_1x1 and hadamard_ones: the gradient reads (𝟙·alpha·𝟙) ∘ W1, not
    (𝟙·alphaᵀ·𝟙/2) ∘ (2·W1); the numbers are those of the unrewritten form."""
    from symnet.rewrite import hadamard_ones, transpose_1x1

    W = sp.MatrixSymbol("W", 3, 2)
    ones = sp.OneMatrix(3, 1) * sp.Transpose(ALPHA) * sp.OneMatrix(1, 2)
    before = sp.HadamardProduct(ones / 2, 2 * W)
    assert transpose_1x1(sp.Transpose(ALPHA), None) == ALPHA
    after = hadamard_ones(before.xreplace({sp.Transpose(ALPHA): ALPHA}), None)
    assert after == sp.HadamardProduct(sp.OneMatrix(3, 1) * ALPHA * sp.OneMatrix(1, 2), W)
    values = {W: sp.Matrix(np.arange(6.0).reshape(3, 2)), ALPHA: sp.Matrix([[0.3]])}
    assert (sp.Matrix(before.subs(values).doit()) - sp.Matrix(after.subs(values).doit())).is_zero_matrix


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_gradients_match_central_differences_and_torch(backend):
    model = penalised(None, backend)
    X, Y = data()
    assert sn.gradcheck(model, X, Y) < 1e-6
    loss, grads = model.loss_and_grad(X, Y)
    p = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
    logits = torch.tanh(torch.tensor(X) @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]
    ref = torch.nn.functional.cross_entropy(logits, torch.tensor(Y.argmax(1)))
    ref = ref + 0.3 / 2 * (p["W1"].square().sum() + p["W2"].square().sum())
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    for k, g in grads.items():
        np.testing.assert_allclose(g, p[k].grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_new_value_trains_as_that_value_compiled_in(backend):
    """Changing model.constants between fits needs no new kernels and trains as a model with
    the number written into its loss."""
    X, Y = data(30)
    model = penalised(None, backend, optimizer=sn.optim.Adam(lr=0.01))
    runner = model._runner()
    for alpha in (0.0, 0.05, 2.0):
        fresh = model.fresh(0)
        fresh.constants["alpha"][...] = alpha
        fresh.fit(X, Y, epochs=3, batch_size=8, seed=1, verbose=False)
        reference = penalised(alpha, backend, optimizer=sn.optim.Adam(lr=0.01))
        reference.fit(X, Y, epochs=3, batch_size=8, seed=1, verbose=False)
        for k, v in reference.params.items():
            np.testing.assert_allclose(fresh.params[k], v, rtol=1e-12, atol=1e-14)
        assert fresh._runner() is runner
    assert model.constants["alpha"] == 0.3  # fresh models own their constants


def test_constants_are_saved_loaded_and_pickled(tmp_path):
    model = penalised(None)
    model.constants["alpha"][...] = 0.7
    X, Y = data()
    for copy in (pickle.loads(pickle.dumps(model)), serialize.from_bytes(serialize.to_bytes(model))):
        assert copy.constants["alpha"] == 0.7
        np.testing.assert_array_equal(copy.loss_and_grad(X, Y)[0], model.loss_and_grad(X, Y)[0])
    model.save(tmp_path / "m.npz")
    assert sn.load(tmp_path / "m.npz").constants["alpha"] == 0.7


@pytest.mark.parametrize("constants, message", [
    ([ALPHA], "constants must be a dict"),
    ({sp.Symbol("a"): 1.0}, "is not a matrix of fixed shape"),
    ({"alpha": 1.0}, r"the keys are the symbols the loss uses, not names: write \{alpha: ...\} "
                     r"with alpha = sn.Constant\('alpha'\)"),
    ({ALPHA: float("nan")}, "alpha is not finite"),
    ({ALPHA: "big"}, "must be a number or an array of shape 1×1"),
    ({sn.Input("X", 4): 1.0}, "listed twice"),
    (None, r"alpha is an sn.Constant.*constants=\{alpha: value\}"),  # else a parameter
    ({ALPHA: 1.0, sn.Constant("beta"): 1.0}, "beta appears in neither the loss nor"),
])
def test_bad_constants_are_declaration_errors(constants, message):
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    out = sn.dense(X, 3, name="1")
    loss = sn.softmax_cross_entropy(out, Y) + sn.l2(ALPHA, *sn.weights(out))
    with pytest.raises(sn.DeclarationError, match=message):
        sn.compile(loss, inputs=[X], targets=[Y], constants=constants, backend="numpy")


def test_an_l1_coefficient_may_be_a_constant_too():
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    out = sn.dense(sn.tanh(sn.dense(X, 5, name="1")), 3, name="2")
    lam = sn.Constant("lam")
    model = sn.compile(sn.mse(out, Y) + sn.l1(lam, *sn.weights(out)), inputs=[X], targets=[Y],
                       dtype="float64", seed=0, backend="numpy", constants={lam: 0.2})
    X, Y = data()
    assert_formulas_are_computed(model, X, Y)
    assert sn.gradcheck(model, X, Y) < 1e-6
    loss = model.loss_and_grad(X, Y)[0]
    model.constants["lam"][...] = 0.0
    penalty = 0.2 * sum(np.abs(model.params[w]).sum() for w in ("W1", "W2"))
    assert loss - model.loss_and_grad(X, Y)[0] == pytest.approx(penalty, rel=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_model_with_a_constant_explains_itself_and_names_what_overflows(backend):
    model = penalised(None, backend, dtype="float32", optimizer=sn.optim.SGD(lr=1e38))
    X, Y = data()
    assert "alpha" in str(model.explain(X, Y))
    with pytest.raises(sn.DataError, match="not finite"):
        model.fit(X, Y, epochs=2, batch_size=4, verbose=False)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("value, message", [
    (0.5, r"model.constants\['alpha'\] is 0.5, but alpha is 1×1.*\[\.\.\.\] = value"),
    (np.full((1, 1), np.inf), r"model.constants\['alpha'\] has a non-finite value \(inf\)"),
    (None, r"model.constants has no array for 'alpha' \(it is missing or None\)")])
def test_a_replaced_constant_is_named_with_the_fix_before_a_kernel_reads_it(backend, value,
                                                                            message):
    model = penalised(None, backend=backend)
    if value is None:
        del model.constants["alpha"]
    else:
        model.constants["alpha"] = value
    with pytest.raises(sn.DataError, match=message):
        model.fit(*data(), epochs=1)
    model.constants["alpha"] = np.array([[2]])  # another dtype: converted, and kept live
    model.fit(*data(), epochs=1)
    assert model.constants["alpha"].dtype == np.float64
    model.constants["alpha"][...] = 0.1
    assert model.constants["alpha"] == 0.1
