"""Bad declarations and bad data raise a SymnetError that names the offender."""

import re

import numpy as np
import pytest
import sympy as sp
from conftest import make_data

import symnet as sn

n = sn.batch


def net():
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    out = sn.dense(sn.dense(X, 5, sn.tanh), 3)
    return X, Y, out


def test_shape_mismatch_of_loss_names_both_shapes():
    X, Y, out = net()
    with pytest.raises(sn.ShapeError, match=r"mse: the prediction tanh\(X·W1 \+ 𝟙·b1\)·W2 "
                                            r"\+ 𝟙·b2 is n×3 but the target Z is n×2"):
        sn.mse(out, sn.Input("Z", 2))


@pytest.mark.parametrize("residual", [
    lambda X, h: h + sn.dense(h, 5, sn.relu, name="f"),
    lambda X, h: sn.dense(h, 5, name="f") + h,
    lambda X, h: X + h,
    lambda X, h: h - sn.dropout(X, 0.5),
    lambda X, h: sn.batch_norm(sn.dense(X, 5, name="f"), "f") + h,
])
def test_a_residual_connection_of_two_widths_names_both_and_the_fix(residual):
    """A sum with a symnet node (an activation, a norm, a dropout) is checked by symnet, not by
    SymPy, whose ShapeError named neither the operands nor the fix."""
    X = sn.Input("X", 4)
    h = sn.dense(X, 6, sn.relu, name="1")
    with pytest.raises(sn.ShapeError, match=r": n×\d and n×\d matrices; \+ and − take matrices "
                                            r"of one shape\. For a residual connection h \+ "
                                            r"f\(h\), give f's last layer as many units as h"):
        residual(X, h)
    assert (h + sn.dense(h, 6, sn.relu, name="g")).shape == (n, 6)  # equal widths still add
    assert (h - h).shape == (n, 6) and (2 * h).T.shape == (6, n)


def test_a_product_of_sums_is_shown_with_its_parentheses_in_the_shape_error():
    X = sn.Input("X", 4)
    Z = sn.dense(X, 4, name="p")
    with pytest.raises(sn.ShapeError, match=r"^the loss: \(X·Wp \+ 𝟙·bp\)·\(X·Wp \+ 𝟙·bp\) is a "
                                            r"matrix product of an n×4 and an n×4 matrix"):
        sn.compile(sn.sum(Z * Z), inputs=[X], targets=[])


@pytest.mark.parametrize("product", [lambda h, g: h * g, lambda h, g: h * h],
                         ids=["two-activations", "a-square"])
def test_a_product_whose_inner_sizes_are_the_batch_and_a_width_is_refused(product):
    """SymPy cannot tell the batch's n from 4, so n×4·n×4 (h*g meant entrywise) compiled, and
    the kernels read past the end of the second matrix (wrong numbers, a corrupted heap)."""
    X, Y = sn.Input("X", 3), sn.Input("Y", 2)
    h, g = sn.dense(X, 4, sn.tanh, name="1"), sn.dense(X, 4, sn.tanh, name="2")
    out = sn.dense(product(h, g), 2, name="o")
    with pytest.raises(sn.ShapeError, match=r"^the loss: tanh\(X·W1 \+ 𝟙·b1\)·tanh\(X·W\d \+ "
                                            r"𝟙·b\d\) is a matrix product of an n×4 and an n×4 "
                                            r"matrix.*columns \(4\) must equal the second's rows "
                                            r"\(n;.*sp\.hadamard_product\(a, b\)"):
        sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y])
    entrywise = sn.dense(sp.hadamard_product(h, g), 2, name="o")  # what was meant computes
    model = sn.compile(sn.mse(entrywise, Y), inputs=[X], targets=[Y], seed=0, backend="numpy")
    rng = np.random.default_rng(0)
    assert sn.gradcheck(model, rng.normal(size=(10, 3)), rng.normal(size=(10, 2))) < 1e-6


@pytest.mark.parametrize("factory, example", [(sn.leaky_relu, "0.01"), (sn.elu, "1.0")])
def test_an_activation_factory_given_a_matrix_or_passed_uncalled_says_how_to_use_it(factory,
                                                                                      example):
    # sn.leaky_relu(Z), written as sn.relu(Z) is, said only that alpha must be a number
    X = sn.Input("X", 3)
    name = factory.__name__
    with pytest.raises(sn.DeclarationError, match=rf"^sn\.{name}\(alpha\) makes an activation, "
                                                  rf"and was given the matrix X·W1 \+ 𝟙·b1; apply "
                                                  rf"what it makes: sn\.{name}\({example}\)\(Z\)"):
        factory(sn.dense(X, 4, name="1"))
    with pytest.raises(sn.DeclarationError, match=rf"^dense: sn\.{name} makes an activation; pass "
                                                  rf"what it makes, such as sn\.{name}\({example}\)"):
        sn.dense(X, 4, factory)  # said "use one of symnet's", which it is
    assert sn.dense(X, 4, factory(float(example))).shape == (n, 4)


def test_a_number_or_an_array_added_to_a_node_says_how_to_add_it_and_sum_adds_nodes():
    # SymPy's TypeErrors: "Mix of Matrix and Scalar symbols", "'Symbol' object cannot be
    # interpreted as an integer"
    X = sn.Input("X", 3)
    h, g = sn.dense(X, 4, sn.tanh, name="1"), sn.dense(X, 4, sn.relu, name="2")
    with pytest.raises(sn.ShapeError, match=r"^1 − tanh\(X·W1 \+ 𝟙·b1\): a scalar and an n×4 "
                                            r"matrix; .* write 1\*sp\.OneMatrix\(\*h\.shape\) - h, "
                                            r"where h is the matrix"):
        1 - h
    with pytest.raises(sn.DeclarationError, match=r"\+ an array of shape \(1, 4\) and dtype "
                                                  r"float64: a declaration takes SymPy matrix "
                                                  r"expressions, not ndarray values"):
        h + np.ones((1, 4))
    assert (h + 2 * sp.OneMatrix(*h.shape)).shape == (n, 4)  # the fix declares
    assert sum([h, g]) == h + g and 0 + h is h and (0 - h) == -h


