"""Optimizers as symbolic update rules.

A rule is an ordered list of assignments over SymPy scalars: the parameter entry ``p``, its
gradient ``g``, the optimizer's state variables (zero at the start) and the step number ``t``
(1 for the first update). Assignments run in order, each seeing the values assigned before it,
entry by entry; the training kernel fuses them into one loop per parameter. Argument names,
defaults and formulas follow ``torch.optim``, so the same settings give the same numbers.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np
import sympy as sp

from codegen.ir import UPDATE_SYMBOLS, Update

from . import validate
from .errors import DeclarationError
from .schedules import Schedule

p, g, t, clip, RATE = (UPDATE_SYMBOLS[k] for k in ("p", "g", "t", "clip", "rate"))
LR = sp.Symbol("lr", real=True)


def _var(name):
    return sp.Symbol(name, real=True)


def _rate(owner, name, value, example):
    """A hyperparameter that must be a finite number > 0 (lr, clip_norm)."""
    return validate.number(value, name, above=0, example=example, where=type(owner).__name__)


def _non_negative(owner, name, value, example=0.0):
    """A hyperparameter that must be a finite number ≥ 0 (eps, weight_decay, lr_decay)."""
    return validate.number(value, name, low=0, example=example, where=type(owner).__name__)


def _fraction(owner, name, value, example):
    """A decay factor in [0, 1) (momentum, alpha, rho, betas)."""
    return validate.number(value, name, low=0, below=1, example=example,
                           where=type(owner).__name__)


class Optimizer:
    """Base class: subclasses define ``state`` (names of per-entry state variables) and
    ``steps()``, the rule with the learning rate written as ``lr``."""

    state: tuple[str, ...] = ()

    def __init__(self, lr, clip_norm=None):
        self.lr = lr
        self.clip_norm = None if clip_norm is None else _rate(self, "clip_norm", clip_norm, 1.0)

    def __setattr__(self, name, value):
        """Only the optimizer's own settings: a misspelt one (``learning_rate`` for ``lr``,
        ``amsgrad``) would be kept, shown by repr, and do nothing."""
        if name not in _settings(type(self)) and name not in ("state", "_lr"):
            raise DeclarationError(f"{type(self).__name__} has no setting {name!r}; its settings "
                                   f"are {', '.join(sorted(_settings(type(self))))}")
        super().__setattr__(name, value)

    @property
    def lr(self):
        """The learning rate: a number > 0 or a :class:`Schedule`; checked when set, as
        ``model.optimizer.lr = 0.01`` between fits is how a compiled model takes another."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = value if isinstance(value, Schedule) else _rate(self, "lr", value, 0.01)

    def steps(self) -> list[tuple[sp.Symbol, sp.Expr]]:
        raise NotImplementedError

    def rule(self, runtime_rate: bool = False) -> list[tuple[sp.Symbol, sp.Expr]]:
        """The full rule: gradient clipping, the learning rate, then the optimizer's steps. A
        numeric learning rate is written into the rule, or with ``runtime_rate`` read from the
        run-time value ``rate`` (what the kernels compute: a sweep over learning rates then
        reuses one set of kernels)."""
        head = [(g, clip * g)] if self.clip_norm is not None else []
        steps = self.steps()
        if isinstance(self.lr, Schedule):
            return head + [(LR, self.lr.expr)] + steps
        if runtime_rate:
            return head + [(LR, RATE)] + steps
        return head + [(lhs, rhs.subs(LR, self.lr)) for lhs, rhs in steps]

    @property
    def rate(self) -> float:
        """The run-time value of ``rate`` in :meth:`update`'s rule (0 with a schedule)."""
        return 0.0 if isinstance(self.lr, Schedule) else float(self.lr)

    def update(self) -> Update:
        """The rule the kernels compute, with a numeric learning rate as the run-time ``rate``."""
        from .formulas import TextPrinter

        printer = TextPrinter()
        rule = self.rule(runtime_rate=True)
        notes = tuple(printer.assignment(lhs, rhs) for lhs, rhs in rule)
        return Update(tuple(rule), self.state, self.clip_norm, notes)

    def describe(self) -> list[str]:
        """The update as text, one assignment per line: ``p ← p − 0.1·g``."""
        from .formulas import TextPrinter, update_lines

        return update_lines(self, TextPrinter())

    def __repr__(self):
        args = ", ".join(f"{k.lstrip('_')}={v!r}" for k, v in vars(self).items()
                         if k != "state")  # derived
        return f"{type(self).__name__}({args})"


@functools.cache
def _settings(cls) -> frozenset[str]:
    """The names an optimizer of class ``cls`` is made with."""
    return frozenset(inspect.signature(cls).parameters)


def _decay(weight_decay):
    return [(g, g + weight_decay * p)] if weight_decay else []


class SGD(Optimizer):
    """p ← p − lr·g, with optional (Nesterov) momentum and weight decay, as torch.optim.SGD."""

    def __init__(self, lr=1e-3, momentum=0.0, nesterov=False, weight_decay=0.0, clip_norm=None):
        super().__init__(lr, clip_norm)
        self.momentum = _fraction(self, "momentum", momentum, 0.9)
        self.nesterov = validate.flag(nesterov, "nesterov", where="SGD")
        self.weight_decay = _non_negative(self, "weight_decay", weight_decay)
        if self.nesterov and self.momentum == 0:
            raise DeclarationError("SGD(nesterov=True) needs momentum > 0")
        self.state = ("buf",) if self.momentum else ()

    def steps(self):
        steps, grad = _decay(self.weight_decay), g
        if self.momentum:
            buf = _var("buf")
            steps.append((buf, self.momentum * buf + grad))
            grad = grad + self.momentum * buf if self.nesterov else buf
        return steps + [(p, p - LR * grad)]


