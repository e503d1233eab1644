"""Lowering: a system of named SymPy matrix equations → a codegen ``Program``.

Equal subexpressions become one buffer (SymPy trees hash structurally). Elementwise work —
sums, Hadamard products, scalar multiples, broadcasts and activations — fuses into one MAP
whose body is a scalar SymPy expression; a named elementwise intermediate used once is fused
into its consumer instead of being stored.
"""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions import MatrixExpr

from codegen.ir import BATCH, COL, ROW, SIZE, Buffer, Instr, Keep, Op, Program, arg_symbols

from .declare import batch
from .errors import DifferentiationError
from .formulas import split_ones, text
from .functions import Dropout, DropoutMask, Elementwise, Entrywise, RowLogSumExp, Standardized, as_numeric

ELEMENTWISE = (sp.MatAdd, sp.HadamardProduct, sp.HadamardPower, Elementwise, Entrywise,
               Standardized, Dropout, DropoutMask, sp.OneMatrix, sp.ZeroMatrix, sp.Identity)


def dim(d) -> int | str:
    if d == batch:
        return BATCH
    if getattr(d, "is_Integer", False) or isinstance(d, int):
        return int(d)
    raise DifferentiationError(f"cannot compute with the dimension {d}: use integers and sn.batch")


def _is_elementwise(e) -> bool:
    if isinstance(e, ELEMENTWISE):
        return True
    if isinstance(e, sp.MatMul):
        _, mats = e.as_coeff_matrices()
        return len(mats) == 1 or _broadcast(mats) is not None
    return False


def _broadcast(mats):
    """The broadcast operand of 1ₙₓ₁·b (b of one row, such as colsum(G) = 1ᵀ·G) or
    v·1₁ₓₘ (v of one column), else None."""
    mats = split_ones(mats)
    if len(mats) < 2:
        return None
    first, rest = mats[0], _product(mats[1:])
    if _ones_column(first) and rest.shape[0] == 1 and not isinstance(rest, sp.OneMatrix):
        return rest
    last, rest = mats[-1], _product(mats[:-1])
    if _ones_row(last) and rest.shape[1] == 1 and not isinstance(rest, sp.OneMatrix):
        return rest
    return None


def _ones_column(m):
    return isinstance(m, sp.OneMatrix) and m.shape[1] == 1


def _ones_row(m):
    return isinstance(m, sp.OneMatrix) and m.shape[0] == 1


