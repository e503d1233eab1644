"""Elementwise activations, row-wise softmax, reductions, losses and regularisers.

Everything here returns an ordinary SymPy matrix expression. An elementwise activation is a
SymPy ``Function`` whose scalar definition lives in one place, :func:`activation`; applying it to
a matrix builds an :class:`Elementwise` node. Adding an activation touches this file only.
"""

from __future__ import annotations

import inspect
import numbers
import re
import threading
import unicodedata
import weakref
from functools import cache, cached_property

import sympy as sp
from sympy.codegen.cfunctions import log1p
from sympy.core.symbol import Str
from sympy.matrices.expressions import MatrixExpr

from . import validate
from .errors import DeclarationError, DifferentiationError, ShapeError

#: The scalar variable every activation is written in.
x = sp.Symbol("x", real=True)


# ----------------------------------------------------------------------------- matrix nodes

_NODES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _node(cls, *args):
    """``MatrixExpr.__new__(cls, *args)``, one object per distinct node. A network is a graph
    (a norm reads its Z three times, a residual layer its input twice) and SymPy compares two
    equal expressions node by node along every path, stopping only at shared objects; rewriting
    rebuilds the graph, so comparing the rebuilt copy with the old one took time exponential in
    depth (batch-norm layers: 4 × more a layer, 10 layers did not compile in 600 s). With every
    node of this module interned, equal copies share them, and a comparison stops at the
    nearest one below."""
    key = _Key((cls, args))
    node = _NODES.get(key)
    if node is None:
        node = _NODES.setdefault(key, MatrixExpr.__new__(cls, *args))
    return node


class _Key:
    """A node's class and arguments with their hash computed once: the weak dictionary drops an
    entry by this hash, also while Python shuts down, when SymPy can no longer hash a Float."""

    __slots__ = ("content", "hash")

    def __init__(self, content):
        self.content, self.hash = content, hash(content)

    def __hash__(self):
        return self.hash

    def __eq__(self, other):
        return self.content == other.content


def _shape(of):
    """A node's shape, found once: a network's shape is its input's, and asked for anew it was
    a recursion through every layer (O(depth) a question; 400 layers overflowed the stack)."""
    return cached_property(of)


class _Shown:
    """Printed by symnet's formula printers, in str() and LaTeX alike: SymPy's own notation has
    no entrywise function application."""

    def _sympystr(self, printer):
        from .formulas import text

        return text(self)

    def _latex(self, printer):
        from .formulas import latex

        return latex(self)


class _Operand:
    """A sum or difference with a symnet node checks its operands here, before SymPy does: a
    residual connection of the wrong width, or a number added to a matrix, stopped with SymPy's
    own errors, which name neither the operands nor the fix; 0 + node is the node, so that
    Python's ``sum`` adds nodes. (A sum of SymPy matrices alone, such as X + X·W, is SymPy's
    to check.)"""

    _op_priority = 11.5  # above MatrixExpr's 11: SymPy hands such an operation to these methods

    def __add__(self, other):
        if _summable(self, other, "+"):
            return self
        return MatrixExpr.__add__(self, other)

    def __radd__(self, other):
        if _summable(other, self, "+"):
            return self
        return MatrixExpr.__radd__(self, other)

    def __sub__(self, other):
        if _summable(self, other, "−"):
            return self
        return MatrixExpr.__sub__(self, other)

    def __rsub__(self, other):
        if _summable(other, self, "−"):
            return -self
        return MatrixExpr.__rsub__(self, other)


def _summable(left, right, op) -> bool:
    """Refuse a sum of two shapes, or of a matrix and a number or array; True where the other
    operand is the number 0, which Python's ``sum`` starts from (a sum of symnet nodes)."""
    matrix, other = (left, right) if isinstance(left, MatrixExpr) else (right, left)
    if not isinstance(other, MatrixExpr):
        scalar = isinstance(other, (numbers.Number, sp.Expr)) and not isinstance(other, bool)
        if scalar and other == 0:
            return True
        shown = validate.clipped(formula_text(matrix), 40)
        number = other if scalar else "c"
        them = str(other) if scalar else validate.describe(other)
        written = f"{shown} {op} {them}" if left is matrix else f"{them} {op} {shown}"
        spread, code_op = f"{number}*sp.OneMatrix(*h.shape)", "-" if op == "−" else op
        code = f"h {code_op} {spread}" if left is matrix else f"{spread} {code_op} h"
        fix = f"write {code}, where h is the matrix ({number} in every entry)"
        if scalar:
            raise ShapeError(f"{written}: a scalar and an {_shape_text(matrix)} matrix; + and − "
                             f"take matrices of one shape: {fix}")
        raise DeclarationError(f"{written}: a declaration takes SymPy matrix expressions, not "
                               f"{type(other).__name__} values; for a number c, {fix}")
    if left.shape != right.shape:
        short = [validate.clipped(formula_text(e), 40) for e in (left, right)]
        raise ShapeError(
            f"{short[0]} {op} {short[1]}: {_shape_text(left)} and {_shape_text(right)} "
            f"matrices; + and − take matrices of one shape. For a residual connection h + f(h), "
            f"give f's last layer as many units as h has columns, or project h to f's width "
            f"first with sn.dense(h, units)")


