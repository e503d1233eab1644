"""Initialisers: Gaussian, uniform, Xavier (×4 for the logistic function), He; "auto" picks by
the activation that follows each weight."""

from __future__ import annotations

import numpy as np

from .errors import DeclarationError


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


def initial_value(rng, name, shape, role, activation, scheme="auto"):
    """The initial value of one parameter: biases 0, PReLU slopes 0.25 (as PyTorch), weights by
    ``scheme``."""
    if role == "bias":
        return np.zeros(shape)
    if role == "slope":
        return np.full(shape, 0.25)
    if scheme == "auto":
        return auto(rng, shape, activation)
    if scheme not in INITIALISERS:
        raise DeclarationError(
            f"init={scheme!r} is not known; use 'auto' or one of {sorted(INITIALISERS)}")
    return INITIALISERS[scheme](rng, shape)