def test_a_loss_given_its_arguments_swapped_or_bce_given_logits_says_what_to_pass():
    # softmax_cross_entropy(Y, out) trained on a loss unbounded below; binary_cross_entropy of
    # a linear output stopped fit with NaN, and advice to lower the learning rate
    X, Y = sn.Input("X", 3), sn.Input("Y", 2)
    out = sn.dense(sn.dense(X, 4, sn.tanh, name="1"), 2, name="o")
    for loss in (sn.softmax_cross_entropy, sn.mse):
        with pytest.raises(sn.DeclarationError, match=rf"^{loss.__name__}\(prediction, target\): "
                                                      rf"the prediction is the data Y and the "
                                                      rf"target .* holds the parameter W1; pass "
                                                      rf"the network's output first: "
                                                      rf"sn\.{loss.__name__}\(out, Y\)"):
            loss(Y, out)
    with pytest.raises(sn.DeclarationError, match=r"^binary_cross_entropy takes probabilities, "
                                                  r"and tanh\(X·W1 \+ 𝟙·b1\)·Wo \+ 𝟙·bo is a "
                                                  r"layer's linear output \(logits\).*pass "
                                                  r"sn\.sigmoid\(out\)"):
        sn.binary_cross_entropy(out, Y)
    assert sn.binary_cross_entropy(sn.sigmoid(out), Y).shape == (1, 1)
    smoothed = 0.9 * Y + 0.05 * sp.OneMatrix(*Y.shape)  # a target expression stays a target
    assert sn.softmax_cross_entropy(out, smoothed).shape == (1, 1)
    # cross_entropy of logits likewise; softmax_cross_entropy of a softmax took probabilities
    # for logits and trained without a word
    with pytest.raises(sn.DeclarationError, match=r"^cross_entropy takes probabilities, .* is "
                                                  r"a layer's linear output \(logits\).*pass "
                                                  r"sn\.softmax\(out\)"):
        sn.cross_entropy(out, Y)
    with pytest.raises(sn.DeclarationError, match=r"^softmax_cross_entropy takes logits and "
                                                  r"applies the softmax itself, .* pass the "
                                                  r"logits, sn\.softmax_cross_entropy\(tanh"):
        sn.softmax_cross_entropy(sn.softmax(out), Y)
    assert sn.softmax_cross_entropy(sn.log_softmax(out), Y).shape == (1, 1)  # the same softmax
    with pytest.raises(sn.DeclarationError, match=r"^cross_entropy takes probabilities, and "
                                                  r"log_softmax\(.* is their logarithm \(what "
                                                  r"torch's nll_loss takes\)"):
        sn.cross_entropy(sn.log_softmax(out), Y)
    # probabilities that are not a layer's output are not logits: an ensemble, a squashed σ
    other = sn.dense(X, 2, name="p")
    ones = sp.OneMatrix(*Y.shape)
    assert sn.cross_entropy(sn.softmax(out) / 2 + sn.softmax(other) / 2, Y).shape == (1, 1)
    assert sn.binary_cross_entropy(0.9 * sn.sigmoid(out) + 0.05 * ones, Y).shape == (1, 1)
    assert sn.binary_cross_entropy((sn.tanh(out) + ones) / 2, Y).shape == (1, 1)


def test_free_scalar_symbol_is_refused():
    X, Y, out = net()
    k = sp.Symbol("k")
    with pytest.raises(sn.DeclarationError, match=r"\['k'\].*substitute values"):
        sn.compile(k * sn.mse(out, Y), inputs=[X], targets=[Y])


def test_parameter_name_used_with_two_shapes():
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    a = X * sp.MatrixSymbol("W", 4, 3)
    b = sp.MatrixSymbol("X2", n, 5) * sp.MatrixSymbol("W", 5, 3)
    with pytest.raises(sn.DeclarationError, match="name W is used for two matrices"):
        sn.compile(sn.mse(a + b, Y), inputs=[X, sp.MatrixSymbol("X2", n, 5)], targets=[Y])


@pytest.mark.parametrize("units", [0, -3, 2.5, True])
def test_bad_units(units):
    with pytest.raises(sn.DeclarationError, match="positive integer"):
        sn.dense(sn.Input("X", 4), units)


@pytest.mark.parametrize("activation, message", [
    (np.tanh, r"the activation numpy.tanh failed on the matrix expression X·W1 \+ 𝟙·b1 "
              r"\(TypeError: "),
    (sp.tanh, r"the activation sympy.functions.elementary.hyperbolic.tanh must give a matrix "
              r"expression of the shape of X·W1 \+ 𝟙·b1, elementwise, got tanh\("),
    (lambda z: z.T, r"must give a matrix expression of the shape of X·W1 \+ 𝟙·b1"),
])
def test_an_activation_that_does_not_act_on_matrix_expressions_is_named(activation, message):
    with pytest.raises(sn.DeclarationError, match=message + r".*use one of symnet's, such as "
                                                            r"sn.tanh"):
        sn.dense(sn.Input("X", 4), 3, activation)


def test_a_layer_whose_parameter_names_are_taken_is_refused_and_only_then():
    h = sn.dense(sn.Input("X", 3), 4, name="1")
    with pytest.raises(sn.DeclarationError, match=r"dense\(name='1'\): the layer's parameter W1 "
                                                  r"would take a name the input expression "
                                                  r"already uses"):
        sn.dense(h, 4, name="1")
    a1 = sn.Input("a1", 5)  # prelu's slope would be a1; another activation's layer has none
    assert str(sn.dense(a1, 4, sn.tanh, name="1")) == "tanh(a1·W1 + 𝟙·b1)"
    with pytest.raises(sn.DeclarationError, match="the layer's parameter a1 would take"):
        sn.dense(a1, 4, sn.prelu, name="1")


@pytest.mark.parametrize("name, meaning", [("n", "the batch's row count"), ("L", "the loss"),
                                           ("lr", "the learning rate"),
                                           ("g", "the gradient in the update rule")])
def test_a_matrix_named_as_the_formulas_notation_is_refused(name, meaning):
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    c = sn.Constant(name)
    loss = sn.mse(sn.dense(X, 3), Y) + sn.l2(c, sp.MatrixSymbol("W1", 4, 3))
    with pytest.raises(sn.DeclarationError, match=f"the matrix {name} would read as {meaning} in "
                                                  f"the formulas"):
        sn.compile(loss, inputs=[X], targets=[Y], constants={c: 1.0}, backend="numpy")


