"""The derivation as a reader wants to see it: forward, backprop and gradient equations and the
optimizer's update, as text, LaTeX or MathML.

Three SymPy printers share one class, :class:`Formula`, that decides for every node what is shown
and how it is grouped: a ``_print_<Class>`` per node (matrix products, Hadamard products,
activations, sums over rows and columns, softmax, Iverson brackets, update rules) and one
precedence table, so that a product of a sum is parenthesised in all three forms alike. The
printers differ only in how a token is rendered: ``·`` or juxtaposition, ``(`` or ``\\left(``,
``A1²`` or ``A_{1}^{2}``.

Conventions: ``·`` is a matrix product or a scalar multiple, ``∘`` the Hadamard (entrywise)
product, ``ᵀ`` the transpose, ``𝟙`` a matrix of ones (``𝟙·b`` repeats the row b on every row),
``[A > 0]`` the Iverson bracket (1 where the condition holds, else 0). Inside an activation's
derivative every operation is entrywise: ``A∘(1 − A)``, ``1 − A²``, ``exp(−Z)/(1 + exp(−Z))²``.
"""

from __future__ import annotations

import html
import numbers
import re
import unicodedata

import sympy as sp
from sympy.matrices.expressions import MatrixExpr
from sympy.printing.latex import LatexPrinter
from sympy.printing.mathml import MathMLPresentationPrinter
from sympy.printing.str import StrPrinter

from . import validate
from .errors import DeclarationError
from .functions import (
    Dropout,
    DropoutMask,
    Elementwise,
    Entrywise,
    RowLogSumExp,
    ScalarActivation,
    Standardized,
    latex_escape,
    log_softmax_argument,
    softmax_argument,
)
from .grad import Derivation

# Binding strength of what a node prints as: a part is parenthesised inside a tighter context.
SUM, NEG, PRODUCT, POWER, ATOM = 10, 15, 20, 30, 40


class Iverson(sp.Function):
    """``[cond]``: 1 where the condition holds, else 0. ``Iverson(u, S)`` is ``[u ∈ S]`` for a set
    of reals S (an interval prints as ``a < u ≤ b``); ``Iverson(cond)`` a logical condition."""

    is_real = True


def iverson_form(pw: sp.Piecewise) -> sp.Expr:
    """A Piecewise as a sum of values times Iverson brackets: relu′ = ``[x > 0]``, leaky relu′ =
    ``[x > 0] + 0.1·[x ≤ 0]``, hard tanh′ = ``[−1 ≤ x ≤ 1]``. Pieces of value 0 vanish."""
    conds = set().union(*(c.free_symbols for _, c in pw.args if c is not sp.true))
    if len(conds) == 1:
        (u,) = conds
        try:
            pairs = pw.as_expr_set_pairs()
        except Exception:  # a condition SymPy cannot turn into a set: the generic form below
            pairs = None
        if pairs is not None:
            by_value: dict = {}
            for value, where in pairs:
                by_value[value] = by_value.get(value, sp.EmptySet) | where
            terms = []
            for value, where in by_value.items():
                if value == 0 or where is sp.EmptySet:
                    continue
                parts = where.args if isinstance(where, sp.Union) else (where,)
                terms += [value * (1 if where == sp.S.Reals else Iverson(u, part))
                          for part in parts]
            return sp.Add(*terms)
    terms, before = [], sp.true
    for value, cond in pw.args:
        here = sp.And(cond, sp.Not(before)) if before is not sp.true else cond
        before = sp.Or(before, cond) if before is not sp.true else cond
        if value != 0:
            terms.append(value if here is sp.true else value * Iverson(here))
    return sp.Add(*terms)


def _reduction(mats):
    """``(kind, inner factors)`` when a product with ones matrices sums: 1ᵀ·M → colsum(M),
    M·1 → rowsum(M), 1ᵀ·M·1 → sum(M); a column or row summed whole is a sum."""
    left = len(mats) > 1 and isinstance(mats[0], sp.OneMatrix) and mats[0].shape[0] == 1
    right = len(mats) > 1 and isinstance(mats[-1], sp.OneMatrix) and mats[-1].shape[1] == 1
    inner = mats[int(left): len(mats) - int(right)]
    if not inner or not (left or right):
        return None
    rows, cols = inner[0].shape[0], inner[-1].shape[1]
    if (left and right) or (left and cols == 1) or (right and rows == 1):
        return "sum", inner
    return ("colsum" if left else "rowsum"), inner


def split_ones(mats):
    """𝟙ₐₓᵦ → 𝟙ₐₓ₁·𝟙₁ₓᵦ, so that the sums and broadcasts a ones matrix makes are visible (to the
    printers here and to the lowering, which computes them)."""
    out = []
    for m in mats:
        if isinstance(m, sp.OneMatrix) and m.shape[0] != 1 and m.shape[1] != 1:
            out += [sp.OneMatrix(m.shape[0], 1), sp.OneMatrix(1, m.shape[1])]
        else:
            out.append(m)
    return out


