"""Optimizers, clipping and schedules against torch.optim; fit's seeds, early stopping, NaN
localisation; save and load."""

import json
import pickle
import zipfile

import numpy as np
import pytest
import sympy as sp
from conftest import make_data

import symnet as sn

OPTIMIZERS = {
    "sgd": ("SGD", dict(lr=0.1)),
    "sgd_momentum": ("SGD", dict(lr=0.1, momentum=0.9)),
    "sgd_nesterov": ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    "sgd_decay": ("SGD", dict(lr=0.1, weight_decay=0.01)),
    "adagrad": ("AdaGrad", dict(lr=0.1)),
    "adagrad_lr_decay": ("AdaGrad", dict(lr=0.1, lr_decay=0.05)),
    "rmsprop": ("RMSProp", dict(lr=0.01)),
    "rmsprop_centered_momentum": ("RMSProp", dict(lr=0.01, centered=True, momentum=0.5)),
    "adadelta": ("AdaDelta", dict(lr=1.0)),
    "adam": ("Adam", dict(lr=0.01)),
    "adam_decay": ("Adam", dict(lr=0.01, weight_decay=0.1)),
    "adamw": ("AdamW", dict(lr=0.01)),
}
TORCH_NAMES = {"SGD": "SGD", "AdaGrad": "Adagrad", "RMSProp": "RMSprop", "AdaDelta": "Adadelta",
               "Adam": "Adam", "AdamW": "AdamW"}


def tanh_model(optimizer, backend="numpy"):
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    out = sn.dense(sn.dense(X, 5, sn.tanh), 3)
    return sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], prediction=out, dtype="float64",
                      optimizer=optimizer, seed=0, backend=backend)


def torch_steps(torch, params, Xb, Yb, opt, steps=5, clip=None, scheduler=None):
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt = opt(list(tp.values()))
    sched = scheduler(opt) if scheduler else None
    Xt, Yt = torch.tensor(Xb), torch.tensor(Yb)
    for _ in range(steps):
        opt.zero_grad()
        h = torch.tanh(Xt @ tp["W1"] + tp["b1"]) @ tp["W2"] + tp["b2"]
        torch.nn.functional.mse_loss(h, Yt).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(list(tp.values()), clip)
        opt.step()
        if sched:
            sched.step()
    return {k: v.detach().numpy() for k, v in tp.items()}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_five_optimizer_steps_match_torch(name):
    torch = pytest.importorskip("torch")
    cls, kwargs = OPTIMIZERS[name]
    model = tanh_model(getattr(sn.optim, cls)(**kwargs))
    theirs = torch_steps(torch, model.params, *make_data(n=10, kind="real"),
                         lambda ps: getattr(torch.optim, TORCH_NAMES[cls])(ps, **kwargs))
    model.fit(*make_data(n=10, kind="real"), epochs=5, batch_size=10, shuffle=False,
              verbose=False)
    for k in model.params:
        np.testing.assert_allclose(model.params[k], theirs[k], rtol=0, atol=1e-10, err_msg=k)


def test_clip_norm_matches_torch_clip_grad_norm():
    torch = pytest.importorskip("torch")
    model = tanh_model(sn.optim.SGD(lr=0.5, momentum=0.9, clip_norm=0.05))
    theirs = torch_steps(torch, model.params, *make_data(n=10, kind="real"),
                         lambda ps: torch.optim.SGD(ps, lr=0.5, momentum=0.9), clip=0.05)
    model.fit(*make_data(n=10, kind="real"), epochs=5, batch_size=10, shuffle=False, verbose=False)
    for k in model.params:
        np.testing.assert_allclose(model.params[k], theirs[k], rtol=0, atol=1e-10, err_msg=k)
    update = model.formulas().split("Update:\n")[1].splitlines()
    assert update[:2] == ["  clip ← min(1, 0.05/(‖g‖₂ + 1e-6))", "  g ← clip·g"]


