"""Gradient checking against central finite differences, in float64."""

from __future__ import annotations

import numpy as np

from . import validate
from .errors import DataError
from .model import Model


def gradcheck(model, X, Y=None, *, eps: float = 1e-5, max_entries: int = 30, seed: int = 0,
              floor: float = 1e-4) -> float:
    """Max relative error between ``model``'s symbolic gradients and central differences.

    The error of one entry is |analytic − numeric| / max(|analytic| + |numeric|, floor): relative
    for ordinary gradients, absolute (scaled by ``floor``) for gradients near zero, where the
    rounding noise of a difference quotient (~1e-11 at eps=1e-5) would swamp a relative error.
    Everything runs in float64 whatever the model's dtype. At most ``max_entries`` randomly
    chosen entries of each parameter are perturbed (all of them if it is smaller). A gradient
    entry or difference quotient that is not finite counts as an error of inf; a loss that is not
    finite is a DataError.
    """
    _check_arguments(model, eps, max_entries, seed, floor)
    with model._lock:  # it swaps the model's parameters for float64 copies meanwhile
        model._check_params()
        live = dict(model.params)  # the user's arrays, untouched: float64 copies are perturbed
        feeds = model._feeds(X, Y, dtype="float64")  # once, not per perturbation
        try:
            for k in model.params:
                model.params[k] = live[k].astype(np.float64)
            errors = parameter_errors(lambda: model._loss_and_grad(feeds, "float64"),
                                      model.params, eps, max_entries, seed, floor)
        finally:
            model.params.update(live)
    return max(errors.values(), default=0.0)


def parameter_errors(loss_and_grad, params, eps=1e-5, max_entries=30, seed=0,
                     floor=1e-4) -> dict[str, float]:
    """``{name: max relative error}`` of each parameter's gradient (see :func:`gradcheck`).

    ``loss_and_grad()`` returns (loss, {name: gradient}) at the current values of ``params``,
    float64 arrays that are perturbed in place and restored.
    """
    rng = np.random.default_rng(seed)
    loss, grads = loss_and_grad()
    if not np.isfinite(loss):
        raise DataError(f"the loss is {loss} at these parameters and data, so there is no "
                        f"gradient to check; check at a point where it is finite (other rows, "
                        f"or parameters from before the step that made it {loss})")
    errors = {}
    for name, value in params.items():
        flat = value.reshape(-1)
        picks = np.arange(flat.size)
        if flat.size > max_entries:
            picks = rng.choice(flat.size, max_entries, replace=False)
        worst = 0.0
        for i in picks:
            old = flat[i]
            flat[i] = old + eps
            up, _ = loss_and_grad()
            flat[i] = old - eps
            down, _ = loss_and_grad()
            flat[i] = old
            numeric = (up - down) / (2 * eps)
            analytic = grads[name].reshape(-1)[i]
            if not (np.isfinite(numeric) and np.isfinite(analytic)):
                worst = np.inf  # e.g. a derivative formula that overflows where the loss does not
                continue
            scale = max(abs(numeric) + abs(analytic), floor)
            worst = max(worst, abs(numeric - analytic) / scale)
        errors[name] = float(worst)
    return errors


def _check_arguments(model, eps, max_entries, seed, floor):
    if not isinstance(model, Model):
        raise DataError(f"sn.gradcheck checks a compiled model: sn.gradcheck(model, X, Y) with "
                        f"model = sn.compile(...), got {validate.describe(model)}")
    validate.number(eps, "eps", above=0, example=1e-5, error=DataError, where="sn.gradcheck")
    validate.integer(max_entries, "max_entries", low=1, error=DataError, where="sn.gradcheck")
    validate.seed(seed, error=DataError)
    validate.number(floor, "floor", above=0, example=1e-4, error=DataError, where="sn.gradcheck")
