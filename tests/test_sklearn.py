"""symnet.sklearn: scikit-learn's estimator checks, pickling, searches on Dask, and a kernel
cache shared by concurrent processes."""

import os
import pickle
import pickletools
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy.stats import loguniform, randint
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import symnet as sn
from symnet.sklearn import SymnetClassifier, SymnetRegressor, warm_up


def digits(rows=300):
    X, y = load_digits(return_X_y=True)
    return X[:rows], y[:rows]


def test_the_estimator_shows_its_maths_and_encodes_any_labels():
    X, y = digits()
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                      "nine"])[y]
    est = make_pipeline(StandardScaler(), SymnetClassifier(hidden=(32,), epochs=40,
                                                           batch_norm=True, dropout=0.1,
                                                           random_state=0)).fit(X, names)
    clf = est[-1]
    assert est.score(X, names) > 0.9
    assert set(clf.classes_) == set(names) and clf.predict_proba(X[:3]).shape == (3, 10)
    assert len(clf.loss_curve_) == clf.n_iter_ == 40
    text = " ".join(clf.model_.formulas().split())  # equations without their alignment
    for line in ("X̂1 = (Z1 − 𝟙·μ1)/(𝟙·σ1)", "D1 = A1 ∘ M1/0.9", "P = softmax(Z2)"):
        assert line in text, line


def test_integer_sample_weights_are_repetitions():
    X, y = digits(120)
    w = np.random.default_rng(0).integers(0, 3, len(y))
    a = SymnetClassifier(hidden=(8,), epochs=5, random_state=1).fit(X, y, sample_weight=w)
    b = SymnetClassifier(hidden=(8,), epochs=5, random_state=1).fit(X.repeat(w, 0), y.repeat(w))
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    # whole numbers up to rounding are whole: 1e-9 more must not switch to the weighted mean
    c = SymnetClassifier(hidden=(8,), epochs=5, random_state=1).fit(X, y, sample_weight=w + 1e-9)
    np.testing.assert_array_equal(a.predict_proba(X), c.predict_proba(X))
    with pytest.raises(sn.DataError, match=r"would make 1.2e\+11 rows; divide them by a common "
                                           r"factor"):  # not NumPy's MemoryError
        SymnetClassifier(epochs=1).fit(X, y, sample_weight=np.full(len(y), 1e9))


def test_partial_fit_trains_on_and_early_stopping_keeps_the_best_epoch():
    X, y = digits()
    est = SymnetClassifier(hidden=(16,), random_state=0)
    est.partial_fit(X, y, classes=np.arange(10))
    first = est.score(X, y)
    for _ in range(5):
        est.partial_fit(X, y)
    assert est.n_iter_ == 6 and est.score(X, y) > first
    stopped = SymnetRegressor(hidden=(8,), epochs=500, early_stopping=True, random_state=0)
    stopped.fit(X, y.astype(float))
    assert stopped.n_iter_ < 500 and len(stopped.validation_scores_) == stopped.n_iter_
    with pytest.raises(sn.DataError, match=r"classes=\[0, 1, .*, 11\] is not classes_"):
        est.partial_fit(X, y, classes=np.arange(12))  # one output per class: cannot change
    with pytest.raises(sn.DataError, match=r"y has classes \[10\] that are not among classes_ "
                                           r"\[0, .*, 9\]; the network has one output per class"):
        est.partial_fit(X, y + 1)
    with pytest.raises(sn.DataError, match=r"only one class is present: \[3\]; give it rows of "
                                           r"at least two classes"):
        SymnetClassifier(epochs=1).fit(X, np.full(len(y), 3))
    with pytest.raises(sn.DataError, match=r"y has 2 columns; the network was fitted with 1"):
        stopped.partial_fit(X, np.c_[y, y].astype(float))
    with pytest.raises(TypeError, match="unexpected keyword argument 'foo'"):
        est.partial_fit(X, y, foo=1)


