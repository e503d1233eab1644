"""The reference backend: a plain NumPy interpreter of a Program."""

from __future__ import annotations

import numpy as np
import scipy.special
import sympy as sp
from sympy.printing.numpy import NumPyPrinter

from .intrinsics import random
from .ir import (
    BATCH,
    COL,
    ROW,
    SEED,
    SIZE,
    STEP,
    UPDATE_SYMBOLS,
    Op,
    Program,
    Status,
    Update,
    arg_symbols,
    floor_quotient,
)


def _lambertw(z, k=0, tol=1e-8):
    """SciPy's lambertw is complex-valued; the kernels compute real numbers: its real values,
    and NaN where it has none (below −1/e)."""
    w = scipy.special.lambertw(z, k, tol)
    return np.where(w.imag == 0, w.real, np.nan)


# SciPy functions lambdify would call, in their real-valued form
REAL_FUNCTIONS = {"lambertw": _lambertw}


class NumpyRunner:
    """Runs a :class:`Program` instruction by instruction with NumPy, in ``dtype``."""

    def __init__(self, program: Program, dtype="float64"):
        self.program = program
        self.dtype = np.dtype(dtype)
        # 1/0 in a branch (zoo) is NaN, as the numba kernels print it; lambdify's NumPy printer
        # knows no zoo
        self._maps = {
            i: sp.lambdify([*arg_symbols(len(ins.args)), SIZE, ROW, COL, SEED, STEP],
                           ins.body.xreplace({sp.zoo: sp.nan}),
                           modules=[{"Keep": random.keep, **REAL_FUNCTIONS}, "numpy", "scipy"])
            for i, ins in enumerate(program.instrs) if ins.op is Op.MAP
        }

    def run(self, feeds: dict[str, np.ndarray], seed: int = 0, step: int = 0) -> dict[str, np.ndarray]:
        """The outputs on ``feeds``; dropout masks are those of ``seed`` at training ``step``."""
        env = dict(feeds)
        rows = {v.shape[0] for b in self.program.buffers if b.role == "input" and b.shape[0] == BATCH
                for v in [feeds[b.name]]}
        n = rows.pop() if rows else 1
        with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
            for i, ins in enumerate(self.program.instrs):
                env[ins.out] = self._step(i, ins, env, n, (seed, step))
        for b in self.program.buffers:
            if b.role == "state" and env[b.name] is not feeds[b.name]:
                feeds[b.name][...] = env[b.name]  # updated in place
        return {name: env[buf] for name, buf in self.program.outputs}

    def _step(self, i, ins, env, n, key):
        args = [env[a] for a in ins.args]
        if ins.op is Op.GEMM:
            a, b = (m.T if t else m for m, t in zip(args, ins.trans))
            out = a @ b
            return out if ins.alpha == 1 else out * self.dtype.type(float(ins.alpha.subs(SIZE, n)))
        if ins.op is Op.MAP:
            shape = self._shape(ins.out, n)
            rows, cols = (np.arange(d, dtype=np.uint64) for d in shape)
            value = np.asarray(self._maps[i](*args, self.dtype.type(n), rows[:, None], cols[None, :],
                                             *key), dtype=self.dtype)
            return np.array(np.broadcast_to(value, shape)) if value.shape != shape else value
        (a,) = args
        if ins.op is Op.ROWSUM:
            return a.sum(axis=1, keepdims=True)
        if ins.op is Op.COLSUM:
            return a.sum(axis=0, keepdims=True)
        if ins.op is Op.LOGSUMEXP:
            m = a.max(axis=1, keepdims=True)
            m = np.where(np.isfinite(m), m, 0)
            return m + np.log(np.exp(a - m).sum(axis=1, keepdims=True))
        if ins.op is Op.TRANSPOSE:
            return np.ascontiguousarray(a.T)
        raise ValueError(f"unknown instruction {ins.op}")

    def _shape(self, name, n):
        return tuple(n if d == BATCH else d for d in self.program.buffer(name).shape)


class _Printer(NumPyPrinter):
    def _print_floor(self, expr):
        num, den = floor_quotient(expr.args[0])
        return (f"{self._module_format('numpy.floor')}({self.parenthesize(num, 50)} / "
                f"{self.parenthesize(den, 50)})")