class AdaGrad(Optimizer):
    """sum ← sum + g²; p ← p − lr·g/(√sum + eps), as torch.optim.Adagrad."""

    state = ("sum",)

    def __init__(self, lr=0.01, lr_decay=0.0, eps=1e-10, weight_decay=0.0, clip_norm=None):
        super().__init__(lr, clip_norm)
        self.lr_decay = _non_negative(self, "lr_decay", lr_decay)
        self.eps = _non_negative(self, "eps", eps, 1e-10)
        self.weight_decay = _non_negative(self, "weight_decay", weight_decay)

    def steps(self):
        s = _var("sum")
        lr = LR / (1 + (t - 1) * self.lr_decay) if self.lr_decay else LR
        return _decay(self.weight_decay) + [(s, s + g**2), (p, p - lr * g / (sp.sqrt(s) + self.eps))]


class RMSProp(Optimizer):
    """square_avg ← α·square_avg + (1−α)·g²; p ← p − lr·g/(√square_avg + eps), with optional
    momentum and centring, as torch.optim.RMSprop."""

    def __init__(self, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, clip_norm=None):
        super().__init__(lr, clip_norm)
        self.alpha = _fraction(self, "alpha", alpha, 0.99)
        self.eps = _non_negative(self, "eps", eps, 1e-8)
        self.weight_decay = _non_negative(self, "weight_decay", weight_decay)
        self.momentum = _fraction(self, "momentum", momentum, 0.9)
        self.centered = validate.flag(centered, "centered", where="RMSProp")
        self.state = ("square_avg",) + (("grad_avg",) if self.centered else ()) + (
            ("buf",) if self.momentum else ())

    def steps(self):
        sq, ga, buf = _var("square_avg"), _var("grad_avg"), _var("buf")
        a = self.alpha
        steps = _decay(self.weight_decay) + [(sq, a * sq + (1 - a) * g**2)]
        if self.centered:
            steps.append((ga, a * ga + (1 - a) * g))
            avg = sp.sqrt(sq - ga**2) + self.eps
        else:
            avg = sp.sqrt(sq) + self.eps
        if self.momentum:
            return steps + [(buf, self.momentum * buf + g / avg), (p, p - LR * buf)]
        return steps + [(p, p - LR * g / avg)]


class AdaDelta(Optimizer):
    """Zeiler's AdaDelta, as torch.optim.Adadelta (``delta`` is a per-entry temporary)."""

    state = ("square_avg", "acc_delta")

    def __init__(self, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, clip_norm=None):
        super().__init__(lr, clip_norm)
        self.rho = _fraction(self, "rho", rho, 0.9)
        self.eps = _non_negative(self, "eps", eps, 1e-6)
        self.weight_decay = _non_negative(self, "weight_decay", weight_decay)

    def steps(self):
        sq, acc, delta = _var("square_avg"), _var("acc_delta"), _var("delta")
        r, eps = self.rho, self.eps
        return _decay(self.weight_decay) + [
            (sq, r * sq + (1 - r) * g**2),
            (delta, sp.sqrt(acc + eps) / sp.sqrt(sq + eps) * g),
            (acc, r * acc + (1 - r) * delta**2),
            (p, p - LR * delta),
        ]


class Adam(Optimizer):
    """Adam with bias correction, as torch.optim.Adam (weight decay added to the gradient)."""

    state = ("m", "v")

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, clip_norm=None):
        super().__init__(lr, clip_norm)
        if hasattr(betas, "__array__") and np.shape(betas) == (2,):
            betas = tuple(np.asarray(betas))  # an array or tensor, as torch takes them
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise DeclarationError(f"{type(self).__name__}: betas must be a pair such as "
                                   f"(0.9, 0.999), got {validate.describe(betas)}")
        self.betas = (_fraction(self, "betas[0]", betas[0], 0.9),
                      _fraction(self, "betas[1]", betas[1], 0.999))
        self.eps = _non_negative(self, "eps", eps, 1e-8)
        self.weight_decay = _non_negative(self, "weight_decay", weight_decay)

    def _adam(self):
        m, v = _var("m"), _var("v")
        b1, b2 = self.betas
        return [
            (m, b1 * m + (1 - b1) * g),
            (v, b2 * v + (1 - b2) * g**2),
            (p, p - LR / (1 - b1**t) * m / (sp.sqrt(v) / sp.sqrt(1 - b2**t) + self.eps)),
        ]

    def steps(self):
        return _decay(self.weight_decay) + self._adam()


class AdamW(Adam):
    """Adam with decoupled weight decay, p ← p·(1 − lr·weight_decay) first, as torch.optim.AdamW."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, clip_norm=None):
        super().__init__(lr, betas, eps, weight_decay, clip_norm)

    def steps(self):
        return [(p, p * (1 - LR * self.weight_decay))] + self._adam()


__all__ = ["SGD", "AdaDelta", "AdaGrad", "Adam", "AdamW", "Optimizer", "RMSProp"]
