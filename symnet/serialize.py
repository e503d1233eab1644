"""The model file: the declaration as plain data beside the arrays, for ``model.save`` / ``sn.load``.

A file is an ``.npz`` archive: ``meta`` holds the declaration as JSON (with the step count, the
dropout seed and the shuffling generator's state, so that a loaded model trains on as the saved
one would have), ``param/{P}``, ``state/{P}/{s}``, ``running/{R}`` and ``constant/{C}`` the
parameters, the optimizer state, batch norm's running statistics and the constants' values.

An expression becomes nested JSON lists ``[node type, *arguments]``; a matrix node that the
graph reads more than once is written the first time as ``["Let", k, node]`` and then as
``["Ref", k]`` (format version 2: a batch norm reads its Z three times, so a deep network
written as a tree grew 4 × a layer). Only the node types in :data:`NODES` (and the activations
of :mod:`symnet.functions`) are accepted back, so loading a file never runs code from it: no
pickle, no ``eval``, ``sympify`` or ``parse_expr``. Loading also never trusts a size in the file: the
JSON is read under a byte and a nesting limit, declared shapes must fit in memory, and only the
arrays the declaration names are read, each after its header matched the declaration.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import io
import json
import math
import re
import zipfile
import zlib

import numpy as np
import sympy as sp
from sympy.codegen.cfunctions import log1p
from sympy.core.symbol import Str
from sympy.functions.elementary.piecewise import ExprCondPair
from sympy.matrices.expressions import MatrixExpr

from codegen.files import NotARegularFile, atomic_write
from codegen.ir import UPDATE_SYMBOLS

from . import functions as fn
from . import optim, validate
from .declare import batch
from .errors import DataError, SymnetError
from .functions import Dropout, DropoutMask, Elementwise, RowLogSumExp, ScalarActivation, Standardized
from .schedules import Schedule

_SYMPY = [sp.Tuple, sp.Add, sp.Mul, sp.Pow, sp.exp, sp.log, sp.Abs, sp.Max, sp.Min, sp.sqrt, sp.sin,
          sp.cos, sp.tan, sp.tanh, sp.sinh, sp.cosh, sp.atan, sp.erf, sp.sign, sp.floor,
          sp.ceiling, sp.Heaviside, log1p, sp.Piecewise, ExprCondPair, sp.StrictLessThan,
          sp.LessThan, sp.StrictGreaterThan, sp.GreaterThan, sp.Eq, sp.Ne, sp.And, sp.Or, sp.Not,
          sp.Lambda, sp.MatMul, sp.MatAdd, sp.HadamardProduct, sp.HadamardPower, sp.Transpose,
          sp.OneMatrix, sp.ZeroMatrix, sp.Identity, Elementwise, RowLogSumExp, Standardized,
          Dropout, DropoutMask]
NODES = {cls.__name__: cls for cls in _SYMPY if isinstance(cls, type)}
ASSUMPTIONS = ("real", "integer", "positive", "nonnegative")
BUILTIN = {a.name: a.function for a in (fn.sigmoid, fn.tanh, fn.relu, fn.softplus, fn.hard_sigmoid,
                                        fn.hard_tanh, fn.swish, fn.gelu)}
PARAMETRISED = {"leaky_relu": fn.leaky_relu, "elu": fn.elu}

FORMAT, FORMAT_VERSION = "symnet-model", 2
READS = (1, 2)  # version 1: expressions as trees, without Let and Ref
META_KEYS = ("loss", "inputs", "targets", "prediction", "optimizer", "dtype", "backend", "steps")
MAX_META_BYTES = 16 * 2**20  # the declaration of a 60-layer network takes well under 1 MiB
MAX_DEPTH = 2000  # a 400-layer network: what compiles within validate.RECURSION_LIMIT
MAX_DIGITS = 100  # of an integer in an expression; larger ones only serve to stall arithmetic
MAX_EXPONENT = 1000  # of a power of a constant, which SymPy would evaluate exactly
MAX_STEPS = 2**62  # the kernels count steps in int64

_NUMBER = r"-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?"
ACTIVATION_NAME = re.compile(rf"[^\W\d]\w*(?:\[{_NUMBER}\])?")
LATEX_NAME = re.compile(r"[A-Za-z0-9\\{}_ .+-]+")  # no $, %, #, ^, &, ~ or other LaTeX escapes


# ------------------------------------------------------------------------- expressions


def encode(e, _let=None) -> list:
    """``e`` as nested lists of strings and numbers, each matrix node that ``e`` reads more than
    once written in full only the first time (``["Let", k, node]``, then ``["Ref", k]``)."""
    if e is None:
        return None
    if _let is None:
        _let = (_shared(e), {})
    shared, written = _let
    if e in shared:
        if e in written:
            return ["Ref", written[e]]
        node = _encode(e, _let)
        written[e] = len(written)
        return ["Let", written[e], node]
    return _encode(e, _let)


def _shared(e) -> set:
    """The matrix nodes (not leaves) that more than one node of ``e`` has as an argument."""
    seen, shared = set(), set()
    for node in validate.unique_nodes(e):
        for a in node.args:
            if isinstance(a, MatrixExpr) and a.args and not isinstance(a, sp.MatrixSymbol):
                (shared if a in seen else seen).add(a)
    return shared


def _encode(e, _let) -> list:
    def encode_(a):
        return encode(a, _let)

    if isinstance(e, sp.MatrixSymbol):
        _saveable_name(e.name, "matrix")
        return ["MatrixSymbol", e.name, encode_(e.shape[0]), encode_(e.shape[1])]
    if isinstance(e, sp.Symbol):
        _saveable_name(e.name, "symbol")
        return ["Symbol", e.name, [a for a in ASSUMPTIONS if e.assumptions0.get(a)]]
    if isinstance(e, Str):  # a normalisation block's name
        _saveable_label(e.name)
        return ["Str", e.name]
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
        if not _activation_name_ok(f.__name__):
            raise DataError(f"cannot save the activation {f.__name__!r}: an activation's name must "
                            f"be an identifier such as 'gelu' (optionally with a number, as "
                            f"'leaky_relu[0.1]'); rename it in sn.activation(...)")
        return ["Activation", f.__name__, encode_(f.definition.expr), encode_(f.numeric.expr),
                f.latex_name, encode_(e.args[0])]
    name = type(e).__name__
    if name not in NODES:
        raise DataError(f"cannot save an expression containing {name} ({e}): symnet stores only "
                        f"the node types it can load back safely")
    return [name, *(encode_(a) for a in e.args)]


def _saveable_label(label):
    if not (isinstance(label, str) and re.fullmatch(r"\w{1,64}", label)):
        raise DataError(f"cannot save the block name {label!r}: it must be letters, digits and "
                        f"underscores (e.g. '1'); rename the block")


def _str(label, sub):
    _saveable_label(label)
    return Str(label)


def _saveable_name(name, what):
    if not name.isidentifier():
        raise DataError(f"cannot save the {what} named {name!r}: names in a model file must be "
                        f"Python identifiers such as 'W1'; rename it")


def decode(data, depth: int = 0, _lets=None):
    """The expression that :func:`encode` turned into ``data``.

    Builds only the node types of :data:`NODES` and activations, accepts only identifiers as
    names, and refuses trees deeper than :data:`MAX_DEPTH` and matrices larger than memory: a
    file can neither run code nor exhaust the stack or the memory.
    """
    if data is None:
        return None
    if depth > MAX_DEPTH:
        raise DataError(f"the saved declaration is nested more than {MAX_DEPTH} levels deep; "
                        f"symnet never writes such trees, so the file is damaged or forged")
    if not isinstance(data, list) or not data or not isinstance(data[0], str):
        raise DataError(f"the saved declaration is damaged: expected [node, ...], got "
                        f"{_short(data)}")
    tag, *args = data
    lets = {} if _lets is None else _lets
    if tag == "Let":
        return _let(args, depth, lets)
    if tag == "Ref":
        if len(args) != 1 or _index(args[0]) not in lets:
            raise DataError(f"the saved declaration is damaged: {_short(data)} refers to no node "
                            f"written before it")
        return lets[args[0]]

    def sub(child):
        return decode(child, depth + 1, lets)

    if tag in _LEAVES:
        arity, build = _LEAVES[tag]
        if len(args) != arity:
            raise DataError(f"the saved declaration is damaged: a {tag} node has {arity} "
                            f"arguments, this one has {len(args)}")
        return build(*args, sub)
    if tag not in NODES:
        raise DataError(f"the saved declaration contains the node type {_short(tag)}, which "
                        f"symnet does not load (the file was not written by symnet, or by a newer "
                        f"version)")
    cls = NODES[tag]
    children = [sub(a) for a in args]
    if cls is sp.Pow:
        _check_power(*children)
    node = _build(tag, cls, *children)  # SymPy's invariant: e == e.func(*e.args)
    if isinstance(node, (sp.OneMatrix, sp.ZeroMatrix, sp.Identity)):
        _check_shape(tag, node.shape)
    return node


def _let(args, depth, lets):
    """``["Let", k, node]``: the node, remembered as number k for the ``["Ref", k]`` after it."""
    if len(args) != 2:
        raise DataError(f"the saved declaration is damaged: a Let node has {len(args)} "
                        f"arguments; expected ['Let', number, node]")
    node = decode(args[1], depth, lets)  # numbered after the nodes it holds, as encode does
    if _index(args[0]) != len(lets):
        raise DataError(f"the saved declaration is damaged: a Let node is numbered "
                        f"{_short(args[0])}; expected {len(lets)}")
    if not isinstance(node, MatrixExpr):
        raise DataError(f"the saved declaration is damaged: a Let node names {_short(node)}, not "
                        f"a matrix expression")
    lets[args[0]] = node
    return node


def _index(k):
    return k if isinstance(k, int) and not isinstance(k, bool) else None


def _build(what, make, *args):
    """``make(*args)``, with whatever SymPy (or symnet) raises on arguments from a file turned
    into a DataError naming the node."""
    try:
        return make(*args)
    except SymnetError as err:
        raise DataError(f"the saved declaration is damaged: its {what} node is invalid: {err}") from None
    except Exception as err:  # SymPy refuses foreign arguments in many ways (TypeError,
        # ValueError, its ShapeError, AttributeError, ...): each means the file is damaged
        raise DataError(f"the saved declaration is damaged: its {what} node cannot be built "
                        f"({type(err).__name__}: {_short(str(err))})") from None


def _matrix_symbol(name, rows, cols, sub):
    name = _identifier(name, "matrix")
    shape = (sub(rows), sub(cols))
    _check_shape(f"matrix {name}", shape)
    return sp.MatrixSymbol(name, *shape)


def _check_shape(what, shape):
    """Each dimension is sn.batch or a positive integer, and the fixed entries fit in memory: a
    declared 10⁹×10⁹ parameter is refused here, before anything allocates it."""
    for d in shape:
        if d != batch and not (isinstance(d, sp.Integer) and d >= 1):
            raise DataError(f"the saved {what} has a dimension {_short(d)}; dimensions are "
                            f"positive integers or sn.batch (n)")
    entries = math.prod(int(d) for d in shape if d != batch)
    if entries > max_entries():
        raise DataError(f"the saved {what} is {shape[0]}×{shape[1]}: {entries} entries do not "
                        f"fit in this machine's memory ({physical_memory()} bytes); the file is "
                        f"damaged or was made for a much larger machine")


def _symbol(name, assumptions, sub):
    if not isinstance(assumptions, list) or any(a not in ASSUMPTIONS for a in assumptions):
        raise DataError(f"the saved declaration uses unknown symbol assumptions "
                        f"{_short(assumptions)}; symnet writes a list drawn from {list(ASSUMPTIONS)}")
    return sp.Symbol(_identifier(name, "symbol"), **dict.fromkeys(assumptions, True))


def _boolean(value, sub):
    if not isinstance(value, bool):
        raise DataError(f"the saved declaration is damaged: a Boolean node holds {_short(value)}")
    return sp.true if value else sp.false


def _integer(text, sub):
    return sp.Integer(_int(text))


def _rational(p, q, sub):
    numerator, denominator = _int(p), _int(q)
    if denominator == 0:
        raise DataError(f"the saved declaration is damaged: a Rational node divides by zero "
                        f"({numerator}/0)")
    return sp.Rational(numerator, denominator)


def _int(text) -> int:
    if not (isinstance(text, str) and re.fullmatch(rf"-?\d{{1,{MAX_DIGITS}}}", text)):
        raise DataError(f"the saved declaration is damaged: expected an integer of at most "
                        f"{MAX_DIGITS} digits as text, got {_short(text)}")
    return int(text)


def _float(text, sub):
    try:
        value = float(_text(text))
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"the saved declaration is damaged: expected a finite number as text in "
                        f"a Float node, got {_short(text)}")
    return sp.Float(value)


def _constant(name, sub):
    constants = {"pi": sp.pi, "E": sp.E}
    if name not in constants:
        raise DataError(f"the saved declaration uses the constant {_short(name)}; symnet knows "
                        f"{sorted(constants)}")
    return constants[name]


def _activation(name, definition, numeric, latex, arg, sub):
    """The activation called ``name`` applied to ``arg``: the library's own when the definition
    matches (so the library's rewrites recognise it), else one rebuilt from its stored
    definition. A LaTeX name outside a plain pattern is replaced by the default one."""
    name = _text(name)
    if not _activation_name_ok(name):
        raise DataError(f"the saved declaration has an activation named {_short(name)}; names "
                        f"are identifiers, optionally with a number as in 'leaky_relu[0.1]'")
    definition, numeric = sub(definition), sub(numeric)
    for what, body in (("definition", definition), ("numeric form", numeric)):
        if not isinstance(body, sp.Expr) or body.free_symbols - {fn.x}:
            raise DataError(f"the saved activation {name}: its {what} must be a scalar "
                            f"expression in x, got {_short(body)}")
    latex = latex if isinstance(latex, str) and LATEX_NAME.fullmatch(latex) else None
    function = _known_activation(name, definition)
    if function is None:
        function = _build(f"activation {name}", _rebuilt, name, definition, numeric, latex)
    return _build(f"activation {name}", function, sub(arg))


def _activation_name_ok(name: str) -> bool:
    return len(name) <= 100 and ACTIVATION_NAME.fullmatch(name) is not None


@functools.lru_cache(maxsize=256)
def _rebuilt(name, definition, numeric, latex):
    """One class per stored activation, however often the file applies it: distinct classes
    would make equal subexpressions unequal, so the loaded model would recompute them."""
    return fn._new_activation(name, definition, fn.x, latex=latex, numeric=numeric).function


def _known_activation(name, definition):
    """The library's activation ``name`` if its definition is ``definition``, else None."""
    function = BUILTIN.get(name)
    match = re.fullmatch(r"(\w+)\[(.+)\]", name)
    if match and match[1] in PARAMETRISED:
        text = match[2]
        alpha = int(text) if re.fullmatch(r"-?\d{1,18}", text) else float(text)
        try:
            function = PARAMETRISED[match[1]](alpha).function
        except SymnetError:  # an alpha the library refuses: the file's own definition decides
            function = None
    if function is not None and function.definition.expr == definition:
        return function
    return None


_LEAVES = {"MatrixSymbol": (3, _matrix_symbol), "Symbol": (2, _symbol), "Boolean": (1, _boolean),
           "Integer": (1, _integer), "Rational": (2, _rational), "Float": (1, _float),
           "Constant": (1, _constant), "Activation": (5, _activation), "Str": (1, _str)}


def _check_power(base, exp):
    """Refuse a constant raised to a huge power, which SymPy would evaluate exactly on building
    it (10**(10**9) has a billion digits)."""
    if getattr(exp, "is_Number", False) and abs(exp) > MAX_EXPONENT and not getattr(
            base, "free_symbols", True):
        raise DataError(f"the saved declaration raises a constant to the power {_short(exp)}; "
                        f"symnet refuses powers of constants beyond ±{MAX_EXPONENT}")


def _identifier(name, what) -> str:
    if not (isinstance(name, str) and name.isidentifier()):
        raise DataError(f"the saved declaration names a {what} {_short(name)}; names in a model "
                        f"file must be Python identifiers such as 'W1'")
    return name


def _text(value) -> str:
    if not isinstance(value, str):
        raise DataError(f"the saved declaration is damaged: expected text, got {_short(value)}")
    return value


def _short(value, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message must not quote a forged megabyte."""
    return validate.clipped(repr(value), limit)


def physical_memory() -> int:
    """This machine's RAM in bytes (1 TiB where the OS does not say), which a file's sizes must
    fit in."""
    return validate.physical_memory() or 2**40


def max_entries() -> int:
    """The most entries one matrix may have: as many float32 values as fit in memory."""
    return physical_memory() // 4


# --------------------------------------------------------------------------- optimizers


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
    """The optimizer :func:`encode_optimizer` turned into ``data``; its constructor checks the
    values, this function their names and types."""
    cls = data.get("class") if isinstance(data, dict) else None
    if not isinstance(cls, str) or cls not in optim.__all__ or cls == "Optimizer":
        raise DataError(f"the saved optimizer {_short(cls)} is not one of sn.optim's optimizers")
    kind = getattr(optim, cls)
    args = data.get("args", {})
    if not isinstance(args, dict):
        raise DataError(f"the saved optimizer {cls} has arguments {_short(args)}; expected a dict")
    unknown = set(args) - set(inspect.signature(kind).parameters)
    if unknown:
        raise DataError(f"the saved optimizer {cls} has arguments {sorted(unknown)} that "
                        f"sn.optim.{cls} does not take")
    values = {name: _optimizer_argument(cls, name, value) for name, value in args.items()}
    try:
        return kind(**values)
    except SymnetError as err:
        raise DataError(f"the saved optimizer is invalid: {err}") from None


def _optimizer_argument(cls, name, value):
    if isinstance(value, dict):
        return _schedule(value)
    if isinstance(value, list) and all(_is_number(v) for v in value):
        return tuple(value)
    if value is None or isinstance(value, bool) or _is_number(value):
        return value
    raise DataError(f"the saved optimizer {cls} has {name}={_short(value)}; expected a number, "
                    f"a list of numbers, true/false, null or a schedule")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _schedule(data) -> Schedule:
    if set(data) != {"schedule", "expr", "base"}:
        raise DataError(f"the saved learning-rate schedule has the entries {sorted(data)}; "
                        f"expected schedule, expr and base")
    name, expr, base = data["schedule"], decode(data["expr"]), data["base"]
    if not (isinstance(name, str) and name.isidentifier()) or not _is_number(base):
        raise DataError(f"the saved learning-rate schedule {_short(name)} is damaged: expected a "
                        f"name and a number as its base, got {_short(base)}")
    if not isinstance(expr, sp.Expr) or expr.free_symbols - {UPDATE_SYMBOLS['t']}:
        raise DataError(f"the saved learning-rate schedule {name} must be an expression in the "
                        f"step t, got {_short(expr)}")
    return Schedule(name, expr, base)


# ---------------------------------------------------------------------------- the file


def save_model(model, path) -> None:
    """Write ``model``'s declaration, parameters, optimizer state, step count and shuffling
    state to ``path``, atomically (see :func:`codegen.files.atomic_write`: a symlink stays a
    symlink and the file keeps its permissions)."""
    path = validate.file_name(path, "save(path)", "model.npz")
    arrays = _arrays(model)
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except NotARegularFile as err:
        raise DataError(f"cannot save the model to {path}: {err}, and saving would replace it. "
                        f"Pass the path of a regular file, such as 'model.npz'.") from None
    except OSError as err:
        fix = {errno.ENOENT: "pass a path in an existing directory",
               errno.ENOTDIR: "pass a path in an existing directory",
               errno.EACCES: "pass a path in a writable directory",
               errno.EPERM: "pass a path in a writable directory",
               errno.EROFS: "pass a path in a writable directory"}.get(
                   err.errno, "a file that was there is unchanged")
        raise DataError(f"cannot save the model to {path!s}: {err.strerror or err}; {fix}") from None


def to_bytes(model) -> bytes:
    """The model file of ``model``, as bytes (what a pickle of a Model holds)."""
    buffer = io.BytesIO()
    np.savez(buffer, **_arrays(model))
    return buffer.getvalue()


def from_bytes(data: bytes, backend: str | None = None):
    """The model whose file :func:`to_bytes` made: the checks of :func:`load_model` apply."""
    if not isinstance(data, bytes):
        raise DataError(f"a pickled symnet model holds the bytes of a model file, got "
                        f"{type(data).__name__}")
    return _load(io.BytesIO(data), "the pickled model", backend)


def _arrays(model) -> dict[str, np.ndarray]:
    with validate.deep_recursion("saving the model"):
        arrays = {"meta": np.array(json.dumps(_meta(model)))}
    arrays.update({f"param/{k}": v for k, v in model.params.items()})
    arrays.update({f"state/{k}/{s}": v for k, st in model._state.items() for s, v in st.items()})
    arrays.update({f"running/{k}": v for k, v in model.running.items()})
    arrays.update({f"constant/{k}": v for k, v in model.constants.items()})
    return arrays


def _meta(model) -> dict:
    return {
        "format": FORMAT, "version": FORMAT_VERSION, "symnet": _version(),
        "loss": encode(model.loss_expr),
        # one expression, or {"several": [...]} for prediction=[P1, P2, …]
        "prediction": ({"several": [encode(p) for p in model.prediction_exprs]}
                       if model._several else encode(model.prediction_expr)),
        "inputs": [encode(s) for s in model.inputs],
        "targets": [encode(s) for s in model.targets],
        "constants": [encode(s) for s in model._constant_symbols],
        "optimizer": encode_optimizer(model.optimizer),
        "dtype": model.dtype.name, "backend": model.backend, "steps": model._steps,
        "dropout_seed": model.dropout_seed,  # training on after a load draws the same masks
        "shuffle": model._shuffle_rng.bit_generator.state,  # ... and shuffles the same way
    }


def load_model(path, backend: str | None = None):
    """The model :func:`save_model` wrote to ``path``; ``backend`` overrides the saved one.

    Reads ``meta`` first, checks it, compiles the declaration, then reads exactly the arrays the
    compiled model has, each only after its header matched the declared shape: an array the
    declaration does not name is never read, however large.
    """
    path = validate.file_name(path, "sn.load(path)", "model.npz")
    if path.is_dir():
        files = sorted(str(f) for f in path.glob("*.npz"))[:3]
        raise DataError(f"{path} is a directory; pass a model file, such as "
                        f"{' or '.join(files)}" if files else
                        f"{path} is a directory, with no .npz file in it; pass a model file")
    if not path.is_file():
        raise DataError(f"no model file at {path}")
    return _load(path, path, backend)


def _load(source, path, backend):
    """The model in the archive ``source`` (a path or a binary file), named ``path`` in errors."""
    from .model import BACKENDS, Model  # model.py imports this module to save and load

    if backend is not None:  # the caller's, not the file's
        validate.choice(backend, "backend", BACKENDS)
    with validate.deep_recursion("loading the model"), _archive(source, path) as archive:
        with _about(path):
            meta = _check_meta(_read_meta(archive), BACKENDS)
            declaration = _declaration(meta)
            _check_memory(declaration, np.dtype(meta["dtype"]))
            model = Model(**declaration, seed=None, init="auto", dtype=meta["dtype"],
                          backend=backend or meta["backend"], saved=True)  # values read below
        with _about(path):
            for k, value in model.params.items():
                _read_into(archive, f"param/{k}", value)
                for s, state in model._state[k].items():
                    _read_into(archive, f"state/{k}/{s}", state)
            for k, value in model.running.items():
                _read_into(archive, f"running/{k}", value)
            for k, value in model.constants.items():
                _read_into(archive, f"constant/{k}", value)
    model._steps = meta["steps"]
    model.dropout_seed = meta.get("dropout_seed", model.dropout_seed)
    if "shuffle" in meta:
        model._shuffle_rng.bit_generator.state = meta["shuffle"]
    return model


def _is_shuffle_state(v) -> bool:
    """``v`` is the state of a PCG64 generator (``bit_generator.state``), numbers in range."""
    def whole(x, end):
        return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < end

    inner = v.get("state") if isinstance(v, dict) else None
    return (isinstance(inner, dict) and set(v) == {"bit_generator", "state", "has_uint32",
                                                   "uinteger"}
            and v["bit_generator"] == "PCG64" and set(inner) == {"state", "inc"}
            and whole(inner["state"], 2**128) and whole(inner["inc"], 2**128)
            and inner["inc"] % 2 == 1 and whole(v["has_uint32"], 2)
            and whole(v["uinteger"], 2**32))


@contextlib.contextmanager
def _about(path):
    """Name the file in the errors raised while reading it. What it declares was accepted when
    it was saved, so a declaration refused now (a schedule of 1/0, an input of another width)
    is a damaged file, not a mistake in the caller's code."""
    try:
        yield
    except DataError as err:
        raise DataError(f"{path}: {err}") from None
    except SymnetError as err:
        if getattr(err, "backend", False):  # this machine's backend, not the file
            raise
        raise DataError(f"{path}: the file is damaged: what it declares is refused ({err})") from None


def _archive(source, path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise DataError(f"{path} is not a readable symnet model (truncated or not an .npz "
                        f"file): {err}") from None


def _read_meta(archive) -> dict:
    """The JSON of the ``meta`` entry, whose size is checked before a byte of it is read."""
    if "meta.npy" not in archive.namelist():
        raise DataError("the file is an .npz file but not a symnet model (it has no 'meta')")
    if archive.getinfo("meta.npy").file_size > MAX_META_BYTES:
        raise DataError(f"its 'meta' entry is {archive.getinfo('meta.npy').file_size} bytes, "
                        f"more than the {MAX_META_BYTES} a symnet model's declaration can take")

    def accept(shape, dtype):
        if shape != () or dtype.kind != "U" or not 0 < dtype.itemsize <= MAX_META_BYTES:
            raise DataError(f"its 'meta' entry is a {dtype} array of shape {shape}, not the text "
                            f"of a declaration")

    text = str(_read_array(archive, "meta", accept)[()])
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise DataError("its 'meta' entry nests too deeply to be a symnet declaration") from None
    except ValueError as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"its 'meta' entry is not valid JSON ({_short(str(err))})") from None


def _refuse_constant(name):
    raise DataError(f"its 'meta' entry contains {name}, which symnet never writes")


def _check_meta(meta, backends) -> dict:
    """``meta`` after checking that it has every entry a model needs, each of the right type."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError("the file is not a symnet model file (its 'meta' has no symnet format tag)")
    if meta.get("version") not in READS:
        raise DataError(f"it has model format version {_short(meta.get('version'))}; this symnet "
                        f"reads versions {', '.join(map(str, READS))}")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise DataError(f"its declaration lacks the entries {missing}; the file is damaged or "
                        f"was not written by model.save")
    checks = {
        "steps": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_STEPS,
                  "a non-negative integer"),
        "dtype": (lambda v: v in ("float32", "float64"), "'float32' or 'float64'"),
        "backend": (lambda v: isinstance(v, str) and v in backends, f"one of {sorted(backends)}"),
        "inputs": (lambda v: isinstance(v, list), "a list"),
        "targets": (lambda v: isinstance(v, list), "a list"),
        "loss": (lambda v: isinstance(v, list), "an expression"),
        "optimizer": (lambda v: isinstance(v, dict), "an optimizer"),
    }
    if "constants" in meta:  # written since constants; older files have none
        checks["constants"] = (lambda v: isinstance(v, list), "a list")
    if "dropout_seed" in meta:  # written since dropout; older files draw new masks
        checks["dropout_seed"] = (lambda v: isinstance(v, int) and not isinstance(v, bool)
                                  and 0 <= v < 2**63, "a non-negative integer")
    if "shuffle" in meta:  # written since the shuffle state is saved; older files shuffle afresh
        checks["shuffle"] = (_is_shuffle_state, "a PCG64 generator's state")
    for key, (ok, expected) in checks.items():
        if not ok(meta[key]):
            raise DataError(f"its {key} is {_short(meta[key])}; expected {expected}")
    return meta


def _declaration(meta) -> dict:
    """The arguments of ``sn.compile`` (but dtype and backend) that ``meta`` declares."""
    return {"loss": decode(meta["loss"]),
            "inputs": [decode(s) for s in meta["inputs"]],
            "targets": [decode(s) for s in meta["targets"]],
            # values are read after compiling, as the parameters are
            "constants": {decode(s): 0.0 for s in meta.get("constants", [])},
            "prediction": _prediction(meta["prediction"]),
            "optimizer": decode_optimizer(meta["optimizer"])}


def _prediction(data):
    """The declared prediction: one expression (or None), or a list for ``{"several": [...]}``."""
    if not isinstance(data, dict):
        return decode(data)
    several = data.get("several")
    if set(data) != {"several"} or not isinstance(several, list) or not 1 <= len(several) <= 256:
        raise DataError(f"its prediction is {_short(data)}; expected an expression or "
                        f"{{'several': [expressions]}}")
    return [decode(p) for p in several]


def _check_memory(declaration, dtype):
    """Refuse parameters (and their optimizer state) that together exceed this machine's memory,
    before compile allocates them."""
    data = {*declaration["inputs"], *declaration["targets"], *declaration["constants"]}
    loss = declaration["loss"]
    symbols = fn.matrix_symbols(loss) if isinstance(loss, sp.Basic) else set()
    params = [s for s in symbols if s not in data
              and all(isinstance(d, sp.Integer) for d in s.shape)]
    entries = sum(int(p.shape[0]) * int(p.shape[1]) for p in params)
    copies = 1 + len(declaration["optimizer"].state)
    need = entries * copies * dtype.itemsize
    if need > physical_memory():
        raise DataError(f"its parameters and optimizer state need {need} bytes ({entries} "
                        f"entries × {copies} copies in {dtype}), more than this machine's memory "
                        f"({physical_memory()} bytes); the file is damaged or was made for a "
                        f"much larger machine")


def _read_into(archive, key, into):
    """Fill ``into`` with the stored array ``key``, which must have its shape, be real and
    finite. Nothing is read before its header matches."""
    kind, _, name = key.partition("/")
    what = {"state": "the optimizer state", "running": "the running statistic",
            "constant": "the constant"}.get(
        kind, "the parameter") + f" {name}"

    def accept(shape, dtype):
        if shape != into.shape:
            raise DataError(f"{what} has shape {shape} but the declaration gives "
                            f"{into.shape}; the arrays do not match the declaration (the file "
                            f"is damaged)")
        if dtype.kind not in "fiu":
            raise DataError(f"{what} is stored as {dtype}; parameters and optimizer "
                            f"state must be real numbers. Save the model again from real-valued "
                            f"arrays (e.g. model.params[name][...] = value.real)")

    stored = _read_array(archive, key, accept)
    with np.errstate(over="ignore", invalid="ignore"):
        value = stored.astype(into.dtype)
    bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
    if bad:
        raise DataError(f"{what} has {bad} NaN or infinite entries (of {value.size}) in "
                        f"{into.dtype}; a model whose parameters diverged cannot be loaded. "
                        f"Retrain it, or save it before its loss stopped being finite.")
    if name.startswith("running_var") and (value < 0).any():
        raise DataError(f"{what} has negative entries, and a variance is ≥ 0; the file is "
                        f"damaged")
    into[...] = value


def _read_array(archive, key, accept) -> np.ndarray:
    """The array stored as ``key``. ``accept(shape, dtype)`` sees its header first and raises
    to refuse it, so that no byte of an unwanted array is read or allocated."""
    try:
        info = archive.getinfo(f"{key}.npy")
    except KeyError:
        raise DataError(f"it has no array {key!r}; the file does not match its declaration "
                        f"(it is damaged)") from None
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise DataError(f"the array {key!r} is compressed with method "
                        f"{info.compress_type}; numpy writes only stored or deflated entries")
    try:
        with archive.open(info) as f:
            shape, fortran, dtype = _header(f, key)
            accept(shape, dtype)
            size = math.prod(shape) * dtype.itemsize
            data = f.read(size)
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError,
            NotImplementedError) as err:
        raise DataError(f"it is not a readable symnet model (truncated or damaged at {key!r}): "
                        f"{_short(str(err))}") from None
    if len(data) != size:
        raise DataError(f"the array {key!r} is truncated ({len(data)} of {size} bytes)")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _header(f, key):
    """``(shape, fortran_order, dtype)`` from the ``.npy`` header at the start of ``f``."""
    version = np.lib.format.read_magic(f)
    read = {(1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise DataError(f"the array {key!r} has .npy format version {version}; symnet reads "
                        f"1.0 and 2.0")
    return read(f)


def _version():
    from . import __version__

    return __version__
