"""Targets and predictions as practitioners pass them: integer class labels of shape (n,),
accuracy for a one-column sigmoid classifier, and several predictions at once."""

import numpy as np
import pytest

import symnet as sn


def classifier(k=3, backend="numpy"):
    X, Y = sn.Input("X", 4), sn.Input("Y", k)
    out = sn.dense(sn.dense(X, 6, sn.relu), k)
    return sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y],
                      prediction=sn.softmax(out), optimizer=sn.optim.Adam(0.05), seed=2,
                      backend=backend)


def data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    return X, (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_integer_labels_train_and_evaluate_as_their_one_hot_rows(backend):
    X, labels = data()
    a, b = classifier(backend=backend), classifier(backend=backend)
    ha = a.fit(X, labels, epochs=3, batch_size=16, validation_data=(X[:20], labels[:20]),
               verbose=False)
    hb = b.fit(X, np.eye(3)[labels], epochs=3, batch_size=16,
               validation_data=(X[:20], np.eye(3)[labels[:20]]), verbose=False)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert ha.val_accuracy == hb.val_accuracy and ha.loss == hb.loss
    assert a.evaluate(X, list(labels)) == b.evaluate(X, np.eye(3)[labels])
    loss, grads = a.loss_and_grad(X[:5], labels[:5].astype(np.int32))
    assert loss == b.loss_and_grad(X[:5], np.eye(3)[labels[:5]])[0]


def test_labels_in_a_pandas_series_are_class_labels():
    pd = pytest.importorskip("pandas")
    X, labels = data()
    a, b = classifier(), classifier()
    a.fit(X, pd.Series(labels), epochs=2, batch_size=16, verbose=False)
    b.fit(X, labels, epochs=2, batch_size=16, verbose=False)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert a.evaluate(pd.DataFrame(X), pd.Series(labels)) == b.evaluate(X, labels)


def test_softmax_cross_entropy_refuses_targets_that_are_not_class_distributions():
    """Its loss Σ logsumexp(Z) − Σ Y∘Z is the cross-entropy (torch's) only for rows summing to
    1: for several labels per row it would silently train another loss."""
    X, labels = data()
    model, one_hot = classifier(), np.eye(3)[labels]
    fix = r"one-hot rows or probabilities, each row ≥ 0 and summing to 1"
    with pytest.raises(sn.DataError, match=rf"row 0 of Y sums to 2; softmax_cross_entropy's "
                                           rf"targets are {fix}"):
        model.fit(X, 2 * one_hot, verbose=False)
    several = one_hot.copy()
    several[7, :] = 1
    with pytest.raises(sn.DataError, match=r"row 7 of Y sums to 3;.*binary_cross_entropy"):
        model.evaluate(X, several)
    negative = one_hot - 0.25 * (np.arange(3) == 2) + 0.25 * (np.arange(3) == 0)
    with pytest.raises(sn.DataError, match=r"Y has the negative value -0.25 in row 0, column 2"):
        model.fit(X, one_hot, validation_data=(X, negative), verbose=False)
    soft = 0.8 * one_hot + 0.2 / 3  # probabilities train
    model.fit(X, soft.astype(np.float32), epochs=1, verbose=False)


def test_a_regression_is_scored_by_r2_as_scikit_learn_scores_it(capsys):
    """evaluate, the validation history and fit's lines give R² (averaged over the outputs)
    where accuracy does not apply."""
    from sklearn.metrics import r2_score

    X, labels = data()
    Y = np.c_[X[:, 0] - 2 * X[:, 1], X[:, 2] ** 2]
    Xs, Ys = sn.Input("X", 4), sn.Input("Y", 2)
    out = sn.dense(sn.dense(Xs, 6, sn.tanh), 2)
    model = sn.compile(sn.mse(out, Ys), inputs=[Xs], targets=[Ys], prediction=out, seed=0,
                       optimizer=sn.optim.Adam(0.05), backend="numpy")
    hist = model.fit(X, Y, epochs=3, batch_size=16, validation_data=(X[:20], Y[:20]),
                     verbose=False)
    assert hist.val_r2[-1] == pytest.approx(r2_score(Y[:20], model.predict(X[:20])), rel=1e-6)
    assert model.evaluate(X, Y)["r2"] == pytest.approx(r2_score(Y, model.predict(X)), rel=1e-6)
    assert np.isnan(model.evaluate(X[:1], Y[:1])["r2"])  # not defined for one row, as sklearn's
    assert "r2" not in classifier().evaluate(X, labels)
    capsys.readouterr()
    hist = model.fit(X, Y, epochs=1, validation_data=(X[:20], Y[:20]), verbose=2)
    assert f" - val_r2 {hist.val_r2[-1]:.4f} - " in capsys.readouterr().out


def test_several_labels_per_row_of_a_sigmoid_are_scored_label_by_label():
    X, labels = data()
    Y = np.c_[X[:, 0] > 0, X[:, 1] > 0, X[:, 2] > 0].astype(np.float64)  # 0 to 3 labels a row
    Xs, Ys = sn.Input("X", 4), sn.Input("Y", 3)
    z = sn.dense(sn.dense(Xs, 6, sn.tanh), 3)
    model = sn.compile(sn.binary_cross_entropy(sn.sigmoid(z), Ys), inputs=[Xs], targets=[Ys],
                       prediction=sn.sigmoid(z), seed=0, backend="numpy")
    result = model.evaluate(X, Y)
    assert "r2" not in result
    assert result["accuracy"] == pytest.approx(np.mean((model.predict(X) > 0.5) == Y))


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 1, 3]), r"class label 3 in row 2 is outside 0…2"),
    (np.array([0, -1, 2]), r"class label -1 in row 1 is outside 0…2"),
    (np.array([0.0, 1.5, 2.0]), r"read as class labels 0…2, but it holds float64 values that "
                                r"are not whole numbers: pass integer class labels of shape "
                                r"\(n,\), or one row"),
    (np.array(["cat", "dog", "cat"]), r"np.unique\(labels, return_inverse=True\)\[1\] numbers"),
])
def test_labels_that_are_not_classes_are_refused(labels, message):
    model = classifier()
    with pytest.raises(sn.DataError, match=message):
        model.evaluate(np.zeros((3, 4)), labels)