@pytest.mark.parametrize("name, optimizer, meaning", [
    ("m", sn.optim.Adam(), "the m of Adam's update rule"),
    ("v", sn.optim.Adam(), "the v of Adam's update rule"),
    ("clip", sn.optim.RMSProp(clip_norm=1.0), "the clip of RMSProp's update rule"),
    ("buf", sn.optim.SGD(momentum=0.9), "the buf of SGD's update rule"),
    ("δ", sn.optim.SGD(), r"an adjoint \(δZ is ∂L/∂Z\)"),
    ("δ1", sn.optim.SGD(), r"an adjoint \(δZ is ∂L/∂Z\)"),
])
def test_a_matrix_named_as_the_update_rules_state_or_an_adjoint_is_refused(name, optimizer,
                                                                          meaning):
    """A constant m beside Adam printed `∂L/∂W1 = (𝟙·m·𝟙) ∘ W1 + …` next to `m ← 0.9·m +
    0.1·g`; a parameter δ read as an adjoint. A name the chosen optimizer does not use is
    free."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    c = sn.Constant(name)
    loss = sn.mse(sn.dense(X, 3), Y) + sn.l2(c, sp.MatrixSymbol("W1", 4, 3))
    with pytest.raises(sn.DeclarationError, match=f"the matrix {name} would read as {meaning} "
                                                  f"in the formulas"):
        sn.compile(loss, inputs=[X], targets=[Y], constants={c: 1.0}, optimizer=optimizer,
                   backend="numpy")
    if not name.startswith("δ"):
        model = sn.compile(loss, inputs=[X], targets=[Y], constants={c: 1.0}, backend="numpy",
                           optimizer=sn.optim.AdaGrad())  # whose state is sum
        assert f"{name}·" in model.formulas() or f"·{name}" in model.formulas()


def test_two_inputs_of_one_name_are_named_as_the_cause_in_every_run():
    """Two X of different widths also give W1 two shapes; which clash compile named depended on
    the order of a set, and "give each parameter its own name" was wrong for an input."""
    X, X2, Y = sn.Input("X", 4), sn.Input("X", 5), sn.Input("Y", 2)
    for out in (sn.dense(X, 2) + sn.dense(X2, 2), sn.dense(X2, 2) + sn.dense(X, 2)):
        with pytest.raises(sn.DeclarationError, match=r"the name X is used for two matrices, "
                                                      r"n×4 and n×5; give each input"):
            sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], backend="numpy")


def test_layers_named_by_depth_in_two_branches_are_named_as_the_cause():
    """A wide-and-deep sum without name= anywhere: both branches' first layers are W1 and b1,
    and compile said to give each parameter its own name, though the user gave none. (With the
    same shapes the names are one parameter: SymPy cannot tell two layers from one used twice,
    and a check of which symbols dense named depended on what the process had declared.)"""
    X, Y = sn.Input("X", 5), sn.Input("Y", 3)
    wide, deep = sn.dense(X, 3), sn.dense(sn.dense(X, 4, sn.tanh), 3)
    by_depth = r"sn.dense without name= names a layer by its depth.*pass name= to the dense"
    with pytest.raises(sn.DeclarationError, match=r"the name [Wb]1 is used for two matrices, .*"
                                                  + by_depth):
        sn.compile(sn.mse(wide + deep, Y), inputs=[X], targets=[Y], backend="numpy")
    X2 = sn.Input("X2", 5)
    model = sn.compile(sn.mse(sn.dense(X, 3, name="a") + sn.dense(X2, 3, name="b"), Y),
                       inputs=[X, X2], targets=[Y], backend="numpy")
    assert sorted(model.params) == ["Wa", "Wb", "ba", "bb"]
    h = sn.dense(X, 4, sn.tanh)  # one layer used twice, in the residual way: no complaint
    sn.compile(sn.mse(sn.dense(h + sn.dense(h, 4), 3), Y), inputs=[X], targets=[Y],
               backend="numpy")


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_a_loss_without_parameters_is_refused(backend):
    """mse(sigmoid(X), Y) compiled, and its numba kernel then failed in numba's frontend
    (blamed on numba), while the numpy backend 'trained' nothing."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 4)
    with pytest.raises(sn.DeclarationError, match="the loss has no parameters to train.*sn.dense"):
        sn.compile(sn.mse(sn.sigmoid(X), Y), inputs=[X], targets=[Y], backend=backend)


def test_an_entry_of_a_softmax_loss_is_its_value_and_compile_asks_for_the_matrix():
    """loss[0, 0] of softmax_cross_entropy raised SymPy's NotImplementedError from symnet's
    logsumexp node; it is the loss's scalar now, as mse's is."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    loss = sn.softmax_cross_entropy(sn.dense(X, 3, name="1"), Y)
    model = sn.compile(loss, inputs=[X], targets=[Y], dtype="float64", seed=0, backend="numpy")
    Xd, Yd = make_data(n=2, cols=4, out=3)
    entry = loss[0, 0].subs(sn.batch, 2)
    values = {"X": Xd, "Y": Yd, **model.params}
    entry = entry.subs({m: sp.ImmutableMatrix(values[m.name])
                        for m in entry.atoms(sp.MatrixSymbol)}).doit()
    assert float(entry) == pytest.approx(model.loss_and_grad(Xd, Yd)[0], rel=1e-12)
    with pytest.raises(sn.DeclarationError, match=r"the loss is a scalar, an entry of a matrix "
                                                  r"\(loss\[0, 0\]\); pass the 1×1 matrix"):
        sn.compile(loss[0, 0], inputs=[X], targets=[Y])
    with pytest.raises(sn.DeclarationError, match="the loss is an explicit SymPy Matrix of "
                                                  "entries; pass the 1×1 matrix expression"):
        sn.compile(sp.Matrix([[loss[0, 0]]]), inputs=[X], targets=[Y])  # said "got (1, 1)"
    with pytest.raises(sn.DeclarationError, match=r"the loss is a NumPy array \(an array of "
                                                  r"shape \(1, 1\) and dtype object\).*multiply "
                                                  r"by a Python float"):
        sn.compile(np.float64(0.5) * loss, inputs=[X], targets=[Y])  # also said "got (1, 1)"


def test_a_dirac_delta_in_an_activation_is_refused_where_it_is_declared():
    """It has no value at 0: the numba backend refused it naming its printer's class, and the
    numpy backend's fit crashed with NameError: name 'DiracDelta' is not defined."""
    x = sp.Symbol("x")
    with pytest.raises(sn.DeclarationError, match=r"activation 'dirac' contains DiracDelta\(x\), "
                                                  r"a distribution with no value at 0"):
        sn.activation("dirac", sp.DiracDelta(x) + x, x)


@pytest.mark.parametrize("f", [sp.floor, sp.sign])
def test_non_differentiable_activation(f):
    x = sp.Symbol("x")
    with pytest.raises(sn.DifferentiationError, match="cannot differentiate"):
        sn.activation("bad", f(x), x)


@pytest.mark.parametrize("kind, make", [
    ("integral", lambda x, y: sp.Integral(sp.exp(-y**2), (y, 0, x))),
    ("sum", lambda x, y: sp.Sum(x**y / sp.factorial(y), (y, 0, 5))),
])
def test_an_unevaluated_integral_or_sum_is_refused_where_it_is_declared(kind, make):
    """The numba backend could not compile one, and the numpy backend crashed inside SciPy's
    quad with arrays of them."""
    x, y = sp.symbols("x y")
    with pytest.raises(sn.DeclarationError, match=rf"activation 'ig' contains the unevaluated "
                                                  rf"{kind} .*pass a closed form instead: "
                                                  rf"SymPy's {kind}\.doit\(\) finds one"):
        sn.activation("ig", make(x, y), x)