class Elementwise(_Operand, _Shown, MatrixExpr):
    """``fn.(M)``: the scalar function ``fn`` (a one-argument ``Lambda``) applied to every entry of M.

    SymPy's own ``ElementwiseApplyFunction`` rewrites itself on construction and prints as
    ``Lambda(_d, ...).(M)``; this node stays as built and prints the way a textbook writes it.
    """

    def __new__(cls, fn, arg):
        if not isinstance(fn, sp.Lambda) or len(fn.variables) != 1:
            raise DeclarationError(f"Elementwise needs a one-argument sympy.Lambda, got {fn!r}")
        if not getattr(arg, "is_Matrix", False):
            raise DeclarationError(f"Elementwise applies to a matrix expression, got {arg!r}")
        return _node(cls, fn, arg)

    fn = property(lambda self: self.args[0])
    arg = property(lambda self: self.args[1])
    shape = _shape(lambda self: self.args[1].shape)

    def body(self, var=x):
        """The scalar function body written in ``var``."""
        return self.fn(var)

    def _entry(self, i, j, **kwargs):
        return self.fn(self.arg._entry(i, j, **kwargs))

    def _eval_transpose(self):
        return Elementwise(self.fn, self.arg.T)

    def doit(self, **hints):
        """``fn.(M.doit())``, remembered: SymPy's deep ``doit`` runs on every ``*`` and ``+`` of
        matrices, and a network reads a layer's output more than once (a residual twice), so
        without memory each ``+`` walked the network as a tree (declaring 12 residual layers
        took 20 s, 2 × more a layer). Nodes are interned, so an unchanged argument gives self."""
        if not hints.get("deep", True):
            return self
        done = self.__dict__.setdefault("_done", {})
        key = tuple(sorted(hints.items()))
        if key not in done:
            done[key] = Elementwise(self.fn, self.arg.doit(**hints))
        return done[key]

    def _pretty(self, printer):
        from sympy.printing.pretty.stringpict import prettyForm

        return prettyForm(self._sympystr(printer))


class Entrywise(_Operand, _Shown, MatrixExpr):
    """``f.(M1, M2, …)``: a scalar function of several variables applied entry by entry to
    matrices of one shape. The simplifier builds it where a loss combines functions of several
    matrices entrywise (binary cross-entropy of a sigmoid), so that SymPy differentiates and
    simplifies the combination as one scalar function: its adjoint is then σ(Z) − Y."""

    def __new__(cls, fn, *args):
        if not isinstance(fn, sp.Lambda) or len(fn.variables) != len(args) or len(args) < 2:
            raise DeclarationError(f"Entrywise needs a sympy.Lambda of one variable per matrix "
                                   f"(two or more), got {fn!r} for {len(args)} matrices")
        if not all(getattr(a, "is_Matrix", False) for a in args):
            raise DeclarationError(f"Entrywise applies to matrix expressions, got {args!r}")
        if len({tuple(a.shape) for a in args}) != 1:
            raise DeclarationError(f"Entrywise needs matrices of one shape, got {args!r}")
        return _node(cls, fn, *args)

    fn = property(lambda self: self.args[0])
    arguments = property(lambda self: self.args[1:])
    shape = _shape(lambda self: self.args[1].shape)

    def _entry(self, i, j, **kwargs):
        return self.fn(*[a._entry(i, j, **kwargs) for a in self.arguments])

    def _eval_transpose(self):
        return Entrywise(self.fn, *[a.T for a in self.arguments])


class RowLogSumExp(_Operand, MatrixExpr):
    """``logsumexp(Z)``: the n×1 column of log Σ_j exp(Z_ij), computed stably."""

    def __new__(cls, arg):
        if not getattr(arg, "is_Matrix", False):
            raise DeclarationError(f"logsumexp applies to a matrix expression, got {arg!r}")
        return _node(cls, arg)

    arg = property(lambda self: self.args[0])
    shape = _shape(lambda self: (self.args[0].shape[0], sp.Integer(1)))

    def _sympystr(self, printer):
        return f"logsumexp({printer._print(self.arg)})"

    def _latex(self, printer):
        return rf"\operatorname{{logsumexp}}\left({printer._print(self.arg)}\right)"

    def _entry(self, i, j, **kwargs):
        """Entry i: log Σ_k exp(Z_ik), so that indexing a loss (``loss[0, 0]``) gives SymPy's
        scalar as it does for ``mse``'s."""
        k = sp.Dummy("k", integer=True)
        row = sp.exp(self.arg._entry(i, k, **kwargs))
        return sp.log(sp.Sum(row, (k, 0, self.arg.shape[1] - 1)))


class Standardized(_Operand, _Shown, MatrixExpr):
    """``X̂ = (Z − μ)/σ`` with Z's own statistics broadcast along the axis they were taken over:
    μ and σ are 1×k for each column over the batch (batch norm) or n×1 for each row (layer
    norm). ``label`` names the block (μ1, σ1, X̂1); ``eps`` is inside σ = √(var + eps);
    ``momentum`` (batch norm only, else 0) weighs each step's statistics in the running ones.

    Because μ and σ are known to be Z's statistics, the VJP rule of this one node gives Z's
    adjoint in closed form, instead of a sum of chain-rule terms through μ, σ and their powers.
    """

    def __new__(cls, z, mu, sigma, label, eps, momentum):
        for m in (z, mu, sigma):
            if not getattr(m, "is_Matrix", False):
                raise DeclarationError(f"Standardized takes matrix expressions, got {m!r}")
        rows, cols = z.shape
        if mu.shape != sigma.shape or mu.shape not in ((1, cols), (rows, 1)):
            raise ShapeError(f"the statistics of a {_shape_text(z)} matrix are 1×{cols} or "
                             f"{rows}×1, got μ {_shape_text(mu)} and σ {_shape_text(sigma)}")
        label = label if isinstance(label, Str) else Str(str(label))
        return _node(cls, z, mu, sigma, label, sp.Float(eps), sp.Float(momentum))

    z = property(lambda self: self.args[0])
    mu = property(lambda self: self.args[1])
    sigma = property(lambda self: self.args[2])
    label = property(lambda self: self.args[3].name)
    eps = property(lambda self: self.args[4])
    momentum = property(lambda self: self.args[5])
    shape = _shape(lambda self: self.args[0].shape)

    @property
    def over_batch(self) -> bool:
        """Column statistics over the batch (batch norm), rather than row statistics."""
        return self.mu.shape[0] == 1 and self.z.shape[0] != 1

    def broadcast(self, m):
        """A statistic (or one of its shape) spread over Z's shape: 𝟙·μ or μ·𝟙ᵀ."""
        rows, cols = self.shape
        if self.over_batch:
            return sp.MatMul(sp.OneMatrix(rows, 1), m)
        return sp.MatMul(m, sp.OneMatrix(1, cols))

    def as_entrywise(self):
        """The same values as an :class:`Entrywise` of Z and the broadcast statistics."""
        a, b, c = sp.symbols("z mu sigma", real=True)
        return Entrywise(sp.Lambda((a, b, c), (a - b) / c), self.z, self.broadcast(self.mu),
                         self.broadcast(self.sigma))

    def _entry(self, i, j, **kwargs):
        return self.as_entrywise()._entry(i, j, **kwargs)

    def doit(self, **hints):
        """Itself: SymPy's deep ``doit`` (run by every ``*`` of matrices) would merge the
        𝟙·μ inside σ into 𝟙ₙₓₙ·Z/n, and μ could no longer be named."""
        return self


