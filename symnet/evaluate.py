"""Numeric value of any symnet / SymPy matrix expression — a direct recursive NumPy evaluator,
independent of the lowering, so it can check what the compiled programs compute."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import sympy as sp

from codegen.numpy_backend import REAL_FUNCTIONS

from . import validate
from .declare import batch
from .errors import DataError, DeclarationError, DifferentiationError
from .functions import (
    Dropout,
    DropoutMask,
    Elementwise,
    Entrywise,
    RowLogSumExp,
    Standardized,
    as_numeric,
    matrix_symbols,
    x,
)


def evaluate(expr, values: dict[str, np.ndarray], batch_size: int | None = None, *,
             dtype=np.float64) -> np.ndarray:
    """Evaluate ``expr`` with ``values`` (``{MatrixSymbol name: array}``, or keyed by the
    matrices themselves; a number for a 1×1 constant) in float64, or in ``dtype`` (a model's
    float32, to see where its kernels overflow).

    The batch size n is read off the data matrices; ``batch_size`` gives it for expressions that
    contain none (such as ``OneMatrix(n, 3)``)."""
    with validate.deep_recursion("sn.evaluate"):
        return _evaluate(expr, values, batch_size, dtype)


def _evaluate(expr, values, batch_size, dtype):
    _check_arguments(expr, values, batch_size)
    values = {_name(k): v for k, v in values.items()}
    given = dtype
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        dtype = None
    if dtype is None or dtype not in (np.dtype("float32"), np.dtype("float64")):
        raise DataError(f"sn.evaluate computes in float64 or float32 (dtype='float32', as a "
                        f"model's kernels), got dtype={validate.describe(given)}")
    symbols = matrix_symbols(expr)
    symbols |= {m for m in validate.unique_nodes(expr) if isinstance(m, DropoutMask)}
    missing = sorted(s.name for s in symbols if s.name not in values)
    if missing:
        masks = [m for m in missing if any(isinstance(s, DropoutMask) and s.name == m
                                           for s in symbols)]
        raise DataError(f"sn.evaluate: no value given for {missing}"
                        + (f"; {masks[0]} is a dropout mask, drawn in the kernel at every step: "
                           f"pass a 0/1 array of its shape as values[{masks[0]!r}]"
                           if masks else ""))
    dtype = np.dtype(dtype)
    arrays = {s: validate.real_array(values[s.name], s.name).astype(dtype) for s in symbols}
    # a number for a 1×1 matrix (a constant), as compile's constants= takes it
    arrays = {s: a.reshape(1, 1) if a.ndim == 0 and s.shape == (1, 1) else a
              for s, a in arrays.items()}
    for s, a in arrays.items():
        if a.ndim != 2:
            raise DataError(f"sn.evaluate: {s.name} is {_dims(s.shape)}, got "
                            f"{validate.describe(values[s.name])}; pass a 2-D array")
    rows = {a.shape[0] for s, a in arrays.items() if s.shape[0] == batch}
    if len(rows) > 1:
        raise DataError(f"sn.evaluate: data matrices have different numbers of rows: {rows}")
    n = rows.pop() if rows else batch_size
    if batch_size is not None and batch_size != n:
        raise DataError(f"sn.evaluate: batch_size={batch_size}, but the data matrices have {n} "
                        f"rows; leave batch_size out (it is for expressions without data)")
    for s, a in arrays.items():
        want = tuple(n if d == batch else int(d) for d in s.shape)
        if a.shape != want:
            raise DataError(f"sn.evaluate: {s.name} should be {want[0]}×{want[1]}, got {a.shape}")
    memo: dict = {}

    def size(d):
        if d == batch and n is None:
            raise DataError("sn.evaluate: the expression has no data matrix to read the batch size "
                            "from; pass batch_size=")
        return n if d == batch else int(d)

    def scalar(c):
        return float(c.subs(batch, n)) if n is not None else float(c)

    def ev(e):
        if e in memo:
            return memo[e]
        if isinstance(e, (sp.MatrixSymbol, DropoutMask)):
            out = arrays[e]
        elif isinstance(e, sp.Identity):
            out = np.eye(size(e.shape[0]), dtype=dtype)
        elif isinstance(e, sp.OneMatrix):
            out = np.ones((size(e.shape[0]), size(e.shape[1])), dtype)
        elif isinstance(e, sp.ZeroMatrix):
            out = np.zeros((size(e.shape[0]), size(e.shape[1])), dtype)
        elif isinstance(e, sp.MatMul):
            c, mats = e.as_coeff_matrices()
            out = ev(mats[0])
            for m in mats[1:]:
                out = out @ ev(m)
            out = out * scalar(c)
        elif isinstance(e, sp.MatAdd):
            out = sum(ev(a) for a in e.args)
        elif isinstance(e, sp.HadamardProduct):
            out = np.prod([ev(a) for a in e.args], axis=0)
        elif isinstance(e, sp.HadamardPower):
            out = ev(e.args[0]) ** scalar(e.args[1])
        elif isinstance(e, sp.Transpose):
            out = ev(e.arg).T
        elif isinstance(e, Elementwise):
            f = sp.lambdify(x, _computable(e.body()), modules=[REAL_FUNCTIONS, "numpy", "scipy"])
            arg = ev(e.arg)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                out = np.broadcast_to(np.asarray(f(arg), dtype=dtype), arg.shape)
        elif isinstance(e, Entrywise):
            f = sp.lambdify(e.fn.variables, _computable(e.fn.expr),
                            modules=[REAL_FUNCTIONS, "numpy", "scipy"])
            args = [ev(a) for a in e.arguments]
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                out = np.broadcast_to(np.asarray(f(*args), dtype=dtype), args[0].shape)
        elif isinstance(e, (Standardized, Dropout)):
            out = ev(e.as_entrywise())
        elif isinstance(e, RowLogSumExp):
            z = ev(e.arg)
            m = z.max(axis=1, keepdims=True)
            out = m + np.log(np.exp(z - m).sum(axis=1, keepdims=True))
        else:
            raise DifferentiationError(f"sn.evaluate cannot compute {type(e).__name__}: {e}")
        memo[e] = out
        return out

    return np.array(ev(expr), dtype=dtype)


def _name(key) -> str:
    """A key of ``values``: a name, or the matrix itself (as compile's ``constants=`` takes)."""
    if isinstance(key, str):
        return key
    if isinstance(key, (sp.MatrixSymbol, DropoutMask)):
        return key.name
    raise DataError(f"sn.evaluate: values are keyed by matrix names such as 'X' (or the "
                    f"matrices themselves), got the key {validate.describe(key)}")


def _dims(shape) -> str:
    return "×".join(map(str, shape))


def _check_arguments(expr, values, batch_size):
    """Refuse what evaluate cannot compute in real numbers: a non-matrix ``expr`` or one with
    non-real constants, ``values`` that are not a mapping, a batch size that is not positive."""
    if not isinstance(expr, sp.MatrixExpr):
        raise DeclarationError(f"sn.evaluate takes a matrix expression (such as a gradient from "
                               f"model.gradients), got {validate.describe(expr)}")
    validate.computable(expr, "sn.evaluate's expression")
    if not isinstance(values, Mapping):
        raise DataError(f"sn.evaluate: values must be a dict {{name: array}}, e.g. "
                        f"{{'X': X, **model.params}}, got {validate.describe(values)}")
    if batch_size is not None:
        validate.integer(batch_size, "batch_size", low=1, error=DataError, where="sn.evaluate")


def _computable(body: sp.Expr) -> sp.Expr:
    """``body`` in its numeric form, with SymPy's complex infinity (a 1/0 it folded into a
    Piecewise branch, as in (log∘hard_sigmoid)′ where hard_sigmoid is 0) as NaN, which NumPy
    can print and the kernels compute there (0/0)."""
    return as_numeric(body).xreplace({sp.zoo: sp.nan})
