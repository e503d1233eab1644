"""Non-finite values in training: an update that makes a parameter or its optimizer state
non-finite is undone and named; derivatives stay finite where the function is; and the error
names the formula that overflows in the model's own dtype."""

import warnings

import numpy as np
import pytest
import sympy as sp
from scipy.special import expit

import symnet as sn
from symnet import rewrite as rw
from symnet.formulas import text
from symnet.functions import Elementwise, x

BACKENDS = ["numba", "numpy"]


def linear(backend, optimizer, dtype="float32"):
    X, Y = sn.Input("X", 2), sn.Input("Y", 1)
    return sn.compile(sn.mse(sn.dense(X, 1), Y), inputs=[X], targets=[Y], seed=0,
                      backend=backend, optimizer=optimizer, dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_update_that_overflows_is_undone_and_named(backend):
    # SGD(lr=1e38) used to return all-inf parameters silently: the loss was finite
    model = linear(backend, sn.optim.SGD(lr=1e38))
    before = {k: v.copy() for k, v in model.params.items()}
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(8, 2)), 100 + rng.normal(size=(8, 1))  # |g| ~ 100: lr·g overflows
    with pytest.raises(sn.DataError, match=r"the update in epoch 1, batch 1 \(rows 0, 1, 2, 3 of the data\) "
                                           r"made a parameter non-finite: for W1, p ← .* is not "
                                           r"finite\. Parameters and optimizer state are those "
                                           r"from before this step"):
        model.fit(X, Y, epochs=1, batch_size=4, shuffle=False, verbose=False)
    assert model._steps == 0
    for k, v in before.items():
        np.testing.assert_array_equal(model.params[k], v)


def test_an_update_that_divides_by_eps_0_says_so():
    # Adam(eps=0) (torch accepts it) over an input column that is always 0: 0/0 in W1's row,
    # which a smaller learning rate cannot fix
    model = linear("numpy", sn.optim.Adam(lr=0.01, eps=0), dtype="float64")
    X, Y = np.c_[np.ones(8), np.zeros(8)], np.ones((8, 1))
    with pytest.raises(sn.DataError, match=r"for W1, p ← .* is not finite \(with eps=0 it "
                                           r"divides by zero where a gradient has been 0 at "
                                           r"every step, .* pass eps > 0, such as Adam's default"):
        model.fit(X, Y, epochs=1, batch_size=4, verbose=False)
    # an eps float32 has only as a subnormal is 0 to the kernels, which flush those to 0, and
    # the update NumPy recomputes is finite
    model = linear("numba", sn.optim.Adam(lr=0.01, eps=1e-40))
    with pytest.raises(sn.DataError, match=r"with eps=1e-40, below float32's smallest normal "
                                           r"number \(1.18e-38\), which the kernels flush to 0, "
                                           r"the update rule divides by zero"):
        model.fit(X, Y, epochs=1, batch_size=4, verbose=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_that_overflows_in_a_later_step_leaves_the_model_of_the_step_before(backend):
    # AdaGrad's sum of squared gradients overflows on the third batch, whose inputs are ~1e18:
    # its loss and gradient are finite in float32, its state is not (and p barely moves)
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(12, 2)), rng.normal(size=(12, 1))
    X[8:] *= 1e18
    model = linear(backend, sn.optim.AdaGrad(lr=0.1))
    with pytest.raises(sn.DataError, match=r"epoch 1, batch 3 .* for W1, sum ← sum \+ g² is "
                                           r"not finite"):
        model.fit(X, Y, epochs=1, batch_size=4, shuffle=False, verbose=False)
    reference = linear(backend, sn.optim.AdaGrad(lr=0.1))
    reference.fit(X[:8], Y[:8], epochs=1, batch_size=4, shuffle=False, verbose=False)
    assert model._steps == reference._steps == 2
    for k in reference.params:
        np.testing.assert_array_equal(model.params[k], reference.params[k])
        np.testing.assert_array_equal(model._state[k]["sum"], reference._state[k]["sum"])
    model.fit(X[:8], Y[:8], epochs=1, batch_size=4, shuffle=False, verbose=False)  # trains on
    assert model._steps == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_predict_and_evaluate_after_a_fit_that_diverged_warn_of_their_non_finite_values(backend):
    # Adam(lr=1e30): fit stops with a DataError, keeping the last finite step's parameters,
    # ~1e30, whose products overflow float32; predict returned NaN rows silently
    X, Y = sn.Input("X", 5), sn.Input("Y", 2)
    out = sn.dense(sn.relu(sn.dense(X, 8)), 2)
    model = sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y], seed=0,
                       prediction=sn.softmax(out), backend=backend, optimizer=sn.optim.Adam(lr=1e30))
    rng = np.random.default_rng(0)
    data = rng.normal(size=(40, 5)), rng.integers(0, 2, 40)
    with pytest.raises(sn.DataError, match="the loss became"):
        model.fit(*data, epochs=2, batch_size=8, verbose=False)
    with pytest.warns(RuntimeWarning, match=r"the prediction is not finite \(NaN or ±inf\) in "
                                            r"\d+ of 40 rows \(rows \d+, .*\); the largest "
                                            r"parameter entry is 1e\+30, in \w+: such values come "
                                            r"from a fit that diverged") as seen:
        assert not np.isfinite(model.predict(data[0])).all()
    assert seen[0].filename == __file__
    with pytest.warns(RuntimeWarning, match="the loss is nan; the largest parameter"):
        model.evaluate(*data)
    model.params = {k: np.where(np.isfinite(v), 0.0, v) for k, v in model.params.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # finite values: no warning
        assert np.isfinite(model.predict(data[0])).all()
    wide = sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y], seed=0,
                      prediction=sn.softmax(out), backend=backend, dtype="float64")
    wide.params = {k: np.full_like(v, 1e200) for k, v in wide.params.items()}  # 1e200² is inf
    with pytest.warns(RuntimeWarning, match=r"entry is 1e\+200, in \w+: such values come"):
        wide.predict(data[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_loss_that_overflows_behind_a_dropout_names_its_formula(backend):
    """The formula that is not finite is found with the step's dropout masks, drawn as the
    kernels draw them; without them, sn.evaluate's "no value given for ['M1']" replaced the
    message."""
    rng = np.random.default_rng(0)
    data = rng.normal(size=(40, 5)), np.eye(3)[rng.integers(0, 3, 40)]
    X, Y = sn.Input("X", 5), sn.Input("Y", 3)
    out = sn.dense(sn.dropout(sn.dense(X, 8, sn.relu, name="1"), 0.3), 3, name="2")
    model = sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y], seed=0,
                       backend=backend, dtype="float64", optimizer=sn.optim.SGD(lr=1e300))
    with pytest.raises(sn.DataError, match=r"the loss became nan in epoch 1, batch 2 .* the "
                                           r"first formula whose value is not finite in float64 "
                                           r"is Z2 = D1·W2 \+ 𝟙·b2"):
        model.fit(*data, epochs=2, batch_size=10, verbose=False)