class DropoutMask(MatrixExpr):
    """``M{stream}``: the mask of one dropout, each entry 1 with probability 1 − p and else 0,
    drawn anew at every training step inside the kernel (``codegen.intrinsics.random``)."""

    _highest = 0  # the largest stream number made in this process (see fresh)
    _lock = threading.Lock()

    def __new__(cls, rows, cols, p, stream):
        stream = sp.Integer(stream)
        with cls._lock:
            cls._highest = max(cls._highest, int(stream))
        return _node(cls, sp.sympify(rows), sp.sympify(cols), sp.Float(p), stream)

    @classmethod
    def fresh(cls, rows, cols, p):
        """A mask whose stream no mask made so far in this process has: each ``sn.dropout``
        call draws its own (``sn.compile`` numbers a network's masks 1, 2, … again)."""
        with cls._lock:
            cls._highest += 1
            stream = cls._highest
        return cls(rows, cols, p, stream)

    shape = property(lambda self: (self.args[0], self.args[1]))
    p = property(lambda self: self.args[2])
    stream = property(lambda self: int(self.args[3]))
    name = property(lambda self: f"M{self.stream}")

    def _sympystr(self, printer):
        return self.name

    def doit(self, **hints):
        return self


class Dropout(_Operand, _Shown, MatrixExpr):
    """Inverted dropout, ``A ∘ M/(1 − p)``; the identity in ``predict`` and ``evaluate``."""

    def __new__(cls, arg, mask):
        if not isinstance(mask, DropoutMask) or tuple(arg.shape) != tuple(mask.shape):
            raise DeclarationError(f"Dropout takes a matrix and a DropoutMask of its shape, got "
                                   f"{arg!r} and {mask!r}")
        return _node(cls, arg, mask)

    arg = property(lambda self: self.args[0])
    mask = property(lambda self: self.args[1])
    shape = _shape(lambda self: self.args[0].shape)

    def as_entrywise(self):
        """The same values as an :class:`Entrywise` of A and M."""
        a, m = sp.symbols("a m", real=True)
        return Entrywise(sp.Lambda((a, m), a * m / (1 - self.mask.p)), self.arg, self.mask)

    def _entry(self, i, j, **kwargs):
        return self.as_entrywise()._entry(i, j, **kwargs)


# ------------------------------------------------------------------------------ activations


class ScalarActivation(sp.Function):
    """Base of every named scalar activation; subclasses are made by :func:`activation`."""

    definition: sp.Lambda  # what the function is: differentiated, simplified and shown
    numeric: sp.Lambda  # how it is computed: the same function in a numerically stable form
    latex_name: str

    @classmethod
    def eval(cls, arg):
        if arg.is_Number:
            return cls.definition(arg)
        return None

    def fdiff(self, argindex=1):
        return derivative(self.func)(self.args[0])

    def _eval_is_extended_real(self):
        """Real where its definition is (tanh of a real is): without it, SymPy differentiates
        |tanh(x)| as a complex function, re(tanh(x))·sign(tanh(x))/tanh(x), which is 0/0 at 0."""
        return self.definition(self.args[0]).is_extended_real

    def _latex(self, printer, exp=None):
        text = rf"{self.latex_name}\left({printer._print(self.args[0])}\right)"
        return text if exp is None else rf"{{{text}}}^{{{exp}}}"


@cache
def derivative(func) -> sp.Lambda:
    """The scalar derivative of an activation, from ``sympy.diff`` of its definition."""
    return sp.Lambda(x, differentiate(func.definition(x), func.__name__))


def exp_plus_one(b):
    """u of exp(u) + 1, else None."""
    if isinstance(b, sp.Add) and len(b.args) == 2 and sp.S.One in b.args:
        other = b.args[0] if b.args[1] == 1 else b.args[1]
        return other.args[0] if isinstance(other, sp.exp) else None
    return None


def _stable_logistic(e: sp.Expr) -> sp.Expr:
    """exp(u)/(exp(u) + 1) as σ(u) and log(exp(u) + 1) as softplus(u), whose numeric forms give
    the same values without overflow (at u = 710 the quotient is inf/inf in float64, at u = 89
    in float32): a derivative SymPy writes with them, mish's for one, stays finite. Only what is
    computed changes; the formulas keep SymPy's form, which its simplifications work on."""
    def quotient(m):
        factors = list(m.args)
        for f in m.args:
            u = exp_plus_one(f.base) if f.is_Pow and f.exp == -1 else None
            if u is not None and sp.exp(u) in factors:
                factors.remove(f)
                factors.remove(sp.exp(u))
                factors.append(sigmoid.function(u))
        return sp.Mul(*factors)

    e = e.replace(lambda a: isinstance(a, sp.log) and exp_plus_one(a.args[0]) is not None,
                  lambda a: softplus.function(exp_plus_one(a.args[0])))
    return e.replace(lambda a: a.is_Mul, quotient)


_STEPS = (sp.sign, sp.Heaviside, sp.floor, sp.ceiling)  # constant between their jumps