@pytest.mark.parametrize("schedule, scheduler", [
    (lambda: sn.schedules.step(0.1, step_size=2, gamma=0.5),
     lambda t: lambda o: t.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5)),
    (lambda: sn.schedules.exponential(0.1, gamma=0.7),
     lambda t: lambda o: t.optim.lr_scheduler.ExponentialLR(o, gamma=0.7)),
    (lambda: sn.schedules.cosine(0.1, total=5, lr_min=0.01),  # held at lr_min from step 6
     lambda t: lambda o: t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5, eta_min=0.01)),
    (lambda: sn.schedules.warmup(0.1, 3, after=sn.schedules.exponential(0.1, 0.5)),
     lambda t: lambda o: t.optim.lr_scheduler.SequentialLR(
         o, [t.optim.lr_scheduler.LinearLR(o, start_factor=1 / 3, total_iters=2),
             t.optim.lr_scheduler.ExponentialLR(o, 0.5)], milestones=[3])),
    (lambda: sn.schedules.cyclic(0.01, 0.1, step_size=2),
     lambda t: lambda o: t.optim.lr_scheduler.CyclicLR(o, 0.01, 0.1, step_size_up=2,
                                                       cycle_momentum=False)),
])
def test_schedules_match_torch_schedulers(schedule, scheduler):
    torch = pytest.importorskip("torch")
    model = tanh_model(sn.optim.SGD(lr=schedule()))
    lr0 = model.optimizer.lr.base
    theirs = torch_steps(torch, model.params, *make_data(n=10, kind="real"),
                         lambda ps: torch.optim.SGD(ps, lr=lr0), steps=6,
                         scheduler=scheduler(torch))
    model.fit(*make_data(n=10, kind="real"), epochs=6, batch_size=10, shuffle=False, verbose=False)
    for k in model.params:
        np.testing.assert_allclose(model.params[k], theirs[k], rtol=0, atol=1e-10, err_msg=k)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_decay_periods_start_on_the_step_they_should_on_both_backends(backend):
    """SymPy stores ⌊(t − 1)/3⌋ as ⌊t/3 − 1/3⌋, which is 1.9999999999999998 at t = 7: the
    backends divide the quotient as written, so that every period starts on time (the numpy
    backend used the previous period's rate at steps 7, 10, 13, …)."""
    X, W = sn.Input("X", 2), sn.parameter("W", 2, 1)
    for schedule, periods in [(sn.schedules.step(1.0, 3, 0.5), lambda t: (t - 1) // 3),
                              (sn.schedules.exponential(1.0, 0.5, every=7), lambda t: (t - 1) // 7)]:
        model = sn.compile(sn.sum(X * W) / sn.batch, inputs=[X], dtype="float64", seed=0,
                           backend=backend, optimizer=sn.optim.SGD(lr=schedule))
        steps = []
        for _ in range(45):
            before = model.params["W"][0, 0]
            model.fit(np.ones((4, 2)), epochs=1, batch_size=4, verbose=False)
            steps.append(before - model.params["W"][0, 0])  # ∂L/∂W = 1: the step is the rate
        assert steps == pytest.approx([0.5 ** periods(t) for t in range(1, 46)], rel=1e-12)


def test_schedule_values_and_formula():
    s = sn.schedules.warmup(0.1, steps=4, after=sn.schedules.inverse_time(0.1, decay=0.5))
    assert [s(t) for t in (1, 2, 4, 5, 6)] == pytest.approx([0.025, 0.05, 0.1, 0.1, 0.1 / 1.5])
    e = sn.schedules.natural_exponential(0.1, decay=0.5, every=10)
    assert e(10) == pytest.approx(0.1) and e(11) == pytest.approx(0.1 * np.exp(-0.5))
    model = tanh_model(sn.optim.SGD(lr=sn.schedules.exponential(0.1, 0.5, every=10)))
    assert "lr ← 0.1·0.5^(floor((t − 1)/10))" in model.formulas()


@pytest.mark.parametrize("name, expr, message", [
    ("with space", lambda t: 0.1 / t, r"the name 'with space' must be an identifier"),
    ("pole", lambda t: 1 / (t - 1), r"at step t = 1 the rate 1/\(t - 1\) is inf; a learning "
                                    r"rate must be finite and ≥ 0 at every step"),
    ("uphill", lambda t: 0.1 - 0.001 * t, r"at step t = 101 the rate .* is -0.00"),
    ("own_t", lambda t: 0.1 / sp.Symbol("t"), r"the free symbols \['t'\]; the step is "
                                               r"sn.schedules.t \(a Symbol\('t'\) of your own"),
])
def test_a_schedule_that_cannot_be_a_learning_rate_is_refused_when_made(name, expr, message):
    """A name with a space saved and failed to load; 1/(t − 1) stopped fit with a
    ZeroDivisionError from generated code; a negative rate trained uphill; Symbol('t') failed
    in the kernels with advice that led into SymPy."""
    with pytest.raises(sn.DeclarationError, match=message):
        sn.schedules.Schedule(name, expr(sn.schedules.t), 0.1)


def test_the_reference_update_divides_by_zero_as_the_kernels_do():
    """A rate with a pole past the steps a schedule is checked at: the reference backend's
    update raised ZeroDivisionError from Python's floats, where the kernels compute inf and the
    update's own check names the formula."""
    from codegen.ir import UPDATE_SYMBOLS, Update
    from codegen.numpy_backend import NumpyUpdater

    p, g, t, lr = UPDATE_SYMBOLS["p"], UPDATE_SYMBOLS["g"], UPDATE_SYMBOLS["t"], sp.Symbol("lr")
    updater = NumpyUpdater(Update(((lr, 1 / (t - 20_000)), (p, p - lr * g))))
    params, grads = {"W": np.ones((2, 2))}, {"W": np.full((2, 2), 0.5)}
    assert updater.first_non_finite(params, grads, {"W": {}}, 20_000) == ("W", 0)
    updater.step(params, grads, {"W": {}}, 20_000)
    assert np.isinf(params["W"]).all()


def test_an_optimizers_repr_is_the_call_that_makes_it():
    """repr(model) shows it; its state variables (SGD's buf) are not arguments."""
    for opt in (sn.optim.SGD(lr=0.1, momentum=0.9, nesterov=True), sn.optim.Adam(3e-4),
                sn.optim.RMSProp(centered=True, momentum=0.5), sn.optim.AdaGrad(lr_decay=0.1),
                sn.optim.AdamW(weight_decay=0.05, clip_norm=1.0), sn.optim.AdaDelta()):
        again = eval(repr(opt), vars(sn.optim))
        assert repr(again) == repr(opt) and again.state == opt.state, repr(opt)


def test_hyperparameters_out_of_range_are_refused():
    for bad in [lambda: sn.optim.RMSProp(alpha=1.0), lambda: sn.optim.AdaDelta(rho=-0.1),
                lambda: sn.optim.AdamW(betas=(0.9,)), lambda: sn.optim.SGD(clip_norm=0),
                lambda: sn.schedules.step(0.1, step_size=0), lambda: sn.schedules.cosine(-1, 5)]:
        with pytest.raises(sn.DeclarationError):
            bad()


@pytest.mark.parametrize("change", ["schedule", "momentum", "rate of a schedule", "class"])
def test_an_optimizer_changed_after_compile_in_more_than_its_rate_is_refused(change):
    """The kernels apply the rule they were compiled with: a schedule, momentum or another
    class set on model.optimizer afterwards trained as before (or not at all) while the
    formulas showed the new rule. Another numeric rate is read at run time and applies."""
    lr = sn.schedules.step(0.1, 2) if change == "rate of a schedule" else 0.1
    model = tanh_model(sn.optim.SGD(lr=lr))
    if change == "schedule":
        model.optimizer.lr = sn.schedules.step(0.1, 2)
    elif change == "momentum":
        model.optimizer.momentum = 0.9
    elif change == "rate of a schedule":
        model.optimizer.lr = 0.5
    else:
        model.optimizer = sn.optim.Adam(0.1)
    Xb, Yb = make_data(n=8)
    for call in (lambda: model.fit(Xb, Yb, verbose=False), model.formulas, model.latex,
                 lambda: model.explain(Xb, Yb), lambda: pickle.dumps(model)):
        with pytest.raises(sn.DeclarationError, match=r"model.optimizer was changed after "
                                                      r"compile to .*; (only a numeric learning "
                                                      r"rate may change \(model.optimizer.lr = "
                                                      r"0.01\)|the learning-rate "
                                                      r"schedule it was compiled with cannot "
                                                      r"change)\. Set it back to what it was "
                                                      r"compiled with, SGD\(lr="):
            call()


def test_an_optimizer_takes_only_its_own_settings_and_names_the_way_back():
    """A misspelt setting (learning_rate for lr, Adam's amsgrad) was kept, shown by repr and
    ignored; a numeric rate set on a model compiled with a schedule was refused with advice to
    set a numeric rate."""
    with pytest.raises(sn.DeclarationError, match=r"SGD has no setting 'learning_rate'; its "
                                                  r"settings are clip_norm, lr, momentum"):
        sn.optim.SGD(lr=0.1).learning_rate = 1e-3
    with pytest.raises(sn.DeclarationError, match=r"Adam has no setting 'amsgrad'"):
        sn.optim.Adam().amsgrad = True
    model = tanh_model(sn.optim.SGD(lr=sn.schedules.step(0.1, 2)))
    model.optimizer.lr = 0.01
    with pytest.raises(sn.DeclarationError, match=r"the learning-rate schedule it was compiled "
                                                  r"with cannot change\. Set it back to what it "
                                                  r"was compiled with, SGD\(lr=step: "):
        model.formulas()


def test_a_learning_rate_set_between_fits_is_checked_and_applied():
    model = tanh_model(sn.optim.SGD(lr=0.1))
    for bad in ("abc", None, -1.0, float("nan")):
        with pytest.raises(sn.DeclarationError, match=r"SGD: lr must be a finite real number > 0"):
            model.optimizer.lr = bad
    Xb, Yb = make_data(n=8)
    model.optimizer.lr = 0.05
    before = {k: v.copy() for k, v in model.params.items()}
    _, grads = model.loss_and_grad(Xb, Yb)
    model.fit(Xb, Yb, batch_size=8, shuffle=False, verbose=False)
    for k, v in model.params.items():
        np.testing.assert_allclose(v, before[k] - 0.05 * grads[k], rtol=1e-12, atol=1e-15)
    assert "p ← p − 0.05·g" in model.formulas()


# ---------------------------------------------------------------------------- fit


def digits(n=300):
    (Xtr, Ytr), (Xte, Yte) = sn.datasets.load_digits()
    return Xtr[:n], Ytr[:n], Xte, Yte


def digits_model(backend="numpy", seed=3, lr=0.5):
    X, Y = sn.Input("X", 64), sn.Input("Y", 10)
    out = sn.dense(sn.dense(X, 16, sn.sigmoid), 10)
    return sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y], prediction=out,
                      optimizer=sn.optim.SGD(lr=lr, momentum=0.9), seed=seed, backend=backend)


def test_seed_reproduces_a_run_bit_for_bit():
    Xtr, Ytr, _, _ = digits()
    runs = []
    for _ in range(2):
        model = digits_model(seed=7)
        model.fit(Xtr, Ytr, epochs=2, batch_size=32, verbose=False)
        runs.append(model.params)
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k])
    other = digits_model(seed=8)
    assert not np.array_equal(other.params["W1"], runs[0]["W1"])


