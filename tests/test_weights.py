"""fit(sample_weight=..., class_weight=...): the weighted mean Σωℓ/Σω of torch's weight=, in the
formulas and in the numbers, on both backends."""

import numpy as np
import pytest
from conftest import compiled

import symnet as sn
from symnet import formulas

torch = pytest.importorskip("torch")
F = torch.nn.functional


def classifier(backend="numpy", norm=False):
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    z = sn.dense(X, 5, name="1")
    h = sn.tanh(sn.batch_norm(z, "1") if norm else z)
    out = sn.dense(h, 3, name="2")
    return sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y], prediction=out,
                      dtype="float64", seed=0, backend=backend, optimizer=sn.optim.SGD(lr=0.1))


def data(rows=30):
    rng = np.random.default_rng(0)
    return rng.normal(size=(rows, 4)), rng.integers(0, 3, rows), rng.uniform(0, 2, rows)


def test_the_weighted_formulas_show_the_weights():
    model = classifier()
    lines = model.formulas(weighted=True)
    for line in ("ω̃  = ω ∘ (𝟙·(n/sum(ω)))",  # ω̃ is one column wide, P and L too
                 "L  = (sum(ω̃ ∘ logsumexp(P)) − sum((ω̃·𝟙) ∘ (P ∘ Y)))/n",
                 "δP = (ω̃·𝟙) ∘ (softmax(P) − Y)/n"):
        assert line in lines, line
    delta = next(eq for eq in model._weighted_variant()[0].backward if eq.label == "δP")
    assert "factor_hadamard" in delta.rewrites
    assert "ω" not in model.formulas()  # the unweighted model is as declared
    tex = model.latex(weighted=True)  # the same derivation in LaTeX
    for eq in model._weighted_variant()[0].backward:
        assert formulas.latex(eq.rhs) in tex, eq.label
    assert r"\omega" in tex and r"\omega" not in model.latex()


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("norm", [False, True])
def test_sample_and_class_weights_train_as_torch_weighted_cross_entropy(backend, norm):
    """Three SGD steps; batch norm's statistics stay unweighted, as torch's."""
    model = classifier(backend, norm)
    X, y, sw = data()
    cw = {0: 1.0, 1: 3.0, 2: 0.5}
    p = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
    opt = torch.optim.SGD(p.values(), lr=0.1)
    per_class = torch.tensor([cw[c] for c in range(3)])
    for s in range(0, 30, 10):
        xb, yb, wb = (torch.tensor(a[s:s + 10]) for a in (X, y, sw))
        z = xb @ p["W1"] + p["b1"]
        if norm:
            z = F.batch_norm(z, None, None, p["gamma1"][0], p["beta1"][0], training=True)
        logits = torch.tanh(z) @ p["W2"] + p["b2"]
        w = wb * per_class[yb]
        opt.zero_grad()
        ((w * F.cross_entropy(logits, yb, reduction="none")).sum() / w.sum()).backward()
        opt.step()
    model.fit(X, y, epochs=1, batch_size=10, shuffle=False, verbose=False, sample_weight=sw,
              class_weight=cw)
    for k, v in model.params.items():
        np.testing.assert_allclose(v, p[k].detach().numpy(), rtol=1e-9, atol=1e-12, err_msg=k)


def test_class_weights_alone_are_torchs_weight_argument():
    model = classifier()
    X, y, _ = data(10)
    cw = {0: 2.0, 1: 1.0, 2: 0.25}
    p = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
    logits = torch.tanh(torch.tensor(X) @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]
    weight = torch.tensor([2.0, 1.0, 0.25], dtype=torch.float64)
    F.cross_entropy(logits, torch.tensor(y), weight=weight).backward()
    model.fit(X, y, epochs=1, batch_size=10, verbose=False, class_weight=cw)
    for k, v in model.params.items():
        np.testing.assert_allclose(v, p[k].detach().numpy() - 0.1 * p[k].grad.numpy(),
                                   rtol=1e-9, atol=1e-12, err_msg=k)