def differentiate(f: sp.Expr, what: str) -> sp.Expr:
    """``f``'s derivative in ``x`` where it exists, which is everywhere but a set of measure
    zero, as autodiff frameworks take it: DiracDelta (of a jump, such as Heaviside's) and the
    derivatives of steps (sign's) are 0. So x·Heaviside(x), relu written out, has the
    derivative Heaviside(x). Refused as :func:`check_differentiable` says."""
    d = sp.diff(f, x).replace(lambda e: isinstance(e, sp.DiracDelta), lambda e: sp.S.Zero)
    d = d.replace(lambda e: isinstance(e, sp.Derivative) and isinstance(e.expr, _STEPS),
                  lambda e: sp.S.Zero)
    check_differentiable(d, what, f)
    return d


def check_differentiable(d: sp.Expr, what: str, f: sp.Expr | None = None) -> None:
    """Refuse a derivative (taken where it exists, :func:`differentiate`) SymPy could not
    evaluate, or one that is zero almost everywhere (of ``f``, when given: a step function,
    whose gradient would never flow)."""
    if d.has(sp.Derivative, sp.Subs):
        bad = next(iter(d.atoms(sp.Derivative, sp.Subs)))
        raise DifferentiationError(
            f"cannot differentiate {what}: SymPy leaves its derivative unevaluated ({bad}). "
            "Use a differentiable function (for a step, a steep sigmoid; for rounding, none)."
        )
    step = f is not None and x in f.free_symbols and (d == 0 or (d.has(sp.Piecewise) and _is_zero(d)))
    if step:
        raise DifferentiationError(
            f"cannot differentiate {what}: its derivative is zero wherever it exists (the "
            "function is a step, like sign, Heaviside or a Piecewise of constants), so no "
            "gradient would flow through it. Use a smooth replacement such as sn.tanh or "
            "sn.hard_tanh."
        )


def _is_zero(d: sp.Expr) -> bool:
    """A Piecewise derivative all of whose pieces are 0 (a step function's). Each piece is
    simplified on its own, a nonzero constant first: simplifying the conditions too took
    0.2 s of ``import symnet`` for relu, elu and leaky relu."""
    try:
        folded = sp.piecewise_fold(d)
        pieces = [e for e, _ in folded.args] if isinstance(folded, sp.Piecewise) else [folded]
        if any(e.is_number and e != 0 for e in pieces):
            return False
        return all(sp.simplify(e) == 0 for e in pieces)
    except Exception:  # SymPy fails in many ways; what it cannot prove zero is not refused
        return False


class Activation:
    """A callable applying a scalar activation elementwise: ``sn.sigmoid(Z)`` → ``sigmoid(Z)``."""

    def __init__(self, function: type[ScalarActivation]):
        self.function = function
        self.name = function.__name__

    def __call__(self, arg):
        if isinstance(arg, sp.Basic) and not arg.is_Matrix:
            return self.function(arg)
        _require_matrix(arg, self.name)
        return Elementwise(sp.Lambda(x, self.function(x)), arg)

    def __repr__(self):
        return f"<activation {self.name}: {self.function.definition(x)}>"


def activation(name: str, expr: sp.Expr, var: sp.Symbol, *, latex: str | None = None,
               numeric: sp.Expr | None = None) -> Activation:
    """Make an elementwise activation from any scalar SymPy expression ``expr`` in ``var``.

    ``numeric`` is an optional numerically stable form of the same function used for computing
    it; the derivative always comes from ``sympy.diff`` of ``expr``. Both are computed with their
    logistic pieces, eᶻ/(eᶻ + 1) and log(eᶻ + 1), as σ and softplus, which do not overflow. A
    function with a removable singularity (sinc at 0) must say its value there: write it as a
    ``sp.Piecewise``.

    >>> mish = activation("mish", x*sp.tanh(sp.log(1 + sp.exp(x))), x)

    The library's names (``relu``, ``sigmoid``, ``leaky_relu[…]``, ``exp``, …), SymPy's (``Abs``,
    ``cos``, …) and the formulas' notation (``σ``, ``softmax``, ``sum``, …) are refused: the
    formulas show an activation by its name.
    """
    family = name.partition("[")[0] if isinstance(name, str) else None
    if family in LIBRARY_ACTIVATIONS:
        own = "prelu's" if family == "relu_min" else f"sn.{family}"
        raise DeclarationError(
            f"activation {name!r}: {family} is the library's own ({own}), and the formulas "
            f"show an activation by its name; give yours another name (such as "
            f"'my_{family}')")
    if isinstance(name, str) and (family in NOTATION or hasattr(sp, family)):
        whose = "the formulas' notation" if family in NOTATION else f"SymPy's sympy.{family}"
        raise DeclarationError(
            f"activation {name!r}: {family} is {whose}, and the formulas show an activation by "
            f"its name, so {family}(Z1) would read as that; give yours another name (such as "
            f"'my_{family}')")
    return _new_activation(name, expr, var, latex=latex, numeric=numeric)


# the names of the library's activations and elementwise functions, which only it gives
LIBRARY_ACTIVATIONS = frozenset({"sigmoid", "tanh", "relu", "softplus", "hard_sigmoid", "hard_tanh",
                                 "swish", "gelu", "leaky_relu", "elu", "relu_min", "exp", "log",
                                 "square", "abs"})


# names the formulas write for what they compute otherwise (σ is the sigmoid, σ1 a batch's
# standard deviation, δ a backpropagated error)
NOTATION = frozenset({"σ", "δ", "softmax", "logsumexp", "sum", "colsum", "rowsum", "mean", "var",
                      "std", "diag", "max", "min"})


