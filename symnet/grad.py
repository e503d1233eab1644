"""Reverse-mode symbolic differentiation over SymPy matrix expressions.

One vector-Jacobian rule per matrix operation (the table ``VJP``): given a node and the adjoint
G of its output, a rule returns the adjoint contribution of each child as a new SymPy matrix
expression. ``derive`` runs the rules over a whole loss and returns the derivation as a system
of named equations — forward (Z1, A1, …), backprop (δ3, δ2, …) and gradients (∂L/∂W1, …) —
which is what the formulas show and what the lowering compiles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sympy as sp
from sympy.matrices.expressions import MatrixExpr
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from . import functions as fn
from . import validate
from .errors import DeclarationError, DifferentiationError
from .functions import Dropout, DropoutMask, Elementwise, Entrywise, RowLogSumExp, Standardized, x
from .rewrite import is_product
from .weighting import scaled_weights

LEAVES = (sp.MatrixSymbol, sp.OneMatrix, sp.ZeroMatrix, sp.Identity, DropoutMask)


# ------------------------------------------------------------------------------ VJP rules


def vjp_matmul(node, g):
    coeff, mats = node.as_coeff_matrices()
    for i, child in enumerate(mats):
        left = _product(mats[:i]).T if i > 0 else None
        right = _product(mats[i + 1:]).T if i < len(mats) - 1 else None
        factors = [f for f in (left, g, right) if f is not None]
        yield child, _scale(coeff, sp.MatMul(*factors).doit(deep=False))


def _product(mats):
    return mats[0] if len(mats) == 1 else sp.MatMul(*mats)


def vjp_matadd(node, g):
    for child in node.args:
        yield child, g


def vjp_hadamard(node, g):
    for i, child in enumerate(node.args):
        others = node.args[:i] + node.args[i + 1:]
        yield child, sp.HadamardProduct(g, *others)


def vjp_hadamard_power(node, g):
    base, k = node.args
    if not k.is_number:
        raise DifferentiationError(f"cannot differentiate {node}: the exponent {k} is not a number")
    power = base if k == 2 else sp.HadamardPower(base, k - 1)
    yield base, _scale(k, sp.HadamardProduct(g, power))


def vjp_transpose(node, g):
    yield node.arg, g.T


def vjp_elementwise(node, g):
    d = fn.differentiate(node.body(x), f"{node.fn.expr} in {node}")
    if d == 1:
        yield node.arg, g
    else:
        yield node.arg, sp.HadamardProduct(g, Elementwise(sp.Lambda(x, d), node.arg))


def vjp_entrywise(node, g):
    variables = node.fn.variables
    for v, child in zip(variables, node.arguments):
        partial = entrywise(variables, sp.diff(node.fn.expr, v), node.arguments)
        if not isinstance(partial, sp.ZeroMatrix):
            yield child, sp.HadamardProduct(g, partial)


def entrywise(variables, body, matrices):
    """``body`` (a scalar in ``variables``) applied entrywise to ``matrices``, over only the
    matrices it reads: a constant becomes c·𝟙, one matrix an :class:`Elementwise`."""
    shape = matrices[0].shape
    used = [(v, m) for v, m in zip(variables, matrices) if v in body.free_symbols]
    if not used:
        return sp.ZeroMatrix(*shape) if body == 0 else body * sp.OneMatrix(*shape)
    if len(used) == 1:
        v, m = used[0]
        return Elementwise(sp.Lambda(x, body.xreplace({v: x})), m)
    return Entrywise(sp.Lambda(tuple(v for v, _ in used), body), *(m for _, m in used))


def vjp_logsumexp(node, g):
    z = node.arg
    yield z, sp.HadamardProduct(g * sp.OneMatrix(1, z.shape[1]), fn.softmax(z))


def vjp_standardized(node, g):
    """Z's adjoint in closed form, μ and σ being Z's own statistics (CS231n's
    ``batchnorm_backward_alt``): over the batch of n rows,
    dZ = 𝟙·(1/σ)/n ∘ (n·G − 𝟙·𝟙ᵀG − X̂ ∘ 𝟙·𝟙ᵀ(G∘X̂)); over each row of k columns the same with
    row sums and k. A factor 𝟙·c of G (the gain γ) is the same down each column, so over the
    batch it moves out of the sums: 𝟙·(c/σ)/n ∘ (…) of the rest of G."""
    rows, cols = node.shape
    gain, g = _column_factor(g, rows, cols) if node.over_batch else (None, g)
    count = rows if node.over_batch else cols

    def spread(m):  # the sums along the statistics' axis, broadcast back: 𝟙·𝟙ᵀ·M or M·𝟙·𝟙ᵀ
        if node.over_batch:
            return sp.MatMul(sp.OneMatrix(rows, 1), sp.OneMatrix(1, rows), m)
        return sp.MatMul(m, sp.OneMatrix(cols, 1), sp.OneMatrix(1, cols))

    inner = sp.MatAdd(sp.MatMul(count, g), -spread(g),
                      -sp.HadamardProduct(node, spread(sp.HadamardProduct(g, node))))
    if gain is None:
        over = Elementwise(sp.Lambda(x, 1 / x), node.sigma)
    else:
        c, s = sp.symbols("c s", real=True)
        over = Entrywise(sp.Lambda((c, s), c / s), gain, node.sigma)
    yield node.z, sp.HadamardProduct(sp.MatMul(1 / count, node.broadcast(over)), inner)


def _column_factor(g, rows, cols):
    """``(c, G')`` for an adjoint G = G' ∘ 𝟙·c with c of one row, else ``(None, G)``."""
    if not isinstance(g, sp.HadamardProduct):
        return None, g
    for i, a in enumerate(g.args):
        if isinstance(a, sp.MatMul):
            coeff, mats = a.as_coeff_matrices()
            if (coeff == 1 and len(mats) == 2 and mats[0] == sp.OneMatrix(rows, 1)
                    and mats[1].shape == (1, cols)):
                rest = g.args[:i] + g.args[i + 1:]
                return mats[1], rest[0] if len(rest) == 1 else sp.HadamardProduct(*rest)
    return None, g


def vjp_dropout(node, g):
    """G ∘ M/(1 − p): the adjoint passes where the activation did, scaled alike."""
    yield node.arg, Dropout(g, node.mask)


VJP = {
    sp.MatMul: vjp_matmul,
    sp.MatAdd: vjp_matadd,
    sp.HadamardProduct: vjp_hadamard,
    sp.HadamardPower: vjp_hadamard_power,
    sp.Transpose: vjp_transpose,
    Elementwise: vjp_elementwise,
    Entrywise: vjp_entrywise,
    RowLogSumExp: vjp_logsumexp,
    Standardized: vjp_standardized,
    Dropout: vjp_dropout,
}


def _scale(c, m):
    return m if c == 1 else c * m


# ---------------------------------------------------------------------------- canonical form


def canonical(expr, allowed_scalars=frozenset()):
    """Check ``expr`` is built from operations symnet can differentiate, and bring it to the
    form the rules expect (SymPy's ``ElementwiseApplyFunction`` becomes :class:`Elementwise`).
    Each distinct subexpression is brought once (see ``validate.unique_nodes``)."""
    memo: dict = {}

    def walk(e):
        if e not in memo:
            memo[e] = _canonical(e, allowed_scalars, walk)
        return memo[e]

    return walk(expr)


def _canonical(expr, allowed_scalars, walk):
    """One node of :func:`canonical`, its arguments brought by ``walk``."""
    if isinstance(expr, ElementwiseApplyFunction):
        f = expr.function
        body = f.expr.subs(f.variables[0], x) if isinstance(f, sp.Lambda) else f(x)
        _no_hidden_matrix(body)
        _no_stray_scalar(body, {x, *allowed_scalars}, expr)
        return Elementwise(sp.Lambda(x, body), walk(expr.expr))
    if isinstance(expr, LEAVES):
        return expr
    if not isinstance(expr, MatrixExpr):
        _no_hidden_matrix(expr)
        stray = {s for s in expr.free_symbols if not isinstance(s, sp.MatrixSymbol)}
        stray -= set(allowed_scalars)
        if stray:
            raise DeclarationError(
                f"the scalar symbol(s) {sorted(map(str, stray))} in {expr} are neither the batch "
                f"size sn.batch nor numbers; substitute values for them (expr.subs(...))"
            )
        return expr
    if isinstance(expr, sp.MatrixBase):
        raise DifferentiationError(
            f"{expr} is a literal matrix, which a declaration cannot hold: declare it as "
            f"sn.Constant('P', {expr.rows}, {expr.cols}) and pass its value to compile as "
            f"constants={{P: array}} (a matrix of ones is sp.OneMatrix({expr.rows}, {expr.cols}))")
    if isinstance(expr, sp.MatrixSlice):
        raise DifferentiationError(
            f"{fn.formula_text(expr)} is a slice, which symnet does not differentiate or "
            f"compute: give the columns of data an sn.Input of their own, and a part of a "
            f"weight a MatrixSymbol of its own")
    if isinstance(expr, sp.MatPow) and expr.exp.is_Integer and expr.exp > 1:
        w, k = expr.base, int(expr.exp)
        raise DifferentiationError(
            f"cannot differentiate {fn.formula_text(expr)}: SymPy folds a matrix multiplied by "
            f"itself into the power {w}**{k}, and symnet does not differentiate matrix powers. "
            f"Put a bias or an activation between the products, as in (X·{w} + 𝟙·b)·{w}, or "
            f"declare the map as one weight of its own")
    if type(expr) not in VJP:
        raise DifferentiationError(
            f"cannot differentiate {type(expr).__name__} in {expr}: symnet knows "
            f"{', '.join(sorted(t.__name__ for t in VJP))}. Write it with those operations."
        )
    if isinstance(expr, Elementwise):
        _no_hidden_matrix(expr.fn.expr)
        _no_stray_scalar(expr.fn.expr, {*expr.fn.variables, *allowed_scalars}, expr)
        return Elementwise(expr.fn, walk(expr.arg))
    return expr.func(*[walk(a) for a in expr.args])


def _no_stray_scalar(body, known, node):
    """Refuse an entrywise function whose body reads a scalar symbol other than its variable:
    nothing would give it a value (the numpy backend stopped inside its evaluation)."""
    stray = sorted(str(s) for s in body.free_symbols - set(known))
    if stray:
        raise DeclarationError(
            f"the entrywise function {fn.formula_text(node)} reads the symbol(s) {stray}, which "
            f"nothing gives a value: substitute a number in its Lambda first "
            f"(.subs({stray[0]}, 0.5)); a coefficient set at run time is an "
            f"sn.Constant('{stray[0]}') outside the function")


def _no_hidden_matrix(scalar):
    """Refuse a scalar node that reads a matrix (Trace, Determinant, an entry M[i, j]): the rules
    differentiate matrix operations, so such a node would reach the code printers underived."""
    for e in sp.preorder_traversal(scalar):
        if not isinstance(e, MatrixExpr) and any(isinstance(a, MatrixExpr) for a in e.args):
            raise DifferentiationError(
                f"cannot differentiate {type(e).__name__} in {e}: it turns a matrix into a "
                f"scalar, and symnet differentiates matrix operations only "
                f"({', '.join(sorted(t.__name__ for t in VJP))}). Write it with those, e.g. "
                f"sn.sum(M) for the sum of the entries of M.")


# -------------------------------------------------------------------------------- equations


@dataclass(frozen=True)
class Equation:
    """``lhs = rhs``: a named intermediate, adjoint or gradient of the derivation."""

    lhs: sp.MatrixSymbol
    rhs: sp.MatrixExpr
    label: str  # how the left-hand side is shown: "Z1", "δ2", "∂L/∂W1"
    rewrites: tuple[str, ...] = ()  # the rules that turned the chain rule into this form


@dataclass
class Derivation:
    """The forward equations, the backprop equations and one gradient equation per parameter."""

    forward: list[Equation]
    backward: list[Equation]
    gradients: dict[sp.MatrixSymbol, Equation]
    loss: sp.MatrixSymbol
    predictions: tuple  # the names (or expressions) of what predict returns, in order
    activations: dict[sp.MatrixSymbol, tuple[sp.MatrixSymbol, sp.Lambda]] = field(default_factory=dict)

    @property
    def prediction(self):
        """The first (usually only) prediction, or None."""
        return self.predictions[0] if self.predictions else None

    @property
    def equations(self) -> list[Equation]:
        return [*self.forward, *self.backward, *self.gradients.values()]

    def definitions(self) -> dict[sp.MatrixSymbol, sp.MatrixExpr]:
        return {eq.lhs: eq.rhs for eq in self.equations}

    def expand(self, expr):
        """Substitute every named intermediate until only inputs, targets and parameters remain."""
        defs = self.definitions()
        cache: dict = {}

        def walk(e):
            if e in cache:
                return cache[e]
            if isinstance(e, sp.MatrixSymbol) and e in defs:
                out = walk(defs[e])
            elif isinstance(e, sp.Lambda) or not e.args:
                out = e
            else:
                out = e.func(*[walk(a) for a in e.args])
            cache[e] = out
            return out

        return walk(expr)


def _dag(roots):
    """Unique nodes of the expressions in post-order, and how many parents use each."""
    order, uses, parents = [], {}, {}

    def visit(e, parent):
        parents.setdefault(e, []).append(parent)
        if e in uses:
            uses[e] += 1
            return
        uses[e] = 1
        if isinstance(e, MatrixExpr) and not isinstance(e, LEAVES):
            for a in e.args:
                if isinstance(a, MatrixExpr):
                    visit(a, e)
        order.append(e)

    for r in roots:
        visit(r, None)
    return order, uses, parents


def _is_structural(e):
    """Nodes that are never worth a name: leaves, broadcasts (1·b), transposes, scalar multiples,
    and logsumexp(Z), which reads better inline (softmax(Z) is shown as such only when its
    logsumexp is); the lowering computes a repeated one once all the same."""
    if isinstance(e, LEAVES) or isinstance(e, (sp.Transpose, RowLogSumExp)):
        return True
    if isinstance(e, sp.MatMul):
        _, mats = e.as_coeff_matrices()
        return len(mats) == 1 or any(isinstance(m, sp.OneMatrix) for m in mats)
    return False


def _is_weighted(e, params):
    """x·W with a parameter W, or x·Wᵀ (a tied weight), not a broadcast 1·b."""
    return (isinstance(e, sp.MatMul)
            and any(m in params or (isinstance(m, sp.Transpose) and m.arg in params)
                    for m in e.args)
            and not any(isinstance(m, sp.OneMatrix) for m in e.args))


def _is_affine(e, params, parents):
    """A layer's pre-activation: x·W + … , or a bare x·W that no sum consumes."""
    if isinstance(e, sp.MatAdd):
        return any(_is_weighted(t, params) for t in e.args)
    return _is_weighted(e, params) and not any(isinstance(p, sp.MatAdd) for p in parents[e])


def name_forward(loss, predictions, params, taken):
    """Pick the forward nodes that get a name and write each as an equation over earlier names:
    pre-activations Z1, Z2, … (a layer's X·W + 𝟙·b), activations A1, A2, …, the prediction P (or
    P1, P2, … for several), shared intermediates T1, T2, … and the loss L, in the order they are
    computed, the predictions before the loss. Returns the equations and ``{node: name}``."""
    roots = [*predictions, loss]
    order, uses, parents = _dag(roots)
    wanted = set()
    labels = _block_labels(order, parents)
    compound = _compound_activations(order, params, parents)
    parts = {t for c in compound for t in _activation_terms(c)}
    for e in order:
        layer = isinstance(e, Elementwise) and (_is_affine(e.arg, params, parents)
                                                or labels.get(e.arg, "").startswith("N"))
        if e in parts and uses[e] == 1:
            continue  # relu(Z) of prelu's relu(Z) + (𝟙·a)∘relu_min(Z): named as the whole
        if (layer or e in compound or _is_affine(e, params, parents)
                or (uses[e] > 1 and not _is_structural(e))):
            wanted.add(e)
    for r in roots:
        if not isinstance(r, LEAVES):
            wanted.add(r)

    wanted |= set(labels)
    names: dict = {}
    counters = {"Z": 0, "T": 0}
    used = set(taken)

    def fresh(stem):
        name = stem
        while name in used:
            name += "'"
        used.add(name)
        return name

    for e in order:
        if e not in wanted:
            continue
        if e == loss:
            label = fresh("L")
        elif e in predictions:
            label = fresh("P" if len(predictions) == 1 else f"P{predictions.index(e) + 1}")
        elif e in labels:
            label = fresh(labels[e])
        elif _is_affine(e, params, parents):
            counters["Z"] += 1
            label = fresh(f"Z{counters['Z']}")
        elif (isinstance(e, Elementwise) and e.arg in names and names[e.arg].name[0] in "ZN"
              and "A" + names[e.arg].name[1:] not in used):
            label = fresh("A" + names[e.arg].name[1:])
        elif e in compound and compound[e] in names and "A" + names[compound[e]].name[1:] not in used:
            label = fresh("A" + names[compound[e]].name[1:])
        else:
            counters["T"] += 1
            label = fresh(f"T{counters['T']}")
        names[e] = sp.MatrixSymbol(label, *e.shape)

    equations = []
    for e in order:
        if e in names:
            rhs = e.func(*[validate.replace_nodes(a, names) for a in e.args])
            equations.append(Equation(names[e], rhs, names[e].name))
    return equations, names


def _activation_terms(e):
    """The elementwise functions of a sum's terms: f.(Z) itself, or f.(Z) of (𝟙·a) ∘ f.(Z)."""
    found = []
    for t in e.args:
        if isinstance(t, sp.HadamardProduct):
            found += [a for a in t.args if isinstance(a, Elementwise)]
        elif isinstance(t, Elementwise):
            found.append(t)
    return found


def _compound_activations(order, params, parents) -> dict:
    """``{sum: Z}`` for an activation made of several functions of one pre-activation Z, such as
    prelu's relu(Z) + (𝟙·a) ∘ relu_min(Z): every term is f.(Z), or f.(Z) scaled entrywise by a
    broadcast parameter 𝟙·a. The sum is the layer's A, and its parts need no names."""
    def broadcast(m):
        return (isinstance(m, sp.MatMul) and any(isinstance(f, sp.OneMatrix) for f in m.args)
                and all(isinstance(f, sp.OneMatrix) or f in params for f in m.args))

    found = {}
    for e in order:
        if not isinstance(e, sp.MatAdd) or _is_affine(e, params, parents):
            continue
        pre = set()
        for t in e.args:
            fs = [t] if isinstance(t, Elementwise) else (
                [a for a in t.args if isinstance(a, Elementwise)]
                if isinstance(t, sp.HadamardProduct)
                and all(isinstance(a, Elementwise) or broadcast(a) for a in t.args) else None)
            if not fs:
                pre = None
                break
            pre |= {f.arg for f in fs}
        if pre and len(pre) == 1 and _is_affine(next(iter(pre)), params, parents):
            found[e] = next(iter(pre))
    return found


def _block_labels(order, parents) -> dict:
    """The names of the blocks' parts (and of a weighted loss's scaled weights ω̃): a dropout's
    output D1 = A1 ∘ M1/(1 − p); a norm's statistics μ1 and σ1, the normalised X̂1 and the
    block's output N1 = X̂1 ∘ 𝟙·γ1 + 𝟙·β1, a layer with an adjoint δN1 of its own. SymPy
    flattens a residual connection's sum into the block's, so N1 then includes the skip term
    (N1 = X̂1 ∘ 𝟙·γ1 + 𝟙·β1 + A0), as a plain residual layer's Z does; a sum that also has a
    product x·W is a layer's pre-activation and is named Z instead."""
    labels, weights = {}, scaled_weights()
    for e in order:
        if e == weights:
            labels.setdefault(e, "ω̃")
        if isinstance(e, Dropout):
            labels.setdefault(e, f"D{e.mask.stream}")
        if isinstance(e, Standardized):
            k = e.label
            labels.setdefault(e.mu, f"μ{k}")
            labels.setdefault(e.sigma, f"σ{k}")
            labels.setdefault(e, f"X̂{k}")
            for scaled in parents[e]:
                for out in parents.get(scaled, ()):
                    if (isinstance(scaled, sp.HadamardProduct) and isinstance(out, sp.MatAdd)
                            and not any(is_product(t) for t in out.args)):
                        labels.setdefault(out, f"N{k}")  # X̂ ∘ 𝟙·γ + 𝟙·β (+ a skip connection)
    return labels


def backprop(rhs, g, wrt):
    """Adjoint contributions ``{leaf: [expr, ...]}`` of the leaves of ``rhs`` in ``wrt``, for the
    seed adjoint ``g`` of ``rhs``. Walks the local DAG of ``rhs`` in reverse order."""
    order, _, _ = _dag([rhs])
    needs = {}
    for e in order:  # post-order: children first
        if isinstance(e, sp.MatrixSymbol):
            needs[e] = e in wrt
        elif isinstance(e, LEAVES):
            needs[e] = False
        else:
            needs[e] = any(needs.get(a, False) for a in e.args if isinstance(a, MatrixExpr))
    adjoint = {rhs: [g]}
    out: dict = {}
    for e in reversed(order):
        if not needs[e] or e not in adjoint:
            continue
        total = _sum(adjoint.pop(e))
        if isinstance(e, sp.MatrixSymbol):
            out.setdefault(e, []).append(total)
            continue
        rule = VJP.get(type(e))
        if rule is None:
            raise DifferentiationError(f"no differentiation rule for {type(e).__name__} in {e}")
        for child, contribution in rule(e, total):
            if needs.get(child, False):
                adjoint.setdefault(child, []).append(contribution)
    return out


def _sum(terms):
    return terms[0] if len(terms) == 1 else sp.MatAdd(*terms).doit(deep=False)


def derive(loss, params, *, prediction=None, simplify=None, taken=()):
    """Differentiate ``loss`` (1×1) with respect to ``params``.

    ``simplify(expr, activations, fired)`` is applied to every adjoint as it is formed (pass
    ``None`` for the raw chain-rule form); the rules it names in ``fired`` are kept with the
    equation. Returns a :class:`Derivation`.
    """
    params = list(params)
    predictions = (() if prediction is None else tuple(prediction)
                   if isinstance(prediction, (list, tuple)) else (prediction,))
    forward, names = name_forward(loss, predictions, set(params), taken)
    loss_name = names[loss]
    predictions = tuple(names.get(p, p) for p in predictions)
    layers = {eq.lhs for eq in forward if eq.label[0] in "ZN"} | set(predictions)
    activations = {}
    for eq in forward:
        if isinstance(eq.rhs, Elementwise) and isinstance(eq.rhs.arg, sp.MatrixSymbol):
            activations.setdefault(eq.rhs.arg, []).append((eq.lhs, eq.rhs.fn))
    def tidy(e):
        fired: list[str] = []
        out = simplify(e, activations, fired) if simplify else e
        return out, tuple(dict.fromkeys(fired))

    wrt = set(params) | {eq.lhs for eq in forward}
    contributions = {loss_name: [sp.OneMatrix(1, 1)]}
    backward = []
    for eq in reversed(forward):
        if eq.lhs not in contributions:
            continue  # does not influence the loss (e.g. a prediction beside it)
        g, rewrites = tidy(_sum(contributions.pop(eq.lhs)))
        if eq.lhs in layers:  # a layer's adjoint δ is named; others flow on as expressions
            delta = sp.MatrixSymbol("δ" + eq.label.removeprefix("Z"), *eq.lhs.shape)
            backward.append(Equation(delta, g, delta.name, rewrites))
            g = delta
        for leaf, terms in backprop(eq.rhs, g, wrt).items():  # a rule that reads its own
            # node's value (X̂ in batch norm's) reads it by the equation's name
            terms = [t.xreplace({eq.rhs: eq.lhs}) for t in terms]
            contributions.setdefault(leaf, []).extend(terms)
    gradients = {}
    for p in sorted(params, key=lambda p: _first_use(p, forward)):
        terms = contributions.get(p)
        if terms is None:
            raise DeclarationError(f"the loss does not depend on the parameter {p}")
        grad = sp.MatrixSymbol(f"∂L/∂{p.name}", *p.shape)
        rhs, rewrites = tidy(_sum(terms))
        gradients[p] = Equation(grad, rhs, f"∂L/∂{p.name}", rewrites)
    return Derivation(forward, backward, gradients, loss_name, predictions, activations)


def _first_use(p, forward):
    """Layer order: the first equation that reads ``p``, then W before b, W2 before W10."""
    first = next((i for i, eq in enumerate(forward) if p in eq.rhs.free_symbols), len(forward))
    return first, [int(t) if t.isascii() and t.isdigit() else t
                   for t in re.split(r"([0-9]+)", p.name)]
