"""Argument checks for the public API.

Every public entry point checks its arguments here, so a bad value stops at the call that made
it with a :class:`SymnetError` naming the argument, what was given, what is expected and the
fix — instead of a NumPy, SymPy or numba traceback from deep inside. Declaration, compile and
optimizer arguments raise :class:`DeclarationError`; data and the arguments of fit, predict,
evaluate and loss_and_grad raise :class:`DataError` (pass ``error=``).
"""

from __future__ import annotations

import contextlib
import itertools
import keyword
import math
import numbers
import os
import sys
import threading
from pathlib import Path

import numpy as np
import sympy as sp
from sympy.matrices.expressions import MatrixExpr

from .errors import DataError, DeclarationError, ShapeError

# --------------------------------------------------------------------------------- scalars


def clipped(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, ending in "..." where it was cut."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe(value) -> str:
    """``value`` as an error message shows it: arrays by shape and dtype, long sequences by
    length, anything else by its repr (shortened) and, where the repr hides it, its type."""
    if isinstance(value, np.ndarray) and value.ndim > 0:
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    if len(text) > 60:
        if isinstance(value, (list, tuple)):
            return f"a {type(value).__name__} of length {len(value)}"
        text = clipped(text, 60)
    if isinstance(value, (bool, str, int, float, list, tuple)) or value is None:
        return text
    return f"{text} ({type(value).__name__})"


def integer(value, name: str, *, low: int | None = None, high: int | None = None,
            error: type = DeclarationError, where: str = "") -> int:
    """``value`` as a Python int in [low, high]; NumPy integers are accepted, bools are not.
    ``where`` (e.g. ``"sn.dense"``) starts the message."""
    want = {(1, None): "a positive integer", (0, None): "a non-negative integer"}.get(
        (low, high), "an integer" + _bounds(low, high, None, None))
    example = f"{name}={_example(low, high, integral=True)}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise error(f"{_at(where)}{name} must be {want}, got {describe(value)}; pass a whole "
                    f"number such as {example}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise error(f"{_at(where)}{name} must be {want}, got {value}; pass e.g. {example}")
    return value


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def number(value, name: str, *, low: float | None = None, high: float | None = None,
           above: float | None = None, below: float | None = None,
           error: type = DeclarationError, example: float | None = None,
           where: str = "") -> int | float:
    """``value`` as a Python int or float within the bounds: ``low``/``high`` inclusive,
    ``above``/``below`` exclusive. Finite real numbers only (NaN and ±inf would make every value
    computed from them non-finite); NumPy scalars are accepted, bools and strings are not."""
    head = f"{_at(where)}{name} must be a finite real number" + _bounds(low, high, above, below)
    if example is None:
        example = _example(low if low is not None else above, high if high is not None else below)
    fix = f"pass e.g. {name}={example}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise error(f"{head}, got {describe(value)}; {fix}")
    if isinstance(value, np.floating) and value.dtype.itemsize < 8:
        value = float(str(value))  # float32(0.8) as the 0.8 typed, not 0.800000011920929
    value = int(value) if isinstance(value, numbers.Integral) else float(value)
    if not math.isfinite(value):
        raise error(f"{head}, got {value}: a non-finite value makes every value computed from "
                    f"it non-finite; {fix}")
    if ((low is not None and value < low) or (high is not None and value > high)
            or (above is not None and value <= above) or (below is not None and value >= below)):
        raise error(f"{head}, got {value}; {fix}")
    return value


def _bounds(low, high, above, below) -> str:
    parts = [f"{op} {v}" for op, v in (("≥", low), (">", above), ("≤", high), ("<", below))
             if v is not None]
    return " " + " and ".join(parts) if parts else ""


def _example(lo, hi, integral=False):
    """A value between the bounds ``lo`` and ``hi`` (None: unbounded), for the fix an error
    message suggests."""
    if lo is None:
        return 1 if hi is None or hi > 1 else hi - 1
    if hi is not None:
        return lo if integral else (lo + hi) / 2
    if integral:
        return max(lo, 1)
    return 0.1 if lo == 0 else lo + 1


def flag(value, name: str, *, error: type = DeclarationError, where: str = "") -> bool:
    """``value`` as a bool; a string or number is refused, since ``bool("no")`` is True."""
    if not isinstance(value, (bool, np.bool_)):
        raise error(f"{_at(where)}{name} must be True or False, got {describe(value)}; pass "
                    f"{name}=True or {name}=False")
    return bool(value)


def verbosity(value, *, error: type = DataError) -> int:
    """``verbose`` as 0 (nothing), 1 (a progress bar, or lines in a log) or 2 (lines): True and
    False, or Keras' numbers, which scripts ported from Keras pass."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)) and 0 <= value <= 2:
        return int(value)
    raise error(f"verbose must be True, False, 0, 1 or 2, got {describe(value)}; pass verbose=False "
                f"to show nothing, verbose=True for a progress bar, or verbose=2 for lines, as "
                f"in a log")


def file_name(path, call: str, example: str) -> Path:
    """``path`` as a Path, ``~`` expanded (as the shell and pandas do): it must name a file (a
    str or os.PathLike); ``call`` is what was called with it, e.g. ``"save(path)"``, and
    ``example`` a file name for the message."""
    if not isinstance(path, (str, os.PathLike)):
        raise DataError(f"{call} takes a file name such as {example!r}, got "
                        f"{type(path).__name__} {path!r}")
    return Path(os.path.expanduser(path))  # ~user of no such user stays as it is, as in the shell


def choice(value, name: str, options, *, error: type = DeclarationError):
    """``value`` if it equals one of ``options`` (of the same type: ``["numba"]`` is not
    ``"numba"``); works for unhashable values."""
    options = list(options)
    if any(isinstance(value, type(o)) and value == o for o in options):
        return value
    listed = ", ".join(repr(o) for o in options)
    raise error(f"{name}={describe(value)} is not one of {listed}; pass one of them, e.g. "
                f"{name}={options[0]!r}")


def seed(value, name: str = "seed", *, error: type = DeclarationError) -> int | None:
    """None (fresh randomness) or a non-negative integer (a reproducible run)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 0:
        raise error(f"{name} must be None or a non-negative integer, got {describe(value)}; pass "
                    f"e.g. {name}=0 for a reproducible run, or {name}=None")
    return int(value)


def identifier(name, what: str) -> str:
    """A name that may appear in generated Python source: an identifier and not a keyword."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise DeclarationError(
            f"{what}: the name {name!r} cannot name a matrix; names appear in the generated code, "
            f"so a name must be a Python identifier that is not a keyword: letters, digits and "
            f"underscores, not starting with a digit (e.g. 'W1')")
    return name


# ---------------------------------------------------------------------------------- arrays

_REAL_KINDS = "biuf"  # bool, signed and unsigned integers, floats: converted to the model's dtype


def real_array(value, name: str) -> np.ndarray:
    """``value`` as a NumPy array of real numbers (any real dtype, not yet converted), or a
    DataError saying why it is not one: ragged rows, complex values, text or objects."""
    if value is None:
        raise DataError(f"{name} is None; pass an array (or a list of rows) of numbers")
    if hasattr(value, "toarray") and hasattr(value, "nnz"):  # a scipy.sparse matrix or array
        raise DataError(f"{name} is a sparse matrix; symnet trains on dense arrays: pass "
                        f"{name}.toarray()")
    unmasked(value, name)
    a = _nullable_frame(value, name)
    try:
        a = np.asarray(value) if a is None else a
    except ValueError:
        raise DataError(f"{name} is not a rectangular array: its rows have different lengths (a "
                        f"ragged list); give every row the same number of columns") from None
    except (TypeError, RuntimeError) as err:  # RuntimeError: torch's, e.g. a tensor with grad
        raise DataError(f"{name} cannot be read as an array ({err}); pass a NumPy array or a list "
                        f"of rows of numbers") from None
    if a.dtype.kind == "c":
        raise DataError(f"{name} has complex values (dtype {a.dtype}); symnet computes with real "
                        f"numbers only: pass the real part explicitly (np.real({name})) if that "
                        f"is what you mean")
    if a.dtype == object:
        missing = next((at for at, v in np.ndenumerate(a) if _missing(v)), None)
        if missing is not None:
            raise _missing_value(name, describe(a[missing]), missing)
    if a.dtype.kind not in _REAL_KINDS:
        hint = (" (values that are not all numbers, or a DataFrame column of dtype object)"
                if a.dtype == object else "")
        raise DataError(f"{name}: expected a numeric array, got dtype {a.dtype}{hint}; convert it "
                        f"with np.asarray(data, dtype=float)")
    return a


def unmasked(value, name: str) -> None:
    """A DataError naming the first masked entry of a NumPy masked array: ``np.asarray`` reads
    the values under the mask (uninitialised memory in ``np.ma.masked_all``) as data."""
    if isinstance(value, np.ma.MaskedArray):
        masked = np.argwhere(np.ma.getmaskarray(value))
        if len(masked):
            raise _missing_value(name, "masked", tuple(int(i) for i in masked[0]),
                                 f"fill the masked entries ({name}.filled(value)) or drop those "
                                 f"rows")


def _nullable_frame(value, name: str) -> np.ndarray | None:
    """A pandas DataFrame or Series with nullable numeric columns (``Int64``, ``Float64``,
    ``boolean``), or numeric columns of different dtypes (a bool column beside floats), which
    NumPy sees as objects, as a float64 array, or a DataError naming its first missing value;
    None for anything else, which NumPy reads as it is."""
    if type(value).__module__.split(".")[0] != "pandas":
        return None
    from pandas.api.extensions import ExtensionDtype
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    dtypes = list(value.dtypes) if hasattr(value, "columns") else [value.dtype]
    mixed = any(isinstance(d, ExtensionDtype) for d in dtypes) or len(set(dtypes)) > 1
    if not mixed or not all(is_numeric_dtype(d) or is_bool_dtype(d) for d in dtypes):
        return None
    missing = np.asarray(value.isna())
    if missing.any():
        raise _missing_value(name, "<NA>", tuple(int(i) for i in np.argwhere(missing)[0]))
    return value.to_numpy(dtype=np.float64)


def _missing_value(name: str, shown: str, at: tuple,
                   fix: str = "fill or drop missing values first (pandas: fillna or dropna)"
                   ) -> DataError:
    """The error for a missing value ``shown`` at index ``at`` of the data ``name``."""
    where = (f"row {at[0]}, column {at[1]}" if len(at) == 2 else f"row {at[0]}" if len(at) == 1
             else f"position {at}")
    return DataError(f"{name} has a missing value ({shown}) at {where}; {fix}")


def _missing(value) -> bool:
    """None, or pandas' ``NA``/``NaT`` (by type name: pandas is not a dependency)."""
    return value is None or type(value).__name__ in ("NAType", "NaTType")


# ---------------------------------------------------------------------------- expressions


def unique_nodes(expr):
    """Every distinct subexpression of ``expr``, Lambda bodies included, without recursion (so
    deep expressions cannot exhaust the stack), each once: a network's expression is a graph
    whose nodes are shared (a batch norm reads its Z in its mean, its variance and its output),
    and SymPy's ``preorder_traversal`` walks it as a tree, 4.5 × longer a layer of batch norms
    (12 s for ``sn.weights`` of eight)."""
    seen, stack = set(), [expr]
    while stack:
        e = stack.pop()
        if e in seen:
            continue
        seen.add(e)
        yield e
        stack.extend(e.args)


RECURSION_LIMIT = 20_000
_deep = {"callers": 0, "restore": None}
_deep_lock = threading.Lock()


@contextlib.contextmanager
def deep_recursion(what: str):
    """Python's recursion limit at least :data:`RECURSION_LIMIT` while ``what`` runs, and a
    RecursionError turned into a DeclarationError naming the fix. SymPy walks an expression
    recursively, a few frames a node, and Python's default of 1,000 stopped a 100-layer dense
    network (or 30 residual batch-norm layers) inside SymPy; with 20,000, 400 dense layers
    compile. The limit is the process's, so it is restored when the last caller leaves."""
    with _deep_lock:
        if _deep["callers"] == 0:
            _deep["restore"] = sys.getrecursionlimit()
            sys.setrecursionlimit(max(_deep["restore"], RECURSION_LIMIT))
        _deep["callers"] += 1
    try:
        yield
    except RecursionError:
        raise DeclarationError(
            f"{what}: the network is too deep for Python's recursion limit "
            f"({sys.getrecursionlimit()}), which SymPy's walks of its expression need; raise it "
            f"with sys.setrecursionlimit(...) beforehand, or declare fewer layers") from None
    finally:
        with _deep_lock:
            _deep["callers"] -= 1
            if _deep["callers"] == 0:
                sys.setrecursionlimit(_deep["restore"])


def replace_nodes(expr, mapping: dict):
    """``expr.xreplace(mapping)`` for a graph: each distinct node rebuilt once, without
    recursion. SymPy's ``xreplace`` walks the graph as a tree (compiling a prediction of 16
    residual layers took 3.1 s, of 20 layers 35 s)."""
    done: dict[int, object] = {}
    stack = [expr]
    while stack:
        e = stack[-1]
        if id(e) in done:
            stack.pop()
        elif e in mapping:
            done[id(e)] = mapping[e]
            stack.pop()
        elif pending := [a for a in e.args if id(a) not in done]:
            stack.extend(pending)
        else:
            stack.pop()
            args = tuple(done[id(a)] for a in e.args)
            same = all(a is b for a, b in zip(args, e.args))
            done[id(e)] = e if same else e.func(*args)
    return done[id(expr)]


def computable(expr, what: str) -> None:
    """Refuse what a real-valued kernel cannot compute: non-real or non-finite constants
    (``I``, ``oo``, ``zoo``, ``nan``), Piecewise functions without an otherwise branch,
    DiracDelta, unevaluated integrals, sums, products, limits and derivatives, matrices with a zero
    dimension and matrix names that are not identifiers."""
    for e in unique_nodes(expr):
        if isinstance(e, MatrixExpr):
            _matrix_leaf(e, what)
            _aligned(e, what)
        elif isinstance(e, sp.Piecewise):
            _otherwise(e, what)
        elif isinstance(e, (sp.Integral, sp.Sum, sp.Product, sp.Limit, sp.Derivative)):
            _unevaluated(e, expr, what)
        elif isinstance(e, sp.DiracDelta):
            raise DeclarationError(f"{what} contains {e}, a distribution with no value at 0 "
                                   f"(in {_short(expr)}); a kernel computes functions: write a "
                                   f"steep bump such as exp(-x²/ε) instead")
        elif isinstance(e, sp.Expr) and not isinstance(e, sp.Lambda) and e.is_number:
            _real_constant(e, expr, what)


def _unevaluated(e, expr, what):
    """An integral, sum, product, limit or derivative SymPy has not evaluated: kernels compute
    closed forms, and neither backend can compute these entry by entry."""
    kind = type(e).__name__.lower()  # (not evaluated here: an integral may take SymPy minutes)
    raise DeclarationError(f"{what} contains the unevaluated {kind} {e}, which the kernels cannot "
                           f"compute entry by entry; pass a closed form instead: SymPy's "
                           f"{kind}.doit() finds one for many (in {_short(expr)})")


def _real_constant(c, expr, what):
    """An atom (3, pi, I, oo) must be provably finite and real; a compound constant such as
    acos(2) must not be provably otherwise (its atoms are checked on their own)."""
    if c.is_Atom:
        bad = c.is_extended_real is not True or c.is_finite is not True
    else:
        bad = c.is_extended_real is False or c.is_finite is False
    if bad:
        raise DeclarationError(
            f"{what} contains the constant {c}, which is not a finite real number; symnet "
            f"computes with real numbers only, so remove it or replace it by a real value "
            f"(in {_short(expr)})")


def _otherwise(pw, what):
    if pw.args[-1].cond != sp.true:
        raise DeclarationError(
            f"{what}: the Piecewise {pw} has no otherwise branch, so it has no value where no "
            f"condition holds; add (value, True) as its last piece, e.g. "
            f"Piecewise((x, x > 0), (0, True))")


def _aligned(e, what):
    """A matrix product's inner sizes must agree. SymPy refuses 3×4·5×6 itself, but it cannot
    tell the batch's n from 4, so n×4·n×4 (``h*g`` meant entrywise) passed, and the kernels
    read past the end of the second matrix."""
    from .functions import _shape_text, formula_text  # not at the top: functions imports this

    if isinstance(e, sp.MatPow):
        pairs = [(e.base, e.base)] if e.base.shape[0] != e.base.shape[1] else []
    elif isinstance(e, sp.MatMul):
        factors = [a for a in e.args if isinstance(a, MatrixExpr)]
        pairs = [(a, b) for a, b in itertools.pairwise(factors) if a.shape[1] != b.shape[0]]
    else:
        return
    if pairs:
        a, b = pairs[0]
        shown = [clipped(formula_text(x), 40) for x in (a, b)]
        shown = [f"({t})" if isinstance(x, (sp.MatAdd, sp.HadamardProduct, sp.MatPow)) else t
                 for t, x in zip(shown, (a, b))]  # as the product binds them
        raise ShapeError(
            f"{what}: {shown[0]}·{shown[1]} is a matrix product of an {_shape_text(a)} and an "
            f"{_shape_text(b)} matrix, and the first's columns ({a.shape[1]}) must equal the "
            f"second's rows ({b.shape[0]}; n is the batch's rows). For the entrywise product "
            f"write sp.hadamard_product(a, b); for a matrix product, make the inner sizes agree"
            + ("" if not any(isinstance(n, sp.Adjoint) for n in unique_nodes(e)) else
               " (the Adjoint here is SymPy's: sp.Abs of a matrix M is √(M·Mᴴ); the entrywise "
               "|M| is sn.abs(M))"))


def _matrix_leaf(m, what):
    if isinstance(m, sp.MatrixSymbol):
        identifier(m.name, what)
    leaf = isinstance(m, (sp.MatrixSymbol, sp.OneMatrix, sp.ZeroMatrix, sp.Identity))
    if leaf and any(d.is_zero for d in m.shape):
        raise DeclarationError(f"{what}: {m} is {m.shape[0]}×{m.shape[1]}, a matrix without "
                               f"entries; every dimension must be at least 1")


def _short(expr) -> str:
    return clipped(str(expr), 120)


# --------------------------------------------------------------------------------- memory


def physical_memory() -> int | None:
    """Bytes of physical memory, or None where the platform does not say."""
    try:
        size = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return size if size > 0 else None


def fits_in_memory(shapes: dict[str, tuple[int, int]], bytes_per_entry: int) -> None:
    """Refuse parameters whose arrays (values, gradients, optimizer state) cannot fit in the
    machine's physical memory, before anything is allocated: a declared 10⁹×10⁹ weight stops
    here with its name, not later with a MemoryError."""
    memory = physical_memory()
    entries = sum(r * c for r, c in shapes.values())
    if memory is None or entries * bytes_per_entry <= memory:
        return
    name, (r, c) = max(shapes.items(), key=lambda item: item[1][0] * item[1][1])
    raise DeclarationError(
        f"the parameters have {entries:,} entries, about {entries * bytes_per_entry / 2**30:,.0f} "
        f"GiB with their gradients and optimizer state, but this machine has "
        f"{memory / 2**30:,.0f} GiB of memory; the largest is {name} ({r}×{c}): check the "
        f"declared sizes")
