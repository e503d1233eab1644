"""Learning-rate schedules as SymPy expressions in the optimizer step ``t`` (1, 2, …).

A schedule is passed as an optimizer's ``lr``: ``sn.optim.SGD(lr=sn.schedules.cosine(0.1, 1000))``.
It becomes one more equation of the update rule (``lr ← …``), shown by ``model.formulas()`` and
computed once per step inside the training kernel. Steps count optimizer updates, not epochs:
for per-epoch decay pass ``every=`` the number of batches per epoch.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from codegen.ir import UPDATE_SYMBOLS

from . import formulas, validate
from .errors import DeclarationError

t = UPDATE_SYMBOLS["t"]


CHECKED_STEPS = 10_000  # a schedule's values at steps 1 to this are checked when it is made


class Schedule:
    """A learning rate as a function of the step: ``lr(t)``, a SymPy expression in
    ``sn.schedules.t`` (1 for the first update); ``base`` is the rate it starts from, saved
    with it. Its name is an identifier; its value must be finite and not negative, checked at
    the first :data:`CHECKED_STEPS` steps."""

    def __init__(self, name: str, expr: sp.Expr, base: float):
        if not isinstance(name, str) or not name.isidentifier():
            raise DeclarationError(f"Schedule: the name {name!r} must be an identifier such as "
                                   f"'my_decay' (it is saved with the model)")
        self.name = name
        self.expr = _in_steps(expr, name)
        # a plain float whatever number type came in: saved as JSON
        self.base = float(validate.number(base, "base", where=f"Schedule {name!r}"))
        _check_values(self.expr, name)

    def __call__(self, step: int) -> float:
        return float(self.expr.subs(t, validate.integer(step, "step", low=1, where=self.name)))

    def __repr__(self):
        return f"{self.name}: lr(t) = {formulas.text(self.expr)}"


def _in_steps(expr, name) -> sp.Expr:
    """``expr`` as a schedule's expression: SymPy, in the step ``t`` alone."""
    if isinstance(expr, (int, float)) and not isinstance(expr, bool):
        expr = sp.Float(expr)
    if not isinstance(expr, sp.Expr):
        raise DeclarationError(f"Schedule {name!r}: the rate must be a SymPy expression in the "
                               f"step sn.schedules.t, got {validate.describe(expr)}")
    validate.computable(expr, f"Schedule {name!r}")
    other = expr.free_symbols - {t}
    if other:
        steps = [s for s in other if str(s) == "t"]
        hint = ("; the step is sn.schedules.t (a Symbol('t') of your own is another symbol)"
                if steps else "; the step sn.schedules.t is its only variable")
        raise DeclarationError(f"Schedule {name!r}: the rate {expr} has the free symbols "
                               f"{sorted(map(str, other))}{hint}")
    return expr


def _check_values(expr, name) -> None:
    """Refuse a rate that is not finite, or below 0 beyond rounding, at steps 1 to
    :data:`CHECKED_STEPS`: the kernels would divide by 0 there, or train uphill."""
    steps = np.arange(1, CHECKED_STEPS + 1, dtype=np.float64)
    with np.errstate(all="ignore"):
        try:
            values = np.broadcast_to(sp.lambdify(t, expr, "numpy")(steps), steps.shape)
        except (ZeroDivisionError, TypeError, ValueError, NameError):
            return  # what NumPy cannot evaluate here, the update rule's own check names
        values = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(values) | (values < -1e-12 * np.nanmax(np.abs(values), initial=0.0))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DeclarationError(f"Schedule {name!r}: at step t = {k + 1} the rate {expr} is "
                               f"{values[k]}; a learning rate must be finite and ≥ 0 at every "
                               f"step")


def _positive(name, value, allow_zero=False):
    """A schedule argument as a SymPy number: finite, and > 0 (≥ 0 with ``allow_zero``)."""
    bound = {"low": 0} if allow_zero else {"above": 0}
    value = validate.number(value, name, **bound, where="schedule")
    return sp.Float(value) if isinstance(value, float) else sp.Integer(value)