@pytest.mark.parametrize("labels", [np.array([0.0, 1.0, 2.0]), np.array([[0], [1], [2]]),
                                    np.array([[0.0], [1.0], [2.0]]), [0, 1, 2]])
def test_whole_number_floats_and_a_column_of_labels_are_class_labels(labels):
    model = classifier()
    X = np.random.default_rng(0).normal(size=(3, 4))
    assert model.evaluate(X, labels) == model.evaluate(X, np.eye(3))


def test_binary_cross_entropy_refuses_targets_outside_zero_and_one():
    """A target of 2 trains σ(Z) towards 1 without end, the loss falling below any number."""
    X, labels = data()
    model = binary()
    with pytest.raises(sn.DataError, match=r"Y has the value 2 in row 0, column 0; "
                                           r"binary_cross_entropy's targets are probabilities"):
        model.fit(X, np.full((len(X), 1), 2.0), verbose=False)
    assert binary(prediction_is_probability=False).evaluate(X, np.full((len(X), 1), 2.0))


def test_softmax_cross_entropy_of_one_column_is_refused():
    X, Y = sn.Input("X", 4), sn.Input("Y", 1)
    with pytest.raises(sn.DeclarationError, match=r"softmax over one class is 1 for every row"):
        sn.softmax_cross_entropy(sn.dense(X, 1), Y)


def binary(prediction_is_probability=True):
    X, Y = sn.Input("X", 4), sn.Input("Y", 1)
    out = sn.dense(sn.dense(X, 5, sn.tanh), 1)
    if prediction_is_probability:
        return sn.compile(sn.binary_cross_entropy(sn.sigmoid(out), Y), inputs=[X], targets=[Y],
                          prediction=sn.sigmoid(out), optimizer=sn.optim.Adam(0.05),
                          backend="numpy")
    return sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], prediction=out, backend="numpy")