def test_non_differentiable_function_via_applyfunc():
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    W = sp.MatrixSymbol("W", 4, 3)
    loss = sn.mse((X * W).applyfunc(sp.floor), Y)
    with pytest.raises(sn.DifferentiationError, match=r"cannot differentiate floor\(.*its "
                                                      r"derivative is zero wherever it exists"):
        sn.compile(loss, inputs=[X], targets=[Y])


@pytest.mark.parametrize("same, written", [
    (sn.relu, lambda x: x * sp.Heaviside(x)),  # derivative Heaviside(x) + x·DiracDelta(x)
    (sn.abs, lambda x: x * sp.sign(x)),  # sign(x) + x·Derivative(sign(x), x)
    (sn.square, lambda x: sp.sign(x) * x * sp.Abs(x)),
])
def test_functions_written_with_steps_train_as_their_closed_forms(same, written):
    """x·Heaviside(x) is relu: its derivative is Heaviside(x) but where x = 0, where SymPy adds
    x·DiracDelta(x) (0 wherever it exists). It was refused as a step, as was x·sign(x)."""
    x = sp.Symbol("x", real=True)
    data = make_data(n=24, cols=3, out=2)
    trained = []
    for act in (same, sn.activation("written", written(x), x)):
        X, Y = sn.Input("X", 3), sn.Input("Y", 2)
        out = sn.dense(sn.dense(X, 5, act, name="1"), 2, name="2")
        for backend in ("numba", "numpy"):
            model = sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], dtype="float64",
                               seed=0, backend=backend, init="xavier")
            model.fit(*data, epochs=3, batch_size=8, verbose=False)
            trained.append(model.params)
    for params in trained[1:]:
        for k in params:
            np.testing.assert_allclose(params[k], trained[0][k], rtol=1e-12, atol=1e-14)


def test_unsupported_matrix_operation():
    X, Y = sn.Input("X", 4), sn.Input("Y", 4)
    W = sp.MatrixSymbol("W", 4, 4)
    with pytest.raises(sn.DifferentiationError, match="cannot differentiate Inverse"):
        sn.compile(sn.mse(X * W.I, Y), inputs=[X], targets=[Y])


def test_loss_must_be_one_by_one():
    X, Y, out = net()
    with pytest.raises(sn.DeclarationError, match="1×1"):
        sn.compile(out, inputs=[X], targets=[Y])


def test_inputs_must_have_batch_rows():
    X, Y, out = net()
    with pytest.raises(sn.DeclarationError, match="sn.batch rows"):
        sn.compile(sn.mse(out, Y), inputs=[sp.MatrixSymbol("Q", 3, 4)], targets=[Y])


def test_an_input_or_target_the_network_never_reads_is_refused_at_compile():
    """fit asked for Q's data, which nothing read."""
    X, Y, out = net()
    Q, Y2 = sn.Input("Q", 2), sn.Input("Y2", 1)
    with pytest.raises(sn.DeclarationError, match=r"^inputs: Q appears in neither the loss nor the "
                                                  r"prediction; remove it from inputs="):
        sn.compile(sn.mse(out, Y), inputs=[X, Q], targets=[Y])
    with pytest.raises(sn.DeclarationError, match=r"^targets: Y2 appears in neither"):
        sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y, Y2])
    # an input that only a prediction reads is read
    sn.compile(sn.mse(out, Y), inputs=[X, Q], targets=[Y], prediction=[out, sn.sigmoid(Q)])


def test_a_model_saved_with_an_input_it_never_reads_still_loads(tmp_path):
    """Saved before such a declaration was refused: loading called the file damaged."""
    import pickle

    from symnet.model import Model

    X, Y, out = net()
    old = Model(sn.mse(out, Y), inputs=[X, sn.Input("Q", 2)], targets=[Y], prediction=None,
                optimizer=None, dtype="float32", seed=0, init="auto", backend="numpy", saved=True)
    old.save(tmp_path / "m.npz")
    for loaded in (sn.load(tmp_path / "m.npz"), pickle.loads(pickle.dumps(old))):
        assert [s.name for s in loaded.inputs] == ["X", "Q"]
        np.testing.assert_array_equal(loaded.params["W1"], old.params["W1"])


def test_prelu_and_maxout_outside_dense():
    Z = sn.Input("Z", 3)
    with pytest.raises(sn.DeclarationError, match="learnable slope"):
        sn.prelu(Z)
    with pytest.raises(sn.DeclarationError, match="creates its own"):
        sn.maxout(2)(Z)
    with pytest.raises(sn.DeclarationError, match="k must be an integer"):
        sn.maxout(1)
    with pytest.raises(sn.DeclarationError, match=r"maxout is a class; .* sn.maxout\(2\)"):
        sn.dense(Z, 4, sn.maxout, name="2")


def deep_dense(layers):
    X, Y = sn.Input("X", 3), sn.Input("Y", 2)
    h = X
    for k in range(1, layers + 1):
        h = sn.dense(h, 2, sn.tanh, name=str(k))
    return sn.mse(sn.dense(h, 2, name="out"), Y), X, Y


def test_a_network_deeper_than_pythons_default_recursion_limit_compiles_and_saves(tmp_path):
    """SymPy walks expressions recursively: with Python's default limit of 1,000 a 100-layer
    network stopped with a RecursionError inside SymPy, and so did saving one; a node's shape
    was a recursion through every layer below it, which stopped declaring at ~330 layers."""
    import sys

    loss, X, Y = deep_dense(110)
    before = sys.getrecursionlimit()
    model = sn.compile(loss, inputs=[X], targets=[Y], backend="numpy", seed=0)
    assert sys.getrecursionlimit() == before  # restored
    Xb, Yb = make_data(4, cols=3, out=2, kind="regression")
    loss_value = model.evaluate(Xb, Yb)["loss"]
    assert np.isfinite(loss_value)
    model.save(tmp_path / "deep.npz")
    assert sn.load(tmp_path / "deep.npz").evaluate(Xb, Yb)["loss"] == loss_value
    assert sys.getrecursionlimit() == before


def test_a_network_too_deep_for_the_recursion_limit_names_the_fix(monkeypatch):
    import sys

    from symnet import validate

    loss, X, Y = deep_dense(110)
    monkeypatch.setattr(validate, "RECURSION_LIMIT", 300)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(300)
    try:
        with pytest.raises(sn.DeclarationError, match=r"sn.compile: the network is too deep .*"
                                                      r"sys.setrecursionlimit"):
            sn.compile(loss, inputs=[X], targets=[Y], backend="numpy")
    finally:
        sys.setrecursionlimit(old)


@pytest.mark.parametrize("make", [
    lambda: sn.optim.SGD(lr=-1), lambda: sn.optim.Adam(betas=(1.0, 0.9)),
    lambda: sn.optim.SGD(lr=0.1, nesterov=True),
])
def test_optimizer_hyperparameters_out_of_range(make):
    with pytest.raises(sn.DeclarationError):
        make()