def test_a_log_that_is_not_finite_asks_whether_its_argument_is_a_probability():
    # cross_entropy of tanh: NaN in the first batch, with advice about the learning rate only
    rng = np.random.default_rng(0)
    X, Y = sn.Input("X", 5), sn.Input("Y", 3)
    out = sn.dense(X, 3, name="1")
    model = sn.compile(sn.cross_entropy(sn.tanh(out), Y), inputs=[X], targets=[Y], seed=0,
                       backend="numpy", dtype="float64")
    with pytest.raises(sn.DataError, match=r"is A1 = log\(tanh\(Z1\)\) \(log is −inf at 0 and "
                                           r"NaN below it: is its argument a probability, such "
                                           r"as sn.softmax\(out\) or sn.sigmoid\(out\)\?\)"):
        model.fit(rng.normal(size=(40, 5)), np.eye(3)[rng.integers(0, 3, 40)], verbose=False)


def test_a_log_of_zero_inside_the_loss_line_is_named_as_a_log_of_zero():
    """−log(0) is +inf, not an overflow: hard_sigmoid reaches 0."""
    X, Y, V = sn.Input("X", 1), sn.Input("Y", 1), sp.MatrixSymbol("V", 1, 1)
    model = sn.compile(sn.binary_cross_entropy(sn.hard_sigmoid(X * V), Y), inputs=[X],
                       targets=[Y], backend="numpy", dtype="float64")
    model.params["V"][...] = 1
    with pytest.raises(sn.DataError, match=r"\(log is −inf at 0 and NaN below it: is its argument "
                                           r"a probability"):
        model.fit(np.array([[-10.0], [1.0]]), np.ones((2, 1)), verbose=False)