def _new_activation(name, expr, var, *, latex=None, numeric=None) -> Activation:
    """:func:`activation` without the check of the library's names: for the library's own,
    and for a model file's (written before names were checked)."""
    _check_activation_name(name)
    if latex is not None and not isinstance(latex, str):
        raise DeclarationError(f"activation {name!r}: latex must be a string such as r'\\sigma', "
                               f"got {validate.describe(latex)}")
    if not isinstance(expr, sp.Expr):
        raise DeclarationError(f"activation {name!r}: expr must be a SymPy expression, got {expr!r}")
    if not isinstance(var, sp.Symbol):
        raise DeclarationError(f"activation {name!r}: var must be a sympy.Symbol, got {var!r}")
    extra = expr.free_symbols - {var}
    if extra:
        raise DeclarationError(
            f"activation {name!r}: its expression {expr} has free symbols {sorted(map(str, extra))} "
            f"besides {var}; substitute numbers for them (expr.subs(...)) first."
        )
    validate.computable(expr, f"activation {name!r}")
    if numeric is not None:
        if not isinstance(numeric, sp.Expr) or numeric.free_symbols - {var}:
            raise DeclarationError(f"activation {name!r}: numeric must be a SymPy expression in "
                                   f"{var} only, got {validate.describe(numeric)}")
        validate.computable(numeric, f"activation {name!r} (numeric)")
    definition = sp.Lambda(x, expr.subs(var, x))
    stable = definition if numeric is None else sp.Lambda(x, numeric.subs(var, x))
    attrs = dict(definition=definition, numeric=stable, nargs=1,
                 family=name.partition("[")[0],  # leaky_relu for leaky_relu[0.1]: what init reads
                 latex_name=latex or rf"\operatorname{{{latex_escape(name)}}}")
    function = type(name, (ScalarActivation,), attrs)
    derivative(function)  # refuse non-differentiable functions at declaration
    return Activation(function)


# An identifier, optionally with a number in brackets, as the library's own leaky_relu[0.1]: the
# name becomes a class name and reaches generated code, so nothing else may pass.
_ACTIVATION_NAME = re.compile(r"[^\W\d]\w*(\[[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\])?")


def _check_activation_name(name):
    if not isinstance(name, str) or not _ACTIVATION_NAME.fullmatch(name):
        raise DeclarationError(
            f"activation name {validate.describe(name)} is not allowed: names reach the generated "
            f"code, so use an identifier (letters, digits, underscores, not starting with a "
            f"digit), optionally with a number in brackets, e.g. 'gelu' or 'leaky_relu[0.1]'")


_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
          "lambda", "mu", "nu", "xi", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi",
          "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Upsilon", "Phi",
          "Psi", "Omega"}  # the letters LaTeX has commands for
_GREEK_AS_LATIN = {"Alpha": "A", "Beta": "B", "Epsilon": "E", "Zeta": "Z", "Eta": "H",
                   "Iota": "I", "Kappa": "K", "Mu": "M", "Nu": "N", "Omicron": "O", "Rho": "P",
                   "Tau": "T", "Chi": "X", "omicron": "o"}
_LATEX_LETTERS = {"ε": r"\varepsilon", "ϵ": r"\epsilon", "φ": r"\varphi", "ϕ": r"\phi",
                  "ϑ": r"\vartheta", "ς": r"\varsigma", "ϱ": r"\varrho", "ϖ": r"\varpi"}


_LATEX_ACCENTS = {"\u0300": r"\grave", "\u0301": r"\acute", "\u0302": r"\hat", "\u0303": r"\tilde",
                  "\u0304": r"\bar", "\u0306": r"\breve", "\u0307": r"\dot", "\u0308": r"\ddot",
                  "\u030c": r"\check", "\u20d7": r"\vec"}  # combining marks, as math accents


def latex_escape(name: str) -> str:
    """A name as LaTeX math that pdflatex compiles: ``_ # $ % & { }`` escaped, Greek letters as
    their commands (θ → \\theta), other Latin-1 letters in ``\\text`` (é), any other character
    by its code point (\\text{U+0436}), a combining accent as the math accent over the character
    before it (ω̃ → \\tilde{\\omega}): pdflatex stops at a Unicode character it has no glyph
    for, and names come from the user (an input θ)."""
    out = []
    for ch in name:
        if ch in _LATEX_ACCENTS and out:  # ω̃ (ω and a combining tilde): \tilde{\omega}
            out[-1] = f"{_LATEX_ACCENTS[ch]}{{{out[-1].rstrip()}}} "
        elif ch in "_#$%&{}":
            out.append("\\" + ch)
        elif ch.isascii():
            out.append(ch)
        elif ch in _LATEX_LETTERS:
            out.append(_LATEX_LETTERS[ch] + " ")
        elif greek := re.fullmatch(r"GREEK (SMALL|CAPITAL) LETTER (LAMDA|[A-Z]+)",
                                   unicodedata.name(ch, "")):
            word = greek[2].replace("LAMDA", "LAMBDA").lower()
            word = word if greek[1] == "SMALL" else word.capitalize()
            out.append(f"\\{word} " if word in _GREEK else rf"\mathrm{{{_GREEK_AS_LATIN[word]}}}")
        elif ord(ch) < 0x100 and ch.isalpha():
            out.append(rf"\text{{{ch}}}")
        else:
            out.append(rf"\text{{U+{ord(ch):04X}}}")
    return "".join(out).rstrip()


def _require_matrix(arg, what):
    if not getattr(arg, "is_Matrix", False):
        raise DeclarationError(
            f"{what} applies to a matrix expression (e.g. X*W + OneMatrix(n, 1)*b), got {arg!r}"
        )


_half = sp.Rational(1, 2)

sigmoid = _new_activation("sigmoid", 1 / (1 + sp.exp(-x)), x, latex=r"\sigma")
tanh = _new_activation("tanh", sp.tanh(x), x, latex=r"\tanh")
# relu'(0) = 0, as in PyTorch: the Piecewise picks the second branch at x = 0.
relu = _new_activation("relu", sp.Piecewise((x, x > 0), (0, True)), x, latex=r"\operatorname{relu}")
softplus = _new_activation(
    "softplus", sp.log(1 + sp.exp(x)), x, latex=r"\operatorname{softplus}",
    # log(1 + e^x) overflows for large x; this form never exponentiates a positive number.
    numeric=sp.Piecewise((x + log1p(sp.exp(-x)), x > 0), (log1p(sp.exp(x)), True)),
)
# PyTorch's hardsigmoid: relu6(x + 3)/6.
hard_sigmoid = _new_activation(
    "hard_sigmoid", sp.Piecewise((0, x <= -3), (1, x >= 3), (x / 6 + _half, True)), x)
