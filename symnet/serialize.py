"""Declarations as plain data, for ``model.save`` / ``sn.load``.

An expression becomes nested JSON lists ``[node type, *arguments]``; only the node types in
:data:`NODES` (and the activations of :mod:`symnet.functions`) are accepted back, so loading a
file never runs code from it: no pickle, no ``eval``, ``sympify`` or ``parse_expr``.
"""

from __future__ import annotations

import inspect
import re

import sympy as sp
from sympy.codegen.cfunctions import log1p
from sympy.functions.elementary.piecewise import ExprCondPair

from . import functions as fn
from . import optim
from .errors import DataError
from .functions import Elementwise, RowLogSumExp, ScalarActivation
from .schedules import Schedule

_SYMPY = [sp.Tuple, sp.Add, sp.Mul, sp.Pow, sp.exp, sp.log, sp.Abs, sp.Max, sp.Min, sp.sqrt, sp.sin,
          sp.cos, sp.tan, sp.tanh, sp.sinh, sp.cosh, sp.atan, sp.erf, sp.sign, sp.floor,
          sp.ceiling, sp.Heaviside, log1p, sp.Piecewise, ExprCondPair, sp.StrictLessThan,
          sp.LessThan, sp.StrictGreaterThan, sp.GreaterThan, sp.Eq, sp.Ne, sp.And, sp.Or, sp.Not,
          sp.Lambda, sp.MatMul, sp.MatAdd, sp.HadamardProduct, sp.HadamardPower, sp.Transpose,
          sp.OneMatrix, sp.ZeroMatrix, sp.Identity, Elementwise, RowLogSumExp]
NODES = {cls.__name__: cls for cls in _SYMPY if isinstance(cls, type)}
ASSUMPTIONS = ("real", "integer", "positive", "nonnegative")
BUILTIN = {a.name: a.function for a in (fn.sigmoid, fn.tanh, fn.relu, fn.softplus, fn.hard_sigmoid,
                                        fn.hard_tanh, fn.swish, fn.gelu)}
PARAMETRISED = {"leaky_relu": fn.leaky_relu, "elu": fn.elu}


def encode(e) -> list:
    """``e`` as nested lists of strings and numbers."""
    if e is None:
        return None
    if isinstance(e, sp.MatrixSymbol):
        return ["MatrixSymbol", e.name, encode(e.shape[0]), encode(e.shape[1])]
    if isinstance(e, sp.Symbol):
        return ["Symbol", e.name, [a for a in ASSUMPTIONS if e.assumptions0.get(a)]]
    if e is sp.true or e is sp.false:
        return ["Boolean", bool(e)]
    if e.is_Integer:
        return ["Integer", str(int(e))]
    if e.is_Rational:
        return ["Rational", str(e.p), str(e.q)]
    if e.is_Float:
        return ["Float", repr(float(e))]
    if e is sp.pi or e is sp.E:
        return ["Constant", str(e)]
    if isinstance(e, ScalarActivation):
        f = type(e)
        return ["Activation", f.__name__, encode(f.definition.expr), encode(f.numeric.expr),
                f.latex_name, encode(e.args[0])]
    name = type(e).__name__
    if name not in NODES:
        raise DataError(f"cannot save an expression containing {name} ({e}): symnet stores only "
                        f"the node types it can load back safely")
    return [name, *(encode(a) for a in e.args)]


def decode(data):
    """The expression that :func:`encode` turned into ``data``; refuses unknown node types."""
    if data is None:
        return None
    if not isinstance(data, list) or not data or not isinstance(data[0], str):
        raise DataError(f"the saved declaration is damaged: expected [node, ...], got {data!r}")
    tag, *args = data
    if tag == "MatrixSymbol":
        return sp.MatrixSymbol(_text(args[0]), decode(args[1]), decode(args[2]))
    if tag == "Symbol":
        return sp.Symbol(_text(args[0]), **dict.fromkeys(_known(args[1]), True))
    if tag == "Boolean":
        return sp.true if args[0] else sp.false
    if tag == "Integer":
        return sp.Integer(int(_text(args[0])))
    if tag == "Rational":
        return sp.Rational(int(_text(args[0])), int(_text(args[1])))
    if tag == "Float":
        return sp.Float(float(_text(args[0])))
    if tag == "Constant":
        return {"pi": sp.pi, "E": sp.E}[_text(args[0])]
    if tag == "Activation":
        name, definition, numeric, latex, arg = args
        return _activation(_text(name), decode(definition), decode(numeric), _text(latex))(
            decode(arg))
    if tag not in NODES:
        raise DataError(f"the saved declaration contains the node type {tag!r}, which symnet does "
                        f"not load (the file was not written by symnet, or by a newer version)")
    return NODES[tag](*[decode(a) for a in args])  # SymPy's invariant: e == e.func(*e.args)


def _text(value) -> str:
    if not isinstance(value, str):
        raise DataError(f"the saved declaration is damaged: expected text, got {value!r}")
    return value


def _known(assumptions):
    bad = [a for a in assumptions if a not in ASSUMPTIONS]
    if bad:
        raise DataError(f"the saved declaration uses unknown symbol assumptions {bad}")
    return assumptions


def _activation(name, definition, numeric, latex):
    """The activation class called ``name``: the library's own when the definition matches (so
    the library's rewrites recognise it), else one rebuilt from its stored definition."""
    function = BUILTIN.get(name)
    match = re.fullmatch(r"(\w+)\[(.+)\]", name)
    if match and match[1] in PARAMETRISED:
        text = match[2]
        alpha = int(text) if re.fullmatch(r"-?\d+", text) else float(text)
        function = PARAMETRISED[match[1]](alpha).function
    if function is not None and function.definition.expr == definition:
        return function
    return fn.activation(name, definition, fn.x, latex=latex, numeric=numeric).function


def encode_optimizer(opt) -> dict:
    """An optimizer as its class name and constructor arguments (a schedule as its expression)."""
    args = {}
    for name in inspect.signature(type(opt)).parameters:
        value = getattr(opt, name)
        if isinstance(value, Schedule):
            value = {"schedule": value.name, "expr": encode(value.expr), "base": value.base}
        elif isinstance(value, tuple):
            value = list(value)
        args[name] = value
    return {"class": type(opt).__name__, "args": args}


def decode_optimizer(data):
    cls = data.get("class") if isinstance(data, dict) else None
    if cls not in optim.__all__ or cls == "Optimizer":
        raise DataError(f"the saved optimizer {cls!r} is not one of sn.optim's optimizers")
    args = dict(data.get("args", {}))
    for name, value in args.items():
        if isinstance(value, dict):
            args[name] = Schedule(_text(value["schedule"]), decode(value["expr"]), value["base"])
        elif isinstance(value, list):
            args[name] = tuple(value)
    return getattr(optim, cls)(**args)
