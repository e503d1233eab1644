"""Simplification as data: ordered lists of named rewrite rules and one driver that applies them.

A rule is a function ``rule(node, ctx) -> new node | None`` tried at every node, bottom-up,
until no rule changes anything. ``FORWARD`` rules run on the declared loss before it is
differentiated (they make it numerically stable); ``ADJOINT`` rules run on every adjoint and
gradient as it is formed. Each rule is small and has its own test in ``tests/test_rewrite.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import sympy as sp
from sympy.matrices.expressions import MatrixExpr

from codegen.numpy_backend import REAL_FUNCTIONS

from . import functions as fn
from . import memo, validate
from .errors import DifferentiationError
from .functions import Elementwise, Entrywise, RowLogSumExp, ScalarActivation, Standardized, x

y = sp.Symbol("y", real=True)


@dataclass(frozen=True)
class Rule:
    name: str
    apply: Callable


def rewrite(expr, rules, ctx=None, fired=None):
    """Apply ``rules`` bottom-up until a fixed point; the name of every rule that changed
    something is appended to ``fired``."""
    memo: dict = {}

    def rebuild(e):
        if isinstance(e, MatrixExpr) and e.args and not isinstance(e, sp.MatrixSymbol):
            args = [walk(a) if isinstance(a, MatrixExpr) else a for a in e.args]
            if tuple(args) != e.args:
                return e.func(*args)
        return e

    def walk(e):
        if e in memo:
            return memo[e]
        out = rebuild(e)
        for _ in range(50):
            for rule in rules:
                new = rule.apply(out, ctx)
                if new is not None and new != out:
                    if fired is not None:
                        fired.append(rule.name)
                    out = rebuild(new)
                    break
            else:
                break
        memo[e] = out
        return out

    return walk(expr)


# ------------------------------------------------------------------------- scalar helpers


def cost(e: sp.Expr) -> int:
    """Operation count, with each transcendental or piecewise function costing ten."""
    calls = sum(1 for a in sp.preorder_traversal(e) if isinstance(a, (sp.Function, sp.Piecewise)))
    return int(sp.count_ops(e)) + 10 * calls


def definition(e: sp.Expr) -> sp.Expr:
    """``e`` with every named activation replaced by its defining expression."""
    return e.replace(lambda a: isinstance(a, ScalarActivation), lambda a: a.definition(a.args[0]))


SAMPLES = (-2.7, -0.9, -0.2, 0.3, 1.1, 3.4)  # away from 0, where piecewise functions switch


def _is_zero(e: sp.Expr) -> bool:
    """SymPy proves e ≡ 0. Expressions that are not zero at a few sample points are refused
    first, which spares ``simplify`` its slowest cases (seconds each for swish's inverse)."""
    try:
        for v in SAMPLES:
            value = complex(e.subs(x, v).evalf(15))
            if abs(value) > 1e-9 * (1 + abs(value)):
                return False
    except (TypeError, ValueError, ZeroDivisionError):
        pass  # not evaluable at a point (a singularity): leave the decision to simplify
    try:
        return sp.simplify(sp.piecewise_fold(e)) == 0
    except Exception:  # SymPy fails in many ways; an equality it cannot prove is not proven
        return False


@cache
def output_derivative(forward: sp.Lambda, deriv: sp.Lambda):
    """A body g with g(f(x)) ≡ f′(x) that costs no more than f′, or None.

    Candidates: f′ with f(x) replaced by the output variable; f′ with x itself replaced by
    it (right when f′ depends on x only through a sign f keeps, as relu′ = [x > 0] = [relu(x) > 0]);
    and f′ at each solution of y = f(x) for x. A candidate is kept only if SymPy proves
    g(f(x)) − f′(x) = 0. One as cheap as f′ is still better: the backward pass then reads the
    activation, and the argument need not be stored.
    """
    f, d = forward(x), deriv(x)
    f_def, d_def = definition(f), definition(d)
    return memo.remembered("output-form", _question(f, d), lambda: _search_output_derivative(f, d),
                           lambda g: agree(definition(g(f_def)), d_def))


def agree(a: sp.Expr, b: sp.Expr) -> bool:
    """Whether the scalar bodies ``a`` and ``b`` have the same values at points drawn from
    ``SAMPLES`` (each free symbol a different one), to 1e-9 relative, at two or more points
    where both are real: the check of a remembered answer, which was proven when it was found."""
    symbols = sorted(a.free_symbols | b.free_symbols, key=str)
    compared = 0
    for i in range(len(SAMPLES)):
        point = {s: SAMPLES[(i + 2 * j) % len(SAMPLES)] for j, s in enumerate(symbols)}
        try:
            values = [complex(e.subs(point).evalf(30)) for e in (a, b)]
        except (TypeError, ValueError, ZeroDivisionError):
            continue
        if not all(np.isfinite(u) and abs(u.imag) <= 1e-12 * max(1.0, abs(u)) for u in values):
            continue
        compared += 1
        if abs(values[0] - values[1]) > 1e-9 * max(1.0, abs(values[1])):
            return False
    return compared >= 2


def _question(*exprs) -> str:
    """The text that determines a search on ``exprs``: each as written and with its named
    activations defined (two activations of one name may differ)."""
    return "\n".join(sp.srepr(t) for e in exprs for t in (e, definition(e)))


def _search_output_derivative(f, d):
    try:
        return _search(f, d)
    except Exception:  # SymPy fails in many ways: (log∘hard_sigmoid)′ has a 1/0 in a Piecewise,
        return None  # whose conditions it then cannot compare. No form found is the answer.


def _search(f, d):
    f_def, d_def = definition(f), definition(d)
    candidates = []
    for direct in (d.subs(f, y), d_def.subs(f_def, y), d_def.subs(x, y), y):
        if x not in direct.free_symbols:
            candidates.append(direct)
    best = _best_verified(candidates, f_def, d_def)
    # a polynomial's inverse is not single-valued (and sympy.solve's first call takes ~0.09 s).
    # It is sought for f's own derivative only: for another function of the same pre-activation
    # (a second branch's activation on shared weights) SymPy took up to 11 s a pair of built-in
    # activations and did not finish relu′ at tanh's inverse, and found one form (softplus′ at
    # σ's output, which is the candidate y above)
    if best is None and not f_def.is_polynomial(x) and _is_derivative_of(d_def, f_def):
        try:  # SymPy may fail in many ways on an inverse it cannot find; then there is none
            solutions = sp.solve(sp.Eq(y, f_def), x)
            candidates = [sp.simplify(d_def.subs(x, s)) for s in solutions]
        except (NotImplementedError, ValueError, TypeError, AttributeError):
            candidates = []
        best = _best_verified(candidates, f_def, d_def)
    if best is None or cost(best) > cost(d) or not numerically_safe(d, best.subs(y, f)):
        return None
    return sp.Lambda(x, best.subs(y, x))


# where scalar bodies are compared numerically: the range of pre-activations a network meets,
# with the float32 overflow threshold of exp (88.7) on both sides
PROBES = (-1e4, -1000.0, -200.0, -100.0, -89.0, -88.0, -30.0, -5.0, -1.3, -0.4, 0.3, 1.2, 5.0,
          30.0, 88.0, 89.0, 100.0, 200.0, 1000.0, 1e4)


def _values(e: sp.Expr, dtype):
    """``e`` (a body in x, named activations in their numeric forms) at :data:`PROBES` in
    ``dtype``, or None if NumPy cannot compute it."""
    e = fn.as_numeric(e).subs({s: 3 for s in e.free_symbols - {x}})  # n: any batch size
    probes = np.array(PROBES, dtype)
    for modules in (["numpy"], [REAL_FUNCTIONS, "numpy", "scipy"]):  # SciPy (erf) if need be
        try:
            f = sp.lambdify(x, e, modules=modules)
            with np.errstate(all="ignore"):
                return np.broadcast_to(np.asarray(f(probes), dtype=dtype), probes.shape)
        except Exception:  # a function this module set lacks
            continue
    return None  # no numeric verdict


def finite_probes(e: sp.Expr) -> int:
    """At how many of the probes ``e`` is finite, in float32 and float64 together."""
    counts = [np.isfinite(v).sum() for dt in (np.float32, np.float64)
              for v in [_values(e, dt)] if v is not None]
    return int(sum(counts))


def numerically_safe(old: sp.Expr, new: sp.Expr) -> bool:
    """A rewrite of a scalar body may change how it is computed, never where it can be: ``new``
    must be finite in float32 and in float64 wherever ``old`` is (on :data:`PROBES`), and equal
    to it there in float64. sympy.simplify turns swish′ into (x + eˣ + 1)/(2cosh x + 2), which
    is NaN above x = 88 in float32, where the derivative it came from is finite."""
    for dtype in (np.float32, np.float64):
        a, b = _values(old, dtype), _values(new, dtype)
        if a is None:
            continue
        if b is None:
            return False
        kept = np.isfinite(a)
        if not np.isfinite(b[kept]).all():
            return False
        if dtype == np.float64 and not np.allclose(b[kept], a[kept], rtol=1e-9, atol=1e-12):
            return False
    return True


def _is_derivative_of(d_def: sp.Expr, f_def: sp.Expr) -> bool:
    """Whether ``d_def`` is ``f_def``'s derivative, by their values at sample points."""
    try:
        return agree(fn.differentiate(f_def, "the activation"), d_def)
    except DifferentiationError:  # a step has no derivative to compare
        return False


def _best_verified(candidates, f_def, d_def):
    best = None
    for g in candidates:
        if x in g.free_symbols or g.has(sp.I):
            continue
        if best is not None and cost(g) >= cost(best):
            continue
        if _is_zero(g.subs(y, f_def) - d_def):
            best = g
    return best


def _scalarize(e):
    """``(body, leaf)`` if ``e`` is elementwise work over one matrix ``leaf`` (constants allowed),
    else None. The body is a scalar expression in ``x`` standing for an entry of the leaf."""
    if isinstance(e, sp.OneMatrix):
        return sp.Integer(1), None
    if isinstance(e, sp.ZeroMatrix):
        return sp.Integer(0), None
    if isinstance(e, Elementwise):
        inner = _scalarize(e.arg)
        return (e.fn(inner[0]), inner[1]) if inner else (e.fn(x), e.arg)
    if isinstance(e, sp.MatMul):
        coeff, mats = e.as_coeff_matrices()
        if len(mats) == 1:
            inner = _scalarize(mats[0])
            return (coeff * inner[0], inner[1]) if inner else (coeff * x, mats[0])
        return None
    if isinstance(e, (sp.MatAdd, sp.HadamardProduct)):
        parts = [_scalarize(a) for a in e.args]
        leaves = {p[1] for p in parts if p is not None and p[1] is not None}
        plain = [a for a, p in zip(e.args, parts) if p is None]
        leaves |= set(plain)
        if len(leaves) != 1:
            return None
        bodies = [p[0] if p is not None else x for p in parts]
        combine = sp.Add if isinstance(e, sp.MatAdd) else sp.Mul
        return combine(*bodies), leaves.pop()
    return None


# --------------------------------------------------------------------------------- rules


def compose_elementwise(e, ctx):
    """f.(g.(M) + c) → (f∘(g + c)).(M): a chain of elementwise work over one matrix becomes one
    scalar function, so that scalar rules (like the stable logarithms) can see through it."""
    if not isinstance(e, Elementwise) or isinstance(e.arg, sp.MatrixSymbol):
        return None
    inner = _scalarize(e.arg)
    if inner is None or inner[1] is None or inner[1] == e.arg:
        return None
    body, leaf = inner
    return Elementwise(sp.Lambda(x, e.fn(body)), leaf)


def _stable_log(arg):
    softplus = fn.softplus.function
    u = _logistic_argument(arg)
    if u is not None:
        return -softplus(-u)  # log σ(u) = −softplus(−u)
    u = _logistic_argument(1 - arg)
    if u is not None:
        return -softplus(u)  # log(1 − σ(u)) = −softplus(u)
    return None


def _logistic_argument(e):
    """u where ``e`` is σ(u): sn.sigmoid, σ written out as 1/(1 + exp(−u)), or an activation of
    the user's whose definition is that; else None."""
    if isinstance(e, fn.sigmoid.function):
        return e.args[0]
    if isinstance(e, ScalarActivation) and len(e.args) == 1:
        e = type(e).definition(e.args[0])
    if e.is_Pow and e.exp == -1:
        v = fn.exp_plus_one(e.base)
        return None if v is None else -v
    return None


def stable_log_sigmoid(e, ctx):
    """log.(σ.(Z)) → −softplus.(−Z) and log.(1 − σ.(Z)) → −softplus.(Z): finite for any Z."""
    if not isinstance(e, Elementwise):
        return None
    body = e.body()
    new = body.replace(lambda a: isinstance(a, sp.log) and _stable_log(a.args[0]) is not None,
                       lambda a: _stable_log(a.args[0]))
    return None if new == body else Elementwise(sp.Lambda(x, new), e.arg)


def stable_logsumexp(e, ctx):
    """log.(exp.(Z)·𝟙) → logsumexp(Z): the row sums of exp overflow once an entry of Z passes
    88 in float32 (709 in float64); logsumexp subtracts each row's largest entry first."""
    if not (isinstance(e, Elementwise) and e.body() == sp.log(x) and isinstance(e.arg, sp.MatMul)):
        return None
    c, mats = e.arg.as_coeff_matrices()
    if (c == 1 and len(mats) == 2 and isinstance(mats[0], Elementwise)
            and mats[0].body() == sp.exp(x) and isinstance(mats[1], sp.OneMatrix)
            and mats[1].shape[1] == 1):
        return RowLogSumExp(mats[0].arg)
    return None


def drop_identity(e, ctx):
    """(x ↦ x).(M) → M."""
    if isinstance(e, Elementwise) and e.body() == x:
        return e.arg
    return None


def sympy_canonical(e, ctx):
    """SymPy's own canonical form of products, sums and transposes: 1·A → A, 0 + A → A,
    (Aᵀ)ᵀ → A, (AB)ᵀ → BᵀAᵀ, 1ₙₓ₁·1₁ₓₘ → 1ₙₓₘ."""
    if isinstance(e, sp.MatMul) and any(_is_statistic(a) for a in e.args):
        return None  # 𝟙·μ with μ = colsum(Z)/n: merged into 𝟙ₙₓₙ·Z/n, μ could not be named
    if isinstance(e, (sp.MatMul, sp.MatAdd, sp.Transpose)):
        new = e.doit(deep=False)
        # −(XW + 1b) stays a multiple of one node: distributing would split a shared subtree
        return None if isinstance(e, sp.MatMul) and isinstance(new, sp.MatAdd) else new
    return None


def _is_norm_output(m) -> bool:
    """X̂ ∘ 𝟙·γ + 𝟙·β: a normalisation block's output."""
    return isinstance(m, sp.MatAdd) and any(
        isinstance(t, sp.HadamardProduct) and any(isinstance(f, Standardized) for f in t.args)
        for t in m.args)


def _is_statistic(m) -> bool:
    """A scaled column or row sum, colsum(Z)/n or rowsum(Z)/k, as a factor of a product."""
    if not isinstance(m, sp.MatMul):
        return False
    c, mats = m.as_coeff_matrices()
    return c != 1 and len(mats) == 2 and any(isinstance(a, sp.OneMatrix) for a in mats)


def transpose_1x1(e, ctx):
    """cᵀ → c for a 1×1 c (an ``sn.Constant`` coefficient): ∂/∂W of (alpha/2)·sum(W²) reads
    (𝟙·alpha·𝟙ᵀ) ∘ W, not (𝟙·alphaᵀ·𝟙ᵀ/2) ∘ (2·W)."""
    if isinstance(e, sp.Transpose) and e.arg.shape == (1, 1):
        return e.arg
    return None


def hadamard_ones(e, ctx):
    """1 ∘ A → A, 0 ∘ A → 0, (c·A) ∘ B → c·(A ∘ B), (A/c) ∘ (c·B) → A ∘ B."""
    if not isinstance(e, sp.HadamardProduct):
        return None
    if any(isinstance(a, sp.ZeroMatrix) for a in e.args):
        return sp.ZeroMatrix(*e.shape)
    coeff, factors, moved = sp.Integer(1), [], False
    for a in e.args:
        if isinstance(a, sp.MatMul):
            c, mats = a.as_coeff_matrices()
            if c != 1:  # moved out, even when the coefficients cancel: (A/2) ∘ (2·B) → A ∘ B
                coeff, moved = coeff * c, True
                a = mats[0] if len(mats) == 1 else sp.MatMul(*mats)
        if not isinstance(a, sp.OneMatrix) and a != sp.Identity(1):  # doit's 1×1 ones
            factors.append(a)
    if not moved and len(factors) == len(e.args):
        return None
    if not factors:
        rest = sp.OneMatrix(*e.shape)
    else:
        rest = factors[0] if len(factors) == 1 else sp.HadamardProduct(*factors)
    return rest if coeff == 1 else coeff * rest


def simplify_scalar(e, ctx):
    """Simplify the scalar body of an entrywise function (kept only if cheaper)."""
    if not isinstance(e, (Elementwise, Entrywise)):
        return None
    new = _simplified(e.fn)
    return None if new is None else e.func(new, *e.args[1:])


@cache
def _simplified(f: sp.Lambda):
    return memo.remembered("simplified", _question(f), lambda: _search_simplified(f),
                           lambda new: agree(definition(new.expr), definition(f.expr)))


def _search_simplified(f: sp.Lambda):
    body = f.expr
    try:
        new = sp.simplify(body)
    except Exception:  # a body SymPy cannot simplify is kept as it is
        return None
    better = cost(new) < cost(body) and numerically_safe(body, new)
    return sp.Lambda(f.variables, new) if better else None


def logistic_form(e, ctx):
    """exp(k·x) → (σ(x)/(1 − σ(x)))ᵏ in an entrywise body, kept when that is no dearer or
    finite in more places (and never less finite: see :func:`numerically_safe`). swish′ =
    σ(x) + x·e⁻ˣ/(1 + e⁻ˣ)² becomes σ(x)·(1 + x·(1 − σ(x))), finite for every x, where the
    e⁻ˣ form is NaN below −88 in float32; PyTorch's SiLU backward is this form too. The
    adjoint of binary cross-entropy, y·e⁻ˣ/(1 + e⁻ˣ) − (1 − y)·eˣ/(1 + eˣ), becomes y − σ(x)."""
    if not isinstance(e, (Elementwise, Entrywise)):
        return None
    new = _logistic(e.fn)
    return None if new is None else e.func(new, *e.args[1:])


@cache
def _logistic(f: sp.Lambda):
    body = f.expr
    odds, sigmoids = {}, {}
    for a in body.atoms(sp.exp):
        for v in f.variables:
            k = sp.simplify(a.args[0] / v)
            if k.is_Integer:
                s = sigmoids.setdefault(v, sp.Dummy("s", positive=True))  # σ(v), in (0, 1)
                odds[a] = (s / (1 - s)) ** int(k)
                break
        else:
            return None
    if not odds:
        return None
    try:
        new = sp.factor(sp.cancel(body.subs(odds)))
    except Exception:  # a body SymPy cannot rewrite is kept as it is
        return None
    new = new.subs({s: fn.sigmoid.function(v) for v, s in sigmoids.items()})
    better = cost(new) <= cost(body) or finite_probes(new) > finite_probes(body)
    return sp.Lambda(f.variables, new) if better and numerically_safe(body, new) else None


def output_form(e, ctx):
    """f′.(Z) → g.(A) where A = f.(Z) is already computed and g(f(x)) = f′(x) is no dearer, found
    by SymPy: σ′ → A∘(1 − A), tanh′ → 1 − A², exp′ → A, softplus′ → 1 − exp(−A), relu′ → [A > 0]."""
    if not isinstance(e, Elementwise) or not ctx or e.arg not in ctx:
        return None
    for out, forward in ctx[e.arg]:
        g = output_derivative(forward, e.fn)
        if g is not None:
            return Elementwise(g, out)
    return None


def constant_elementwise(e, ctx):
    """(x ↦ c).(M) → c·1: an elementwise constant does not depend on M."""
    if isinstance(e, Elementwise) and x not in e.body().free_symbols:
        c = e.body()
        ones = sp.OneMatrix(*e.shape)
        return sp.ZeroMatrix(*e.shape) if c == 0 else (ones if c == 1 else c * ones)
    return None


def factor_scalar(e, ctx):
    """c·A + c·B → c·(A + B) for a common scalar factor: S/n − Y/n → (S − Y)/n."""
    if not isinstance(e, sp.MatAdd):
        return None
    coeffs, mats = [], []
    for t in e.args:
        c, ms = t.as_coeff_matrices() if isinstance(t, sp.MatMul) else (sp.Integer(1), [t])
        coeffs.append(c)
        mats.append(ms[0] if len(ms) == 1 else sp.MatMul(*ms))
    _, common = coeffs[0].as_coeff_Mul()  # the symbolic part (1/n): numbers stay with terms
    if common == 1:
        return None
    ratios = [sp.simplify(c / common) for c in coeffs]
    if not all(r.is_Rational for r in ratios):
        return None
    inner = sp.MatAdd(*[m if r == 1 else r * m for r, m in zip(ratios, mats)])
    return sp.MatMul(common, inner)


def factor_hadamard(e, ctx):
    """F∘A − F∘B → F∘(A − B) for an entrywise factor F of every term: a weighted loss's
    (ω̃·𝟙) ∘ softmax(Z) − (ω̃·𝟙) ∘ Y → (ω̃·𝟙) ∘ (softmax(Z) − Y)."""
    if not isinstance(e, sp.MatAdd):
        return None
    terms = []
    for t in e.args:
        c, ms = t.as_coeff_matrices() if isinstance(t, sp.MatMul) else (sp.Integer(1), [t])
        if len(ms) != 1 or not isinstance(ms[0], sp.HadamardProduct):
            return None
        terms.append((c, list(ms[0].args)))
    common = set(terms[0][1]).intersection(*(set(f) for _, f in terms[1:]))
    if not common:
        return None
    factor = min(common, key=sp.default_sort_key)
    rest = []
    for c, factors in terms:
        factors.remove(factor)
        inner = factors[0] if len(factors) == 1 else sp.HadamardProduct(*factors)
        rest.append(inner if c == 1 else sp.MatMul(c, inner))
    return sp.HadamardProduct(factor, sp.MatAdd(*rest))


def fold_numbers(e, ctx):
    """(x ↦ c·x).(M) → c·M, and a positive number factored out of an entrywise body, so that
    numbers multiply out: λ/2·(2·W) → λ·W, 1/(2n)·(2·(P − Y)) → (P − Y)/n."""
    if not isinstance(e, (Elementwise, Entrywise)):
        return None
    c, rest = sp.factor_terms(e.fn.expr).as_coeff_Mul()
    if c == 1 or not c.is_Number:
        return None
    if isinstance(e, Elementwise) and rest == e.fn.variables[0]:
        return sp.MatMul(c, e.arg)
    if c > 0:
        return sp.MatMul(c, e.func(sp.Lambda(e.fn.variables, rest), *e.args[1:]))
    return None


def _minus_signs(body) -> int:
    return sum(1 for t in sp.Add.make_args(body) if t.could_extract_minus_sign())


def absorb_sign(e, ctx):
    """−c·f.(M) → c·(−f).(M) (also summed, −c·sum(f.(M))) when that writes fewer minus signs:
    −(Y − σ(Z))/n → (σ(Z) − Y)/n."""
    if not isinstance(e, sp.MatMul):
        return None
    c, mats = e.as_coeff_matrices()
    inner = [i for i, m in enumerate(mats) if not isinstance(m, sp.OneMatrix)]
    if not c.could_extract_minus_sign() or len(inner) != 1:
        return None
    f = mats[inner[0]]
    if not isinstance(f, (Elementwise, Entrywise)):
        return None
    body = f.fn.expr
    if _minus_signs(-body) >= 1 + _minus_signs(body):
        return None
    new = list(mats)
    new[inner[0]] = f.func(sp.Lambda(f.fn.variables, -body), *f.args[1:])
    return sp.MatMul(*new) if c == -1 else sp.MatMul(-c, *new)


def keep_layers(e, ctx):
    """:func:`sympy_canonical`, except that a layer's X·W + 𝟙·b inside a larger sum stays one
    node: Z − Y is not flattened into X·W + 𝟙·b − Y, so that the layer keeps its name Z and the
    prediction its own, and softmax(Z) reads the Z that the loss reads. Likewise a norm's
    output X̂ ∘ 𝟙·γ + 𝟙·β stays whole in N − Y, and Z − 𝟙·μ keeps the statistic μ = colsum(Z)/n
    whole, for N and μ to be named."""
    if isinstance(e, sp.MatAdd):
        kept = {a: sp.MatrixSymbol(f"⟨layer{i}⟩", *a.shape) for i, a in enumerate(e.args)
                if (isinstance(a, sp.MatAdd) and any(is_product(t) for t in a.args))
                or (isinstance(a, sp.MatMul) and any(_is_statistic(f) for f in a.args))
                or _is_norm_output(a)}
        if kept:
            flat = sp.MatAdd(*[kept.get(a, a) for a in e.args]).doit(deep=False)
            new = validate.replace_nodes(flat, {s: a for a, s in kept.items()})
            return None if new == e else new
    return sympy_canonical(e, ctx)


def regroup_layers(e, ctx):
    """X·W + 𝟙·b − Y → (X·W + 𝟙·b) − Y when X·W + 𝟙·b is a layer seen elsewhere in the loss or
    the prediction (``ctx``): SymPy flattens a user's Z − Y at declaration, this regroups it."""
    if not isinstance(e, sp.MatAdd) or not ctx:
        return None
    terms = set(e.args)
    for layer in sorted(ctx, key=lambda k: -len(k.args)):
        inside = set(layer.args)
        if inside < terms:
            return sp.MatAdd(layer, *[t for t in e.args if t not in inside])
    return None


def layer_sums(*exprs) -> frozenset:
    """The sums X·W + 𝟙·b + … (and norm outputs X̂ ∘ 𝟙·γ + 𝟙·β) in ``exprs``: what
    :func:`regroup_layers` may regroup. A matrix
    subtracted from a sum is not part of its layer: in X·W + 𝟙·b − Y (MSE without a named
    prediction) the layer is X·W + 𝟙·b, while a residual X·W + 𝟙·b + A is a layer whole."""
    found = set()
    for expr in exprs:
        if expr is None:
            continue
        for node in validate.unique_nodes(expr):
            if isinstance(node, sp.MatAdd) and any(is_product(t) for t in node.args):
                terms = [t for t in node.args if not _subtracted_matrix(t)]
                found.add(sp.MatAdd(*terms) if len(terms) > 1 else node)
            elif _is_norm_output(node):
                found.add(node)
    return frozenset(found)


def _subtracted_matrix(t) -> bool:
    """−Y: a matrix symbol with the coefficient −1."""
    if not isinstance(t, sp.MatMul):
        return False
    c, mats = t.as_coeff_matrices()
    return c == -1 and len(mats) == 1 and isinstance(mats[0], sp.MatrixSymbol)


def is_product(t):
    """X·W: a product of matrices none of which is a ones matrix (1·b is a broadcast)."""
    if not isinstance(t, sp.MatMul):
        return False
    _, mats = t.as_coeff_matrices()
    return len(mats) > 1 and not any(isinstance(m, sp.OneMatrix) for m in mats)


def fuse_entrywise(e, ctx):
    """Σ (Y∘(−softplus(−Z)) + (𝟙 − Y)∘(−softplus(Z))) → Σ f.(Z, Y): an entrywise combination of
    functions of several matrices, summed by a loss, becomes one function of several variables.
    SymPy then differentiates and simplifies it as a whole, and the adjoint of binary
    cross-entropy comes out as σ(Z) − Y. Only where two or more functions meet: a single one
    (the square of MSE) is differentiated as well without."""
    if not isinstance(e, sp.MatMul):
        return None
    c, mats = e.as_coeff_matrices()
    ones = [i for i, m in enumerate(mats) if isinstance(m, sp.OneMatrix)]
    inner = [i for i in range(len(mats)) if i not in ones]
    if not ones or len(inner) != 1 or not (ones == [0] or ones == [len(mats) - 1]
                                           or ones == [0, len(mats) - 1]):
        return None
    fused = _fused(mats[inner[0]])
    if fused is None:
        return None
    new = list(mats)
    new[inner[0]] = fused
    return sp.MatMul(c, *new) if c != 1 else sp.MatMul(*new)


def _fused(m):
    """``m`` as one :class:`Entrywise` over its leaves, or None (see :func:`fuse_entrywise`)."""
    if isinstance(m, (Elementwise, Entrywise, sp.MatrixSymbol)):
        return None
    leaves: dict = {}  # leaf → (dummy variable, how many functions it is inside)
    calls = 0

    def walk(a, depth):
        nonlocal calls
        if isinstance(a, sp.OneMatrix):
            return sp.Integer(1)
        if isinstance(a, sp.ZeroMatrix):
            return sp.Integer(0)
        if isinstance(a, Elementwise):
            calls += 1
            return a.fn(walk(a.arg, depth + 1))
        if isinstance(a, Entrywise):
            calls += 1
            return a.fn(*[walk(b, depth + 1) for b in a.arguments])
        if isinstance(a, sp.MatAdd) and not any(is_product(t) for t in a.args):  # not a layer
            return sp.Add(*[walk(b, depth) for b in a.args])
        if isinstance(a, sp.HadamardProduct):
            return sp.Mul(*[walk(b, depth) for b in a.args])
        if isinstance(a, sp.HadamardPower) and a.args[1].is_number:
            return walk(a.args[0], depth) ** a.args[1]
        if isinstance(a, sp.MatMul):
            coeff, ms = a.as_coeff_matrices()
            if len(ms) == 1 and coeff.is_number:
                return coeff * walk(ms[0], depth)
        var, inside = leaves.get(a, (sp.Dummy(real=True), 0))
        leaves[a] = (var, inside + depth)
        return var

    body = walk(m, 0)
    if len(leaves) < 2 or calls < 2:
        return None
    # the matrix inside the most functions (Z, not Y) is x: the variable rules probe
    order = sorted(leaves, key=lambda a: -leaves[a][1])
    names = [x] + [sp.Symbol(f"x{i}", real=True) for i in range(1, len(order))]
    body = body.xreplace({leaves[a][0]: v for a, v in zip(order, names)})
    return Entrywise(sp.Lambda(tuple(names), body), *order)


def _rules(*fns):
    return [Rule(f.__name__, f) for f in fns]


FORWARD = _rules(compose_elementwise, stable_log_sigmoid, stable_logsumexp, drop_identity,
                 regroup_layers, keep_layers, fuse_entrywise, absorb_sign)
ADJOINT = _rules(sympy_canonical, transpose_1x1, hadamard_ones, constant_elementwise,
                 fold_numbers, output_form, logistic_form, simplify_scalar, drop_identity,
                 absorb_sign, factor_scalar, factor_hadamard)


def simplify_forward(expr, layers=frozenset(), fired=None):
    """The declared loss (or prediction) in the form that is differentiated: stable, with the
    ``layers`` (see :func:`layer_sums`) kept whole."""
    return rewrite(expr, FORWARD, layers, fired)


def simplify_adjoint(expr, activations, fired=None):
    return rewrite(expr, ADJOINT, activations, fired)