def test_a_sigmoid_classifier_reports_accuracy_at_the_threshold_one_half():
    X, labels = data(n=80, seed=3)
    y = (labels > 0).astype(float)
    model = binary()
    hist = model.fit(X, y, epochs=4, validation_data=(X[:30], y[:30]), verbose=False)
    assert len(hist.val_accuracy) == 4
    result = model.evaluate(X, y)
    expected = np.mean((model.predict(X)[:, 0] > 0.5) == (y > 0.5))
    assert result["accuracy"] == pytest.approx(expected)
    assert "accuracy" not in model.evaluate(X, 0.3 * y)  # targets that are not classes


def test_a_regression_with_zero_one_targets_reports_no_accuracy():
    X, labels = data()
    assert "accuracy" not in binary(prediction_is_probability=False).evaluate(X, labels > 0)


# ------------------------------------------------------------------- several predictions


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_several_predictions_come_back_as_a_tuple_and_survive_save_and_load(backend, tmp_path):
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    out = sn.dense(sn.dense(X, 5, sn.tanh), 3)
    model = sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y],
                       prediction=[sn.softmax(out), out], seed=1, backend=backend)
    Xb, labels = data(n=9)
    probabilities, logits = model.predict(Xb)
    assert probabilities.shape == logits.shape == (9, 3)
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5)
    shown = model.formulas()
    assert "  P2 = A1·W2 + 𝟙·b2\n" in shown and "  P1 = softmax(P2)\n" in shown
    accuracy = model.evaluate(Xb, labels)["accuracy"]  # from the first prediction
    assert accuracy == pytest.approx(np.mean(probabilities.argmax(1) == labels))
    model.save(tmp_path / "m.npz")
    loaded = sn.load(tmp_path / "m.npz").predict(Xb)
    assert isinstance(loaded, tuple) and len(loaded) == 2
    for a, b in zip(loaded, (probabilities, logits)):
        np.testing.assert_array_equal(a, b)


def test_a_list_of_one_prediction_still_returns_a_tuple():
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    out = sn.dense(X, 3)
    model = sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], prediction=[out],
                       backend="numpy")
    (values,) = model.predict(np.ones((2, 4)))
    assert values.shape == (2, 3)


@pytest.mark.parametrize("prediction, message", [
    ([], r"prediction=\[\] names nothing"),
    ("twice", "the same expression twice"),
    ([3], "prediction must be a matrix expression"),
])
def test_bad_prediction_lists_are_refused(prediction, message):
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    out = sn.dense(X, 3)
    if prediction == "twice":
        prediction = [out, out]
    with pytest.raises(sn.DeclarationError, match=message):
        sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], prediction=prediction,
                   backend="numpy")


def two_heads():
    """Two softmax heads on one trunk, the targets declared in the other order."""
    X, Ya, Yb = sn.Input("X", 4), sn.Input("Ya", 3), sn.Input("Yb", 3)
    h = sn.dense(X, 8, sn.tanh, name="1")
    oa, ob = sn.dense(h, 3, name="a"), sn.dense(h, 3, name="b")
    return sn.compile(sn.softmax_cross_entropy(oa, Ya) + sn.softmax_cross_entropy(ob, Yb),
                      inputs=[X], targets=[Yb, Ya], prediction=[sn.softmax(oa), sn.softmax(ob)],
                      backend="numpy", seed=0)


def test_a_model_of_two_targets_is_scored_by_its_loss_alone():
    """evaluate scored the first prediction against the first target, here another head's
    labels (0.35 for heads of 0.91 and 0.43 in a user's run); which prediction answers which
    target is not for it to guess."""
    model = two_heads()
    rng = np.random.default_rng(0)
    Xd, la, lb = rng.normal(size=(40, 4)), rng.integers(0, 3, 40), rng.integers(0, 3, 40)
    hist = model.fit(Xd, [lb, la], epochs=2, batch_size=20, validation_data=(Xd, [lb, la]),
                     verbose=False)
    assert hist.val_accuracy == [] and len(hist.val_loss) == 2
    result = model.evaluate(Xd, [lb, la])
    assert set(result) == {"loss"} and result["loss"] == pytest.approx(hist.val_loss[-1])
    assert model.evaluate({"X": Xd}, {"Ya": la, "Yb": lb}) == result  # by name, in any order
    Ya, Yb = model.targets[::-1]
    assert model.evaluate({model.inputs[0]: Xd}, {Ya: la, Yb: lb}) == result  # or by symbol
    with pytest.raises(sn.DataError, match=r"the targets given by name must be exactly "
                                           r"\['Yb', 'Ya'\], got \['Ya'\]"):
        model.evaluate(Xd, {"Ya": la})
    with pytest.raises(sn.DataError, match=r"class_weight weighs the classes of one target, and "
                                           r"this model has 2: \['Yb', 'Ya'\]; weigh its rows "
                                           r"with sample_weight"):
        model.fit(Xd, [lb, la], class_weight={0: 2.0}, verbose=False)
    model.fit(Xd, [lb, la], sample_weight=np.ones(40), verbose=False)