class Lowering:
    """Lowers equations (``{name: rhs}``) reachable from some roots into one Program."""

    def __init__(self, definitions, leaves: dict[sp.MatrixSymbol, str], notes=None):
        self.defs = definitions
        self.leaves = leaves  # input / parameter symbol → role
        self.notes = notes or {}
        self.buffers: dict[str, Buffer] = {
            s.name: Buffer(s.name, (dim(s.shape[0]), dim(s.shape[1])), role)
            for s, role in leaves.items()
        }
        self.instrs: list[Instr] = []
        self.memo: dict = {s: s.name for s in leaves}
        self.uses: dict = {}

    # -- which names are fused
    def count_uses(self, roots):
        seen = set()

        def visit(e):
            if isinstance(e, sp.MatrixSymbol):
                self.uses[e] = self.uses.get(e, 0) + 1
                if e in self.defs and e not in seen:
                    seen.add(e)
                    visit(self.defs[e])
            elif isinstance(e, MatrixExpr):
                for a in e.args:
                    visit(a)

        for r in roots:
            visit(r)
            self.uses[r] = self.uses.get(r, 0) + 1  # a root is always stored

    def fusible(self, s) -> bool:
        return s in self.defs and self.uses.get(s, 0) == 1 and _is_elementwise(self.defs[s])

    # -- emitting
    def temp(self, shape, hint="t") -> str:
        name = f"{hint}{len(self.buffers)}"
        self.buffers[name] = Buffer(name, (dim(shape[0]), dim(shape[1])))
        return name

    def emit(self, op, shape, args, note="", hint="t", **kw) -> str:
        out = self.temp(shape, hint)
        self.instrs.append(Instr(op, out, tuple(args), note=note, **kw))
        return out

    def buf(self, e) -> str:
        """The buffer holding the value of ``e``, emitting the instructions that compute it."""
        if e in self.memo:
            return self.memo[e]
        if isinstance(e, sp.MatrixSymbol):
            if e not in self.defs:
                raise DifferentiationError(f"{e} is neither an input, a parameter nor defined")
            out = self.buf(self.defs[e])
            self.notes.setdefault(out, e.name)
        elif _is_elementwise(e):
            args: list[str] = []
            body = as_numeric(self.scalar(e, args))
            out = self.emit(Op.MAP, e.shape, args, body=body, note=self.note(e))
        elif isinstance(e, sp.MatMul):
            out = self.matmul(e)
        elif isinstance(e, sp.Transpose):
            out = self.emit(Op.TRANSPOSE, e.shape, [self.buf(e.arg)], note=self.note(e))
        elif isinstance(e, RowLogSumExp):
            out = self.emit(Op.LOGSUMEXP, e.shape, [self.buf(e.arg)], note=self.note(e))
        else:
            raise DifferentiationError(f"symnet cannot compute {type(e).__name__}: {e}")
        self.memo[e] = out
        return out

    def assign(self, state: sp.MatrixSymbol, value: sp.MatrixExpr) -> None:
        """``state ← value`` entrywise, in place: one MAP whose output is the state leaf."""
        args: list[str] = []
        body = as_numeric(self.scalar(value, args))
        self.instrs.append(Instr(Op.MAP, state.name, tuple(args), body=body,
                                 note=f"{state.name} ← {text(value)}"))

    def note(self, e):
        return text(e)

    def scalar(self, e, args: list[str]) -> sp.Expr:
        """``e`` as a scalar expression over MAP arguments (appended to ``args``)."""
        if isinstance(e, sp.OneMatrix):
            return sp.Integer(1)
        if isinstance(e, sp.ZeroMatrix):
            return sp.Integer(0)
        if isinstance(e, sp.Identity):  # 1 on the diagonal: the MAP's own row and column
            return sp.Piecewise((1, sp.Eq(ROW, COL)), (0, True))
        if isinstance(e, sp.MatrixSymbol) and self.fusible(e):
            return self.scalar(self.defs[e], args)
        if isinstance(e, sp.MatAdd):
            return sp.Add(*[self.scalar(a, args) for a in e.args])
        if isinstance(e, sp.HadamardProduct):
            return sp.Mul(*[self.scalar(a, args) for a in e.args])
        if isinstance(e, sp.HadamardPower):
            return self.scalar(e.args[0], args) ** e.args[1]
        if isinstance(e, Elementwise):
            return e.fn(self.scalar(e.arg, args))
        if isinstance(e, Entrywise):
            return e.fn(*[self.scalar(a, args) for a in e.arguments])
        if isinstance(e, (Standardized, Dropout)):  # statistics broadcast by the MAP
            return self.scalar(e.as_entrywise(), args)
        if isinstance(e, DropoutMask):  # drawn where it is read, forward and backward alike
            return Keep.of(e.stream, float(e.p))
        if isinstance(e, sp.MatMul):
            coeff, mats = e.as_coeff_matrices()
            c = coeff.subs(batch, SIZE)
            if len(mats) == 1:
                return c * self.scalar(mats[0], args)
            operand = _broadcast(mats)
            if operand is not None:
                return c * self.scalar(operand, args)
            return c * self.leaf(sp.MatMul(*mats), args)
        return self.leaf(e, args)

    def leaf(self, e, args):
        name = self.buf(e)
        if name not in args:
            args.append(name)
        return arg_symbols(len(args))[args.index(name)]

    def matmul(self, e) -> str:
        coeff, mats = e.as_coeff_matrices()
        mats = split_ones(mats)
        alpha = coeff.subs(batch, SIZE)
        note = self.note(e)
        if isinstance(mats[0], sp.OneMatrix) and len(mats) > 1:  # 1ᵀ·M: column sums
            inner = self.buf(_product(mats[1:]))
            out = self.emit(Op.COLSUM, (1, mats[-1].shape[1]), [inner], note=note)
            return self.scaled(out, alpha, e.shape, note)
        if isinstance(mats[-1], sp.OneMatrix) and len(mats) > 1:  # M·1: row sums
            inner = self.buf(_product(mats[:-1]))
            out = self.emit(Op.ROWSUM, (mats[0].shape[0], 1), [inner], note=note)
            return self.scaled(out, alpha, e.shape, note)
        left = mats[0]
        for i, right in enumerate(mats[1:], start=1):
            last = i == len(mats) - 1
            a, ta = _operand(left)
            b, tb = _operand(right)
            shape = (left.shape[0], right.shape[1])
            out = self.emit(Op.GEMM, shape, [self.buf(a), self.buf(b)], trans=(ta, tb),
                            alpha=alpha if last else sp.Integer(1), note=note if last else "")
            left = sp.MatMul(left, right)
            if not last or alpha == 1:  # the last GEMM holds alpha·(product), not the product
                self.memo[left] = out
        return out

    def scaled(self, name, alpha, shape, note):
        if alpha == 1:
            return name
        a = arg_symbols(1)[0]
        return self.emit(Op.MAP, shape, [name], body=alpha * a, note=note)


def _product(mats):
    return mats[0] if len(mats) == 1 else sp.MatMul(*mats)


def _operand(m):
    return (m.arg, True) if isinstance(m, sp.Transpose) else (m, False)


def _canonical(e):
    """``e`` with SymPy's doit's 1×1 ones matrix (a 1×1 weight's broadcast), Identity(1), as
    the ones matrix it is, and the factors of every Hadamard product in one order: δ∘X̂ and
    X̂∘δ (batch norm's adjoint and its gain's gradient) are then one buffer, and one sum."""
    e = e.xreplace({sp.Identity(1): sp.OneMatrix(1, 1)})
    return e.replace(sp.HadamardProduct,
                     lambda *args: sp.HadamardProduct(*sorted(args, key=sp.default_sort_key)))


def lower(definitions, roots: dict[str, sp.MatrixExpr], leaves, assigns=None) -> Program:
    """Lower the values ``roots`` (output name → expression over ``definitions`` and ``leaves``),
    then ``assigns``: ``{state leaf: new value}``, written in place after the roots (batch
    norm's running statistics)."""
    definitions = {k: _canonical(v) for k, v in definitions.items()}
    roots = {k: _canonical(v) for k, v in roots.items()}
    assigns = {k: _canonical(v) for k, v in (assigns or {}).items()}
    low = Lowering(definitions, leaves)
    low.count_uses([*roots.values(), *assigns.values()])
    outputs = tuple((name, low.buf(expr)) for name, expr in roots.items())
    for state, value in assigns.items():
        low.assign(state, value)
    used = {a for ins in low.instrs for a in ins.args} | {ins.out for ins in low.instrs}
    used |= {b for _, b in outputs}
    buffers = tuple(b for b in low.buffers.values() if b.role != "temp" or b.name in used)
    return Program(buffers, tuple(low.instrs), outputs)