@pytest.fixture(scope="module")
def model():
    X, Y, out = net()
    return sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], prediction=out, seed=0,
                      backend="numpy")


def test_wrong_column_count(model):
    with pytest.raises(sn.DataError, match="X has 4 columns in the model but the data has 5"):
        model.loss_and_grad(np.zeros((3, 5)), np.zeros((3, 3)))
    with pytest.raises(sn.DataError, match="4 columns"):
        model.predict(np.zeros((3, 7)))


def test_row_counts_differ(model):
    with pytest.raises(sn.DataError, match="same number of rows"):
        model.loss_and_grad(np.zeros((3, 4)), np.zeros((2, 3)))


def test_nan_in_data_names_the_row(model):
    X, Y = make_data(n=20, out=3, kind="real")
    X[17, 2] = np.nan
    with pytest.raises(sn.DataError, match="row 17"):
        model.fit(X, Y, epochs=1, verbose=False)


@pytest.mark.parametrize("bad", [np.array([["a"] * 4] * 2), np.array([[None] * 4] * 2),
                                 np.zeros((0, 4))])
def test_bad_arrays(model, bad):
    with pytest.raises(sn.DataError):
        model.predict(bad)


def test_integer_arrays_are_converted(model):
    out = model.predict(np.arange(8, dtype=np.uint8).reshape(2, 4))
    assert out.dtype == np.float32 and out.shape == (2, 3)


@pytest.mark.parametrize("bs", [0, -1, 1.5])
def test_bad_batch_size(model, bs):
    X, Y = make_data(out=3, kind="real")
    with pytest.raises(sn.DataError, match="batch_size"):
        model.fit(X, Y, batch_size=bs, verbose=False)


def test_every_error_is_a_symnet_error():
    for cls in (sn.ShapeError, sn.DeclarationError, sn.DifferentiationError, sn.DataError):
        assert issubclass(cls, sn.SymnetError)


# --------------------------------------------------- NumPy numbers are numbers (issue 23, 8)


def fresh(optimizer=None, seed=0, backend="numpy", dtype="float32"):
    X, Y, out = net()
    return sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], prediction=out, seed=seed,
                      optimizer=optimizer, backend=backend, dtype=dtype)


def test_numpy_integers_for_epochs_batch_size_and_seeds_train_as_python_ints():
    X, Y = make_data(n=12, out=3, kind="real")
    a, b = fresh(seed=np.int64(0)), fresh(seed=0)
    ha = a.fit(X, Y, epochs=np.int64(2), batch_size=np.int32(4), seed=np.uint8(3), verbose=False)
    hb = b.fit(X, Y, epochs=2, batch_size=4, seed=3, verbose=False)
    assert len(ha.loss) == 2 and ha.loss == hb.loss
    np.testing.assert_array_equal(a.predict(X, batch_size=np.int64(5)), b.predict(X))
    assert a.evaluate(X, Y, batch_size=np.int16(3)) == pytest.approx(b.evaluate(X, Y))


@pytest.mark.parametrize("make", [
    lambda v: sn.optim.SGD(lr=v(0.1), momentum=v(0.9), weight_decay=v(1e-3), clip_norm=v(5.0)),
    lambda v: sn.optim.Adam(lr=v(0.01), betas=(v(0.9), v(0.999)), eps=v(1e-8)),
    lambda v: sn.optim.RMSProp(lr=v(0.01), alpha=v(0.9), momentum=v(0.5)),
    lambda v: sn.optim.AdaDelta(rho=v(0.9), eps=v(1e-6)),
    lambda v: sn.optim.AdaGrad(lr=v(0.1), lr_decay=v(0.01)),
    lambda v: sn.optim.SGD(lr=sn.schedules.cosine(v(0.1), np.int64(10), lr_min=v(0.01))),
], ids=["SGD", "Adam", "RMSProp", "AdaDelta", "AdaGrad", "cosine"])
def test_numpy_float_hyperparameters_give_the_numbers_of_python_floats(make):
    X, Y = make_data(n=12, out=3, kind="real")
    a, b = fresh(make(np.float64)), fresh(make(float))
    a.fit(X, Y, epochs=3, batch_size=4, verbose=False)
    b.fit(X, Y, epochs=3, batch_size=4, verbose=False)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)


def test_float32_hyperparameters_are_accepted_and_saved_as_plain_floats(tmp_path):
    opt = sn.optim.Adam(lr=np.float32(1e-3), betas=(np.float32(0.9), np.float32(0.999)),
                        eps=np.float32(1e-7), clip_norm=np.float32(1.0))
    assert type(opt.lr) is float and opt.lr == 1e-3  # the decimal typed, not float32's 0.00100000005
    assert all(type(b) is float for b in opt.betas) and opt.betas == (0.9, 0.999)
    model = fresh(opt)
    X, Y = make_data(n=12, out=3, kind="real")
    assert np.isfinite(model.fit(X, Y, epochs=2, verbose=False).loss).all()
    model.save(tmp_path / "m.npz")  # the hyperparameters go into JSON
    assert sn.load(tmp_path / "m.npz").optimizer.betas == opt.betas
    assert sn.optim.AdamW(betas=np.array([0.8, 0.99])).betas == (0.8, 0.99)  # as torch takes it
    torch = pytest.importorskip("torch")
    assert sn.optim.Adam(betas=torch.tensor([0.5, 0.75])).betas == (0.5, 0.75)
    assert "betas=(0.8, 0.95)" in repr(sn.optim.Adam(betas=torch.tensor([0.8, 0.95])))  # float32


def test_declarations_accept_numpy_integers_and_floats():
    X = sn.Input("X", np.int64(4))
    h = sn.dense(X, np.int32(3), sn.leaky_relu(np.float64(0.1)))
    out = sn.dense(h, np.int64(2), sn.maxout(np.int64(2)))
    reg = sn.l2(np.float32(0.5), *sn.weights(out))
    assert X.shape[1] == 4 and out.shape == (sn.batch, 2) and reg.shape == (1, 1)
    assert sn.leaky_relu(np.float64(0.1)) is sn.leaky_relu(0.1)


# ------------------------------------------------------------ the messages of the main refusals


def test_complex_data_says_to_pass_the_real_part(model):
    X, Y = make_data(out=3, kind="real")
    with pytest.raises(sn.DataError, match=r"X has complex values.*pass the real part explicitly "
                                           r"\(np\.real\(X\)\)"):
        model.fit(X + 1j, Y, verbose=False)


def test_a_sparse_matrix_says_to_make_it_dense(model):
    import scipy.sparse

    X, Y = make_data(out=3, kind="real")
    with pytest.raises(sn.DataError, match=r"X is a sparse matrix; symnet trains on dense "
                                           r"arrays: pass X\.toarray\(\)"):
        model.fit(scipy.sparse.csr_matrix(X), Y, verbose=False)