def test_partial_fit_uses_a_new_learning_rate_and_alpha_and_refuses_a_new_network():
    """set_params before partial_fit was ignored: the network trained on with its first
    learning rate and penalty, and with its first shape while get_params showed another."""
    X, y = digits(100)

    def change(**params):
        est = SymnetClassifier(hidden=(8,), epochs=1, random_state=0, dtype="float64").fit(X, y)
        before = {k: v.copy() for k, v in est.model_.params.items()}
        est.set_params(**params).partial_fit(X, y)
        return {k: est.model_.params[k] - before[k] for k in before}

    slow, fast = change(learning_rate=1e-3), change(learning_rate=1e-1)
    assert np.abs(fast["W1"]).max() > 10 * np.abs(slow["W1"]).max()  # Adam's steps are ~lr
    assert not np.array_equal(change(alpha=10.0)["W1"], slow["W1"])
    est = SymnetClassifier(hidden=(8,), epochs=1, random_state=0).fit(X, y)
    with pytest.raises(sn.DeclarationError, match=r"partial_fit: hidden is \(16,\) but the "
                                                  r"network was built with hidden=\(8,\).*Call "
                                                  r"fit to build a new network"):
        est.set_params(hidden=(16,)).partial_fit(X, y)
    est.set_params(hidden=8).partial_fit(X, y)  # the same network, written as an int


def test_validation_fraction_is_checked_and_warm_up_names_what_it_needs():
    from sklearn.linear_model import LogisticRegression

    X, y = digits(100)
    with pytest.raises(sn.DeclarationError, match="validation_fraction"):
        SymnetClassifier(epochs=1, validation_fraction=7.0).fit(X, y)
    with pytest.raises(sn.DeclarationError, match=r"^SymnetRegressor: epochs must be a non-negative "
                                                  r"integer, got -1"):  # as its other settings
        SymnetRegressor(epochs=-1).fit(X, y.astype(float))
    with pytest.raises(sn.DataError, match=r"validation_fraction=0.999 of 100 rows holds out "
                                           r"all of them"):  # not train_test_split's error
        SymnetClassifier(epochs=1, early_stopping=True, validation_fraction=0.999).fit(X, y)
    with pytest.raises(sn.DeclarationError, match="a symnet estimator, or of a Pipeline ending "
                                                  "in one; got LogisticRegression"):
        warm_up(LogisticRegression(), X, y, {"C": [1.0]})
    space = {"learning_rate": loguniform(1e-4, 1e-1), "alpha": [0.0, 1e-3]}  # RandomizedSearchCV's
    assert warm_up(SymnetClassifier(hidden=(8,), epochs=1), X, y, space) == 1
    pipe = make_pipeline(StandardScaler(), SymnetClassifier(hidden=(8,), epochs=1))
    grid = {"standardscaler__with_mean": [True, False], "symnetclassifier__alpha": [0.0, 1e-3]}
    assert warm_up(pipe, X, y, grid) == 2  # another step's settings are its own to compile
    with pytest.raises(sn.DeclarationError, match=r"warm_up: batch_size is .*not a list of "
                                                  r"values; only learning_rate, alpha, "
                                                  r"random_state may be distributions"):
        warm_up(SymnetClassifier(hidden=(8,), epochs=1), X, y, {"batch_size": randint(8, 64)})