def _is_ones(m, rows=None, cols=None):
    return (isinstance(m, sp.OneMatrix) and (rows is None or m.shape[0] == rows)
            and (cols is None or m.shape[1] == cols))


def _natural_key(text: str):
    """Order names as a reader counts: W2 before W10."""
    return [int(t) if t.isascii() and t.isdigit() else t for t in re.split(r"([0-9]+)", text)]


def _term_key(term):
    """A sum's terms in reading order: X·W1 + 𝟙·b1, Xᵀ·δ1 + 0.0001·W1 (a numeric multiple, such
    as a penalty, after the terms it is added to), A1·W2 + 𝟙·b2 + A1 (a residual's skip after
    the layer's products)."""
    c = term.as_coeff_matrices()[0] if isinstance(term, sp.MatMul) else sp.Integer(1)
    return c.is_Number and c != 1, isinstance(term, sp.MatrixSymbol), _natural_key(text(term))


class Formula:
    """What symnet shows for each node and how it is grouped; the printers below render it.

    Every ``_print_<Class>`` returns the rendered text; :meth:`_prec` says how tightly that text
    binds, and :meth:`_wrap` parenthesises a part whose text binds less tightly than its place
    needs. Scalar bodies of entrywise functions are printed with their variable standing for the
    matrix argument (a *slot*), so ``x∘(1 − x)`` of ``A1`` prints as ``A1∘(1 − A1)``.
    """

    printmethod = "_symnet_formula"  # not _sympystr/_latex: the nodes' own printing is for str()

    def __init__(self, settings=None):
        super().__init__(settings)
        self._slots: dict = {}
        self._assigned = None  # the variable an update step assigns

    def _print(self, expr, **kwargs):
        """Dispatch to this module's ``_print_<Class>`` only: a SymPy base printer's method would
        group (and, for MathML, build) differently from the other two forms."""
        method = _METHODS.get((type(self), type(expr)))
        if method is None:
            method = _own_method(type(self), type(expr))
            _METHODS[(type(self), type(expr))] = method
        return method(self, expr)

    def _print_Basic(self, e):
        return self._name(str(e))

    # -- grouping
    def _prec(self, e) -> int:
        if isinstance(e, sp.Symbol) and e in self._slots:
            return self._prec(self._slots[e])
        if isinstance(e, (sp.MatrixSymbol, sp.OneMatrix, sp.ZeroMatrix, sp.Identity, sp.Symbol,
                          RowLogSumExp, Iverson, sp.Abs, DropoutMask)):
            return ATOM
        if isinstance(e, sp.Number):
            if e.could_extract_minus_sign():
                return NEG
            return PRODUCT if isinstance(e, sp.Rational) and not e.is_Integer else ATOM
        if isinstance(e, sp.Transpose):
            return POWER
        if isinstance(e, sp.MatMul):
            c, mats = e.as_coeff_matrices()
            if c.could_extract_minus_sign():
                return NEG
            if c != 1:
                return PRODUCT
            if _reduction(mats) is not None:
                return ATOM
            return self._prec(mats[0]) if len(mats) == 1 else PRODUCT
        if isinstance(e, sp.MatAdd) and log_softmax_argument(e) is not None:
            return ATOM
        if isinstance(e, (sp.MatAdd, sp.Add)):
            return NEG if self._sorted_terms(e)[0][0] else SUM
        if isinstance(e, (sp.HadamardProduct, sp.MatPow)):
            return PRODUCT
        if isinstance(e, sp.HadamardPower):
            return POWER
        if isinstance(e, Elementwise):
            if softmax_argument(e) is not None:
                return ATOM
            return self._prec(self._slotted(e))
        if isinstance(e, Entrywise):
            return self._prec(self._slotted(e))
        if isinstance(e, Standardized):
            return self._prec(e.as_entrywise())
        if isinstance(e, Dropout):
            return PRODUCT
        if isinstance(e, sp.Mul):
            return NEG if e.could_extract_minus_sign() else PRODUCT
        if isinstance(e, sp.Pow):
            if e.exp == sp.Rational(1, 2):
                return ATOM
            return PRODUCT if e.exp.could_extract_minus_sign() else POWER
        if isinstance(e, sp.Piecewise):
            return self._prec(iverson_form(e))
        return ATOM  # function calls

    def _wrap(self, e, level, strict=False) -> str:
        text = self._print(e)
        p = self._prec(e)
        return self._group(text) if p < level or (strict and p == level) else text

    def _slotted(self, e) -> sp.Expr:
        """The scalar body of an entrywise function with each variable replaced by a slot that
        prints as its matrix argument."""
        matrices = (e.arg,) if isinstance(e, Elementwise) else e.arguments
        slots = {}
        for var, m in zip(e.fn.variables, matrices):
            slot = sp.Dummy(f"slot{len(self._slots)}", real=True)
            self._slots[slot] = m
            slots[var] = slot
        return e.fn.expr.xreplace(slots)

    def _is_matrix(self, e) -> bool:
        return any(s in self._slots for s in e.free_symbols) or getattr(e, "is_Matrix", False)

    # -- sums
    def _sorted_terms(self, e):
        """``[(negative, shown term)]`` in reading order: positive terms first; a matrix sum's
        terms in natural order of their text (W1 before W2 before W10), a scalar sum's in
        SymPy's order (1 − A², exp(−Z) + 1)."""
        scalar = not isinstance(e, MatrixExpr)  # MatAdd is an Add too
        args = e.as_ordered_terms() if scalar else e.args
        terms = []
        for t in args:
            neg = _negated(t)
            terms.append((neg is not None, neg if neg is not None else t))
        # the assigned variable first (m ← 0.9·m + 0.1·g; running_mean1 ← 0.9·running_mean1
        # + 0.1·μ1), multiples after
        if scalar:
            return sorted(terms, key=lambda nt: (nt[0], self._assigned not in nt[1].free_symbols,
                                                 _scalar_coefficient(nt[1]) != 1))
        return sorted(terms, key=lambda nt: (nt[0], self._assigned not in nt[1].free_symbols,
                                             *_term_key(nt[1])))

    def _print_MatAdd(self, e):
        z = log_softmax_argument(e)
        if z is not None:
            return self._call("log_softmax", self._print(z))
        return self._sum(self._sorted_terms(e))

    def _print_Add(self, e):
        return self._sum(self._sorted_terms(e))

    def _sum(self, terms):
        parts = []
        for i, (neg, t) in enumerate(terms):
            body = self._wrap(t, SUM, strict=i > 0)
            if i == 0:
                parts.append(self._minus(body) if neg else body)
            else:
                parts.append(self._op("−" if neg else "+"))
                parts.append(body)
        return self._row(parts)

    # -- products
    def _print_MatMul(self, e):
        c, mats = e.as_coeff_matrices()
        split = split_ones(mats)
        if (len(split) > 2 and _is_ones(split[-1], rows=1) and _is_ones(split[-2], cols=1)
                and not isinstance(split[-3], sp.OneMatrix)):  # M·𝟙ₘₓₘ = rowsum(M)·𝟙
            return self._scaled(c, self._join([sp.MatMul(*split[:-1]), split[-1]], "·"), PRODUCT)
        if (len(split) > 2 and _is_ones(split[0], cols=1) and _is_ones(split[1], rows=1)
                and not isinstance(split[2], sp.OneMatrix)):  # 𝟙ₙₓₙ·M = 𝟙·colsum(M)
            return self._scaled(c, self._join([split[0], sp.MatMul(*split[1:])], "·"), PRODUCT)
        red = _reduction(mats)
        if red is not None:
            kind, inner = red
            inside = self._print(inner[0]) if len(inner) == 1 else self._join(inner, "·")
            body, level = self._call(kind, inside), ATOM
        elif len(mats) == 1:
            body, level = self._print(mats[0]), self._prec(mats[0])
        else:
            body, level = self._join(mats, "·"), PRODUCT
        return self._scaled(c, body, level, product=len(mats) > 1 and red is None)

    def _print_MatPow(self, e):
        """W·W, not a power: W² is this notation's entrywise square (HadamardPower)."""
        base, k = e.args
        if k.is_Integer and k > 1:
            return self._join([base] * int(k), "·")
        return self._print_Basic(e)

    def _join(self, factors, op):
        parts = []
        for i, f in enumerate(factors):
            if i:
                parts.append(self._op(op))
            parts.append(self._wrap(f, PRODUCT, strict=True))
        return self._row(parts)

    def _scaled(self, c, body, level, product=False):
        """``c·body``, ``body/d`` or ``−body`` for a scalar coefficient c (numbers and n)."""
        if _is_one(c):
            return body
        if c.could_extract_minus_sign():
            inner = self._scaled(-c, body, level, product)
            return self._minus(inner if (_is_one(-c) and level > NEG) or (c != -1 and level >= PRODUCT)
                               else self._group(inner))
        num, den = sp.fraction(sp.together(c))
        if not _is_one(num):
            if level < PRODUCT or (level == PRODUCT and not product):
                body = self._group(body)
            body = self._row([self._print(num), self._op("·"), body])
            level = PRODUCT
        if _is_one(den):
            return body
        return self._frac(body, level, self._print(den), self._prec(den))

    def _print_HadamardProduct(self, e):
        parts = []
        for i, f in enumerate(e.args):
            if i:
                parts.append(self._op("∘", spaced=True))
            parts.append(self._wrap(f, PRODUCT, strict=True))
        return self._row(parts)

    def _print_Mul(self, e):
        if e.could_extract_minus_sign():
            inner = -e
            return self._minus(self._wrap(inner, NEG, strict=True))
        c, rest = e.as_coeff_Mul()
        num, den = [], []
        for f in rest.as_ordered_factors():
            if isinstance(f, sp.Pow) and f.exp.is_number and f.exp.could_extract_minus_sign():
                den.append(f.base if f.exp == -1 else f.base ** (-f.exp))
            else:
                num.append(f)
        cn, cd = sp.fraction(c)
        top = ([] if _is_one(cn) and num else [cn]) + sorted(num, key=self._is_matrix)
        bottom = ([cd] if not _is_one(cd) else []) + sorted(den, key=self._is_matrix)
        if not bottom:
            return self._factors(top)
        top = top or [sp.Integer(1)]
        return self._frac(*self._fraction_part(top), *self._fraction_part(bottom))

    def _fraction_part(self, factors):
        """A numerator or denominator and how tightly it binds (the fraction groups it)."""
        if len(factors) == 1:
            return self._print(factors[0]), self._prec(factors[0])
        return self._factors(factors), PRODUCT

    def _factors(self, factors):
        """Scalar factors joined by ·, entrywise (matrix) factors by ∘."""
        parts = []
        for i, f in enumerate(factors):
            if i:
                both = self._is_matrix(f) and self._is_matrix(factors[i - 1])
                parts.append(self._op("∘" if both else "·"))
            parts.append(self._wrap(f, PRODUCT, strict=True))
        return self._row(parts)

    def _print_Pow(self, e):
        base, k = e.args
        if k == sp.Rational(1, 2):
            return self._sqrt(self._print(base))
        if k.is_number and k.could_extract_minus_sign():
            return self._print_Mul(sp.Mul(sp.Integer(1), e, evaluate=False))
        return self._power(self._wrap(base, POWER, strict=True), k)

    def _print_HadamardPower(self, e):
        return self._power(self._wrap(e.args[0], POWER, strict=True), e.args[1])

    def _print_Transpose(self, e):
        return self._transpose(self._wrap(e.arg, POWER, strict=True))

    # -- leaves
    def _print_MatrixSymbol(self, e):
        return self._name(e.name)

    def _print_Symbol(self, e):
        if e in self._slots:
            return self._print(self._slots[e])
        return self._name(e.name)

    _print_Dummy = _print_Symbol

    def _print_OneMatrix(self, e):
        return self._ones()

    def _print_ZeroMatrix(self, e):
        return self._print(sp.Integer(0))

    def _print_Identity(self, e):
        return self._ones() if e.shape == (1, 1) else self._name("I")  # doit's 1×1 ones

    def _print_Integer(self, e):
        return self._minus(self._number(str(-e))) if e < 0 else self._number(str(e))

    def _print_Rational(self, e):
        if e < 0:
            return self._minus(self._print(-e))
        return self._frac(self._number(str(e.p)), ATOM, self._number(str(e.q)), ATOM)

    def _print_Float(self, e):
        if e < 0:
            return self._minus(self._print(-e))
        return self._number(_float_text(float(e)))

    def _print_NegativeOne(self, e):
        return self._minus(self._number("1"))

    def _print_One(self, e):
        return self._number("1")

    def _print_Zero(self, e):
        return self._number("0")

    def _print_Half(self, e):
        return self._print_Rational(e)

    def _print_Exp1(self, e):
        return self._name("e")

    def _print_Pi(self, e):
        return self._name("π")

    # -- functions
    def _print_Elementwise(self, e):
        z = softmax_argument(e)
        if z is not None:
            return self._call("softmax", self._print(z))
        return self._print(self._slotted(e))

    def _print_Entrywise(self, e):
        return self._print(self._slotted(e))

    def _print_Standardized(self, e):  # (Z1 − 𝟙·μ1)/(𝟙·σ1)
        return self._print(e.as_entrywise())

    def _print_Dropout(self, e):  # A1 ∘ M1/0.8: the kept share 1 − p as a number, not 1.25·…
        kept = sp.Float(1 - e.mask.p)
        return self._frac(self._print(sp.HadamardProduct(e.arg, e.mask)), PRODUCT,
                          self._print(kept), self._prec(kept))

    def _print_DropoutMask(self, e):
        return self._name(e.name)

    def _print_RowLogSumExp(self, e):
        return self._call("logsumexp", self._print(e.arg))

    def _print_ScalarActivation(self, e):
        return self._call(type(e), self._print(e.args[0]))

    def _print_Function(self, e):
        return self._call(type(e).__name__, self._row(self._comma([self._print(a) for a in e.args])))

    def _print_exp(self, e):
        return self._call("exp", self._print(e.args[0]))

    def _print_floor(self, e):  # floor((t − 1)/10), not floor(t/10 − 1/10)
        return self._call("floor", self._print(sp.together(e.args[0])))

    def _print_Min(self, e):
        return self._call("min", self._row(self._comma([self._print(a) for a in e.args])))

    def _print_Max(self, e):
        return self._call("max", self._row(self._comma([self._print(a) for a in e.args])))

    def _print_Infinity(self, e):
        return self._name("∞")

    def _print_NegativeInfinity(self, e):
        return self._minus(self._name("∞"))

    def _print_Abs(self, e):
        return self._abs(self._print(e.args[0]))

    def _print_Piecewise(self, e):
        return self._print(iverson_form(e))

    def _print_Iverson(self, e):
        if len(e.args) == 1:
            return self._iverson(self._print(e.args[0]))
        u, where = e.args
        if not isinstance(where, sp.Interval):
            return self._iverson(self._print(sp.Contains(u, where)))
        if where.start == -sp.oo and where.end == sp.oo:
            return self._print(sp.Integer(1))
        u_text = self._print(u)
        if where.end == sp.oo:  # [A > 0]
            parts = [u_text, self._relation(">" if where.left_open else "≥"),
                     self._print(where.start)]
        elif where.start == -sp.oo:
            parts = [u_text, self._relation("<" if where.right_open else "≤"),
                     self._print(where.end)]
        else:  # [−1 ≤ A ≤ 1]
            parts = [self._print(where.start), self._relation("<" if where.left_open else "≤"),
                     u_text, self._relation("<" if where.right_open else "≤"),
                     self._print(where.end)]
        return self._iverson(self._row(parts))

    def _print_Relational(self, e):
        op = {">": ">", ">=": "≥", "<": "<", "<=": "≤", "==": "=", "!=": "≠"}[e.rel_op]
        return self._row([self._print(e.lhs), self._relation(op), self._print(e.rhs)])

    def _print_And(self, e):
        return self._row(self._between([self._wrap(a, ATOM) for a in e.args], "∧"))

    def _print_Or(self, e):
        return self._row(self._between([self._group(self._print(a)) for a in e.args], "∨"))

    def _print_Not(self, e):
        return self._row([self._relation("¬"), self._group(self._print(e.args[0]))])

    def _between(self, parts, op):
        out = []
        for i, p in enumerate(parts):
            if i:
                out.append(self._relation(op))
            out.append(p)
        return out

    def _comma(self, parts):
        return self._between(parts, ",")

    # -- update rules
    def assignment(self, lhs, rhs) -> str:
        """``lhs ← rhs``: one step of an optimizer's update, entry by entry."""
        return self._row([self._print(lhs), self._relation("←"), self.assigned(lhs, rhs)])

    def assigned(self, lhs, rhs) -> str:
        """The right-hand side of ``lhs ← rhs``, the assigned variable's own term first
        (``m ← 0.9·m + 0.1·g``)."""
        self._assigned = lhs
        try:
            return self._print(rhs)
        finally:
            self._assigned = None