def _count(name, value):
    """A number of steps or periods (every, step_size, total, steps): an integer ≥ 1."""
    return sp.Integer(validate.integer(value, name, low=1, where="schedule"))


def _epoch(every):
    """The decay clock: ⌊(t − 1)/every⌋, which is 0 during the first ``every`` steps."""
    return sp.floor((t - 1) / _count("every", every))


def constant(lr: float) -> Schedule:
    return Schedule("constant", _positive("lr", lr), lr)


def step(lr: float, step_size: int, gamma: float = 0.1, every: int = 1) -> Schedule:
    """lr·γ^⌊k/step_size⌋ after k decay periods (torch's StepLR)."""
    k = _epoch(every)
    return Schedule("step", _positive("lr", lr) * _positive("gamma", gamma)
                    ** sp.floor(k / _count("step_size", step_size)), lr)


def exponential(lr: float, gamma: float, every: int = 1) -> Schedule:
    """lr·γ^k (torch's ExponentialLR)."""
    return Schedule("exponential", _positive("lr", lr) * _positive("gamma", gamma) ** _epoch(every),
                    lr)


def natural_exponential(lr: float, decay: float, every: int = 1) -> Schedule:
    """lr·e^(−decay·k)."""
    return Schedule("natural_exponential",
                    _positive("lr", lr) * sp.exp(-_positive("decay", decay, True) * _epoch(every)),
                    lr)


def inverse_time(lr: float, decay: float, every: int = 1) -> Schedule:
    """lr/(1 + decay·k)."""
    return Schedule("inverse_time",
                    _positive("lr", lr) / (1 + _positive("decay", decay, True) * _epoch(every)), lr)


def cosine(lr: float, total: int, lr_min: float = 0.0, every: int = 1) -> Schedule:
    """lr_min + (lr − lr_min)(1 + cos(π·k/total))/2, held at lr_min after ``total`` periods
    (torch's CosineAnnealingLR for one half-period)."""
    total = _count("total", total)
    k = sp.Min(_epoch(every), total)
    lo = _positive("lr_min", lr_min, True)
    return Schedule("cosine", lo + (_positive("lr", lr) - lo) * (1 + sp.cos(sp.pi * k / total)) / 2,
                    lr)


def warmup(lr: float, steps: int, after: Schedule | None = None) -> Schedule:
    """A linear ramp lr·t/steps over the first ``steps`` steps, reaching lr at step ``steps``,
    then ``after`` from its own first step (default: lr), as torch's SequentialLR of a LinearLR
    and ``after``'s scheduler."""
    if after is not None and not isinstance(after, Schedule):
        raise DeclarationError(f"schedule: warmup(after=...) must be a schedule such as "
                               f"sn.schedules.cosine(0.1, 1000), or None, got "
                               f"{validate.describe(after)}")
    lr_, steps = _positive("lr", lr), _count("steps", steps)
    rest = after.expr if after is not None else sp.Float(lr_)
    return Schedule("warmup", sp.Piecewise((lr_ * t / steps, t <= steps),
                                           (rest.subs(t, t - steps), True)), lr)


def cyclic(lr: float, max_lr: float, step_size: int) -> Schedule:
    """The triangular cycle between lr and max_lr, ``step_size`` steps each way (torch's
    CyclicLR, mode "triangular")."""
    size = _count("step_size", step_size)
    k = t - 1
    cycle = sp.floor(1 + k / (2 * size))
    x = sp.Abs(k / size - 2 * cycle + 1)
    lo, hi = _positive("lr", lr), _positive("max_lr", max_lr)
    return Schedule("cyclic", lo + (hi - lo) * sp.Max(0, 1 - x), lr)


__all__ = ["Schedule", "constant", "cosine", "cyclic", "exponential", "inverse_time",
           "natural_exponential", "step", "warmup"]