def test_the_log_inside_an_activation_of_the_users_gets_the_hint_too():
    x = sp.Symbol("x")
    my_log = sn.activation("my_log", sp.log(x), x)
    X, W = sn.Input("X", 1), sp.MatrixSymbol("W", 1, 1)
    model = sn.compile(sn.sum(my_log(X * W)) / sn.batch, inputs=[X], targets=[],
                       backend="numpy", dtype="float64")
    model.params["W"][...] = 1
    with pytest.raises(sn.DataError, match=r"is A1 = my_log\(Z1\) \(log is −inf at 0"):
        model.fit(np.array([[-1.0], [2.0]]), verbose=False)


def test_a_log_of_an_overflow_is_named_as_the_overflow_not_as_a_log_of_zero():
    """log(cosh(Z)) of a residual of 1000 is +inf because cosh overflowed; the error asked
    whether the log's argument was a probability."""
    x = sp.Symbol("x")
    X, Y, W = sn.Input("X", 1), sn.Input("Y", 1), sp.MatrixSymbol("W", 1, 1)
    log_cosh = sn.Elementwise(sp.Lambda(x, sp.log(sp.cosh(x))), X * W - Y)
    model = sn.compile(sn.sum(log_cosh) / sn.batch, inputs=[X], targets=[Y], seed=0,
                       backend="numpy", dtype="float64")
    model.params["W"][...] = 1
    with pytest.raises(sn.DataError, match=r"is A1 = log\(cosh\(Z1\)\) \(the argument of its log "
                                           r"overflowed to \+inf, above 1\.8e\+308 in float64\)\. "
                                           r"Parameters"):
        model.fit(np.array([[1000.0], [1.0]]), np.zeros((2, 1)), verbose=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_gradient_that_overflows_in_float32_is_named_by_its_formula(backend):
    # finite in float64 everywhere: the error used to say "every formula is finite"
    X, Y = sn.Input("X", 2), sn.Input("Y", 1)
    out = sn.dense(sn.dense(X, 2, sn.tanh), 1)
    model = sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], seed=0, backend=backend,
                       optimizer=sn.optim.SGD(lr=0.1))
    model.params["W1"][...] = 1e-20
    model.params["W2"][...] = 3e18  # out ~ 3e18, δ1 ~ 1e36, Xᵀ·δ1 ~ 1e56
    Xb = np.full((4, 2), 1e20)
    with pytest.raises(sn.DataError, match=r"the update .* made a parameter non-finite: the first "
                                           r"formula whose value is not finite in float32 is "
                                           r"∂L/∂W1 = Xᵀ·δ1\."):
        model.fit(Xb, np.zeros((4, 1)), epochs=1, batch_size=4, verbose=False)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_swish_gradient_is_finite_for_any_pre_activation(dtype):
    # simplify gave (Z + eᶻ + 1)/(2cosh Z + 2): NaN for Z ≥ 88 in float32
    X = sn.Input("X", 4)
    W = sp.MatrixSymbol("W", 4, 4)
    model = sn.compile(sn.sum(sn.swish(X * W)) / sn.batch, inputs=[X], targets=[], dtype=dtype)
    model.params["W"][...] = np.eye(4)
    Z = np.array([[100.0, -100.0, 1000.0, -1000.0], [88.5, -88.5, 0.5, -3.0]])
    _, grads = model.loss_and_grad(Z)
    s = expit(Z)
    np.testing.assert_allclose(grads["W"], Z.T @ (s * (1 + Z * (1 - s))) / 2, rtol=1e-5,
                               atol=1e-30)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, z", [("float64", 710.0), ("float32", 89.0)])