class NumpyUpdater:
    """Applies an :class:`Update` with NumPy, whole arrays at a time."""

    def __init__(self, update: Update):
        self.update = update
        symbols = [*UPDATE_SYMBOLS.values(), *(sp.Symbol(s, real=True) for s in update.state)]
        symbols += [lhs for lhs, _ in update.steps if lhs not in symbols]  # temporaries, e.g. lr
        self.names = [s.name for s in symbols]
        printer = _Printer({"fully_qualified_modules": False, "inline": True,
                            "allow_unknown_functions": True})  # lambdify's own settings
        self.fns = [(lhs.name, sp.lambdify(symbols, rhs, "numpy", printer=printer))
                    for lhs, rhs in update.steps]

    def step(self, params: dict, grads: dict, state: dict, t: int, rate: float = 0.0):
        """One update of every parameter (in place), with ``state[param][variable]`` arrays."""
        clip = self._clip(grads)
        for name, value in params.items():
            with np.errstate(all="ignore"):  # a non-finite result is the caller's to report
                env = self._assign(value, grads[name], state[name], t, clip, rate)
            value[...] = env["p"]
            for s in self.update.state:
                state[name][s][...] = env[s]

    def first_non_finite(self, params: dict, grads: dict, state: dict, t: int,
                         rate: float = 0.0):
        """``(parameter name, index into update.steps)`` of the first assignment of step ``t``
        whose value is not finite, or None; nothing is written. (What a failed update is
        blamed on.)"""
        clip = self._clip(grads)
        with np.errstate(all="ignore"):
            for name, value in params.items():
                values = []
                self._assign(value, grads[name], state[name], t, clip, rate, values)
                for k, v in enumerate(values):
                    if not np.isfinite(v).all():
                        return name, k
        return None

    def _clip(self, grads) -> float:
        if self.update.clip_norm is None:
            return 1.0
        norm = np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))
        return min(1.0, self.update.clip_norm / (norm + 1e-6))

    def _assign(self, value, grad, state, t, clip, rate, record=None) -> dict:
        """The rule's assignments on one parameter, in order; returns the final values by name
        (and appends each assigned value to ``record``)."""
        env = dict.fromkeys(self.names, 0.0)
        env.update({"p": value, "g": grad, "t": float(t), "clip": clip, "rate": rate, **state})
        for lhs, f in self.fns:
            args = [env[k] for k in self.names]
            try:
                out = f(*args)
            except ZeroDivisionError:  # of Python floats (1/(t − 1) at t = 1): inf, as in the
                out = f(*[np.float64(a) if isinstance(a, float) else a for a in args])  # kernels
            env[lhs] = np.asarray(out, dtype=value.dtype)
            if record is not None:
                record.append(env[lhs])
        return env


class NumpyBackend:
    """Every program of a model on :class:`NumpyRunner`, and ``train`` as a Python loop over
    minibatches: the reference the numba kernels are checked against."""

    def __init__(self, programs: dict[str, Program], update: Update | None, dtype="float64"):
        self.runners = {name: NumpyRunner(prog, dtype) for name, prog in programs.items()}
        self.updater = NumpyUpdater(update) if update is not None else None
        self.source = "\n\n".join(f"## {name}\n{prog.listing()}" for name, prog in programs.items())

    def prepare(self, names, spare=()) -> None:
        """Nothing to compile: the programs are interpreted."""

    def run(self, name: str, feeds: dict[str, np.ndarray], seed: int = 0,
            step: int = 0) -> dict[str, np.ndarray]:
        return self.runners[name].run(feeds, seed, step)

    def train(self, data, params, state, orders, batch_size, t0, limit=-1, stop=None,
              running=None, seed=0, rate=0.0, pending=None):
        """Same contract as :meth:`NumbaRunner.train`: (per-batch losses, epoch, batch, step,
        :class:`Status`), except that an exception raised on this thread (a signal handler's)
        comes out of the step it interrupts, which the caller must undo; ``pending`` is not
        used."""
        program = "train" if "train" in self.runners else "loss_and_grad"
        running = running or {}
        rows = len(orders[0])
        losses = np.zeros((len(orders), -(-rows // batch_size)))
        t = t0
        for e, order in enumerate(orders):
            for s, start in enumerate(range(0, rows, batch_size)):
                if t == limit or (stop is not None and stop[0]):
                    return losses, e, s, t, Status.STOPPED
                idx = order[start:start + batch_size]
                batch = {k: v[idx] for k, v in data.items()}
                if not all(np.isfinite(v).all() for v in batch.values()):
                    return losses, e, s, t, Status.DATA
                out = self.run(program, {**batch, **params, **running}, seed, t)
                losses[e, s] = loss = out.pop("loss")[0, 0]
                if not np.isfinite(loss):
                    return losses, e, s, t, Status.LOSS
                t += 1
                self.updater.step(params, out, state, t, rate)
                if not all(np.isfinite(a).all() for a in _updated(params, state)):
                    return losses, e, s, t, Status.UPDATE
        return losses, len(orders), 0, t, Status.DONE


def _updated(params, state):
    """Every array an update writes: the parameters and their optimizer state."""
    yield from params.values()
    for st in state.values():
        yield from st.values()