hard_tanh = _new_activation("hard_tanh", sp.Piecewise((-1, x < -1), (1, x > 1), (x, True)), x)
swish = _new_activation("swish", x / (1 + sp.exp(-x)), x)  # x·σ(x), PyTorch's SiLU
gelu = _new_activation("gelu", x / 2 * (1 + sp.erf(x / sp.sqrt(2))), x)  # the exact (erf) GELU


class Pointwise:
    """An elementwise application of a plain SymPy function (exp, log, x², |x|), so SymPy's own
    simplifications (log(exp(x)) = x) apply to it."""

    def __init__(self, name: str, expr: sp.Expr):
        self.name, self.fn = name, sp.Lambda(x, expr)
        differentiate(expr, name)

    def __call__(self, arg):
        if isinstance(arg, sp.Basic) and not arg.is_Matrix:
            return self.fn(arg)
        _require_matrix(arg, self.name)
        return Elementwise(self.fn, arg)

    def __repr__(self):
        return f"<elementwise {self.name}: {self.fn.expr}>"


exp = Pointwise("exp", sp.exp(x))
log = Pointwise("log", sp.log(x))
square = Pointwise("square", x**2)
abs = Pointwise("abs", sp.Abs(x))  # abs'(0) = sign(0) = 0, as in PyTorch


def identity(arg):
    """The identity activation: returns its argument unchanged."""
    return arg


@cache
def leaky_relu(alpha: float = 0.01) -> Activation:
    """``leaky_relu(alpha)`` → the activation x for x > 0, alpha·x otherwise."""
    _factory_of_a_number(alpha, leaky_relu)
    alpha = validate.number(alpha, "alpha", low=0, example=0.01, where="sn.leaky_relu")
    a = sp.Float(alpha) if isinstance(alpha, float) else sp.Integer(alpha)
    return _new_activation(f"leaky_relu[{alpha}]", sp.Piecewise((x, x > 0), (a * x, True)), x,
                      latex=rf"\operatorname{{leaky\_relu}}_{{{alpha}}}")


@cache
def elu(alpha: float = 1.0) -> Activation:
    """``elu(alpha)`` → x for x > 0, alpha·(eˣ − 1) otherwise."""
    _factory_of_a_number(alpha, elu)
    alpha = validate.number(alpha, "alpha", above=0, example=1.0, where="sn.elu")
    a = sp.Float(alpha) if isinstance(alpha, float) else sp.Integer(alpha)
    return _new_activation(f"elu[{alpha}]", sp.Piecewise((x, x > 0), (a * (sp.exp(x) - 1), True)), x,
                      latex=rf"\operatorname{{elu}}_{{{alpha}}}")


FACTORIES = (leaky_relu, elu)  # functions of alpha that make an activation


def factory_call(factory) -> str:
    """``sn.leaky_relu(0.01)``: how a factory is called, with its default alpha."""
    return f"sn.{factory.__name__}({inspect.signature(factory).parameters['alpha'].default})"


def _factory_of_a_number(alpha, factory) -> None:
    """``sn.leaky_relu(Z)``, written as ``sn.relu(Z)`` is: alpha's check said only that a matrix
    is not a number."""
    if isinstance(alpha, sp.MatrixExpr):
        shown = validate.clipped(formula_text(alpha), 40)
        raise DeclarationError(f"sn.{factory.__name__}(alpha) makes an activation, and was given "
                               f"the matrix {shown}; apply what it makes: {factory_call(factory)}"
                               f"(Z), or sn.dense(h, units, {factory_call(factory)})")


# min(x, 0), prelu's negative side: a function of Z itself, so that a prelu layer computes its
# product once (as relu(−Z), −Z was a second layer of its own, with its own product). Its
# derivative at 0 is 1, so that prelu'(0) = a, as in PyTorch (relu'(0) = 0 gives the rest):
# with [x < 0] both sides' derivatives were 0 there, and a dead relu before a prelu layer put
# its Z at exactly 0
relu_min = _new_activation("relu_min", sp.Piecewise((x, x <= 0), (0, True)), x,
                           latex=r"\operatorname{relu_{min}}")


class _PReLU:
    """Parametric ReLU with a learnable slope per unit: relu(Z) + (1·a)∘relu_min(Z), where
    relu_min(z) = min(z, 0).

    Used in ``sn.dense(x, units, sn.prelu, name=k)`` it creates the (1×units) slope ``a{k}``.
    """

    name = "prelu"

    def __call__(self, arg, slope=None):
        _require_matrix(arg, "prelu")
        if slope is None:
            raise DeclarationError(
                "prelu needs its learnable slope: use it as sn.dense(x, units, sn.prelu) (which "
                "creates the slope parameter), or call sn.prelu(Z, a) with a (1×units) MatrixSymbol a"
            )
        if tuple(slope.shape) != (1, arg.shape[1]):
            raise ShapeError(
                f"prelu slope {slope} is {_shape_text(slope)} but {formula_text(arg)} has "
                f"{arg.shape[1]} columns; the slope must be 1×{arg.shape[1]}"
            )
        ones = sp.OneMatrix(arg.shape[0], 1)
        return relu(arg) + sp.HadamardProduct(ones * slope, relu_min(arg))

    def dense(self, inp, units, name):
        from .declare import affine, parameter

        slope = parameter(f"a{name}", 1, units)
        return self(affine(inp, units, name), slope)


prelu = _PReLU()