def test_a_custom_activations_logistic_pieces_are_computed_without_overflow(backend, dtype, z):
    """Mish written as x·tanh(log(1 + eˣ)): SymPy's derivative has eᶻ/(eᶻ + 1), inf/inf from
    z = 710 in float64 (89 in float32); it is computed as σ(z), and log(eᶻ + 1) as softplus."""
    mish = sn.activation("mish_e", x * sp.tanh(sp.log(1 + sp.exp(x))), x)
    X, Y = sn.Input("X", 1), sn.Input("Y", 1)
    W = sp.MatrixSymbol("W", 1, 1)
    model = sn.compile(sn.mse(mish(X * W), Y), inputs=[X], targets=[Y], dtype=dtype,
                       backend=backend, seed=0)
    assert "exp(Z1)/(exp(Z1) + 1)" in model.formulas()  # shown as SymPy derives it
    model.params["W"][...] = 1.0
    loss, grads = model.loss_and_grad(np.array([[z], [-z], [0.5]]), np.zeros((3, 1)))
    torch = pytest.importorskip("torch")
    w = torch.ones(1, 1, dtype=torch.float64, requires_grad=True)
    zs = torch.tensor([[z], [-z], [0.5]], dtype=torch.float64) @ w
    (torch.nn.functional.mish(zs) ** 2).mean().backward()
    np.testing.assert_allclose(grads["W"], w.grad.numpy(), rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_hand_written_softplus_and_log_sigmoid_are_finite_at_extreme_inputs(backend, dtype):
    """log(1 + eˣ) and −log(1 + e⁻ˣ) as a user writes them: their values, not only their
    derivatives, are computed as softplus, as torch's softplus and logsigmoid are."""
    soft = sn.activation("softplus_h", sp.log(1 + sp.exp(x)), x)
    logsig = sn.activation("logsigmoid_h", -sp.log(1 + sp.exp(-x)), x)
    X, Y = sn.Input("X", 1), sn.Input("Y", 1)
    W = sp.MatrixSymbol("W", 1, 1)
    model = sn.compile(sn.mse(soft(X * W) + logsig(X * W), Y), inputs=[X], targets=[Y],
                       prediction=[soft(X * W), logsig(X * W)], dtype=dtype, backend=backend,
                       seed=0)
    model.params["W"][...] = 1.0
    Z = np.array([[1000.0], [-1000.0], [0.5]])
    s, ls = model.predict(Z)
    torch = pytest.importorskip("torch")
    z = torch.tensor(Z, requires_grad=True)
    np.testing.assert_allclose(s, torch.nn.functional.softplus(z).detach(), rtol=1e-6)
    np.testing.assert_allclose(ls, torch.nn.functional.logsigmoid(z).detach(), rtol=1e-6)
    loss, grads = model.loss_and_grad(Z, np.zeros((3, 1)))
    expected = ((torch.nn.functional.softplus(z) + torch.nn.functional.logsigmoid(z)) ** 2).mean()
    expected.backward()
    w_grad = (z.grad * z).sum().item()  # dL/dW = Σ z·dL/dz at W = 1
    np.testing.assert_allclose([loss, grads["W"][0, 0]], [expected.item(), w_grad], rtol=1e-5)


def test_a_scipy_function_with_complex_values_is_computed_as_real_without_warnings():
    """LambertW: SciPy's lambertw returns complex numbers, which the numpy backend cast to real
    with a ComplexWarning per call; its real values are taken, NaN where it has none."""
    import warnings

    lw = sn.activation("lambert", sp.LambertW(sp.exp(x)), x)  # the Wright omega function
    X, Y = sn.Input("X", 3), sn.Input("Y", 2)
    out = sn.dense(sn.dense(X, 4, lw), 2)
    model = sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], dtype="float64",
                       backend="numpy", seed=0)
    Xb, Yb = np.linspace(-2, 2, 15).reshape(5, 3), np.zeros((5, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, _ = model.loss_and_grad(Xb, Yb)
        assert np.isfinite(loss) and sn.gradcheck(model, Xb, Yb) < 1e-6


def test_gradcheck_counts_a_non_finite_gradient_as_an_infinite_error():
    """max(0.0, nan) is 0.0: a NaN gradient used to pass as perfect."""
    sqrt = sn.activation("sqrt_a", sp.sqrt(x), x)
    X, Y = sn.Input("X", 1), sn.Input("Y", 1)
    W = sp.MatrixSymbol("W", 1, 1)
    model = sn.compile(sn.mse(sqrt(X * W), Y), inputs=[X], targets=[Y], dtype="float64",
                       backend="numpy", seed=0)
    model.params["W"][...] = 1.0
    with pytest.raises(sn.DataError, match="the loss is nan at these parameters and data, so "
                                           "there is no gradient to check"):
        sn.gradcheck(model, np.array([[-1.0], [0.5]]), np.zeros((2, 1)))
    # a finite loss whose analytic gradient is not: √z at z = 0
    assert sn.gradcheck(model, np.array([[0.0], [0.5]]), np.zeros((2, 1))) == np.inf
    assert sn.gradcheck(model, np.array([[0.3], [0.5]]), np.zeros((2, 1))) < 1e-6


def test_gradcheck_takes_either_side_of_a_kink_and_nothing_between():
    """At relu's kink itself central differences give 0.5 for any correct choice, 0 or 1."""
    from symnet.gradcheck import parameter_errors

    w = np.zeros(1)

    def error(claimed):
        return parameter_errors(lambda: (max(w[0], 0.0), {"w": np.array([claimed])}),
                                {"w": w})["w"]

    assert error(0.0) < 1e-6 and error(1.0) < 1e-6
    assert error(0.3) > 0.1 and error(-1.0) > 0.1


def test_gradcheck_of_a_fresh_model_with_dropout_passes():
    """Zero biases put every row that dropout zeroed on the next relu's kink: gradcheck said
    1.0 for gradients that match PyTorch."""
    rng = np.random.default_rng(1)
    Xb, Yb = rng.normal(size=(12, 4)), np.eye(3)[rng.integers(0, 3, 12)]
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    h = sn.dense(sn.dropout(sn.dense(X, 5, sn.relu, name="1"), 0.5), 5, sn.relu, name="2")
    model = sn.compile(sn.softmax_cross_entropy(sn.dense(h, 3, name="3"), Y), inputs=[X],
                       targets=[Y], seed=0, backend="numpy", dtype="float64")
    assert sn.gradcheck(model, Xb, Yb) < 1e-6


def test_logistic_form_writes_exponentials_through_the_sigmoid():
    Z = sp.MatrixSymbol("Z", sn.batch, 3)
    swish_prime = Elementwise(sp.Lambda(x, sp.diff(sn.swish.function(x), x)), Z)
    after = rw.rewrite(swish_prime, [rw.Rule("logistic_form", rw.logistic_form)])
    assert text(after) == "−(Z∘σ(Z) − Z − 1)∘σ(Z)"
    values = {"Z": np.array([[-30.0, -1.5, 0.2], [2.0, 5.0, 30.0]])}
    np.testing.assert_allclose(sn.evaluate(after, values), sn.evaluate(swish_prime, values),
                               rtol=1e-12)
    # exp itself would be σ/(1 − σ): dearer and infinite where exp is not (x ≈ 40 in float64)
    exp = sn.exp(Z)
    assert rw.rewrite(exp, [rw.Rule("logistic_form", rw.logistic_form)]) == exp


def test_a_rewrite_that_overflows_where_the_original_does_not_is_refused():
    overflowing = (x + sp.exp(x) + 1) / (2 * sp.cosh(x) + 2)
    original = sp.diff(x / (1 + sp.exp(-x)), x)
    assert not rw.numerically_safe(original, overflowing)
    sigma = sn.sigmoid.function(x)
    stable = sigma * (1 + x * (1 - sigma))  # finite wherever either of them is
    assert rw.numerically_safe(original, stable) and rw.numerically_safe(overflowing, stable)
    assert not rw.numerically_safe(original, original + 1e-3)  # and a different value, never


@pytest.mark.parametrize("act", [sn.hard_sigmoid, sn.relu])
def test_a_derivative_with_a_division_by_zero_in_a_branch_computes_alike_on_both_backends(act):
    """binary_cross_entropy of hard_sigmoid's 0 and 1 divides by 0 in a branch of δ (SymPy's
    zoo): the kernels compute it as NaN, and the reference backend stopped inside SymPy's
    NumPy printer (KeyError: 'ComplexInfinity')."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 1)
    out = act(sn.dense(sn.dense(X, 8, sn.tanh, name="1"), 1, name="2"))
    models = [sn.compile(sn.binary_cross_entropy(out, Y), inputs=[X], targets=[Y], seed=0,
                         dtype="float64", backend=b) for b in BACKENDS]
    rng = np.random.default_rng(0)
    Xd, Yd = rng.normal(size=(30, 4)), (rng.random((30, 1)) > 0.5) * 1.0
    (la, ga), (lb, gb) = (m.loss_and_grad(Xd * 0.1, Yd) for m in models)
    assert np.isfinite(la) == (act is sn.hard_sigmoid)  # relu's 0 has no logarithm
    np.testing.assert_allclose(la, lb, rtol=1e-12, equal_nan=True)
    for k in ga:
        np.testing.assert_allclose(ga[k], gb[k], rtol=1e-10, atol=1e-13, equal_nan=True,
                                   err_msg=k)