def test_validation_data_that_is_not_a_pair_says_how_to_pass_it(model):
    X, Y = make_data(out=3, kind="real")
    with pytest.raises(sn.DataError, match=r"validation_data must be the tuple \(X_val, Y_val\), "
                                           r"got an array of shape \(5, 4\)"):
        model.fit(X, Y, validation_data=X, verbose=False)


def test_validation_data_that_fails_a_check_is_named_as_validation_data(model):
    X, Y = make_data(out=3, kind="real")
    with pytest.raises(sn.DataError, match=r"^in validation_data: X has 4 columns in the model "
                                           r"but the data has 2"):
        model.fit(X, Y, validation_data=(X[:, :2], Y), verbose=False)


def test_missing_targets_name_the_calls_that_take_them(model):
    X, _ = make_data(out=3, kind="real")
    with pytest.raises(sn.DataError, match=r"needs the targets \['Y'\] too: pass them after the "
                                           r"inputs, as in model\.fit\(X, Y\)"):
        model.fit(X, verbose=False)
    assert model.kernels_cached is None  # before compile_kernels, not an AttributeError
    X, Y = make_data(out=3, kind="real")
    with pytest.raises(sn.DataError, match=r"; the data came as one tuple \(X, Y\): unpack it, "
                                           r"model\.fit\(\*data\)$"):  # was "a ragged list"
        model.fit((X, Y), verbose=False)
    with pytest.raises(sn.DataError, match=r"the data came as one list \(X, Y\)"):
        model.fit([X, Y], verbose=False)
    with pytest.raises(sn.DataError, match=r"^X came as a tuple of 2 2-D arrays, and this model "
                                           r"has one input: pass its array alone$"):
        model.predict((X, Y))
    assert model.predict([X[0], X[1]]).shape == (2, 3)  # a list of rows is data


def test_targets_passed_to_predict_are_named_with_evaluate_as_the_fix(model):
    X, Y = make_data(out=3, kind="real")
    with pytest.raises(sn.DataError, match=r"predict takes the inputs only, and got an array of "
                                           r"shape \(5, 3\) and dtype float64 as batch_size; to "
                                           r"score predictions against targets, call "
                                           r"evaluate\(X, Y\)"):
        model.predict(X, Y)


def test_formulas_options_are_true_or_false(model):
    for option in ("raw", "weighted"):
        with pytest.raises(sn.DeclarationError, match=f"formulas: {option} must be True or False, "
                                                      f"got 'yes'"):
            model.formulas(**{option: "yes"})


def test_non_finite_learning_rate_names_the_optimizer_and_argument():
    with pytest.raises(sn.DeclarationError, match=r"SGD: lr must be a finite real number > 0, "
                                                  r"got nan"):
        sn.optim.SGD(lr=float("nan"))
    with pytest.raises(sn.DeclarationError, match=r"Adam: betas\[1\] must be .* < 1, got inf"):
        sn.optim.Adam(betas=(0.9, float("inf")))


def test_seed_that_is_not_an_integer():
    X, Y, out = net()
    with pytest.raises(sn.DeclarationError, match="seed must be None or a non-negative integer, "
                                                  "got 'abc'"):
        sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], seed="abc", backend="numpy")


def test_prediction_without_batch_rows_is_refused():
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    W = sp.MatrixSymbol("W", 4, 3)
    with pytest.raises(sn.DeclarationError, match="predict returns one row per input row; the "
                                                  "prediction must have sn.batch rows"):
        sn.compile(sn.mse(X * W, Y), inputs=[X], targets=[Y], prediction=W, backend="numpy")


@pytest.mark.parametrize("node", [sp.Trace, sp.Determinant])
def test_a_scalar_that_reads_a_matrix_is_named(node):
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    W, V = sp.MatrixSymbol("W", 4, 3), sp.MatrixSymbol("V", 3, 3)
    with pytest.raises(sn.DifferentiationError, match=f"cannot differentiate {node.__name__} in"):
        sn.compile(node(V) * sn.mse(X * W, Y), inputs=[X], targets=[Y], backend="numpy")


def test_piecewise_without_otherwise_says_to_add_it():
    x = sp.Symbol("x")
    with pytest.raises(sn.DeclarationError, match=r"has no otherwise branch.*add \(value, True\) "
                                                  r"as its last piece"):
        sn.activation("half", sp.Piecewise((x, x > 0)), x)


def test_imaginary_unit_in_the_loss_is_refused():
    X, Y, out = net()
    with pytest.raises(sn.DeclarationError, match="the loss contains the constant I, which is "
                                                  "not a finite real number"):
        sn.compile(sp.I * sn.mse(out, Y), inputs=[X], targets=[Y], backend="numpy")


def test_a_parameter_too_large_for_memory_is_named_before_anything_is_allocated():
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    W, V = sp.MatrixSymbol("W", 4, 10**9), sp.MatrixSymbol("V", 10**9, 3)
    with pytest.raises(sn.DeclarationError, match=r"the largest is W \(4×1000000000\)"):
        sn.compile(sn.mse(X * W * V, Y), inputs=[X], targets=[Y], backend="numpy")


def test_names_that_are_not_identifiers_never_reach_generated_code():
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    W = sp.MatrixSymbol("W\ndef _f(a=__import__('os').system('true')):#", 4, 3)
    with pytest.raises(sn.DeclarationError, match="cannot name a matrix"):
        sn.compile(sn.mse(X * W, Y), inputs=[X], targets=[Y])
    x = sp.Symbol("x")
    with pytest.raises(sn.DeclarationError, match="activation name"):
        sn.activation("sq\nimport os", x**2, x)
    assert sn.activation("sq[0.5]", x**2 / 2, x).name == "sq[0.5]"  # the library's own form


def test_data_too_large_for_float32_says_so(model):
    X, Y = make_data(out=3, kind="real")
    X[2, 1] = 1e39
    with pytest.raises(sn.DataError, match=r"row 2, column 1, too large for float32"):
        model.predict(X)
    assert np.isfinite(fresh(dtype="float64").predict(X)).all()


def test_several_inputs_come_as_a_list_or_tuple():
    X1, X2, Y = sn.Input("X1", 2), sn.Input("X2", 3), sn.Input("Y", 1)
    W1, W2 = sp.MatrixSymbol("W1", 2, 1), sp.MatrixSymbol("W2", 3, 1)
    model = sn.compile(sn.mse(X1 * W1 + X2 * W2, Y), inputs=[X1, X2], targets=[Y],
                       backend="numpy")
    a, b, y = np.ones((4, 2)), np.ones((4, 3)), np.ones((4, 1))
    loss, _ = model.loss_and_grad((a, b), y)
    assert loss == model.loss_and_grad([a, b], y)[0]
    with pytest.raises(sn.DataError, match=r"the 2 inputs \['X1', 'X2'\]: pass a list or tuple"):
        model.loss_and_grad(a, y)


