"""Batch norm, layer norm and dropout: the formulas, and the numbers against PyTorch in float64."""

import re

import numpy as np
import pytest
from conftest import assert_formulas_are_computed, compiled, deep_residual, make_data

import symnet as sn
from codegen.intrinsics.random import keep
from symnet import validate
from symnet.functions import DropoutMask

torch = pytest.importorskip("torch")
F = torch.nn.functional


def bn_net(momentum=0.1, eps=1e-5):
    """4 → dense 5 → batch norm → relu → dense 3, softmax cross-entropy."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    h = sn.relu(sn.batch_norm(sn.dense(X, 5, name="1"), "1", eps=eps, momentum=momentum))
    out = sn.dense(h, 3, name="2")
    return sn.softmax_cross_entropy(out, Y), X, Y, out


def ln_net():
    """4 → dense 6 → layer norm → tanh → dense 3, softmax cross-entropy."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    h = sn.tanh(sn.layer_norm(sn.dense(X, 6, name="1"), "1"))
    out = sn.dense(h, 3, name="2")
    return sn.softmax_cross_entropy(out, Y), X, Y, out


def perturbed(model, seed=1):
    """Gains and shifts away from their initial 1 and 0, so that every term shows."""
    rng = np.random.default_rng(seed)
    for k, v in model.params.items():
        if k.startswith(("gamma", "beta")):
            v[...] += rng.normal(0, 0.3, v.shape)
    return model


def torch_bn(p, X, rm, rv, training, momentum=0.1, eps=1e-5):
    z = X @ p["W1"] + p["b1"]
    h = torch.relu(F.batch_norm(z, rm, rv, p["gamma1"][0], p["beta1"][0], training=training,
                                momentum=momentum, eps=eps))
    return h @ p["W2"] + p["b2"]


def tensors(params):
    return {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}


# ---------------------------------------------------------------------------- formulas


def test_batch_norm_formulas_name_the_statistics_and_give_the_closed_form_adjoint():
    loss, X, Y, out = bn_net()
    lines = compiled(loss, X, Y, prediction=out).formulas()
    for line in ("μ1 = colsum(Z1)/n",
                 "σ1 = √(colsum((Z1 − 𝟙·μ1)²)/n + 1e-5)",
                 "X̂1 = (Z1 − 𝟙·μ1)/(𝟙·σ1)",
                 "N1 = (𝟙·gamma1) ∘ X̂1 + 𝟙·beta1",
                 "A1 = relu(N1)",
                 "δN1 = (δP·W2ᵀ) ∘ [A1 > 0]",
                 # CS231n's batchnorm_backward_alt: γ/(n·σ) ∘ (n·G − 𝟙·colsum(G) − X̂∘𝟙·colsum(G∘X̂))
                 "δ1  = (𝟙·(gamma1/σ1)) ∘ (n·δN1 − (𝟙·colsum(X̂1 ∘ δN1)) ∘ X̂1 − 𝟙·colsum(δN1))/n",
                 "∂L/∂gamma1 = colsum(δN1 ∘ X̂1)",
                 "∂L/∂beta1  = colsum(δN1)",
                 "In predict and evaluate:\n  X̂1 = (Z1 − 𝟙·running_mean1)/(𝟙·√(running_var1 + "
                 "1e-5))\nBackprop:",
                 # the training kernel's update of the running statistics, torch's: the
                 # unbiased variance (test_training_updates_the_running_statistics_as_torch...)
                 "  running_mean1 ← 0.9·running_mean1 + 0.1·μ1\n"
                 "  running_var1 ← 0.9·running_var1 + 0.1·colsum((Z1 − 𝟙·μ1)²)/(n − 1)"):
        assert line in lines, line
    assert "^" not in lines and all(len(row) < 100 for row in lines.splitlines())
    forward = lines.split("In predict")[0].splitlines()[1:]  # "=" in one column, X̂1's too
    assert len({sn.formulas.width(row.split(" = ")[0]) for row in forward}) == 1, forward
    rows = repr(compiled(loss, X, Y, prediction=out)).splitlines()
    layers = rows[rows.index("  layers:") + 1:rows.index("  layers:") + 3]
    assert len({sn.formulas.width(row.split("n×")[0]) for row in layers}) == 1, layers


def test_layer_norm_formulas_are_the_row_wise_twin():
    loss, X, Y, out = ln_net()
    lines = compiled(loss, X, Y, prediction=out).formulas()
    for line in ("μ1 = rowsum(Z1)/6",
                 "σ1 = √(rowsum((Z1 − μ1·𝟙)²)/6 + 1e-5)",
                 "X̂1 = (Z1 − μ1·𝟙)/(σ1·𝟙)",
                 "δ1  = ((1/σ1)·𝟙) ∘ (6·((𝟙·gamma1) ∘ δN1) − (rowsum((𝟙·gamma1) ∘ X̂1 ∘ δN1)·𝟙) ∘ X̂1"
                 " − rowsum((𝟙·gamma1) ∘ δN1)·𝟙)/6"):
        assert line in lines, line