_METHODS: dict = {}


def _own_method(printer: type, node: type):
    mro = node.__mro__
    if issubclass(node, ScalarActivation):  # named by its user: an "Abs" is not SymPy's Abs
        mro = mro[mro.index(ScalarActivation):]
    for cls in mro:
        name = f"_print_{cls.__name__}"
        for owner in printer.__mro__:
            if issubclass(owner, Formula) and name in owner.__dict__:
                return owner.__dict__[name]
    return Formula._print_Basic


def _is_one(c) -> bool:
    """1, or the float 1.0 (SymPy ≥ 1.13 no longer counts Float(1.0) == 1): ``lr=1.0`` shows
    ``p − delta``, not ``p − 1·delta``."""
    return c == 1 or (c.is_Float and float(c) == 1.0)


def _negated(t):
    """−t when t prints with a leading minus (a negative multiple), else None."""
    if isinstance(t, sp.MatMul):
        c, mats = t.as_coeff_matrices()
        if c.could_extract_minus_sign():
            rest = mats[0] if len(mats) == 1 else sp.MatMul(*mats)
            return rest if c == -1 else sp.MatMul(-c, rest).doit(deep=False)
        return None
    if isinstance(t, Elementwise) and t.body().could_extract_minus_sign():
        var = t.fn.variables[0]
        return Elementwise(sp.Lambda(var, -t.fn.expr), t.arg)
    if isinstance(t, sp.Expr) and not isinstance(t, MatrixExpr) and t.could_extract_minus_sign():
        return -t
    return None