def test_validation_scores_are_scikit_learns_scores_and_the_losses_are_kept_beside_them():
    """As MLPClassifier's and MLPRegressor's: accuracy and R² of the held-out rows, higher is
    better; validation_loss_ has the loss (the L2 penalty included)."""
    from sklearn.metrics import r2_score
    from sklearn.model_selection import train_test_split

    X, y = digits()
    for est in (SymnetClassifier(hidden=(16,), epochs=8, early_stopping=True, random_state=0),
                SymnetRegressor(hidden=(16,), epochs=8, early_stopping=True, alpha=1e-3,
                                random_state=0)):
        est.fit(X, y)
        assert len(est.validation_scores_) == len(est.validation_loss_) == est.n_iter_
        assert est.validation_scores_[-1] > est.validation_scores_[0]  # training improves it
        assert est.validation_loss_[-1] < est.validation_loss_[0]
    # the kept (lowest-loss) epoch's score is the R² of the rows early stopping held out
    order = np.lexsort(np.c_[X, y].T[::-1])  # the estimator's canonical order of the rows
    _, Xv, _, yv = train_test_split(X[order], y[order], test_size=0.1, random_state=est._seed)
    kept = int(np.argmin(est.validation_loss_))
    assert est.validation_scores_[kept] == pytest.approx(r2_score(yv, est.predict(Xv)), rel=1e-9)


def test_the_classifiers_early_stopping_hold_out_is_stratified_as_mlpclassifiers():
    """A rare class kept its share of the held-out rows only by chance (a class of 2 rows got
    1 in a 30-row hold-out); MLPClassifier stratifies."""
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import train_test_split

    X, y = digits(300)
    y = (y == 3).astype(int)  # ~10 % positives
    est = SymnetClassifier(hidden=(8,), epochs=4, early_stopping=True, validation_fraction=0.2,
                           random_state=0).fit(X, y)
    order = np.lexsort(np.c_[X, y].T[::-1])  # the estimator's canonical order of the rows
    _, Xv, _, yv = train_test_split(X[order], y[order], test_size=0.2, random_state=est._seed,
                                    stratify=y[order])
    kept = int(np.argmin(est.validation_loss_))
    assert est.validation_scores_[kept] == accuracy_score(yv, est.predict(Xv))
    assert yv.sum() == round(0.2 * y.sum())  # the positives' share, not a random draw's


def test_predict_proba_rows_sum_to_one_in_float64():
    X, y = digits()
    probs = SymnetClassifier(hidden=(16,), epochs=3, random_state=0).fit(X, y).predict_proba(X)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=0, atol=4e-16)
    np.random.default_rng(0).choice(10, p=probs[0])  # NumPy's check: atol 1e-8 on the sum


def test_a_pickled_model_is_data_predicts_the_same_and_trains_on():
    X, y = digits(100)
    Y = np.eye(10)[y]
    Xs, Ys = sn.Input("X", 64), sn.Input("Y", 10)
    out = sn.dense(sn.dropout(sn.relu(sn.batch_norm(sn.dense(Xs, 16, name="1"), "1")), 0.2), 10)
    model = sn.compile(sn.softmax_cross_entropy(out, Ys), inputs=[Xs], targets=[Ys],
                       prediction=out, optimizer=sn.optim.Adam(lr=1e-2), seed=0)
    model.fit(X, Y, epochs=2, batch_size=16, verbose=False)
    blob = pickle.dumps(model)
    globals_ = {arg for op, arg, _ in pickletools.genops(blob) if op.name == "GLOBAL"}
    globals_ |= {f"{a} {b}" for a, b in _stack_globals(blob)}
    assert globals_ <= {"symnet.serialize from_bytes"}, globals_
    copy = pickle.loads(blob)
    np.testing.assert_array_equal(copy.predict(X), model.predict(X))
    for m in (model, copy):
        m.fit(X, Y, epochs=1, batch_size=16, verbose=False, seed=3)
    for k, v in model.params.items():
        np.testing.assert_array_equal(copy.params[k], v)


def _stack_globals(blob):
    """The (module, name) pairs of STACK_GLOBAL opcodes: the two strings pushed before each."""
    strings, found = [], []
    for op, arg, _ in pickletools.genops(blob):
        if isinstance(arg, str):
            strings.append(arg)
        if op.name == "STACK_GLOBAL":
            found.append(tuple(strings[-2:]))
    return found


def test_a_pickled_estimator_predicts_the_same():
    X, y = digits(100)
    est = SymnetRegressor(hidden=(8,), epochs=3, random_state=0).fit(X, y.astype(float))
    copy = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(copy.predict(X), est.predict(X))