def test_early_stopping_restores_the_best_epoch():
    Xtr, Ytr, Xte, Yte = digits(100)
    noisy = np.roll(Yte, 1, axis=1)  # wrong labels: the validation loss must start rising
    model = digits_model(lr=1.0)
    hist = model.fit(Xtr, Ytr, epochs=60, batch_size=20, validation_data=(Xte, noisy),
                     early_stopping=3, verbose=False)
    assert len(hist.loss) < 60
    best = int(np.argmin(hist.val_loss))
    assert hist.best_epoch == best + 1 and len(hist.val_loss) == best + 1 + 3
    assert model.evaluate(Xte, noisy)["loss"] == pytest.approx(hist.val_loss[best], rel=1e-6)
    with pytest.raises(sn.DataError, match="validation_data"):
        model.fit(Xtr, Ytr, early_stopping=3)


def test_validation_split_holds_out_the_last_rows_before_shuffling_as_keras_does():
    Xtr, Ytr, _, _ = digits(100)
    weights = np.linspace(0.5, 1.5, 100)
    split = digits_model().fit(Xtr, Ytr, epochs=3, batch_size=20, validation_split=0.25, seed=1,
                               sample_weight=weights, verbose=False)
    given = digits_model().fit(Xtr[:75], Ytr[:75], epochs=3, batch_size=20, seed=1,
                               validation_data=(Xtr[75:], Ytr[75:]), sample_weight=weights[:75],
                               verbose=False)
    assert split.loss == given.loss and split.val_loss == given.val_loss
    model = digits_model()
    with pytest.raises(sn.DataError, match=r"validation_split=0\.999 of 100 rows leaves no row "
                                           r"to train on"):
        model.fit(Xtr, Ytr, validation_split=0.999, verbose=False)
    with pytest.raises(sn.DataError, match="validation_split must be a finite real number > 0 "
                                           "and < 1, got 1.0"):
        model.fit(Xtr, Ytr, validation_split=1.0, verbose=False)
    with pytest.raises(sn.DataError, match=r"sample_weight needs one weight per row of the "
                                           r"data, shape \(100,\); got shape \(75,\)"):
        model.fit(Xtr, Ytr, validation_split=0.25, sample_weight=weights[:75], verbose=False)
    with pytest.raises(sn.DataError, match="pass validation_data or validation_split, not both"):
        model.fit(Xtr, Ytr, validation_split=0.2, validation_data=(Xtr, Ytr), verbose=False)
    stopped = model.fit(Xtr, Ytr, epochs=40, validation_split=0.2, early_stopping=2, verbose=False)
    assert len(stopped.val_loss) == len(stopped.loss) <= 40
    holed = Xtr.copy()
    holed[90, 3] = np.nan  # a held-out row: checked as validation_data is
    with pytest.raises(sn.DataError, match=r"^in the last 25 rows, which validation_split holds "
                                           r"out: X has a non-finite value \(nan\) in row 15"):
        model.fit(holed, Ytr, validation_split=0.25, verbose=False)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_divergence_names_epoch_batch_and_formula(backend):
    X, Y = sn.Input("X", 1), sn.Input("Y", 1)
    out = sn.dense(sn.dense(X, 4, sn.relu), 1)
    model = sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], prediction=out,
                       optimizer=sn.optim.SGD(lr=1e12), seed=0, backend=backend)
    Xb = np.linspace(-3, 3, 40)[:, None]
    with pytest.raises(sn.DataError) as err:
        model.fit(Xb, 5 * Xb, epochs=3, batch_size=10, verbose=False)
    msg = str(err.value)
    assert "in epoch 1, batch " in msg and "first formula whose value is not finite" in msg
    assert "before this step" in msg
    assert all(np.isfinite(v).all() for v in model.params.values())


