"""The instructions of an array program: frozen, hashable, printable."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, IntEnum
from functools import cached_property

import sympy as sp

from .errors import CodegenError  # noqa: F401  (codegen.ir.CodegenError)

Dim = int | str  # a fixed size, or "n": the number of rows of the current batch
BATCH = "n"


class Op(Enum):
    GEMM = "gemm"  # out = alpha · op(a) · op(b), op = transpose or not
    MAP = "map"  # out = body(args...) entrywise; args broadcast as NumPy does (1×m, n×1, 1×1);
    # a MAP into a "state" buffer updates it in place, after every other instruction
    ROWSUM = "rowsum"  # out (r×1) = Σ_j a[:, j]
    COLSUM = "colsum"  # out (1×c) = Σ_i a[i, :]
    LOGSUMEXP = "logsumexp"  # out (r×1) = log Σ_j exp(a[:, j]), computed stably
    TRANSPOSE = "transpose"  # out = aᵀ


class Status(IntEnum):
    """How a training call ended, at (epoch, batch) of its orders and step t."""

    DONE = 0  # every step of every epoch was taken
    LOSS = 1  # the loss of this step was not finite; its update was not applied
    UPDATE = 2  # the update of this step made a parameter or state entry non-finite; applied
    STOPPED = 3  # stopped before this step: the step limit was reached or a stop was asked for
    DATA = 4  # this step's batch has a non-finite entry; nothing of the step was computed


@dataclass(frozen=True)
class Buffer:
    name: str
    shape: tuple[Dim, Dim]
    role: str = "temp"  # "input" | "param" | "state" (kept between calls) | "temp"


@dataclass(frozen=True)
class Instr:
    op: Op
    out: str
    args: tuple[str, ...]
    body: sp.Expr | None = None  # MAP: scalar expression in arg_symbols(len(args)) and n
    trans: tuple[bool, bool] = (False, False)  # GEMM: transpose a, transpose b
    alpha: sp.Expr = sp.Integer(1)  # GEMM scale (may use n)
    note: str = ""  # the formula this instruction computes, for listings and generated source


@dataclass(frozen=True)
class Program:
    buffers: tuple[Buffer, ...]
    instrs: tuple[Instr, ...]
    outputs: tuple[tuple[str, str], ...]  # (output name, buffer name)
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def buffer(self, name: str) -> Buffer:
        return self._by_name[name]

    @cached_property
    def _by_name(self) -> dict[str, Buffer]:
        """The planner asks for a buffer ~30 times an instruction; a search of the tuple made
        planning quadratic in depth (24 batch-norm layers: 13 of 18 s)."""
        return {b.name: b for b in self.buffers}

    def listing(self) -> str:
        """The program as readable pseudo-code, one instruction per line under its formula."""
        lines = []
        for ins in self.instrs:
            if ins.note:
                lines.append(f"# {ins.note}")
            lines.append(f"{ins.out} = {describe(ins)}")
        outs = ", ".join(f"{k}={v}" for k, v in self.outputs)
        lines.append(f"return {outs}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Update:
    """An optimizer step: scalar assignments applied in order to every entry of every parameter.

    The right-hand sides use the symbols ``p`` (the entry), ``g`` (its gradient), ``t`` (the step,
    1 for the first update), ``clip`` (the global gradient-norm scale, when ``clip_norm`` is set),
    ``rate`` (the learning rate, given with each training call: models that differ only in it
    share their kernels) and the state variables named in ``state``, which persist between steps
    and start at 0.
    """

    steps: tuple[tuple[sp.Symbol, sp.Expr], ...]
    state: tuple[str, ...] = ()
    clip_norm: float | None = None  # scale all gradients by min(1, clip_norm / (‖g‖₂ + 1e-6))
    notes: tuple[str, ...] = ()  # how each step reads (``p ← p − 0.1·g``), for listings


UPDATE_SYMBOLS = {name: sp.Symbol(name, real=True) for name in ("p", "g", "t", "clip", "rate")}


def floor_quotient(arg: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    """A floor's argument as (numerator, denominator), for the backends to divide as written:
    SymPy stores (t − 1)/3 as t/3 − 1/3, which at t = 7 is 1.9999999999999998 in floating point,
    while a quotient whose value is an integer is exact, and so is the floor of a schedule's
    period count."""
    return sp.fraction(sp.together(arg))


def arg_symbols(k: int) -> list[sp.Symbol]:
    """The scalar symbols a0, a1, … that stand for the entries of a MAP's arguments."""
    return [sp.Symbol(f"a{i}", real=True) for i in range(k)]


SIZE = sp.Symbol(BATCH, integer=True, positive=True)

# What a MAP body may read besides its arguments: the row and column of the entry it computes,
# and the random stream's key, the model's seed and the training step (``Keep``).
ROW, COL = sp.Symbol("i", integer=True, nonnegative=True), sp.Symbol("j", integer=True, nonnegative=True)
SEED, STEP = sp.Symbol("seed", integer=True), sp.Symbol("step", integer=True)


class Keep(sp.Function):
    """``Keep(SEED, STEP, stream, ROW, COL, p)``: 1 with probability 1 − p, else 0, for the entry
    (ROW, COL) that the MAP computes, drawn from mask ``stream`` of a counter-based generator
    (``codegen.intrinsics.random.keep``): the same bits on every backend and thread count."""

    nargs = 6

    @classmethod
    def of(cls, stream: int, p: float) -> Keep:
        return cls(SEED, STEP, sp.Integer(stream), ROW, COL, sp.Float(p))


def describe(ins: Instr) -> str:
    if ins.op is Op.GEMM:
        a, b = (f"{n}.T" if t else n for n, t in zip(ins.args, ins.trans))
        scale = "" if ins.alpha == 1 else f"{ins.alpha} * "
        return f"{scale}{a} @ {b}"
    if ins.op is Op.MAP:
        body = ins.body.subs({s: sp.Symbol(n) for s, n in zip(arg_symbols(len(ins.args)), ins.args)})
        return f"map({body})"
    return f"{ins.op.value}({', '.join(ins.args)})"
