"""Initialisers: Gaussian, uniform, Xavier (×4 for the logistic function), He; "auto" picks by
the activation that follows each weight."""

from __future__ import annotations

import itertools

import numpy as np
import sympy as sp

from . import validate
from .errors import DeclarationError
from .functions import Elementwise, ScalarActivation, Standardized


def gaussian(rng, shape, std=0.01):
    return rng.normal(0.0, std, size=shape)


def uniform(rng, shape, limit=1.0):
    return rng.uniform(-limit, limit, size=shape)


def xavier(rng, shape, gain=1.0):
    """Glorot uniform: U(±gain·√(6/(fan_in + fan_out)))."""
    fan_in, fan_out = shape
    return uniform(rng, shape, gain * np.sqrt(6.0 / (fan_in + fan_out)))


def he(rng, shape):
    """He normal: N(0, 2/fan_in), for ReLU-like layers."""
    return rng.normal(0.0, np.sqrt(2.0 / shape[0]), size=shape)


RELU_LIKE = ("relu", "leaky_relu", "elu", "gelu", "swish", "softplus", "prelu")
INITIALISERS = {"gaussian": gaussian, "uniform": uniform, "xavier": xavier, "he": he}


def auto(rng, shape, activation: str | None):
    if activation == "sigmoid":
        return xavier(rng, shape, gain=4.0)  # Glorot & Bengio's ×4 for the logistic function
    if activation and activation.startswith(RELU_LIKE):
        return he(rng, shape)
    return xavier(rng, shape)


def roles(expr) -> dict:
    """Each parameter's role, read from where ``expr`` uses it: broadcast down the rows as 𝟙·p,
    it is a bias (added), a norm's gain γ (multiplying a normalised X̂) or a PReLU slope
    (multiplying anything else); every other parameter is a weight. Read from the expression
    itself, the roles hold for raw SymPy declarations and for loaded models alike."""
    found = {}
    for e in validate.unique_nodes(expr):
        if isinstance(e, sp.HadamardProduct):
            norm = any(isinstance(a, Standardized) for a in e.args)
            for a in e.args:
                p = _broadcast(a)
                if p is not None:
                    found[p] = "gain" if norm else "slope"
        elif isinstance(e, sp.MatMul):
            mats = e.as_coeff_matrices()[1]
            for left, right in itertools.pairwise(mats):
                if isinstance(left, sp.OneMatrix) and isinstance(right, sp.MatrixSymbol):
                    found.setdefault(right, "bias")
    return found


def activations(derivation, declared=()) -> dict:
    """``{parameter: activation family}``: the activation (``"relu"``, ``"leaky_relu"``, …) of
    the layer each parameter feeds, read through a batch or layer norm between the layer and
    its activation; None for an affine layer. An activation that the derivation rewrote away
    (the σ of binary_cross_entropy(σ(Z), Y), computed from Z) is read from the ``declared``
    expressions, so that the loss as declared, not whether ``prediction=`` repeats σ(Z),
    decides the initial weights."""
    defs = derivation.definitions()

    def layer_of(s):  # N1 → X̂1 → Z1: the pre-activation a norm normalised
        rhs = defs.get(s)
        if isinstance(rhs, sp.MatAdd):
            inner = [a for t in rhs.args if isinstance(t, sp.HadamardProduct) for a in t.args
                     if isinstance(defs.get(a), Standardized)]
            if inner:
                return layer_of(inner[0])
        if isinstance(rhs, Standardized):
            return layer_of(rhs.z)
        return s

    act_of = {}
    for eq in derivation.forward:
        rhs = eq.rhs
        if hasattr(rhs, "fn") and isinstance(rhs.arg, sp.MatrixSymbol):
            body = rhs.fn.expr
            if isinstance(body, ScalarActivation):
                act_of[layer_of(rhs.arg)] = type(body).family
    out = {}
    for eq in derivation.forward:
        for s in eq.rhs.free_symbols:
            if isinstance(s, sp.MatrixSymbol) and s not in out:
                out[s] = act_of.get(eq.lhs)
    for e in (n for d in declared for n in validate.unique_nodes(d)):  # σ is what is rewritten
        if (isinstance(e, Elementwise) and isinstance(e.fn.expr, ScalarActivation)
                and type(e.fn.expr).family == "sigmoid"):
            for s in _layer_symbols(e.arg):
                if out.get(s) is None:
                    out[s] = "sigmoid"
    return out


def _layer_symbols(expr) -> set:
    """The weights and biases of the layer ``expr`` computes (h·W + 𝟙·b, read through a norm):
    not those of the layers that compute its input h."""
    found, stack = set(), [expr]
    while stack:
        e = stack.pop()
        if isinstance(e, sp.MatrixSymbol):
            found.add(e)
        elif isinstance(e, sp.Transpose) and isinstance(e.arg, sp.MatrixSymbol):
            found.add(e.arg)  # a tied weight
        elif isinstance(e, Standardized):
            stack.append(e.z)
        elif isinstance(e, (sp.MatAdd, sp.HadamardProduct)):
            stack.extend(e.args)
        elif isinstance(e, sp.MatMul):  # h·W, 𝟙·b: the symbols, not the input h
            stack.extend(a for a in e.args if isinstance(a, (sp.MatrixSymbol, sp.Transpose)))
    return found


def _broadcast(m):
    """p for 𝟙·p, else None."""
    if isinstance(m, sp.MatMul):
        c, mats = m.as_coeff_matrices()
        if c == 1 and len(mats) == 2 and isinstance(mats[0], sp.OneMatrix) \
                and isinstance(mats[1], sp.MatrixSymbol):
            return mats[1]
    return None


def initial_value(rng, name, shape, role, activation, scheme="auto"):
    """The initial value of one parameter: biases and shifts 0, gains 1, PReLU slopes 0.25 (as
    PyTorch), weights by ``scheme``."""
    if role == "bias":
        return np.zeros(shape)
    if role == "gain":
        return np.ones(shape)
    if role == "slope":
        return np.full(shape, 0.25)
    if scheme == "auto":
        return auto(rng, shape, activation)
    if scheme not in INITIALISERS:
        raise DeclarationError(
            f"init={scheme!r} is not known; use 'auto' or one of {sorted(INITIALISERS)}")
    return INITIALISERS[scheme](rng, shape)