def test_fit_runs_many_epochs_per_kernel_call_and_keeps_a_loss_per_epoch():
    X, Y = sn.Input("X", 1), sn.Input("Y", 1)
    out = sn.dense(sn.dense(X, 10, sn.relu), 1)
    model = sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], prediction=out,
                       optimizer=sn.optim.Adam(lr=1e-2), seed=0)
    rng = np.random.default_rng(0)
    Xb = rng.uniform(-1, 1, (100, 1))
    hist = model.fit(Xb, 2 * Xb + 1 + rng.uniform(0, 1, (100, 1)), epochs=300, batch_size=100,
                     verbose=False)
    assert len(hist.loss) == len(hist.seconds) == 300
    assert hist.loss[-1] < 0.2 < hist.loss[0]  # the noise U(0, 1) alone has variance 1/12


def test_a_one_input_layer_gets_weights_not_zeros():
    """W1 of a 1-input network is 1×units like a bias, but it must not start at zero."""
    X, Y = sn.Input("X", 1), sn.Input("Y", 1)
    out = sn.dense(sn.dense(X, 10, sn.relu), 1)
    model = sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], seed=0, backend="numpy")
    assert np.all(model.params["W1"] != 0) and not model.params["b1"].any()


# ---------------------------------------------------------------------------- save / load