def test_a_grid_search_on_a_dask_cluster_scores_as_one_process():
    distributed = pytest.importorskip("distributed")
    import joblib

    X, y = digits(300)
    grid = {"symnetclassifier__hidden": [(16,), (32,)],
            "symnetclassifier__learning_rate": [1e-3, 1e-2]}
    pipe = make_pipeline(StandardScaler(), SymnetClassifier(epochs=5, random_state=0))
    assert warm_up(pipe, X, y, grid) == 2  # the learning rates share their kernels
    alone = GridSearchCV(pipe, grid, cv=3, n_jobs=1).fit(X, y)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster), joblib.parallel_backend("dask"):
        spread = GridSearchCV(pipe, grid, cv=3, n_jobs=-1).fit(X, y)
    np.testing.assert_array_equal(spread.cv_results_["mean_test_score"],
                                  alone.cv_results_["mean_test_score"])


COMPILE = textwrap.dedent("""
    import hashlib, sys
    import numpy as np
    import symnet as sn
    X, Y = sn.Input("X", 12), sn.Input("Y", 3)
    out = sn.dense(sn.relu(sn.batch_norm(sn.dense(X, 24, name="1"), "1")), 3, name="2")
    model = sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y],
                       prediction=out, seed=0)
    model.compile_kernels()
    rng = np.random.default_rng(0)
    Xd, Yd = rng.normal(size=(64, 12)), np.eye(3)[rng.integers(0, 3, 64)]
    model.fit(Xd, Yd, epochs=2, batch_size=16, verbose=False)
    print(model.kernels_cached, hashlib.sha256(model.predict(Xd).tobytes()).hexdigest())
""")