def test_the_norm_rule_is_what_the_lowering_computes():
    """sn.evaluate of each shown gradient (the closed form, expanded) equals loss_and_grad."""
    for net in (bn_net, ln_net):
        loss, X, Y, out = net()
        model = perturbed(compiled(loss, X, Y, prediction=out))
        assert_formulas_are_computed(model, *make_data(n=7))


def test_latex_names_the_statistics():
    loss, X, Y, out = bn_net()
    latex = compiled(loss, X, Y, prediction=out).latex()
    for name in (r"\mu_{1}", r"\sigma_{1}", r"\hat{X}_{1}", r"\gamma_{1}", r"\delta_{N1}"):
        assert name in latex, name
    update = latex.split(r"\text{Update:}")[1]
    assert r"\mathit{running\_var1} &\leftarrow 0.9" in update, update
    assert r"{n - 1}" in update, update


# ---------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("net", [bn_net, ln_net])
def test_loss_and_every_gradient_match_torch(net):
    loss, X, Y, out = net()
    model = perturbed(compiled(loss, X, Y, prediction=out))
    Xb, Yb = make_data(n=9)
    value, grads = model.loss_and_grad(Xb, Yb)
    p = tensors(model.params)
    if net is bn_net:
        logits = torch_bn(p, torch.tensor(Xb), None, None, training=True)
    else:
        z = torch.tensor(Xb) @ p["W1"] + p["b1"]
        h = torch.tanh(F.layer_norm(z, (6,), p["gamma1"][0], p["beta1"][0], eps=1e-5))
        logits = h @ p["W2"] + p["b2"]
    t_loss = F.cross_entropy(logits, torch.tensor(Yb).argmax(1))
    t_loss.backward()
    assert value == pytest.approx(t_loss.item(), rel=1e-12)
    for k, g in grads.items():
        np.testing.assert_allclose(g, p[k].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_training_updates_the_running_statistics_as_torch_and_predict_uses_them(backend):
    """Three epochs of SGD in batches of 6 (the last has 2 rows): the parameters, torch's
    running mean and unbiased variance after every step, and eval-mode predictions."""
    loss, X, Y, out = bn_net(momentum=0.3)
    model = sn.compile(loss, inputs=[X], targets=[Y], prediction=out, dtype="float64", seed=0,
                       backend=backend, optimizer=sn.optim.SGD(lr=0.1))
    perturbed(model)
    Xd, Yd = make_data(n=20, seed=3)
    p = tensors(model.params)
    rm, rv = torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    opt = torch.optim.SGD(p.values(), lr=0.1)
    for _ in range(3):
        for start in range(0, 20, 6):
            xb, yb = torch.tensor(Xd[start:start + 6]), torch.tensor(Yd[start:start + 6])
            opt.zero_grad()
            F.cross_entropy(torch_bn(p, xb, rm, rv, True, momentum=0.3), yb.argmax(1)).backward()
            opt.step()
    model.fit(Xd, Yd, epochs=3, batch_size=6, shuffle=False, verbose=False)
    for k, v in model.params.items():
        np.testing.assert_allclose(v, p[k].detach().numpy(), rtol=1e-9, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(model.running["running_mean1"][0], rm.numpy(), rtol=1e-9)
    np.testing.assert_allclose(model.running["running_var1"][0], rv.numpy(), rtol=1e-9)
    with torch.no_grad():
        expected = torch_bn(p, torch.tensor(Xd), rm, rv, training=False).numpy()
    np.testing.assert_allclose(model.predict(Xd), expected, rtol=1e-9, atol=1e-12)
    # one row at a time gives each row its own prediction, as the whole batch does
    np.testing.assert_allclose(model.predict(Xd[:1]), expected[:1], rtol=1e-9, atol=1e-12)
    t_loss = F.cross_entropy(torch.tensor(expected), torch.tensor(Yd).argmax(1)).item()
    assert model.evaluate(Xd, Yd)["loss"] == pytest.approx(t_loss, rel=1e-9)


def test_kernels_and_reference_agree_in_float32():
    """(SGD: b1's gradient is 0 up to rounding, which Adam would scale up to steps of lr.)"""
    loss, X, Y, out = bn_net()
    Xd, Yd = make_data(n=30, seed=4)
    models = [sn.compile(loss, inputs=[X], targets=[Y], prediction=out, seed=0, backend=b,
                         optimizer=sn.optim.SGD(lr=0.1)) for b in ("numpy", "numba")]
    for m in models:
        m.fit(Xd, Yd, epochs=2, batch_size=8, verbose=False)
    for k in models[0].running:
        np.testing.assert_allclose(models[0].running[k], models[1].running[k], rtol=1e-4,
                                   atol=1e-5)
    np.testing.assert_allclose(models[0].predict(Xd), models[1].predict(Xd), rtol=1e-3,
                               atol=1e-4)


def test_gains_start_at_one_and_shifts_at_zero():
    loss, X, Y, out = bn_net()
    params = compiled(loss, X, Y, prediction=out).params
    assert (params["gamma1"] == 1).all() and (params["beta1"] == 0).all()


def test_running_statistics_are_saved_and_loaded(tmp_path):
    loss, X, Y, out = bn_net()
    model = compiled(loss, X, Y, prediction=out)
    Xd, Yd = make_data(n=12)
    model.fit(Xd, Yd, epochs=2, batch_size=4, verbose=False)
    model.save(tmp_path / "m.npz")
    loaded = sn.load(tmp_path / "m.npz")
    for k, v in model.running.items():
        np.testing.assert_array_equal(loaded.running[k], v)
    np.testing.assert_array_equal(loaded.predict(Xd), model.predict(Xd))
    assert loaded.formulas() == model.formulas()


def test_running_statistics_are_checked_as_parameters_are(tmp_path):
    """A NaN or negative running variance predicted finite, wrong probabilities (relu zeroed
    the NaN); it is refused where it is read, written into the model or loaded from a file."""
    loss, X, Y, out = bn_net()
    model = compiled(loss, X, Y, prediction=out)
    Xd = make_data(n=6)[0]
    model.running["running_var1"][0, 2] = np.nan
    with pytest.raises(sn.DataError, match=r"model.running\['running_var1'\] has a non-finite "
                                           r"value \(nan\) in row 0, column 2"):
        model.predict(Xd)
    model.running["running_var1"][0, 2] = -1.0
    with pytest.raises(sn.DataError, match=r"model.running\['running_var1'\] has the negative "
                                           r"variance -1.0 in column 2; a variance is ≥ 0"):
        model.predict(Xd)
    model.running["running_var1"] = [1.0]  # replaced, not written into
    with pytest.raises(sn.DataError, match=r"running_var1 is 1×5; write into the array"):
        model.predict(Xd)
    model.running["running_var1"] = np.ones((1, 5))
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as archive:
        arrays = dict(archive)
    arrays["running/running_var1"] = -np.ones((1, 5))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(sn.DataError, match="the running statistic running_var1 has negative "
                                           "entries, and a variance is ≥ 0"):
        sn.load(tmp_path / "bad.npz")


# ---------------------------------------------------------------------------- errors


def test_a_one_row_batch_in_training_is_refused_with_a_batch_size_that_works(tmp_path):
    loss, X, Y, out = bn_net()
    model = compiled(loss, X, Y, prediction=out)
    Xd, Yd = make_data(n=9)
    with pytest.raises(sn.DataError, match=r"a batch has 1 row.*batch_size=5"):
        model.fit(Xd, Yd, batch_size=4, verbose=False)
    with pytest.raises(sn.DataError, match="a 1-row batch has no variance.*at least 2 rows"):
        model.fit(Xd[:1], Yd[:1], verbose=False)
    for gradients_of in (model.loss_and_grad, model.explain,  # as loss_and_grad, which they run
                         lambda X, Y: sn.gradcheck(model, X, Y),
                         lambda X, Y: model.report(tmp_path / "r.html", X, Y)):
        with pytest.raises(sn.DataError, match="a 1-row batch has no variance"):
            gradients_of(Xd[:1], Yd[:1])


@pytest.mark.parametrize("kwargs, message", [
    ({"eps": 0}, "eps must be a finite real number > 0"),
    ({"momentum": 1.5}, "momentum must be a finite real number ≥ 0 and ≤ 1"),
    ({"name": "1"}, "beta1 already exists"),
])
def test_bad_block_arguments(kwargs, message):
    X = sn.Input("X", 4)
    z = sn.batch_norm(sn.dense(X, 5, name="1"), "1")
    args = {"name": "2", **kwargs}
    with pytest.raises(sn.DeclarationError, match=message):
        sn.batch_norm(z, **args)


def test_a_norm_over_nothing_to_normalise_is_refused():
    """Batch norm of a matrix without the batch's rows (a 1×1 loss), and layer norm of one
    column, whose normalised values are all 0, are mistakes to name, not blocks to build."""
    import sympy as sp

    X, Y = sn.Input("X", 4), sn.Input("Y", 1)
    with pytest.raises(sn.ShapeError, match=r"sn.batch_norm normalises each column over the "
                                            r"batch's rows, and Z is 1×1"):
        sn.batch_norm(sn.mse(sn.dense(X, 1, name="1"), Y), "1")
    with pytest.raises(sn.ShapeError, match=r"and Z is 3×4; pass a layer's output"):
        sn.batch_norm(sp.MatrixSymbol("K", 3, 4), "1")
    with pytest.raises(sn.ShapeError, match=r"sn.layer_norm normalises each row over its "
                                            r"columns, and Z has one"):
        sn.layer_norm(sn.dense(X, 1, name="2"), "2")


def test_a_norm_as_the_prediction_keeps_its_name_in_the_loss():
    """mse(N, Y) flattens N − Y at declaration; the block is regrouped, and P named, as a layer."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    out = sn.batch_norm(sn.dense(X, 3, name="1"), "1")
    model = compiled(sn.mse(out, Y), X, Y, prediction=out)
    lines = model.formulas()
    for line in ("P  = (𝟙·gamma1) ∘ X̂1 + 𝟙·beta1", "L  = sum((P − Y)²)/(3·n)",
                 "δ1 = (𝟙·(gamma1/σ1)) ∘ (n·δP − (𝟙·colsum(X̂1 ∘ δP)) ∘ X̂1 − 𝟙·colsum(δP))/n"):
        assert line in lines, line
    assert_formulas_are_computed(perturbed(model), *make_data(n=6, kind="real"))


def test_a_norm_inside_a_residual_connection_is_named_as_a_layer_and_matches_torch():
    """relu(N2 + A1), as a ResNet block: SymPy flattens the skip into the norm's sum, which is
    named N2 with the skip term, so that A2, δN2 and ∂L/∂W3 = A2ᵀ·δ3 read as without it."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    h = sn.relu(sn.dense(X, 5, name="1"))
    r = sn.relu(sn.batch_norm(sn.dense(h, 5, name="2"), "2") + h)
    out = sn.dense(r, 3, name="3")
    model = perturbed(compiled(sn.softmax_cross_entropy(out, Y), X, Y, prediction=out))
    lines = model.formulas()
    for line in ("N2 = (𝟙·gamma2) ∘ X̂2 + 𝟙·beta2 + A1", "A2 = relu(N2)", "P  = A2·W3 + 𝟙·b3",
                 "δN2 = (δP·W3ᵀ) ∘ [A2 > 0]", "δ1  = (δ2·W2ᵀ + δN2) ∘ [A1 > 0]",
                 "∂L/∂W3     = A2ᵀ·δP", "∂L/∂gamma2 = colsum(δN2 ∘ X̂2)"):
        assert line in lines, lines
    Xb, Yb = make_data(n=9)
    value, grads = model.loss_and_grad(Xb, Yb)
    p = tensors(model.params)
    a1 = torch.relu(torch.tensor(Xb) @ p["W1"] + p["b1"])
    n2 = F.batch_norm(a1 @ p["W2"] + p["b2"], None, None, p["gamma2"][0], p["beta2"][0],
                      training=True, eps=1e-5)
    t_loss = F.cross_entropy(torch.relu(n2 + a1) @ p["W3"] + p["b3"], torch.tensor(Yb).argmax(1))
    t_loss.backward()
    assert value == pytest.approx(t_loss.item(), rel=1e-12)
    for k, g in grads.items():
        np.testing.assert_allclose(g, p[k].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)
    assert_formulas_are_computed(model, Xb, Yb)


# ---------------------------------------------------------------------------- dropout


def dropout_net(p=0.25):
    """4 → relu 6 → dropout p → tanh 5 → dropout 0.5 → 3, softmax cross-entropy."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    h = sn.dropout(sn.relu(sn.dense(X, 6, name="1")), p)
    h = sn.dropout(sn.tanh(sn.dense(h, 5, name="2")), 0.5)
    out = sn.dense(h, 3, name="3")
    return sn.softmax_cross_entropy(out, Y), X, Y, out


def dropout_model(backend="numpy", seed=0, dtype="float64"):
    loss, X, Y, out = dropout_net()
    return sn.compile(loss, inputs=[X], targets=[Y], prediction=out, dtype=dtype, seed=seed,
                      backend=backend, optimizer=sn.optim.SGD(lr=0.1))


def mask(model, stream, p, shape):
    """Mask ``stream`` of the model's next step, drawn as the kernels draw it."""
    rows, cols = (np.arange(d, dtype=np.uint64) for d in shape)
    with np.errstate(over="ignore"):
        return keep(model.dropout_seed, model._steps, stream, rows[:, None], cols[None, :], p)


def test_dropout_formulas_show_the_mask_and_its_scale():
    lines = dropout_model().formulas()
    for line in ("D1 = A1 ∘ M1/0.75", "Z2 = D1·W2 + 𝟙·b2", "D2 = A2 ∘ M2/0.5",
                 "δ2 = ((δP·W3ᵀ) ∘ M2/0.5) ∘ (1 − A2²)", "δ1 = ((δ2·W2ᵀ) ∘ M1/0.75) ∘ [A1 > 0]",
                 "∂L/∂W2 = D1ᵀ·δ2"):
        assert line in lines, line


def test_dropout_gradients_match_torch_on_the_same_masks():
    model = dropout_model()
    Xb, Yb = make_data(n=9)
    value, grads = model.loss_and_grad(Xb, Yb)
    m1, m2 = (torch.tensor(mask(model, k, p, (9, w))) for k, p, w in ((1, 0.25, 6), (2, 0.5, 5)))
    assert 0 < m1.mean() < 1 and 0 < m2.mean() < 1  # some dropped, some kept
    p = tensors(model.params)
    h = torch.relu(torch.tensor(Xb) @ p["W1"] + p["b1"]) * m1 / 0.75
    h = torch.tanh(h @ p["W2"] + p["b2"]) * m2 / 0.5
    t_loss = F.cross_entropy(h @ p["W3"] + p["b3"], torch.tensor(Yb).argmax(1))
    t_loss.backward()
    assert value == pytest.approx(t_loss.item(), rel=1e-12)
    for k, g in grads.items():
        np.testing.assert_allclose(g, p[k].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)
    assert sn.gradcheck(model, Xb, Yb) < 1e-6  # the same masks for every evaluation of a step


def branches(backend="numpy", seed=0):
    """Two heads of one width on a shared trunk, each with its dropout, and the trunk dropped
    out twice: four dropout calls, two pairs of equal shape and rate."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    trunk = sn.dense(X, 6, sn.relu, name="1")
    heads = [sn.dropout(sn.dense(trunk, 5, sn.tanh, name=k), 0.5) for k in "ab"]
    twice = sn.dropout(trunk, 0.25) + sn.dropout(trunk, 0.25)
    out = sn.dense(heads[0] + heads[1], 3, name="o") + sn.dense(twice, 3, name="t")
    return sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y], prediction=out,
                      dtype="float64", seed=seed, backend=backend)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_each_dropout_call_draws_its_own_mask(backend):
    """As two calls of torch.nn.Dropout: two heads, and the same trunk dropped out twice, get
    independent masks (they shared one while a mask's number came from the masks below it)."""
    model = branches(backend)
    lines = model.formulas()
    for line in ("D1 = A2 ∘ M1/0.5", "D2 = A3 ∘ M2/0.5", "D3 = A1 ∘ M3/0.75",
                 "D4 = A1 ∘ M4/0.75"):
        assert line in lines, line
    Xb, Yb = make_data(n=9)
    value, grads = model.loss_and_grad(Xb, Yb)
    m = {k: torch.tensor(mask(model, k, p, (9, w)))
         for k, p, w in ((1, 0.5, 5), (2, 0.5, 5), (3, 0.25, 6), (4, 0.25, 6))}
    assert not torch.equal(m[1], m[2]) and not torch.equal(m[3], m[4])
    p = tensors(model.params)
    trunk = torch.relu(torch.tensor(Xb) @ p["W1"] + p["b1"])
    a, b = (torch.tanh(trunk @ p[f"W{k}"] + p[f"b{k}"]) for k in "ab")
    out = ((a * m[1] / 0.5 + b * m[2] / 0.5) @ p["Wo"] + p["bo"]
           + (trunk * m[3] / 0.75 + trunk * m[4] / 0.75) @ p["Wt"] + p["bt"])
    t_loss = F.cross_entropy(out, torch.tensor(Yb).argmax(1))
    t_loss.backward()
    assert value == pytest.approx(t_loss.item(), rel=1e-12)
    for k, g in grads.items():
        np.testing.assert_allclose(g, p[k].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)


def test_a_networks_masks_do_not_depend_on_what_the_process_declared_before():
    """Each call makes a mask numbered after every mask of the process; sn.compile numbers a
    network's own 1, 2, … from the inputs up, so the same declaration trains to the same bits
    whatever was declared before it, and a stack's masks keep the numbers they always had."""
    first = branches()
    sn.dropout(sn.Input("X", 4), 0.5)  # a declaration in between moves the process's count on
    second = branches()
    assert second.loss_expr == first.loss_expr and second.formulas() == first.formulas()
    Xd, Yd = make_data(n=24, seed=3)
    for model in (first, second):
        model.fit(Xd, Yd, epochs=2, batch_size=8, shuffle=False, verbose=False)
    for k, v in first.params.items():
        np.testing.assert_array_equal(second.params[k], v, err_msg=k)
    inner = sn.dropout(sn.Input("X", 4), 0.1)
    outer = sn.dropout(sn.relu(sn.dense(inner, 3, name="s")), 0.2)
    assert outer.mask.stream > inner.mask.stream > 4
    loss, X, Y, _ = dropout_net()
    model = sn.compile(loss, inputs=[X], targets=[Y], dtype="float64", seed=0, backend="numpy")
    assert {m.name: float(m.p) for m in model.loss_expr.atoms(DropoutMask)} == {"M1": 0.25,
                                                                               "M2": 0.5}


def test_dropout_is_the_identity_in_predict_and_evaluate():
    model = dropout_model()
    Xb, Yb = make_data(n=9)
    p = {k: torch.tensor(v) for k, v in model.params.items()}
    h = torch.tanh(torch.relu(torch.tensor(Xb) @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"])
    logits = (h @ p["W3"] + p["b3"]).numpy()
    np.testing.assert_allclose(model.predict(Xb), logits, rtol=1e-12)
    t_loss = F.cross_entropy(torch.tensor(logits), torch.tensor(Yb).argmax(1)).item()
    assert model.evaluate(Xb, Yb)["loss"] == pytest.approx(t_loss, rel=1e-12)


def test_dropout_draws_a_fresh_mask_every_step_and_reproduces_bit_for_bit():
    Xd, Yd = make_data(n=40, seed=2)
    runs = []
    for backend, seed in (("numpy", 0), ("numba", 0), ("numba", 0), ("numba", 1)):
        model = dropout_model(backend, seed)
        before = model.loss_and_grad(Xd[:8], Yd[:8])[0]
        model.fit(Xd, Yd, epochs=2, batch_size=8, shuffle=False, verbose=False)
        runs.append(model)
    numpy_run, first, again, other = runs
    for k in first.params:
        np.testing.assert_array_equal(again.params[k], first.params[k])
        np.testing.assert_allclose(numpy_run.params[k], first.params[k], rtol=1e-12, atol=1e-14)
    assert any(not np.array_equal(other.params[k], first.params[k]) for k in first.params)
    # step 10's masks differ from step 0's
    assert not np.array_equal(mask(first, 1, 0.25, (8, 6)), mask(dropout_model(), 1, 0.25, (8, 6)))
    assert first.loss_and_grad(Xd[:8], Yd[:8])[0] != before
    kept = mask(first, 1, 0.25, (4000, 50)).mean()
    assert kept == pytest.approx(0.75, abs=0.01)


def test_the_dropout_layers_of_a_deep_network_share_their_stages_and_keep_their_masks():
    """The layers' dropout phases differ only in the mask's stream number, which each call of a
    shared stage reads from its row of slots: depth adds no stage (an 8-layer network compiled
    23 training stages with dropout, 9 without), and each layer keeps its own mask."""
    def deep(depth, backend="numba"):
        X, Y = sn.Input("X", 4), sn.Input("Y", 3)
        h = X
        for k in range(depth):
            h = sn.dropout(sn.dense(h, 6, sn.relu, name=str(k + 1)), 0.25)
        return sn.compile(sn.softmax_cross_entropy(sn.dense(h, 3, name="out"), Y), inputs=[X],
                          targets=[Y], dtype="float64", seed=0, backend=backend,
                          optimizer=sn.optim.SGD(lr=0.1))

    def stages(model):
        return len(re.findall(r"^def _train_\d+\(", model.source, re.M))

    assert stages(deep(3)) == stages(deep(5))
    Xd, Yd = make_data(n=24, seed=3)
    models = deep(4), deep(4, "numpy")
    for model in models:
        model.fit(Xd, Yd, epochs=2, batch_size=8, shuffle=False, verbose=False)
    for k in models[1].params:
        np.testing.assert_allclose(models[0].params[k], models[1].params[k], rtol=1e-12,
                                   atol=1e-14, err_msg=k)


@pytest.mark.parametrize("p", [1, 1.5, -0.1])
def test_a_dropout_rate_outside_0_to_1_is_refused(p):
    with pytest.raises(sn.DeclarationError, match=r"p must be a finite real number ≥ 0 and < 1"):
        sn.dropout(sn.Input("X", 3), p)


def test_dropout_of_zero_is_the_input_and_evaluate_asks_for_a_mask():
    X = sn.Input("X", 3)
    assert sn.dropout(X, 0) == X
    model = dropout_model()
    with pytest.raises(sn.DataError, match=r"M1 is a dropout mask.*values\['M1'\]"):
        sn.evaluate(model.gradients[next(iter(model.gradients))], {"X": np.ones((2, 4)),
                                                                   "Y": np.ones((2, 3)),
                                                                   **model.params})


def test_dropout_models_save_and_load(tmp_path):
    model = dropout_model()
    model.save(tmp_path / "m.npz")
    loaded = sn.load(tmp_path / "m.npz")
    assert loaded.formulas() == model.formulas()
    X, Y = make_data(n=10)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    for m in (model, loaded):  # training on draws the same masks
        m.fit(X, Y, epochs=1, batch_size=5, shuffle=False, verbose=False)
    for k, v in model.params.items():
        np.testing.assert_array_equal(loaded.params[k], v)


def test_auto_init_reads_the_activation_through_a_norm():
    """He-normal for a layer whose batch norm feeds a relu, as for a relu layer; the family of a
    parametrised activation (leaky_relu[0.1]) is recorded with it, not parsed from its name."""
    X, Y = sn.Input("X", 50), sn.Input("Y", 3)
    for act in (sn.relu, sn.leaky_relu(0.1)):
        out = sn.dense(act(sn.batch_norm(sn.dense(X, 400, name="1"), "1")), 3, name="2")
        w = compiled(sn.softmax_cross_entropy(out, Y), X, Y).params["W1"]
        assert w.std() == pytest.approx(np.sqrt(2 / 50), rel=0.05)
        assert abs(w.mean()) < 0.01  # normal, not Xavier-uniform's ±√(6/450)
    assert type(sn.leaky_relu(0.1)(X).fn.expr).family == "leaky_relu"


def test_auto_init_reads_a_sigmoid_the_loss_declares_whatever_the_prediction():
    """binary_cross_entropy(σ(Z), Y) is computed from Z (softplus), so the σ is not in the
    derivation; the weights feeding it are Xavier ×4 as the README says, whether or not
    prediction= repeats σ(Z) (it changed the initial weights 4 ×)."""
    X, Y = sn.Input("X", 300), sn.Input("Y", 1)
    out = sn.dense(sn.dense(X, 100, sn.tanh, name="1"), 1, name="2")
    loss = sn.binary_cross_entropy(sn.sigmoid(out), Y)
    made = [sn.compile(loss, inputs=[X], targets=[Y], seed=0, backend="numpy", **kw).params
            for kw in ({}, {"prediction": out}, {"prediction": sn.sigmoid(out)})]
    for params in made:
        for k in params:
            np.testing.assert_array_equal(params[k], made[0][k], err_msg=k)
    assert np.abs(made[0]["W2"]).max() == pytest.approx(4 * np.sqrt(6 / 101), rel=0.05)
    assert np.abs(made[0]["W1"]).max() == pytest.approx(np.sqrt(6 / 400), rel=0.05)  # tanh: ×1
    stacked = sn.dense(sn.dense(X, 100, name="1"), 1, name="2")  # W1 feeds the layer under σ
    params = sn.compile(sn.mse(sn.sigmoid(stacked), Y), inputs=[X], targets=[Y], seed=0,
                        backend="numpy").params
    assert np.abs(params["W1"]).max() == pytest.approx(np.sqrt(6 / 400), rel=0.05)
    assert np.abs(params["W2"]).max() == pytest.approx(4 * np.sqrt(6 / 101), rel=0.05)


def test_a_deep_stack_of_norms_is_read_once_a_node():
    """A batch norm reads its Z in its mean, its variance and its output, so walked as a tree
    (SymPy's preorder_traversal, free_symbols, a recursion without memory) a stack of them
    costs 4.5 × more a layer: sn.weights of eight took 12 s, of twelve over an hour."""
    from symnet.grad import canonical
    from symnet.init import roles

    X, Y = sn.Input("X", 4), sn.Input("Y", 2)
    h = X
    for k in range(1, 13):
        h = sn.relu(sn.layer_norm(sn.batch_norm(sn.dense(h, 3, name=str(k)), f"b{k}"), f"l{k}"))
    out = sn.dense(h, 2, name="out")
    weights = sn.weights(out)
    assert [w.name for w in weights] == [f"W{k}" for k in range(1, 13)] + ["Wout"]
    loss = canonical(sn.mse(out, Y) + sn.l2(0.1, *weights), {sn.batch})
    assert sum(r == "gain" for r in roles(loss).values()) == 24
    assert len(set(validate.unique_nodes(loss))) < 2000  # as a tree: ~10¹⁰ nodes


def test_a_deep_residual_network_declares_each_layer_once():
    """Every + and * of SymPy matrices runs a deep doit, and a residual layer reads its input
    twice: without memory each layer's declaration walked the network as a tree (12 layers:
    20 s to declare, 2 × more a layer). An activation's doit is now remembered, itself when
    nothing below it changes."""
    X = sn.Input("X", 3)
    h = sn.dense(X, 3, sn.tanh, name="0")
    assert h.doit() is h
    for k in range(1, 40):
        h = sn.tanh(sn.dense(h, 3, name=str(k)) + h)
    assert len(set(validate.unique_nodes(h))) < 1500  # as a tree: ~10¹² nodes
    Xd = np.random.default_rng(0).normal(size=(4, 3))
    a = sn.evaluate(sn.tanh(sn.dense(X, 3, name="0")), {"X": Xd, "W0": np.eye(3),
                                                      "b0": np.zeros((1, 3))})
    np.testing.assert_allclose(a, np.tanh(Xd))  # the remembered doit computes as before


def test_equal_copies_of_a_deep_network_share_every_node():
    """Rewriting rebuilds a network bottom-up, and SymPy compares two equal expressions along
    every path until it meets a shared object, so comparing a rebuilt stack of batch norms with
    the original took time exponential in depth (8 layers compiled in 10 s, 10 in 225 s).
    symnet's nodes are interned: the rebuilt copy is the original."""
    import sympy as sp

    X = sn.Input("X", 4)
    h = X
    for k in range(1, 25):
        h = sn.relu(sn.batch_norm(sn.dense(h, 3, name=str(k)), str(k)))
    copies = {}

    def rebuild(e):  # as the rewriter does: every node built anew from rebuilt arguments
        if id(e) not in copies:
            fresh = e.args and not isinstance(e, sp.MatrixSymbol)
            copies[id(e)] = e.func(*map(rebuild, e.args)) if fresh else e
        return copies[id(e)]

    assert rebuild(h) is h
    assert rebuild(h.arg) is not h.arg and rebuild(h.arg) == h.arg  # a SymPy sum: a copy


def test_deep_norm_and_residual_networks_compile_and_differentiate_right():
    """24 residual layers with batch norm and dropout, and their prediction: each walk of the
    graph visits a node once (SymPy's xreplace walked it as a tree: a prediction of 16
    residual layers took 3.1 s to compile, of 20 layers 35 s)."""
    loss, X, Y, out = deep_residual(24)
    model = sn.compile(loss, inputs=[X], targets=[Y], prediction=sn.softmax(out),
                       backend="numpy", seed=0)
    Xb, Yb = make_data(n=6, out=2)
    assert sn.gradcheck(model, Xb, Yb, max_entries=3) < 1e-6
    P = model.predict(Xb)
    assert P.shape == (6, 2) and np.allclose(P.sum(axis=1), 1)
    assert model.predict(Xb) == pytest.approx(P, abs=0)  # no dropout in predict: no masks drawn


def test_evaluate_reads_a_deep_network_once_a_node():
    """sn.evaluate found its matrices through SymPy's free_symbols, a walk of the graph as a
    tree (8 batch-norm layers: 2.2 s, 4 × more a layer)."""
    rng = np.random.default_rng(0)
    X = sn.Input("X", 3)
    h, values = X, {"X": rng.normal(size=(5, 3))}
    expected = values["X"]
    for k in range(1, 25):
        h = sn.relu(sn.batch_norm(sn.dense(h, 3, name=str(k)), str(k)))
        W, b = rng.normal(size=(3, 3)), rng.normal(size=(1, 3))
        values.update({f"W{k}": W, f"b{k}": b, f"gamma{k}": np.full((1, 3), 2.0),
                       f"beta{k}": np.full((1, 3), 0.5)})
        z = expected @ W + b
        expected = np.maximum(2 * (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5) + 0.5, 0)
    np.testing.assert_allclose(sn.evaluate(h, values), expected, rtol=1e-9, atol=1e-12)


def test_weights_are_found_by_their_role_not_their_name():
    """sn.weights (what sn.l2 penalises) leaves out biases, gains, shifts and slopes, and finds
    a raw SymPy weight whatever its name."""
    import sympy as sp

    X = sn.Input("X", 4)
    K = sp.MatrixSymbol("K", 4, 5)
    h = sn.batch_norm(X * K, "1")
    out = sn.dense(sn.dropout(sn.relu(h), 0.2), 3, sn.prelu, name="2")
    assert sn.weights(out) == [K, sp.MatrixSymbol("W2", 5, 3)]


def test_the_weights_of_two_heads_are_penalised_once_each():
    """sn.weights of both heads lists the trunk's weight once, and sn.l2 counts a matrix once:
    ``*sn.weights(o1), *sn.weights(o2)`` penalised the trunk twice."""
    import sympy as sp

    X, Y = sn.Input("X", 4), sn.Input("Y", 2)
    trunk = sn.dense(X, 5, sn.tanh, name="t")
    o1, o2 = sn.dense(trunk, 2, name="1"), sn.dense(trunk, 2, name="2")
    W = {k: sp.MatrixSymbol(f"W{k}", *shape) for k, shape in (("t", (4, 5)), ("1", (5, 2)),
                                                             ("2", (5, 2)))}
    assert sn.weights(o1, o2) == [W["1"], W["2"], W["t"]]
    twice, once = (sn.mse(o1, Y) + sn.mse(o2, Y) + sn.l2(0.1, *ws)
                   for ws in ([*sn.weights(o1), *sn.weights(o2)], sn.weights(o1, o2)))
    values = {"X": np.ones((3, 4)), "Y": np.zeros((3, 2))}
    values.update({f"b{k}": np.full((1, w.shape[1]), 0.5) for k, w in W.items()})
    values.update({w.name: np.full(w.shape, 0.1 * (i + 1)) for i, w in enumerate(W.values())})
    assert sn.evaluate(twice, values) == pytest.approx(sn.evaluate(once, values), rel=1e-14)
    penalty = 0.05 * sum(float((values[w.name] ** 2).sum()) for w in W.values())
    assert sn.evaluate(sn.l2(0.1, W["t"], W["t"], W["1"], W["2"]), values) == pytest.approx(
        penalty, rel=1e-14)
    with pytest.raises(sn.DeclarationError, match=r"sn.weights takes the network's output"):
        sn.weights()
    with pytest.raises(sn.DeclarationError, match=r"sn.weights: X has no weight matrix"):
        sn.weights(X)
    with pytest.raises(sn.DeclarationError, match=r"l2: X has the batch's rows, so it is data"):
        sn.l2(0.1, X)