# -------------------------------------------------------- model.params replaced by the user


def test_a_replaced_parameter_says_to_write_into_the_array(model):
    X, Y = make_data(out=3, kind="real")
    live = model.params["W1"]
    model.params["W1"] = np.zeros((2, 2))
    try:
        with pytest.raises(sn.DataError, match=r"model.params\['W1'\] is an array of shape "
                                               r"\(2, 2\).*but W1 is 4×5; write into the array "
                                               r"instead of replacing it: "
                                               r"model.params\['W1'\]\[\.\.\.\] = value"):
            model.fit(X, Y, verbose=False)
    finally:
        model.params["W1"] = live


def test_nested_lists_of_a_parameter_shape_are_taken_as_its_array(model):
    X, Y = make_data(out=3, kind="real")
    live = model.params["W1"]
    try:
        model.params["W1"] = live.tolist()
        want = model.evaluate(X, Y)["loss"]
        assert isinstance(model.params["W1"], np.ndarray)  # stored back, live again
        model.params["W1"] = live
        assert model.evaluate(X, Y)["loss"] == want
        model.params["W1"] = live.T.tolist()
        with pytest.raises(sn.DataError, match=r"model.params\['W1'\] is a list of length 5, "
                                               r"but W1 is 4×5"):
            model.evaluate(X, Y)
    finally:
        model.params["W1"] = live


def test_parameters_in_torch_layout_a_bias_is_taken_and_a_weight_named_the_transpose(model):
    # nn.Linear keeps bias as (k,) and weight as outputs × inputs
    X, Y = make_data(out=3, kind="real")
    live_w, live_b = model.params["W1"], model.params["b1"]
    try:
        want = model.evaluate(X, Y)["loss"]
        bias = live_b[0].copy()
        model.params["b1"] = bias
        assert model.evaluate(X, Y)["loss"] == want and model.params["b1"].shape == (1, 5)
        model.fit(X, Y, epochs=1, verbose=False)  # a copy trains: torch's .numpy() is its memory
        assert (bias == live_b[0]).all() and (model.params["b1"] != live_b).any()
        model.params["b1"] = live_b.T.copy()
        with pytest.raises(sn.DataError, match=r"but b1 is 1×5; it is a column: pass it as a "
                                               r"row, model.params\['b1'\] = value.reshape"):
            model.evaluate(X, Y)
        model.params["W1"] = live_w.T.copy()
        with pytest.raises(sn.DataError, match=r"but W1 is 4×5; it is the transpose \(torch's "
                                               r"nn.Linear keeps its weight as outputs × inputs\): "
                                               r"model.params\['W1'\] = weight.T"):
            model.evaluate(X, Y)
    finally:
        model.params["W1"], model.params["b1"] = live_w, live_b


def test_save_refuses_a_non_finite_parameter_that_load_would_refuse(model, tmp_path):
    live = model.params["W1"]
    model.params["W1"] = live.copy()
    model.params["W1"][1, 2] = np.inf
    try:
        with pytest.raises(sn.DataError, match=r"model.params\['W1'\] has a non-finite value "
                                               r"\(inf\) in row 1, column 2"):
            model.save(tmp_path / "m.npz")
        assert not (tmp_path / "m.npz").exists()
    finally:
        model.params["W1"] = live


def test_a_replaced_parameter_is_refused_before_the_numba_kernel_runs():
    X, Y = make_data(out=3, kind="real")
    model = fresh(backend="numba")
    before = {k: v.copy() for k, v in model.params.items()}
    model.params["W2"] = np.zeros((3, 5))  # the transpose: OpenBLAS would print "illegal value"
    for call in (lambda: model.fit(X, Y, verbose=False), lambda: model.predict(X),
                 lambda: model.loss_and_grad(X, Y), lambda: model.evaluate(X, Y)):
        with pytest.raises(sn.DataError, match="model.params\\['W2'\\]"):
            call()
    model.params["W2"] = before["W2"]
    for k, v in model.params.items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_a_parameter_of_another_dtype_or_layout_is_converted_and_stays_live():
    X, _ = make_data(out=3, kind="real")
    a, b = fresh(), fresh()
    w = np.random.default_rng(1).normal(size=(4, 5))
    a.params["W1"][...] = w
    b.params["W1"] = np.asfortranarray(w)  # float64, column-major
    np.testing.assert_array_equal(b.predict(X), a.predict(X))
    stored = b.params["W1"]
    assert stored.dtype == np.float32 and stored.flags.c_contiguous
    stored[...] = 0  # the converted array is the live one
    np.testing.assert_array_equal(b.predict(X), b.predict(X * 0))


def test_a_non_finite_parameter_is_named_with_its_entry(model):
    X, Y = make_data(out=3, kind="real")
    old = model.params["b2"][0, 1]
    model.params["b2"][0, 1] = np.inf
    try:
        with pytest.raises(sn.DataError, match=r"model.params\['b2'\] has a non-finite value "
                                               r"\(inf\) in row 0, column 1"):
            model.loss_and_grad(X, Y)
    finally:
        model.params["b2"][0, 1] = old


def test_gradcheck_leaves_the_users_arrays_in_model_params(model):
    X, Y = make_data(out=3, kind="real")
    arrays = dict(model.params)
    before = {k: v.copy() for k, v in arrays.items()}
    assert sn.gradcheck(model, X, Y, max_entries=3) < 1e-3
    for k, v in model.params.items():
        assert v is arrays[k]
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("eps", [-0.1, 1.0, float("nan"), "0.1"])
def test_label_smoothing_outside_0_to_1_is_refused(eps):
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    with pytest.raises(sn.DeclarationError, match="label_smoothing"):
        sn.softmax_cross_entropy(sn.dense(X, 3), Y, label_smoothing=eps)