def test_four_processes_compile_one_model_into_one_empty_cache(tmp_path):
    env = {**os.environ, "SYMNET_CACHE_DIR": str(tmp_path / "cache"),
           "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    procs = [subprocess.Popen([sys.executable, "-c", COMPILE], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-2000:]
    digests = {out.split()[-1] for out, _ in outputs}
    assert len(digests) == 1  # the same numbers from every process
    again = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    cached, digest = again.stdout.split()[-2:]
    assert cached == "True" and digest in digests  # a fifth process loads what they stored


def test_fresh_is_a_new_model_of_the_same_declaration_sharing_its_kernels():
    X, y = digits(64)
    Y = np.eye(10)[y]
    Xs, Ys = sn.Input("X", 64), sn.Input("Y", 10)
    out = sn.dense(sn.relu(sn.dense(Xs, 8, name="1")), 10, name="2")
    loss = sn.softmax_cross_entropy(out, Ys)
    first = sn.compile(loss, inputs=[Xs], targets=[Ys], prediction=out, seed=0)
    first.fit(X, Y, epochs=2, batch_size=16, verbose=False)
    again = first.fresh(seed=5)
    declared = sn.compile(loss, inputs=[Xs], targets=[Ys], prediction=out, seed=5)
    for k, v in declared.params.items():  # initialised as compile(seed=5) would
        np.testing.assert_array_equal(again.params[k], v)
        assert again.params[k] is not first.params[k]
    assert again._runners is first._runners and again._steps == 0
    again.fit(X, Y, epochs=2, batch_size=16, verbose=False)
    declared.fit(X, Y, epochs=2, batch_size=16, verbose=False)
    for k, v in declared.params.items():
        np.testing.assert_array_equal(again.params[k], v)


def test_bad_estimator_input_is_named():
    X, y = digits(40)
    with pytest.raises(ValueError, match="Negative values in data passed to"):
        SymnetClassifier(epochs=1).fit(X, y, sample_weight=np.r_[-1.0, np.ones(39)])
    with pytest.raises(sn.DeclarationError, match=r"activation='rleu' is not one of"):
        SymnetClassifier(activation="rleu").fit(X, y)
    for batch_size, got in [(0, "got 0"), (-5, "got -5"), ("big", "got 'big'"), (2.5, "got 2.5")]:
        with pytest.raises(sn.DeclarationError, match=rf"SymnetClassifier: batch_size must be a "
                                                      rf"positive integer or 'auto' \(200 rows "
                                                      rf"at most\), {got}; pass e.g."):
            SymnetClassifier(batch_size=batch_size).fit(X, y)
    for params, message in [
            ({"hidden": None}, "hidden must be a tuple of layer widths ≥ 1 such as \\(100,\\), "
                               "got None"),
            ({"learning_rate": -1}, "learning_rate must be a finite real number > 0, got -1; "
                                    "pass e.g. learning_rate="),
            ({"dropout": 1.0}, "dropout must be a finite real number ≥ 0 and < 1, got 1.0; pass "
                               "e.g. dropout="),
            ({"batch_norm": "yes"}, "batch_norm must be True or False, got 'yes'"),
            ({"batch_norm": True, "batch_size": 1},
             "batch_norm needs batches of at least 2 rows .* got batch_size=1; pass "
             "batch_size=2 or more, or batch_norm=False"),
            ({"validation_fraction": 0},
             "SymnetClassifier: validation_fraction must be a finite real number > 0 and < 1, "
             "got 0")]:
        with pytest.raises(sn.DeclarationError, match=message):
            SymnetClassifier(**params).fit(X, y)


def test_data_errors_name_the_callers_rows():
    """Training reorders and repeats the rows; an error names the row of the caller's data."""
    X, y = digits(60)
    X = X.astype(np.float64)
    X[37, 9] = 1e39
    with pytest.raises(sn.DataError, match=r"X has the value 1e\+39 in row 37, column 9, too "
                                           r"large for float32 .*pass dtype='float64'"):
        SymnetClassifier(epochs=1).fit(X, y)
    X[37, 9] = 0
    big = np.arange(60) * 1e38
    with pytest.raises(sn.DataError, match=r"y has the value 4e\+38 in row 4, too large"):
        SymnetRegressor(epochs=1).fit(X, big)


def test_a_diverging_estimator_suggests_its_own_parameters():
    """The estimators have learning_rate= and no clip_norm=: the remedy names what they have."""
    X, y = digits(60)
    with pytest.raises(sn.DataError, match=r"became .*A smaller learning_rate, scaled inputs "
                                           r"\(StandardScaler\) or dtype='float64' usually help"):
        SymnetRegressor(epochs=3, optimizer="sgd", learning_rate=1e6).fit(X, y * 1e3)


def test_batch_size_auto_is_scikit_learns_200_rows_at_most():
    X, y = digits(260)
    auto = SymnetClassifier(batch_size="auto", epochs=2, random_state=0).fit(X, y)
    rows = SymnetClassifier(batch_size=200, epochs=2, random_state=0).fit(X, y)
    np.testing.assert_array_equal(auto.predict_proba(X), rows.predict_proba(X))
    few = SymnetClassifier(batch_size="auto", epochs=2, random_state=0).fit(X[:50], y[:50])
    full = SymnetClassifier(batch_size=50, epochs=2, random_state=0).fit(X[:50], y[:50])
    np.testing.assert_array_equal(few.predict_proba(X), full.predict_proba(X))


def test_batch_norm_raises_a_batch_size_that_leaves_one_row():
    """33 rows in batches of 32 would leave a last batch of one row, whose variance is 0: the
    estimator trains in batches of 33, as documented."""
    X, y = digits(33)
    kw = dict(hidden=(8,), batch_norm=True, epochs=2, random_state=0)
    raised = SymnetClassifier(batch_size=32, **kw).fit(X, y)
    whole = SymnetClassifier(batch_size=33, **kw).fit(X, y)
    np.testing.assert_array_equal(raised.predict_proba(X), whole.predict_proba(X))
    assert raised.get_params()["batch_size"] == 32
