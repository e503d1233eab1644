"""Optimizers as symbolic update rules.

A rule is an ordered list of assignments over SymPy scalars: the parameter ``p``, its gradient
``g``, the optimizer's state variables and the step number ``t`` (1 for the first update).
Assignments run in order, each seeing the values assigned before it, entry by entry. Argument
names, defaults and formulas follow ``torch.optim``.
"""

from __future__ import annotations

import sympy as sp

from .errors import DeclarationError

p, g, t = sp.symbols("p g t", real=True)


class Optimizer:
    state: tuple[str, ...] = ()

    def rule(self) -> list[tuple[sp.Symbol, sp.Expr]]:
        raise NotImplementedError

    def symbols(self):
        return {name: sp.Symbol(name, real=True) for name in self.state}

    def describe(self) -> list[str]:
        return [f"{lhs} ← {sp.sstr(rhs, order='none')}" for lhs, rhs in self.rule()]

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _check(name, value, low=0.0, high=None, strict=False):
    bad = not isinstance(value, (int, float)) or isinstance(value, bool)
    bad = bad or value < low or (strict and value == low) or (high is not None and value >= high)
    if bad:
        rng = f"{'>' if strict else '≥'} {low}" + (f" and < {high}" if high is not None else "")
        raise DeclarationError(f"optimizer hyperparameter {name}={value!r} must be a number {rng}")
    return value


class SGD(Optimizer):
    """p ← p − lr·g, with optional (Nesterov) momentum and weight decay, as torch.optim.SGD."""

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.lr = _check("lr", lr, strict=True)
        self.momentum = _check("momentum", momentum, high=1.0)
        self.nesterov = bool(nesterov)
        self.weight_decay = _check("weight_decay", weight_decay)
        if nesterov and momentum == 0:
            raise DeclarationError("SGD(nesterov=True) needs momentum > 0")
        self.state = ("buf",) if momentum else ()

    def rule(self):
        steps, grad = [], g
        if self.weight_decay:
            steps.append((g, g + self.weight_decay * p))
        if self.momentum:
            buf = sp.Symbol("buf", real=True)
            steps.append((buf, self.momentum * buf + grad))
            grad = grad + self.momentum * buf if self.nesterov else buf
        steps.append((p, p - self.lr * grad))
        return steps


class AdaGrad(Optimizer):
    """sum ← sum + g²; p ← p − lr·g/(√sum + eps), as torch.optim.Adagrad."""

    state = ("sum",)

    def __init__(self, lr=0.01, eps=1e-10, weight_decay=0.0):
        self.lr = _check("lr", lr, strict=True)
        self.eps = _check("eps", eps)
        self.weight_decay = _check("weight_decay", weight_decay)

    def rule(self):
        s = sp.Symbol("sum", real=True)
        steps = [(g, g + self.weight_decay * p)] if self.weight_decay else []
        return steps + [(s, s + g**2), (p, p - self.lr * g / (sp.sqrt(s) + self.eps))]


class Adam(Optimizer):
    """Adam with bias correction, as torch.optim.Adam."""

    state = ("m", "v")

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.lr = _check("lr", lr, strict=True)
        self.betas = (_check("betas[0]", betas[0], high=1.0), _check("betas[1]", betas[1], high=1.0))
        self.eps = _check("eps", eps)
        self.weight_decay = _check("weight_decay", weight_decay)

    def rule(self):
        m, v = sp.symbols("m v", real=True)
        b1, b2 = self.betas
        steps = [(g, g + self.weight_decay * p)] if self.weight_decay else []
        return steps + [
            (m, b1 * m + (1 - b1) * g),
            (v, b2 * v + (1 - b2) * g**2),
            (p, p - self.lr / (1 - b1**t) * m / (sp.sqrt(v) / sp.sqrt(1 - b2**t) + self.eps)),
        ]