class maxout:
    """``maxout(k)``: the elementwise maximum of k affine pieces, for ``sn.dense`` only.

    max(a, b) is composed as a + relu(b − a), so the gradient flows to the larger piece
    (to the first one on ties).
    """

    def __init__(self, k: int):
        self.k = k = validate.integer(k, "k", low=2, where="sn.maxout")
        self.name = f"maxout({k})"

    def __call__(self, arg):
        raise DeclarationError(
            f"{self.name} creates its own {self.k} affine pieces: use it as "
            f"sn.dense(x, units, sn.maxout({self.k}))"
        )

    def dense(self, inp, units, name):
        from .declare import affine

        pieces = [affine(inp, units, f"{name}_{i}") for i in range(1, self.k + 1)]
        out = pieces[0]
        for piece in pieces[1:]:
            out = out + relu(piece - out)
        return out


# ---------------------------------------------------------------------- reductions, softmax


def sum(m):  # shadows the builtin inside this module on purpose: the API is sn.sum
    """Sum of all entries of M, as a 1×1 matrix: 1ᵀ·M·1."""
    _require_matrix(m, "sum")
    rows, cols = m.shape
    out = m
    if rows != 1:
        out = sp.OneMatrix(1, rows) * out
    if cols != 1:
        out = out * sp.OneMatrix(cols, 1)
    return out


def mean(m):
    """Mean of all entries of M, as a 1×1 matrix."""
    return sum(m) / (m.shape[0] * m.shape[1])


def logsumexp(z):
    """Row-wise log Σ_j exp(Z_ij): an n×1 column."""
    _require_matrix(z, "logsumexp")
    return RowLogSumExp(z)


def log_softmax(z):
    """Row-wise log-softmax, Z − logsumexp(Z)·1ᵀ (stable by construction)."""
    _require_matrix(z, "log_softmax")
    return _difference(z, RowLogSumExp(z) * sp.OneMatrix(1, z.shape[1]))


def softmax(z):
    """Row-wise softmax, exp.(Z − logsumexp(Z)·1ᵀ)."""
    return exp(log_softmax(z))


def softmax_argument(e):
    """Z if ``e`` is softmax(Z) = exp.(Z − logsumexp(Z)·1ᵀ), else None."""
    if isinstance(e, Elementwise) and e.body() == sp.exp(e.fn.variables[0]):
        return log_softmax_argument(e.arg)
    return None


def log_softmax_argument(e):
    """Z if ``e`` is log_softmax(Z) = Z − logsumexp(Z)·1ᵀ, else None."""
    if isinstance(e, sp.MatAdd) and len(e.args) == 2:
        for z, other in (e.args, e.args[::-1]):
            if isinstance(other, sp.MatMul):
                c, mats = other.as_coeff_matrices()
                if (c == -1 and len(mats) == 2 and mats[0] == RowLogSumExp(z)
                        and isinstance(mats[1], sp.OneMatrix)):
                    return z
    return None


# --------------------------------------------------------------------------------- losses


def _difference(a, b):
    """a − b with a kept whole: SymPy's a - b would merge the terms of a layer's X·W + 𝟙·b into
    the difference, and the layer would lose its name."""
    return sp.MatAdd(a, -b)


def _is_data(m) -> bool:
    """Whether a MatrixSymbol has the batch's rows (or columns): data, not a parameter."""
    from .declare import batch  # not at the top: declare imports this module

    return batch in m.shape


def _prediction_and_target(p, y, fname):
    """A loss's (prediction, target): matrices, in that order (the data second), of one shape."""
    _require_matrix(p, fname)
    _require_matrix(y, fname)
    data_first = isinstance(p, sp.MatrixSymbol) and _is_data(p)
    learned = sorted((m for m in matrix_symbols(y) if not _is_data(m)), key=str) if data_first else []
    if learned:
        raise DeclarationError(
            f"{fname}(prediction, target): the prediction is the data {p.name} and the target "
            f"{validate.clipped(formula_text(y), 40)} holds the parameter {learned[0].name}; pass the "
            f"network's output first: sn.{fname}(out, {p.name})")
    if tuple(p.shape) != tuple(y.shape):
        raise ShapeError(
            f"{fname}: the prediction {formula_text(p)} is {_shape_text(p)} but the target "
            f"{formula_text(y)} is {_shape_text(y)}; they must have the same shape (is the last "
            f"layer's width the number of target columns?)"
        )


def matrix_symbols(expr) -> set:
    """The MatrixSymbols of ``expr``: its ``free_symbols`` that are matrices, found in each
    distinct subexpression once (SymPy's ``free_symbols`` walks the graph as a tree)."""
    return {e for e in validate.unique_nodes(expr) if isinstance(e, sp.MatrixSymbol)}


def _shape_text(m):
    return f"{m.shape[0]}×{m.shape[1]}"


def formula_text(e) -> str:
    """``e`` as ``model.formulas()`` writes it, for error messages."""
    from .formulas import text  # not at the top: formulas imports this module

    return text(e)


def mse(p, y):
    """Mean over all entries of (P − Y)²."""
    _prediction_and_target(p, y, "mse")
    return mean(square(_difference(p, y)))


def sse(p, y):
    """Per-row sum of squared errors, mean over rows: Σ(P − Y)²/n."""
    _prediction_and_target(p, y, "sse")
    return sum(square(_difference(p, y))) / p.shape[0]


def _not_logits(p, fname, squash):
    """Refuse a layer's linear output (X·W + 𝟙·b: logits) where a loss takes probabilities: a
    sum with a term that multiplies by a parameter (W, or b under 𝟙). A weighted mean of
    probabilities, ½·softmax(Z1) + ½·softmax(Z2), is none."""
    def by_parameter(term):
        mats = [a for a in term.args if a.is_Matrix] if isinstance(term, sp.MatMul) else []
        return any(isinstance(m, sp.MatrixSymbol) and not _is_data(m) for m in mats[1:])

    if any(map(by_parameter, p.args if isinstance(p, sp.MatAdd) else (p,))):
        raise DeclarationError(
            f"{fname} takes probabilities, and {validate.clipped(formula_text(p), 40)} is a layer's "
            f"linear output (logits), whose log is NaN where it is ≤ 0; pass sn.{squash}(out), as "
            f"in sn.{fname}(sn.{squash}(out), Y)")