def test_balanced_is_scikit_learns_class_weight():
    from sklearn.utils.class_weight import compute_class_weight

    X, y, _ = data()
    balanced = compute_class_weight("balanced", classes=np.arange(3), y=y)
    a, b = classifier(), classifier()
    a.fit(X, y, epochs=2, batch_size=8, verbose=False, class_weight="balanced")
    b.fit(X, y, epochs=2, batch_size=8, verbose=False, class_weight=dict(enumerate(balanced)))
    for k in a.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-12, err_msg=k)


def test_weights_of_one_are_the_unweighted_fit():
    X, y, _ = data()
    a, b = classifier(), classifier()
    a.fit(X, y, epochs=2, batch_size=8, verbose=False, sample_weight=np.full(30, 3.0))
    b.fit(X, y, epochs=2, batch_size=8, verbose=False)
    for k in a.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-10, atol=1e-13, err_msg=k)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_weights_beyond_float32_train_a_float32_model_as_float64_trains(backend):
    """Only a batch's relative weights matter: 1e38 (whose sums overflow float32), 1e-40
    (subnormal) or one row of 1e39 among ones train a float32 model as in float64, where they
    gave a NaN loss blamed on the learning rate."""
    import warnings

    X, y, _ = data(40)

    def trained(dtype, w):
        Xs, Ys = sn.Input("X", 4), sn.Input("Y", 3)
        model = sn.compile(sn.softmax_cross_entropy(sn.dense(sn.dense(Xs, 5, sn.tanh), 3), Ys),
                           inputs=[Xs], targets=[Ys], dtype=dtype, seed=0, backend=backend,
                           optimizer=sn.optim.SGD(lr=0.1))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nor a NumPy cast warning
            model.fit(X, y, epochs=2, batch_size=8, verbose=False, sample_weight=w, seed=1)
        return model.params

    one_big = np.ones(40)
    one_big[17] = 1e39
    for w in (np.full(40, 1e38), np.full(40, 1e-40), one_big):
        want, got = trained("float64", w), trained("float32", w)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_a_weighted_mse_is_the_weighted_mean_of_row_errors():
    X, Y = sn.Input("X", 4), sn.Input("Y", 2)
    out = sn.dense(X, 2)
    model = compiled(sn.mse(out, Y), X, Y, prediction=out)
    rng = np.random.default_rng(1)
    Xd, Yd, w = rng.normal(size=(6, 4)), rng.normal(size=(6, 2)), rng.uniform(0, 1, 6)
    W, b = (torch.tensor(model.params[k].copy(), requires_grad=True) for k in ("W1", "b1"))
    rows = ((torch.tensor(Xd) @ W + b - torch.tensor(Yd)) ** 2).mean(1)
    ((torch.tensor(w) * rows).sum() / w.sum()).backward()
    expected = model.params["W1"] - 0.1 * W.grad.numpy()
    model.fit(Xd, Yd, epochs=1, batch_size=6, verbose=False, sample_weight=w)
    np.testing.assert_allclose(model.params["W1"], expected, rtol=1e-10)