def test_one_target_in_a_list_or_by_name_is_the_target():
    """[Y] for a model of one target, as [Ya, Yb] for two: not a 3-D array."""
    model = classifier()
    X, labels = data(n=12)
    Y = np.eye(3)[labels]
    want = model.evaluate(X, Y)
    assert model.evaluate([X], [Y]) == want == model.evaluate({"X": X}, {"Y": Y})


def test_logits_whose_sigmoid_the_loss_reads_are_cut_at_zero():
    """prediction=out with binary_cross_entropy(σ(out), Y), as torch's BCEWithLogitsLoss is used:
    accuracy at logit 0 (σ = 0.5), not an R² of logits against 0/1 labels."""
    X, labels = data(n=80, seed=3)
    y = (labels > 0).astype(float)
    Xs, Ys = sn.Input("X", 4), sn.Input("Y", 1)
    out = sn.dense(sn.dense(Xs, 5, sn.tanh), 1)
    model = sn.compile(sn.binary_cross_entropy(sn.sigmoid(out), Ys), inputs=[Xs], targets=[Ys],
                       prediction=out, optimizer=sn.optim.Adam(0.05), backend="numpy")
    hist = model.fit(X, y, epochs=3, validation_data=(X, y), verbose=False)
    logits = model.predict(X)[:, 0]
    assert (logits < 0).any() and (logits > 0).any()
    result = model.evaluate(X, y)
    assert "r2" not in result and "val_r2" not in hist.history
    assert result["accuracy"] == pytest.approx(np.mean((logits > 0) == (y > 0.5)))
    assert hist.val_accuracy[-1] == result["accuracy"]
    from sklearn.metrics import r2_score

    soft = 1 / (1 + np.exp(-X[:, :1] - X[:, 1:2]))  # probabilities as targets: R² of σ(out)
    expected = r2_score(soft, 1 / (1 + np.exp(-logits[:, None])))
    assert model.evaluate(X, soft)["r2"] == pytest.approx(expected, rel=1e-6)


def test_labels_in_a_list_read_as_one_row_and_the_message_says_so():
    """[labels] is the list form of several targets; for one target it is one row."""
    model = classifier()
    with pytest.raises(sn.DataError, match=r"^Y came as a list that holds one 1-D array of 4 "
                                           r"values, which is one row of 4 columns .* pass the "
                                           r"array itself$"):
        model.evaluate(np.zeros((4, 4)), [np.array([0, 1, 2, 1])])
    row = model.evaluate(np.zeros((1, 4)), [np.array([0.0, 1.0, 0.0])])  # one row, one-hot
    assert row == model.evaluate(np.zeros((1, 4)), np.array([[0.0, 1.0, 0.0]]))


def test_a_row_predicted_nan_is_scored_wrong_not_as_argmaxs_first_class():
    X, labels = data()
    model = classifier()
    for value in model.params.values():
        value *= 1e25  # every logit overflows: softmax gives NaN rows
    with pytest.warns(RuntimeWarning, match="the loss is nan"):
        result = model.evaluate(X, labels)
    with pytest.warns(RuntimeWarning):
        assert np.isnan(model.predict(X)).any(axis=1).all() and (labels == 0).any()
    assert result["accuracy"] == 0.0  # NaN's argmax is 0: the rows of class 0 counted right