def cross_entropy(p, y):
    """−Σ Y∘log P / n for probabilities P (e.g. a softmax output); mean over rows."""
    _prediction_and_target(p, y, "cross_entropy")
    _not_logits(p, "cross_entropy", "softmax")
    if (logits := log_softmax_argument(p)) is not None:
        raise DeclarationError(
            f"cross_entropy takes probabilities, and {validate.clipped(formula_text(p), 40)} is "
            f"their logarithm (what torch's nll_loss takes); pass sn.softmax(out), or the logits "
            f"to the stable sn.softmax_cross_entropy({validate.clipped(formula_text(logits), 30)}, Y)")
    return -sum(sp.HadamardProduct(y, log(p))) / p.shape[0]


def softmax_cross_entropy(z, y, label_smoothing=0.0):
    """Cross-entropy of softmax(Z) against targets Y whose rows sum to 1 (one-hot or
    probabilities), mean over rows: (Σ logsumexp(Z) − Σ Y∘Z)/n.

    This equals −Σ Y∘log softmax(Z)/n for such targets (as ``torch.nn.functional.cross_entropy``)
    and is stable for any logits; its adjoint with respect to Z is (softmax(Z) − Y)/n.
    ``label_smoothing=ε`` trains against (1 − ε)·Y + ε/k for k classes, as torch's argument of
    that name: the loss gains ε/k·Σ Z and the adjoint is (softmax(Z) − (1 − ε)·Y − ε/k)/n.
    """
    _prediction_and_target(z, y, "softmax_cross_entropy")
    if (logits := softmax_argument(z)) is not None:
        raise DeclarationError(
            f"softmax_cross_entropy takes logits and applies the softmax itself, and "
            f"{validate.clipped(formula_text(z), 40)} is a softmax already (its probabilities "
            f"would be taken as logits); pass the logits, sn.softmax_cross_entropy("
            f"{validate.clipped(formula_text(logits), 30)}, Y), or the probabilities to "
            f"sn.cross_entropy")
    eps = validate.number(label_smoothing, "label_smoothing", low=0, below=1, example=0.1,
                          where="softmax_cross_entropy")
    n, k = z.shape
    if k == 1:
        raise DeclarationError(
            "softmax_cross_entropy of one column: softmax over one class is 1 for every row, so "
            "the loss is 0 and no gradient flows. For two classes, use one column with "
            "binary_cross_entropy(sn.sigmoid(Z), Y), or two columns with softmax_cross_entropy")
    if eps == 0:
        return (sum(RowLogSumExp(z)) - sum(sp.HadamardProduct(y, z))) / n
    eps = sp.Rational(repr(eps))  # 0.1 as 1/10: the formulas show 9/10 and 1/30, not 0.0333…
    return (sum(RowLogSumExp(z)) - (1 - eps) * sum(sp.HadamardProduct(y, z))
            - eps / k * sum(z)) / n


def binary_cross_entropy(p, y):
    """−mean(Y∘log P + (1 − Y)∘log(1 − P)) over all entries, for probabilities P.

    When P = sigmoid(Z) the simplifier turns the logarithms into −softplus(∓Z), which is
    stable for any Z.
    """
    _prediction_and_target(p, y, "binary_cross_entropy")
    _not_logits(p, "binary_cross_entropy", "sigmoid")
    ones = sp.OneMatrix(*p.shape)
    return -mean(sp.HadamardProduct(y, log(p)) + sp.HadamardProduct(ones - y, log(ones - p)))


# ---------------------------------------------------------------------------- regularisers


def _weights(args, fname):
    if not args:
        raise DeclarationError(
            f"{fname}(lam, *weights) needs the weight matrices to penalise, e.g. "
            f"sn.{fname}(1e-4, W1, W2) or sn.{fname}(1e-4, *sn.weights(out))"
        )
    from .declare import batch  # not at the top: declare imports this module

    for w in args:
        if not isinstance(w, sp.MatrixSymbol):
            raise DeclarationError(f"{fname}: {w!r} is not a weight MatrixSymbol")
        if w.shape[0] == batch:
            raise DeclarationError(f"{fname}: {w} has the batch's rows, so it is data (an input "
                                   f"or a target), not a weight; pass the weights, such as "
                                   f"*sn.weights(out)")
    return list(dict.fromkeys(args))  # each once: two heads' weights list their trunk's twice


def l2(lam, *weights):
    """(lam/2)·Σ‖W‖²_F over the given matrices, each counted once, usually
    ``*sn.weights(out)``, which leaves out biases, gains and shifts (a matrix alone does not say
    which it is); ``lam`` a number, or a 1×1 ``sn.Constant`` read at run time."""
    lam = _coefficient(lam, "l2")
    return sp.MatAdd(*[sum(square(w)) for w in _weights(weights, "l2")]) * (lam / 2)


def l1(lam, *weights):
    """lam·Σ|W| over the given matrices, each counted once, usually ``*sn.weights(out)`` (see
    :func:`l2`); ``lam`` a number or a 1×1 ``sn.Constant``."""
    lam = _coefficient(lam, "l1")
    return sp.MatAdd(*[sum(abs(w)) for w in _weights(weights, "l1")]) * lam


def _coefficient(lam, fname):
    if isinstance(lam, sp.MatrixSymbol) and lam.shape == (1, 1):
        return lam  # a constant: its value is the model's, checked at compile
    lam = validate.number(lam, "lam", low=0, example=1e-4, where=f"sn.{fname}")
    return sp.Float(lam) if isinstance(lam, float) else sp.Integer(lam)


def as_numeric(body: sp.Expr) -> sp.Expr:
    """Replace every named activation in a scalar body by its numerically stable definition,
    leaving only functions a code printer knows (logistic pieces first become σ and softplus,
    :func:`_stable_logistic`, in the body and in the definitions it brings in: a hand-written
    log(1 + eˣ) is finite at x = 1000, as sn.softplus is)."""
    return _stable_logistic(body).replace(
        lambda e: isinstance(e, ScalarActivation),
        lambda e: as_numeric(type(e).numeric(e.args[0])),
    )
