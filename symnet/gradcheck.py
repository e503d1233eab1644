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
    chosen entries of each parameter are perturbed (all of them if it is smaller). An entry that
    disagrees is measured again with steps of eps/10 and eps/100, and counts its smallest error,
    so that a step across a kink (relu at 0) does not fail a correct gradient; one that still
    disagrees may sit on the kink itself, and its one-sided differences at eps/100 count too. A
    gradient entry that is not finite counts as an error of inf; a loss that is not finite is a
    DataError.
    """
    _check_arguments(model, eps, max_entries, seed, floor)
    with model._lock:  # it swaps the model's parameters for float64 copies meanwhile
        model._check_params()
        live = dict(model.params)  # the user's arrays, untouched: float64 copies are perturbed
        feeds = model._gradient_feeds(X, Y, "float64")  # once, not per perturbation
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
            analytic = grads[name].reshape(-1)[i]
            error = np.inf
            for step in (eps, eps / 10, eps / 100):  # the next only if this one disagrees
                numeric = _difference(loss_and_grad, flat, i, step)
                if np.isfinite(numeric) and np.isfinite(analytic):
                    scale = max(abs(numeric) + abs(analytic), floor)
                    error = min(error, abs(numeric - analytic) / scale)
                if error < RETRY:
                    break
            else:  # at a kink itself the gradient is one side's derivative
                for numeric in _one_sided(loss_and_grad, flat, i, eps / 100, loss):
                    if np.isfinite(numeric) and np.isfinite(analytic):
                        scale = max(abs(numeric) + abs(analytic), floor)
                        error = min(error, abs(numeric - analytic) / scale)
            worst = max(worst, error)  # inf: a gradient that overflows where the loss does not
        errors[name] = float(worst)
    return errors


# An entry whose error at eps is above this is measured again at eps/10 and eps/100, and its
# smallest error counts: a step of ±eps across a kink (relu at a pre-activation within eps of 0,
# as 5.6e-6 in a batch of 500 digits) gave a correct gradient an error of 1.7e-2, where a smaller
# step that does not cross it agrees; a wrong gradient disagrees at every step.
RETRY = 1e-6


def _one_sided(loss_and_grad, flat, i, step, loss):
    """The forward and the backward difference quotients of the loss in entry ``i``: at a kink
    itself (relu's pre-activation exactly 0, which a fresh model's zero biases give every row
    that dropout zeroed) central differences average two sides, 1.0 off a correct gradient,
    while the kernels, as PyTorch, take relu′(0) = 0: one side's derivative."""
    up, down = _beside(loss_and_grad, flat, i, step)
    return (up - loss) / step, (loss - down) / step


def _difference(loss_and_grad, flat, i, step):
    """The central difference quotient of the loss in entry ``i`` of ``flat``."""
    up, down = _beside(loss_and_grad, flat, i, step)
    return (up - down) / (2 * step)


def _beside(loss_and_grad, flat, i, step):
    """The loss with entry ``i`` of ``flat`` moved up and down by ``step``, then restored."""
    old = flat[i]
    flat[i] = old + step
    up, _ = loss_and_grad()
    flat[i] = old - step
    down, _ = loss_and_grad()
    flat[i] = old
    return up, down


def _check_arguments(model, eps, max_entries, seed, floor):
    if not isinstance(model, Model):
        raise DataError(f"sn.gradcheck checks a compiled model: sn.gradcheck(model, X, Y) with "
                        f"model = sn.compile(...), got {validate.describe(model)}")
    validate.number(eps, "eps", above=0, example=1e-5, error=DataError, where="sn.gradcheck")
    validate.integer(max_entries, "max_entries", low=1, error=DataError, where="sn.gradcheck")
    validate.seed(seed, error=DataError)
    validate.number(floor, "floor", above=0, example=1e-4, error=DataError, where="sn.gradcheck")