@pytest.mark.parametrize("first, second, clash", [
    (sn.activation("sq", sp.Symbol("x") ** 2, sp.Symbol("x")),
     sn.activation("sq", sp.Symbol("x") ** 3, sp.Symbol("x")), True),
    (sn.activation("sq", sp.Symbol("x") ** 2, sp.Symbol("x")),
     sn.activation("sq", sp.Symbol("x") ** 2, sp.Symbol("x")), False),  # one function twice
])
def test_two_different_activations_of_one_name_in_one_network_are_refused(first, second, clash):
    """The formulas show an activation by its name: two functions called sq would read as
    one."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    out = sn.dense(sn.dense(sn.dense(X, 5, first, name="1"), 5, second, name="2"), 3, name="3")
    if not clash:
        sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], backend="numpy")
        return
    with pytest.raises(sn.DeclarationError, match=r"the network uses two different activations "
                                                  r"named 'sq' \(.*\); the formulas show "
                                                  r"them by name, so give one another name"):
        sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], backend="numpy")


@pytest.mark.parametrize("call, message", [
    (lambda e, v: sn.evaluate(sn.sum(e), {**v, "X": 2.0}), r"X is n×4, got 2.0; pass a 2-D array"),
    (lambda e, v: sn.evaluate(e, v, dtype=int), r"computes in float64 or float32 .* got "
                                                r"dtype=<class 'int'>"),
    (lambda e, v: sn.evaluate(e, v, batch_size=5), r"batch_size=5, but the data matrices have "
                                                   r"6 rows; leave batch_size out"),
    (lambda e, v: sn.evaluate(e, {1: v["X"]}), r"values are keyed by matrix names such as 'X' "
                                               r"\(or the matrices themselves\), got the key 1"),
])
def test_sn_evaluate_names_a_value_it_cannot_read(call, message):
    """A number for an n×4 matrix was an IndexError from inside symnet; an integer dtype
    computed zeros; a batch_size against the data's rows was ignored."""
    X = sn.Input("X", 4)
    W = sp.MatrixSymbol("W", 4, 2)
    values = {"X": np.ones((6, 4)), "W": np.full((4, 2), 0.5)}
    with pytest.raises(sn.DataError, match=message):
        call(X * W, values)
    by_matrix = sn.evaluate(X * W, {X: values["X"], W: values["W"]})  # as constants= takes them
    np.testing.assert_array_equal(by_matrix, np.full((6, 2), 2.0))


@pytest.mark.parametrize("name", ["sigmoid", "relu", "leaky_relu[0.2]", "exp"])
def test_an_activation_named_as_the_librarys_own_is_refused(name):
    """The formulas show an activation by its name: sn.activation("sigmoid", sin x) computed
    sin and was shown as σ."""
    x = sp.Symbol("x")
    family = name.partition("[")[0]
    with pytest.raises(sn.DeclarationError, match=rf"activation '{re.escape(name)}': {family} is "
                                                  rf"the library's own \(sn.{family}\).* give "
                                                  rf"yours another name \(such as 'my_{family}'\)"):
        sn.activation(name, sp.sin(x), x)
    assert sn.activation(f"my_{family}", sp.sin(x), x).name == f"my_{family}"


@pytest.mark.parametrize("name, whose", [("Abs", "SymPy's sympy.Abs"), ("Piecewise", "SymPy's "
                                         "sympy.Piecewise"), ("cos", "SymPy's sympy.cos"),
                                         ("σ", "the formulas' notation"),
                                         ("softmax", "the formulas' notation")])
def test_an_activation_named_as_sympys_or_the_notations_is_refused(name, whose):
    """An "Abs" computing softsign was shown as |Z1|, a "Piecewise" stopped compile inside
    SymPy, and a "σ" read as the sigmoid."""
    x = sp.Symbol("x")
    with pytest.raises(sn.DeclarationError, match=rf"activation '{name}': {name} is {whose}, and "
                                                  rf".*give yours another name \(such as "
                                                  rf"'my_{name}'\)"):
        sn.activation(name, x / (1 + sp.Abs(x)), x)


def test_an_activation_named_as_a_symnet_node_is_shown_by_its_name():
    # the printers chose a method by class name, and an activation's class is named by its user
    x = sp.Symbol("x")
    X, Y = sn.Input("X", 3), sn.Input("Y", 2)
    act = sn.activation("Dropout", x / (1 + sp.Abs(x)), x)
    model = sn.compile(sn.mse(sn.dense(sn.dense(X, 4, act, name="1"), 2, name="o"), Y),
                       inputs=[X], targets=[Y])
    assert "A1 = Dropout(Z1)" in model.formulas()
    assert r"A_{1} &= \operatorname{Dropout}\left(Z_{1}\right)" in model.latex()


def test_a_weight_applied_twice_back_to_back_names_the_power_sympy_made_and_the_way_round():
    X, Y = sn.Input("X", 3), sn.Input("Y", 3)
    W, b = sp.MatrixSymbol("W", 3, 3), sp.MatrixSymbol("b", 1, 3)
    with pytest.raises(sn.DifferentiationError, match=r"^cannot differentiate W·W: SymPy folds a "
                                                      r"matrix multiplied by itself into the "
                                                      r"power W\*\*2.*\(X·W \+ 𝟙·b\)·W"):
        sn.compile(sn.mse(X * W * W, Y), inputs=[X], targets=[Y])
    way_round = (X * W + sp.OneMatrix(sn.batch, 1) * b) * W  # what the message suggests
    model = sn.compile(sn.mse(way_round, Y), inputs=[X], targets=[Y], seed=0, backend="numpy")
    rng = np.random.default_rng(0)
    assert sn.gradcheck(model, rng.normal(size=(6, 3)), rng.normal(size=(6, 3))) < 1e-6


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_an_entrywise_function_reading_a_symbol_without_a_value_is_refused_at_compile(backend):
    """The numpy backend stopped inside its evaluation (TypeError: Cannot convert expression to
    float), and the numba backend's message advised the numpy backend."""
    x, c = sp.Symbol("x"), sp.Symbol("c")
    X, W = sn.Input("X", 2), sp.MatrixSymbol("W", 2, 1)
    for f in (sn.Elementwise(sp.Lambda(x, c * x), X * W), (X * W).applyfunc(sp.Lambda(x, c * x))):
        with pytest.raises(sn.DeclarationError, match=r"reads the symbol\(s\) \['c'\], which "
                                                      r"nothing gives a value: substitute a "
                                                      r"number in its Lambda first"):
            sn.compile(sn.sum(f) / sn.batch, inputs=[X], targets=[], backend=backend)


def test_literal_matrices_slices_and_sympys_abs_of_a_matrix_name_what_to_write_instead():
    X, Y, W = sn.Input("X", 2), sn.Input("Y", 1), sp.MatrixSymbol("W", 2, 1)
    with pytest.raises(sn.DifferentiationError, match=r"Matrix\(\[\[1, 2\]\]\) is a literal "
                                                      r"matrix.*sn\.Constant\('P', 1, 2\).*"
                                                      r"constants=\{P: array\}"):
        sn.compile(sn.sum(sn.square(X * W * sp.Matrix([[1, 2]]) - X)) / sn.batch, inputs=[X],
                   targets=[])
    with pytest.raises(sn.DifferentiationError, match=r"X\[:, :1\] is a slice.*give the columns "
                                                      r"of data an sn\.Input of their own"):
        sn.compile(sn.sum(sn.square(X[:, :1] * W[:1, :])) / sn.batch, inputs=[X], targets=[])
    with pytest.raises(sn.ShapeError, match=r"sp\.Abs of a matrix M is √\(M·Mᴴ\); the entrywise "
                                            r"\|M\| is sn\.abs\(M\)"):
        sn.compile(sn.sum(sp.Abs(X * W - Y)) / sn.batch, inputs=[X], targets=[Y])
