"""The reference backend: a plain NumPy interpreter of a Program."""

from __future__ import annotations

import numpy as np
import sympy as sp

from .ir import BATCH, SIZE, Op, Program, arg_symbols


class NumpyRunner:
    """Runs a :class:`Program` instruction by instruction with NumPy, in ``dtype``."""

    def __init__(self, program: Program, dtype="float64"):
        self.program = program
        self.dtype = np.dtype(dtype)
        self._maps = {
            i: sp.lambdify([*arg_symbols(len(ins.args)), SIZE], ins.body, modules=["numpy", "scipy"])
            for i, ins in enumerate(program.instrs) if ins.op is Op.MAP
        }

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        env = dict(feeds)
        rows = {v.shape[0] for b in self.program.buffers if b.role == "input" and b.shape[0] == BATCH
                for v in [feeds[b.name]]}
        n = rows.pop() if rows else 1
        with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
            for i, ins in enumerate(self.program.instrs):
                env[ins.out] = self._step(i, ins, env, n)
        return {name: env[buf] for name, buf in self.program.outputs}

    def _step(self, i, ins, env, n):
        args = [env[a] for a in ins.args]
        if ins.op is Op.GEMM:
            a, b = (m.T if t else m for m, t in zip(args, ins.trans))
            out = a @ b
            return out if ins.alpha == 1 else out * self.dtype.type(float(ins.alpha.subs(SIZE, n)))
        if ins.op is Op.MAP:
            shape = self._shape(ins.out, n)
            value = np.asarray(self._maps[i](*args, self.dtype.type(n)), dtype=self.dtype)
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
