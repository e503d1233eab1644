"""Declaring networks: the batch size, inputs, dense layers and parameter discovery."""

from __future__ import annotations

import re

import sympy as sp

from . import functions as fn
from . import validate
from .errors import DeclarationError, ShapeError
from .functions import formula_text, matrix_symbols
from .init import roles

#: The number of rows of a minibatch; every input has ``batch`` rows.
batch = sp.Symbol("n", integer=True, positive=True)


def Input(name: str, columns: int) -> sp.MatrixSymbol:
    """An input or target matrix: ``MatrixSymbol(name, batch, columns)``."""
    _check_name(name, "Input")
    columns = _check_units(columns, "columns", f"sn.Input({name!r}, columns)")
    return sp.MatrixSymbol(name, batch, columns)


def parameter(name: str, rows: int, cols: int) -> sp.MatrixSymbol:
    """A learnable parameter matrix."""
    _check_name(name, "parameter")
    rows = _check_units(rows, "rows", f"sn.parameter({name!r}, rows, cols)")
    cols = _check_units(cols, "cols", f"sn.parameter({name!r}, rows, cols)")
    return sp.MatrixSymbol(name, rows, cols)


class ConstantSymbol(sp.MatrixSymbol):
    """The MatrixSymbol :func:`Constant` makes: ``compile`` then knows that it is not a
    parameter, and asks for its value when ``constants=`` leaves it out."""


def Constant(name: str, rows: int = 1, cols: int = 1) -> sp.MatrixSymbol:
    """A coefficient the kernels read at run time (its value given by ``sn.compile(...,
    constants={symbol: value})``, changed through ``model.constants``): a MatrixSymbol that is
    neither data nor a parameter, 1×1 unless told, usable where a number is, as in
    ``sn.l2(alpha, *weights)``."""
    _check_name(name, "Constant")
    rows = _check_units(rows, "rows", f"sn.Constant({name!r}, rows, cols)")
    cols = _check_units(cols, "cols", f"sn.Constant({name!r}, rows, cols)")
    return ConstantSymbol(name, rows, cols)


def affine(inp, units: int, name) -> sp.MatrixExpr:
    """``inp·W{name} + 1·b{name}``: the pre-activation of a dense layer."""
    cols = inp.shape[1]
    if not (isinstance(cols, sp.Integer) or isinstance(cols, int)):
        raise ShapeError(f"dense: the input {inp} must have a fixed number of columns, got {cols}")
    w = parameter(f"W{name}", int(cols), units)
    b = parameter(f"b{name}", 1, units)
    return inp * w + sp.OneMatrix(inp.shape[0], 1) * b


def dense(x, units: int, activation=None, name=None) -> sp.MatrixExpr:
    """A fully connected layer ``activation(x·W + 1·b)`` with parameters ``W{name}`` (in×units)
    and ``b{name}`` (1×units). ``name`` defaults to one more than the number of dense layers
    already in ``x`` (1, 2, 3, ...), so the layers of two branches of one network need names of
    their own: with other shapes compile says so, with the same shapes they are one layer."""
    if not getattr(x, "is_Matrix", False):
        raise DeclarationError(
            f"dense: x must be a matrix expression such as sn.Input('X', 784), got {x!r}"
        )
    units = _check_units(units, "units", "sn.dense(x, units)")
    if name is None:
        name = _next_layer_name(x)
    name = str(name)
    taken = {s.name for s in matrix_symbols(x)}
    owns_more = activation is not None and hasattr(activation, "dense")  # prelu's slope a{name}
    clash = {f"W{name}", f"b{name}", *([f"a{name}"] if owns_more else [])} & taken
    if clash:
        raise DeclarationError(
            f"dense(name={name!r}): the layer's parameter {sorted(clash)[0]} would take a name "
            f"the input expression already uses; give this layer another name"
        )
    if isinstance(activation, type) and hasattr(activation, "dense"):  # sn.maxout, not sn.maxout(2)
        raise DeclarationError(f"dense: activation {activation.__name__} is a class; pass what "
                               f"it makes, such as sn.{activation.__name__}(2)")
    if activation in fn.FACTORIES:  # the factory, not what it makes
        raise DeclarationError(f"dense: sn.{activation.__name__} makes an activation; pass what "
                               f"it makes, such as {fn.factory_call(activation)}")
    if activation is not None and hasattr(activation, "dense"):
        return activation.dense(x, units, name)  # layers that own extra parameters
    z = affine(x, units, name)
    if activation is None:
        return z
    if not callable(activation):
        raise DeclarationError(
            f"dense: activation must be callable like sn.sigmoid or sn.leaky_relu(0.1), "
            f"got {activation!r}"
        )
    fix = ("use one of symnet's, such as sn.tanh or sn.leaky_relu(0.1), or declare your own "
           "with sn.activation(name, expr, var)")
    function = getattr(activation, "__qualname__", None) or getattr(activation, "__name__", "")
    function = f"{getattr(activation, '__module__', None) or type(activation).__module__}.{function}"
    try:
        out = activation(z)
    except Exception as err:  # a NumPy or SymPy function, which cannot take a matrix expression
        raise DeclarationError(f"dense: the activation {function} failed on the matrix "
                               f"expression {formula_text(z)} ({type(err).__name__}: {err}); "
                               f"{fix}") from err
    if not (isinstance(out, sp.MatrixExpr) and out.shape == z.shape):
        raise DeclarationError(f"dense: the activation {function} must give a matrix "
                               f"expression of the shape of {formula_text(z)}, elementwise, "
                               f"got {validate.describe(out)}; {fix}")
    return out


def _next_layer_name(x) -> str:
    numbers = [int(m.group(1)) for s in matrix_symbols(x)
               for m in [re.fullmatch(r"W(\d+)(?:_\d+)?", s.name)] if m]
    return str(max(numbers, default=0) + 1)


def weights(*exprs) -> list[sp.MatrixSymbol]:
    """The weight matrices of network expressions (the outputs of a network's heads, say), for
    ``sn.l2``/``sn.l1``: their parameters (no batch rows) that are not a bias, a norm's gain or
    shift, or a PReLU slope, read from where the expressions use them (``init.roles``), whatever
    their names; each once."""
    if not exprs:
        raise DeclarationError("sn.weights takes the network's output, e.g. sn.weights(out), or "
                               "the outputs of its heads, sn.weights(out1, out2)")
    found = set()
    for expr in exprs:
        if not getattr(expr, "is_Matrix", False) or not isinstance(expr, sp.Basic):
            raise DeclarationError(f"sn.weights takes network expressions such as the output of "
                                   f"sn.dense, e.g. sn.weights(out), got "
                                   f"{validate.describe(expr)}")
        other = roles(expr)
        found |= {s for s in matrix_symbols(expr) if s.shape[0] != batch and s not in other}
    if not found:
        raise DeclarationError(f"sn.weights: {', '.join(map(str, exprs))} has no weight matrix "
                               f"(only inputs, biases, gains or shifts); pass the network's "
                               f"output, such as sn.weights(out)")
    return sorted(found, key=lambda s: _natural_key(s.name))


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _check_units(units, name, where) -> int:
    """A width (columns, units, rows) as a Python int ≥ 1; NumPy integers are accepted."""
    return validate.integer(units, name, low=1, where=where)


def _check_name(name, what):
    validate.identifier(name, what)
