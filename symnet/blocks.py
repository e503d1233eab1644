"""Blocks between layers: batch norm and layer norm, as ``torch.nn.BatchNorm1d`` and
``torch.nn.LayerNorm``, and dropout, as ``torch.nn.Dropout``.

Each block is an ordinary SymPy expression, X̂ ∘ 𝟙·γ + 𝟙·β, around one :class:`Standardized`
node that holds the statistics μ and σ as expressions of Z: the formulas name them, the
lowering computes them with the column or row sums it already has, and the node's VJP rule
gives Z's adjoint in closed form.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from . import validate
from .declare import batch, parameter
from .errors import DeclarationError, ShapeError
from .functions import (
    Dropout,
    DropoutMask,
    Elementwise,
    Standardized,
    _require_matrix,
    matrix_symbols,
    x,
)


def batch_norm(z, name, eps=1e-5, momentum=0.1):
    """Each column of Z normalised over the batch, then scaled by ``gamma{name}`` (1×k, starts
    at 1) and shifted by ``beta{name}`` (1×k, starts at 0), as ``torch.nn.BatchNorm1d(k, eps,
    momentum)``: training uses the batch's mean and (biased) variance and updates the running
    mean and unbiased variance, r ← (1 − momentum)·r + momentum·statistic, in the training
    kernel; ``predict``, ``evaluate`` and validation use the running statistics."""
    z, name, eps = _block(z, name, eps, "batch_norm")
    momentum = validate.number(momentum, "momentum", low=0, high=1, example=0.1,
                               where="sn.batch_norm")
    rows, cols = z.shape
    ones_t = sp.OneMatrix(1, rows)  # evaluate=False: μ stays a subtree of σ, to be named
    mu = sp.MatMul(1 / rows, ones_t, z)
    centred = sp.MatAdd(z, sp.MatMul(-1, sp.OneMatrix(rows, 1), mu, evaluate=False))
    var = sp.MatMul(1 / rows, ones_t, sp.HadamardPower(centred, 2), evaluate=False)
    return _affine(Standardized(z, mu, _root(var, eps), name, eps, momentum), name)


def layer_norm(z, name, eps=1e-5):
    """Each row of Z normalised over its k columns, then scaled by ``gamma{name}`` (1×k, starts
    at 1) and shifted by ``beta{name}`` (1×k, starts at 0), as ``torch.nn.LayerNorm(k, eps)``;
    the same in training and prediction."""
    z, name, eps = _block(z, name, eps, "layer_norm")
    rows, cols = z.shape
    ones = sp.OneMatrix(cols, 1)
    mu = sp.MatMul(sp.Rational(1, cols), z, ones)
    centred = sp.MatAdd(z, sp.MatMul(-1, mu, sp.OneMatrix(1, cols), evaluate=False))
    var = sp.MatMul(sp.Rational(1, cols), sp.HadamardPower(centred, 2), ones, evaluate=False)
    return _affine(Standardized(z, mu, _root(var, eps), name, eps, 0), name)


def dropout(a, p):
    """Inverted dropout, ``A ∘ M/(1 − p)``, as ``torch.nn.Dropout(p)``: in training each entry of
    A is zeroed with probability p and the rest scaled by 1/(1 − p); each call its own mask M,
    drawn anew every step inside the kernel from the model's seed (a run reproduces bit for
    bit, on any thread count); the identity in ``predict`` and ``evaluate``. ``p = 0`` returns
    A."""
    _require_matrix(a, "sn.dropout")
    p = validate.number(p, "p", low=0, below=1, example=0.2, where="sn.dropout")
    if p == 0:
        return a
    return Dropout(a, DropoutMask.fresh(*a.shape, p))


def numbered_masks(*exprs) -> list:
    """``exprs`` with their dropout masks numbered 1, 2, … in the order a left-to-right walk
    meets them (:func:`validate.unique_nodes` walks right to left), which in a stack of layers
    is from the inputs up: each ``sn.dropout`` call made a mask of its own, numbered in the
    order of the calls of the whole process, and a network's masks (which the kernels draw by
    number) must not depend on what else the process declared before it."""
    order: dict = {}
    seen, stack = set(), list(reversed(exprs))
    while stack:
        e = stack.pop()
        if e in seen:
            continue
        seen.add(e)
        if isinstance(e, DropoutMask):
            order.setdefault(e, len(order) + 1)
        stack.extend(reversed(e.args))
    renumber = {m: DropoutMask(*m.shape, m.p, k) for m, k in order.items() if m.stream != k}
    return [validate.replace_nodes(e, renumber) for e in exprs] if renumber else list(exprs)


def _root(var, eps):
    """σ = √(var + eps), entrywise."""
    return Elementwise(sp.Lambda(x, sp.sqrt(x + sp.Float(eps))), var)


def _affine(xhat, name):
    """X̂ ∘ 𝟙·γ + 𝟙·β with new parameters γ, β of one row."""
    rows, cols = xhat.shape
    gamma = parameter(f"gamma{name}", 1, int(cols))
    beta = parameter(f"beta{name}", 1, int(cols))
    ones = sp.OneMatrix(rows, 1)
    # in SymPy's canonical order, which any later doit (a ``*`` or ``/`` of the user's) keeps
    return sp.MatAdd(sp.HadamardProduct(xhat, sp.MatMul(ones, gamma)), sp.MatMul(ones, beta)).doit()


def _block(z, name, eps, what):
    _require_matrix(z, f"sn.{what}")
    rows, cols = z.shape
    if not (isinstance(cols, (int, sp.Integer))):
        raise ShapeError(f"sn.{what}: Z must have a fixed number of columns, got {cols}")
    if what == "batch_norm" and rows != batch:
        raise ShapeError(f"sn.batch_norm normalises each column over the batch's rows, and Z "
                         f"is {rows}×{cols}; pass a layer's output, one row per example")
    if what == "layer_norm" and cols == 1:
        raise ShapeError("sn.layer_norm normalises each row over its columns, and Z has one: "
                         "every normalised value would be 0; pass a layer of 2 or more units")
    name = str(name)
    validate.identifier(f"gamma{name}", f"sn.{what} name")
    taken = {s.name for s in matrix_symbols(z)}
    clash = {f"gamma{name}", f"beta{name}"} & taken
    if clash:
        raise DeclarationError(f"sn.{what}(name={name!r}): the parameter {sorted(clash)[0]} "
                               f"already exists in Z; give this block another name")
    eps = validate.number(eps, "eps", above=0, example=1e-5, where=f"sn.{what}")
    return z, name, eps


@dataclass(frozen=True)
class RunningStatistics:
    """A batch norm of a derivation, ``xhat = (Z − 𝟙·μ)/(𝟙·σ)``, and the state it keeps:
    ``running_mean{name}`` and ``running_var{name}`` (1×k)."""

    xhat: sp.MatrixSymbol  # the name of the normalised X̂
    node: Standardized  # its right-hand side, over the named Z, μ and σ

    @property
    def running(self) -> tuple[sp.MatrixSymbol, sp.MatrixSymbol]:
        k = self.node.shape[1]
        return (sp.MatrixSymbol(f"running_mean{self.node.label}", 1, k),
                sp.MatrixSymbol(f"running_var{self.node.label}", 1, k))

    def updates(self, definitions):
        """``(running statistic, its value after a training step)``: r ← (1 − m)·r + m·s, with
        the batch's mean and its unbiased variance var·n/(n − 1), as torch updates them."""
        mean, var = self.running
        m = self.node.momentum
        n = self.node.shape[0]
        biased = definitions[self.node.sigma].arg  # σ = √(var + eps)
        yield mean, sp.MatAdd((1 - m) * mean, m * self.node.mu)
        # m·n/(n − 1)·(colsum(...)/n) as m·colsum(...)/(n − 1), as shown and as torch divides
        yield var, sp.MatAdd((1 - m) * var, sp.MatMul(m * n / (n - 1), biased).doit(deep=False))

    def at_prediction(self) -> Standardized:
        """X̂ on the running statistics, as predict and evaluate compute it."""
        mean, var = self.running
        node = self.node
        return Standardized(node.z, mean, _root(var, node.eps), node.label, node.eps,
                            node.momentum)


def batch_norms(derivation) -> list[RunningStatistics]:
    """The batch norms among ``derivation``'s forward equations, in order."""
    return [RunningStatistics(eq.lhs, eq.rhs) for eq in derivation.forward
            if isinstance(eq.rhs, Standardized) and eq.rhs.over_batch]