def test_save_and_load_round_trip(tmp_path):
    Xtr, Ytr, Xte, Yte = digits(200)
    model = digits_model()
    model.fit(Xtr, Ytr, epochs=1, batch_size=50, verbose=False)
    model.save(tmp_path / "m.npz")
    loaded = sn.load(tmp_path / "m.npz")
    assert loaded.formulas() == model.formulas()
    np.testing.assert_array_equal(loaded.predict(Xte), model.predict(Xte))
    for m in (model, loaded):  # optimizer state (momentum) and step count came back too
        m.fit(Xtr, Ytr, epochs=1, batch_size=50, shuffle=False, verbose=False)
    for k in model.params:
        np.testing.assert_array_equal(loaded.params[k], model.params[k])
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temporary file left behind


def test_load_refuses_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(sn.DataError, match="no model file"):
        sn.load(tmp_path / "nothing.npz")
    with pytest.raises(sn.DataError, match=r"is a directory, with no \.npz file in it"):
        sn.load(tmp_path)
    model = digits_model()
    model.save(tmp_path / "m.npz")
    data = (tmp_path / "m.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(sn.DataError, match="truncated"):
        sn.load(tmp_path / "cut.npz")
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    with pytest.raises(sn.DataError, match="not a symnet model"):
        sn.load(tmp_path / "foreign.npz")
    with pytest.raises(sn.DataError, match=r"is a directory; pass a model file, such as "
                                           r".*cut\.npz or .*foreign\.npz or .*m\.npz$"):
        sn.load(tmp_path)


def test_load_never_runs_code_from_the_file(tmp_path):
    model = digits_model()
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as f:
        arrays = dict(f)
    meta = json.loads(str(arrays["meta"]))
    meta["loss"] = ["__import__", ["Symbol", "os", []]]
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "evil.npz", **arrays)
    with pytest.raises(sn.DataError, match="node type '__import__'"):
        sn.load(tmp_path / "evil.npz")
    with zipfile.ZipFile(tmp_path / "m.npz") as z:
        assert all(name.endswith(".npy") for name in z.namelist())


def test_models_that_differ_in_learning_rate_share_their_kernels():
    """The rate is a run-time input of the kernels: a sweep over it compiles once, and a
    fresh model may take another rate (not another optimizer)."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    out = sn.dense(sn.dense(X, 5, sn.tanh), 3)
    loss = sn.softmax_cross_entropy(out, Y)
    a, b = (sn.compile(loss, inputs=[X], targets=[Y], seed=0, optimizer=sn.optim.Adam(lr=lr))
            for lr in (1e-3, 5e-2))
    assert a.source == b.source
    assert "p ← p − 0.05·m/" in b.formulas() and "0.05" not in b.source
    rng = np.random.default_rng(0)
    Xd, Yd = rng.normal(size=(20, 4)), np.eye(3)[rng.integers(0, 3, 20)]
    c = a.fresh(seed=0, optimizer=sn.optim.Adam(lr=5e-2))
    for m in (b, c):
        m.fit(Xd, Yd, epochs=3, batch_size=5, shuffle=False, verbose=False)
    for k, v in b.params.items():
        np.testing.assert_array_equal(c.params[k], v)
    with pytest.raises(sn.DeclarationError, match="only in its learning rate"):
        a.fresh(optimizer=sn.optim.SGD(lr=0.1))