@pytest.mark.parametrize("kwargs, message", [
    ({"sample_weight": -np.ones(30)}, r"the weight of row 0 is -1.0; weights must be finite and ≥ 0"),
    ({"sample_weight": np.ones(29)}, r"one weight per row, shape \(30,\); got shape \(29,\)"),
    ({"sample_weight": np.full(30, np.nan)}, "finite"),
    ({"sample_weight": np.zeros(30)}, "every row has weight 0"),
    ({"class_weight": "even"}, "a dict {class: weight} or 'balanced'"),
    ({"class_weight": {"cat": 2.0}}, r"names the classes \['cat'\]"),
    ({"class_weight": {7: 2.0, 2: 1.5}}, r"names the classes \[7\], which are not class "
                                         r"numbers 0…2 of the targets"),
    ({"class_weight": {1: -2.0}}, r"class_weight\[1\] must be a finite real number ≥ 0"),
])
def test_bad_weights_are_named(kwargs, message):
    X, y, _ = data()
    with pytest.raises(sn.DataError, match=message):
        classifier().fit(X, y, verbose=False, **kwargs)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_rows_of_weight_0_are_left_out_so_that_no_batch_weighs_0(backend):
    """A batch of rows of weight 0 only divided its loss by 0 (a NaN step); such rows add
    nothing to any batch mean, and fit leaves them out as the estimators do."""
    X, y, w = data()
    w[:4] = 0.0  # the first batch of 4, unshuffled
    w[10] = 0.0
    with_zeros, without = classifier(backend), classifier(backend)
    with_zeros.fit(X, y, epochs=2, batch_size=4, shuffle=False, verbose=False, sample_weight=w)
    kept = w > 0
    without.fit(X[kept], y[kept], epochs=2, batch_size=4, shuffle=False, verbose=False,
                sample_weight=w[kept])
    for k, v in without.params.items():
        np.testing.assert_array_equal(with_zeros.params[k], v)
    assert with_zeros.history.loss == without.history.loss


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_the_historys_loss_is_the_epochs_weighted_mean(backend):
    """It was the batches' weighted means averaged by their rows, which depends on batch_size
    and is neither scikit-learn's weighted log_loss nor the unweighted mean."""
    from scipy.special import softmax
    from sklearn.metrics import log_loss

    X, y, w = data(rows=31)
    w[5] = 0.0
    model = classifier(backend)
    model.optimizer.lr = 1e-300  # the parameters stay, so every epoch's loss is the same sum
    p = softmax(model.predict(X), axis=1)
    hist = model.fit(X, y, epochs=2, batch_size=4, verbose=False, sample_weight=w)
    np.testing.assert_allclose(hist.loss, log_loss(y, p, sample_weight=w), rtol=1e-12)


def test_class_weights_need_classes():
    X, Y = sn.Input("X", 4), sn.Input("Y", 1)
    out = sn.dense(X, 1)
    model = compiled(sn.mse(out, Y), X, Y, prediction=out)
    with pytest.raises(sn.DataError, match="needs a classification target"):
        model.fit(np.ones((4, 4)), np.linspace(0, 3, 4)[:, None], class_weight="balanced",
                  verbose=False)


def test_weights_for_a_loss_without_a_sum_over_the_rows_are_refused():
    """Weights weigh each row's term in a sum over the batch: a loss of Pᵀ·P has none, and
    fit(sample_weight=...) trained it unweighted without a word."""
    import sympy as sp

    X = sn.Input("X", 3)
    P = X * sp.MatrixSymbol("W", 3, 2)
    model = sn.compile(sn.sum(sp.HadamardPower(P.T * P, 2)) / sn.batch, inputs=[X], seed=0,
                       dtype="float64", backend="numpy")
    message = r"sample_weight and class_weight weigh each row's term in the loss's sums over " \
              r"the batch .* and the loss sum\(\(Wᵀ·Xᵀ·X·W\)²\)/n has none"
    with pytest.raises(sn.DataError, match=message):
        model.fit(np.ones((6, 3)), sample_weight=np.ones(6), verbose=False)
    with pytest.raises(sn.DataError, match=message):
        model.formulas(weighted=True)
    model.fit(np.ones((6, 3)), verbose=False)


def test_inputs_named_outside_ascii_train_on_the_kernels():
    """The stage functions rename arrays by ASCII patterns: an input named α (or the weights ω)
    was read as an undefined global."""
    X, Y = sn.Input("α", 4), sn.Input("Y", 3)
    out = sn.dense(X, 3)
    model = sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], prediction=out, seed=0)
    model.fit(np.ones((5, 4)), np.ones((5, 3)), verbose=False)
    assert model.predict(np.ones((2, 4))).shape == (2, 3)