def _scalar_coefficient(term):
    return term.as_coeff_Mul()[0] if not term.is_Number else sp.Integer(1)


def _float_text(v: float) -> str:
    """A float to 15 significant digits, which every double holds: 0.1, 5e-5, 1e-8 (1 − 0.9 is
    0.09999999999999998 in binary and shown as 0.1)."""
    text = f"{v:.15g}"
    if "e" not in text and "." not in text:
        return text
    if "e" in text:
        mant, exp = text.split("e")
        mant = mant[:-2] if mant.endswith(".0") else mant
        return f"{mant}e{int(exp)}"
    return text[:-2] if text.endswith(".0") else text


_SUPERSCRIPTS = str.maketrans("0123456789-t", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻ᵗ")

FUNCTION_NAMES = {"sigmoid": "σ"}


def function_name(f) -> str:
    """How a function is named in text: σ for sigmoid, otherwise its own name."""
    name = f if isinstance(f, str) else f.__name__
    return FUNCTION_NAMES.get(name, name)


class TextPrinter(Formula, StrPrinter):
    """Plain-text formulas: ``δ1 = (δ2·W2ᵀ) ∘ (1 − A1²)``."""

    def _group(self, s):
        return f"({s})"

    def _row(self, parts):
        return "".join(parts)

    def _op(self, op, spaced=False):
        return {"+": " + ", "−": " − "}.get(op, f" {op} " if spaced else op)

    def _relation(self, op):
        return ", " if op == "," else f" {op} "

    def _minus(self, s):
        return f"−{s}"

    def _number(self, s):
        return s

    def _name(self, name):
        return name

    def _ones(self):
        return "𝟙"

    def _call(self, f, arg):
        return f"{function_name(f)}({arg})"

    def _frac(self, num, num_level, den, den_level):
        if num_level < PRODUCT:
            num = self._group(num)
        if den_level < POWER:
            den = self._group(den)
        return f"{num}/{den}"

    def _power(self, base, k):
        exponent = text(k)
        if re.fullmatch(r"-?\d+|t", exponent):
            return base + exponent.translate(_SUPERSCRIPTS)
        return f"{base}^({exponent})"

    def _transpose(self, base):
        return f"{base}ᵀ"

    def _sqrt(self, s):
        return f"√{s}" if re.fullmatch(r"\w+", s) else f"√({s})"

    def _iverson(self, cond):
        return f"[{cond}]"

    def _abs(self, s):
        return f"|{s}|"


# a stem and a subscript: Z1, δN1, δP, μ1, X̂1, gamma1 (a norm's gain), W2'; only δ's subscript
# may start with a letter (δP is P's adjoint), so that lr, wd or ab are names, not l_r
_SUBSCRIPTED = re.compile(r"(δ|μ|σ|X̂|gamma|beta|[A-Za-z])((?<=δ)[A-Za-z]?\d*|\d*)('*)")
LATEX_STEMS = {"δ": r"\delta", "μ": r"\mu", "σ": r"\sigma", "X̂": r"\hat{X}", "gamma": r"\gamma",
               "beta": r"\beta"}
MATHML_STEMS = {"X̂": "<mover><mi>X</mi><mo>^</mo></mover>", "gamma": "<mi>γ</mi>",
                "beta": "<mi>β</mi>"}


def latex_name(name: str) -> str:
    """Z1 → Z_{1}, δ2 → \\delta_{2}, δT1 → \\delta_{T1}, ∂L/∂W1 → \\frac{\\partial L}{\\partial
    W_{1}}, square_avg → \\mathit{square\\_avg}."""
    if name.startswith("∂L/∂"):
        return rf"\frac{{\partial L}}{{\partial {latex_name(name[4:])}}}"
    m = _SUBSCRIPTED.fullmatch(name)
    if m:
        stem, sub, primes = m.groups()
        stem = LATEX_STEMS.get(stem, stem)
        return stem + (f"_{{{sub}}}" if sub else "") + primes
    special = {"π": r"\pi", "∞": r"\infty", "‖g‖₂": r"\lVert g\rVert_{2}"}
    if name in special:
        return special[name]
    if named := _NAMED_BLOCK.fullmatch(name):  # X̂enc1, μenc1: a norm block named "enc1"
        stem, label, primes = named.groups()
        return rf"{LATEX_STEMS[stem]}_{{\mathit{{{latex_escape(label)}}}}}{primes}"
    return rf"\mathit{{{latex_escape(name)}}}"


_NAMED_BLOCK = re.compile(r"(X̂|μ|σ)(\w+?)('*)")


LATEX_OPERATORS = {"min": r"\min", "max": r"\max", "exp": r"\exp", "log": r"\log",
                   "tanh": r"\tanh", "sigmoid": r"\sigma", "sin": r"\sin", "cos": r"\cos",
                   "sinh": r"\sinh", "cosh": r"\cosh"}


class FormulaLatexPrinter(Formula, LatexPrinter):
    """The same formulas as LaTeX (amsmath): ``\\delta_{1} = \\left(\\delta_{2} W_{2}^{\\top}\\right)
    \\circ \\left(1 - A_{1}^{2}\\right)``."""

    def _group(self, s):
        return rf"\left({s}\right)"

    def _row(self, parts):
        return "".join(parts)

    def _op(self, op, spaced=False):
        return {"+": " + ", "−": " - ", "·": " ", "∘": r" \circ "}[op]

    def _relation(self, op):
        return {">": " > ", "≥": r" \geq ", "<": " < ", "≤": r" \leq ", "=": " = ", "≠": r" \neq ",
                "←": r" \leftarrow ", ",": ", ", "∧": r" \wedge ", "∨": r" \vee ",
                "¬": r"\neg "}[op]

    def _minus(self, s):
        return f"-{s}"

    def _number(self, s):
        if "e" in s:
            mant, exp = s.split("e")
            return (rf"10^{{{exp}}}" if mant == "1" else rf"{mant} \cdot 10^{{{exp}}}")
        return s

    def _name(self, name):
        return latex_name(name)

    def _ones(self):
        return r"\mathbf{1}"

    def _call(self, f, arg):
        if isinstance(f, type) and issubclass(f, ScalarActivation):
            name = LATEX_OPERATORS.get(f.__name__, f.latex_name)
        else:
            name = LATEX_OPERATORS.get(f, rf"\operatorname{{{latex_escape(f)}}}")
        return rf"{name}\left({arg}\right)"

    def _frac(self, num, num_level, den, den_level):
        return rf"\frac{{{num}}}{{{den}}}"

    def _power(self, base, k):
        return rf"{{{base}}}^{{{latex(k)}}}"

    def _transpose(self, base):
        return rf"{{{base}}}^{{\top}}"

    def _sqrt(self, s):
        return rf"\sqrt{{{s}}}"

    def _iverson(self, cond):
        return rf"\left[{cond}\right]"

    def _abs(self, s):
        return rf"\left|{s}\right|"


def mathml_name(name: str) -> str:
    m = _SUBSCRIPTED.fullmatch(name)
    if m and m.group(2):
        stem, sub, primes = m.groups()
        stem = MATHML_STEMS.get(stem, f"<mi>{stem}</mi>")
        inner = f"<msub>{stem}<mi>{sub}</mi></msub>" if not sub.isdigit() else \
            f"<msub>{stem}<mn>{sub}</mn></msub>"
        return inner + (f"<mo>{primes}</mo>" if primes else "")
    if name.startswith("∂L/∂"):
        return (f"<mfrac><mrow><mi>∂</mi><mi>L</mi></mrow><mrow><mi>∂</mi>{mathml_name(name[4:])}"
                f"</mrow></mfrac>")
    if name == "‖g‖₂":  # as LaTeX's \lVert g\rVert_{2}: one <mi> drew g upright, ₂ in a
        return "<msub><mrow><mo>‖</mo><mi>g</mi><mo>‖</mo></mrow><mn>2</mn></msub>"  # fallback
    if named := _NAMED_BLOCK.fullmatch(name):  # X̂enc1, μenc1: subscripted, as in LaTeX (a
        stem, label, primes = named.groups()  # browser drew <mi>X̂l1</mi> without its hat)
        return (f"<msub>{MATHML_STEMS.get(stem, f'<mi>{stem}</mi>')}<mi>{html.escape(label)}</mi></msub>"
                + (f"<mo>{primes}</mo>" if primes else ""))
    return f"<mi>{html.escape(name)}</mi>"


class FormulaMathMLPrinter(Formula, MathMLPresentationPrinter):
    """The same formulas as presentation MathML, which browsers render without any script."""

    def doprint(self, expr):
        return self._print(expr)

    def _group(self, s):
        return f"<mrow><mo>(</mo>{s}<mo>)</mo></mrow>"

    def _row(self, parts):
        return parts[0] if len(parts) == 1 else f"<mrow>{''.join(parts)}</mrow>"

    def _op(self, op, spaced=False):
        return {"+": "<mo>+</mo>", "−": "<mo>−</mo>", "·": "<mo>·</mo>", "∘": "<mo>∘</mo>"}[op]

    def _relation(self, op):
        return f"<mo>{html.escape(op)}</mo>"

    def _minus(self, s):
        return f"<mrow><mo>−</mo>{s}</mrow>"

    def _number(self, s):
        if "e" in s:
            mant, exp = s.split("e")
            power = f"<msup><mn>10</mn><mn>{exp.replace('-', '−')}</mn></msup>"
            return power if mant == "1" else f"<mrow><mn>{mant}</mn><mo>·</mo>{power}</mrow>"
        return f"<mn>{s}</mn>"

    def _name(self, name):
        return mathml_name(name)

    def _ones(self):
        # the character the text shows: Chromium draws <mn mathvariant="bold">1</mn> as a plain
        # 1, which reads as the scalar (1·b1 for the n×k matrix 𝟙·b1)
        return "<mi>𝟙</mi>"

    def _call(self, f, arg):
        name = function_name(f)
        return (f"<mrow><mi>{html.escape(name)}</mi><mo>&#x2061;</mo>"
                f"<mrow><mo>(</mo>{arg}<mo>)</mo></mrow></mrow>")

    def _frac(self, num, num_level, den, den_level):
        return f"<mfrac>{num}{den}</mfrac>"

    def _power(self, base, k):
        return f"<msup>{base}{self._print(k)}</msup>"

    def _transpose(self, base):
        return f"<msup>{base}<mi>⊤</mi></msup>"

    def _sqrt(self, s):
        return f"<msqrt>{s}</msqrt>"

    def _iverson(self, cond):
        return f"<mrow><mo>[</mo>{cond}<mo>]</mo></mrow>"

    def _abs(self, s):
        return f"<mrow><mo>|</mo>{s}<mo>|</mo></mrow>"


def text(e) -> str:
    """``e`` (a matrix expression or a scalar body) as text."""
    return TextPrinter().doprint(_printable(e, "text"))


def latex(e) -> str:
    return FormulaLatexPrinter().doprint(_printable(e, "latex"))


def mathml(e) -> str:
    """``e`` as a whole ``<math>`` element, which a browser or a notebook shows as it is (the
    bare presentation tags, SymPy's form, showed A/3 as "A3")."""
    return math_element(FormulaMathMLPrinter().doprint(_printable(e, "mathml")))


def math_element(body: str) -> str:
    """Presentation MathML ``body`` in a ``<math>`` element."""
    return f'<math xmlns="http://www.w3.org/1998/Math/MathML"><mrow>{body}</mrow></math>'


def _printable(e, how):
    """A SymPy expression or a number; anything else printed as a name said nothing of it."""
    if isinstance(e, sp.Basic):
        return e
    if isinstance(e, numbers.Number) and not isinstance(e, bool):
        return sp.sympify(e)
    raise DeclarationError(f"sn.formulas.{how} shows a SymPy expression such as "
                           f"sn.dense(X, 10), got {validate.describe(e)}; for a model, call "
                           f"model.formulas() or model.latex()")


# ------------------------------------------------------------------------------ derivations

PREDICT = "In predict and evaluate"  # the forward equations they compute otherwise
SECTIONS = ("Forward", PREDICT, "Backprop", "Gradients")


def sections(d: Derivation, predict=()):
    """(title, equations) of each section; ``predict``, the forward equations that predict and
    evaluate compute otherwise (batch norm on running statistics, dropout the identity), follows
    the forward ones when there are any; a loss whose gradients need no adjoint (a penalty
    alone) has no backprop section."""
    parts = zip(SECTIONS, (d.forward, list(predict), d.backward, list(d.gradients.values())))
    return [(title, eqs) for title, eqs in parts if eqs]


def update_lines(optimizer, printer, running=()) -> list[str]:
    """The optimizer's update, one assignment per line, in ``printer``'s form; ``running`` as in
    :func:`update_pairs`."""
    return [printer.assignment(lhs, rhs) for lhs, rhs in update_pairs(optimizer, running)]


def update_pairs(optimizer, running=()):
    """The update rule, after the global gradient-norm clipping when the optimizer has one,
    then ``running``: ``(statistic, its value after the step)`` of each batch norm's running
    statistics, which the training kernel updates in the same step."""
    pairs = list(optimizer.rule())
    if optimizer.clip_norm is not None:
        norm = sp.Symbol("‖g‖₂")  # over all gradients of the step
        pairs.insert(0, (sp.Symbol("clip"), sp.Min(1, optimizer.clip_norm / (norm + 1e-6))))
    return pairs + list(running)


def width(s: str) -> int:
    """The columns ``s`` takes on a terminal: X̂ is X and a combining circumflex, one column."""
    return sum(not unicodedata.combining(c) for c in s)


def pad(s: str, columns: int) -> str:
    """``s`` followed by spaces to ``columns`` terminal columns (``str.ljust`` counts code
    points, so a column of X̂1, μ1 and N1 came out one column short on the X̂ row)."""
    return s + " " * max(0, columns - width(s))


def as_text(d: Derivation, raw: Derivation | None = None, optimizer=None, predict=(),
            running=()) -> str:
    """The derivation as aligned text; with ``raw``, each backprop and gradient equation is
    followed by its unsimplified chain-rule form; ``predict`` as in :func:`sections`,
    ``running`` as in :func:`update_pairs`."""
    raw_of = {eq.label: eq for eq in (raw.backward + list(raw.gradients.values()))} if raw else {}
    lines = []
    for title, eqs in sections(d, predict):
        lines.append(f"{title}:")
        columns = max((width(eq.label) for eq in eqs), default=0)
        for eq in eqs:
            lines.append(f"  {pad(eq.label, columns)} = {text(eq.rhs)}")
            r = raw_of.get(eq.label)
            if r is not None and text(r.rhs) != text(eq.rhs):
                lines.append(f"  {'':<{columns}}   raw: {text(r.rhs)}")
    if optimizer is not None:
        lines.append("Update:")
        lines.extend(f"  {u}" for u in update_lines(optimizer, TextPrinter(), running))
    return "\n".join(lines)


def as_latex(d: Derivation, optimizer=None, predict=(), running=()) -> str:
    """The derivation as one amsmath ``aligned`` block; ``predict`` as in :func:`sections`,
    ``running`` as in :func:`update_pairs`."""
    rows = []
    for title, eqs in sections(d, predict):
        rows.append(rf"\text{{{title}:}} & \\")
        rows.extend(rf"{latex_name(eq.label)} &= {latex(eq.rhs)} \\" for eq in eqs)
    if optimizer is not None:
        rows.append(r"\text{Update:} & \\")
        printer = FormulaLatexPrinter()
        for lhs, rhs in update_pairs(optimizer, running):
            rows.append(rf"{printer._print(lhs)} &\leftarrow {printer.assigned(lhs, rhs)} \\")
    return "\\begin{aligned}\n" + "\n".join(rows) + "\n\\end{aligned}"

