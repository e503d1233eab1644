"""Bad declarations and bad data raise a SymnetError that names the offender."""

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
    with pytest.raises(sn.ShapeError, match=r"is n×3 but the target Z is n×2"):
        sn.mse(out, sn.Input("Z", 2))


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


@pytest.mark.parametrize("f", [sp.floor, sp.sign])
def test_non_differentiable_activation(f):
    x = sp.Symbol("x")
    with pytest.raises(sn.DifferentiationError, match="cannot differentiate"):
        sn.activation("bad", f(x), x)


def test_non_differentiable_function_via_applyfunc():
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    W = sp.MatrixSymbol("W", 4, 3)
    loss = sn.mse((X * W).applyfunc(sp.floor), Y)
    with pytest.raises(sn.DifferentiationError, match="unevaluated"):
        sn.compile(loss, inputs=[X], targets=[Y])


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


def test_prelu_and_maxout_outside_dense():
    Z = sn.Input("Z", 3)
    with pytest.raises(sn.DeclarationError, match="learnable slope"):
        sn.prelu(Z)
    with pytest.raises(sn.DeclarationError, match="creates its own"):
        sn.maxout(2)(Z)
    with pytest.raises(sn.DeclarationError, match="k must be an integer"):
        sn.maxout(1)


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
