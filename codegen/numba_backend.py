"""The numba backend: Programs and an Update → one generated Python module of jitted kernels.

Each instruction becomes one statement (a GEMM is a BLAS call into a preallocated buffer, see
``codegen.blas``, or an explicit loop nest when its fixed dimensions are tiny, or part of the
loop nest over its wide operand when its other side is thin), each MAP one loop nest whose
body is the scalar SymPy expression printed after ``sympy.cse`` (``exp`` as
``codegen.vecmath``'s, which vectorises), each under a comment with its formula. Workspaces are
2-D arrays sized for the largest batch; a kernel loops over the first ``n`` batch rows and hands
``gemm`` the sizes, never taking a view. Narrow batch-shaped workspaces, and most wide ones,
are stored batch-minor, and so are narrow inputs (labels) inside ``train_epochs``.
The module is written to a cache directory under the hash of its text and imported from there,
so numba's ``cache=True`` loads machine code on the next compile of the same model.
``train_epochs`` runs with a helper thread when OpenBLAS has two (``codegen.pool``): the helper
runs OpenBLAS's second job of each product, gathers the second half of each batch's rows, runs
the second half of the columns of each wide loop nest and updates the second half of each
large parameter's rows, while the calling thread does the first halves. A watcher thread
times training and has it run alone while that is faster (``codegen.pace``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import keyword
import os
import sys
import threading
from pathlib import Path

# Imported with symnet rather than inside the first kernel load: numba's array library costs
# ~0.3 s once per process, which is import time, not compile time. (codegen.blas loads OpenBLAS
# and defines the gemm the generated modules import.)
import numba.core.errors
import numba.np.arraymath
import numpy as np
import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from . import blas, cache, pace, pool  # noqa: F401
from .ir import BATCH, SIZE, UPDATE_SYMBOLS, CodegenError, Op, Program, Status, Update, arg_symbols
from .native import NativeCall

CODEGEN_VERSION = 18  # bump whenever the generated code changes for the same Program
SMALL_GEMM = 64  # GEMMs whose fixed dimensions multiply to at most this run as explicit loops
THIN = 16  # and so do products with a side this thin beside a wide one (see Kernel.thin)
MINOR = 16  # batch-shaped workspaces with at most this many columns are stored batch-minor,
WIDE = 128  # and so are those with at least this many (see Kernel._wide_minor)
FASTMATH = '{"contract", "reassoc"}'  # no "nnan": the NaN checks must stay
# no wrappers: Python calls the kernels' machine code through codegen.native, and LLVM would
# otherwise optimise and emit a C-callable entry point of each (~350 IR lines for
# train_epochs) and a CPython one (0.3–0.8 s of seed002's cold compile)
JIT = ("@nb.njit(cache=CACHE, error_model='numpy', fastmath=FASTMATH, no_cfunc_wrapper=True, "
       "no_cpython_wrapper=True)")
RESERVED = {"np", "nb", "math", "DT", "FASTMATH", "CACHE", "n", "nf", "i", "j", "k", "e", "s", "r", "t", "t0",
            "a_ki", "p", "mode", "get_fpmode", "set_fpmode", "FTZ_DAZ",
            "tf", "g", "acc", "top", "sq", "clip", "loss", "losses", "rows", "batch", "batches",
            "start", "orders", "train_epochs", "gemm", "update_entries", "sum_of_squares", "ps", "gs",
            "JIT", "v", "vexp", "hf", "role", "r0", "r1", "pool", "lo", "opaque", "pace", "par",
            "now", "phase", "j0", "j1", "limit", "stop", "status", "bad"}
SPLIT = 4096  # parameters with at least this many entries (and two rows) are updated in halves
SHARE = WIDE  # batch-minor loop nests over at least this many columns run in halves too


class ScalarPrinter(PythonCodePrinter):
    """Prints a scalar body for numba: every number in the kernel's dtype (``DT(0.5)``), so that
    float32 kernels stay float32; small integer powers as products."""

    def __init__(self, names: dict[sp.Symbol, str], cast: str = "DT"):
        super().__init__({"strict": True, "fully_qualified_modules": True})
        self.names = names
        self.cast = cast

    def _number(self, text):
        return f"{self.cast}({text})" if self.cast else text

    def _print_Symbol(self, expr):
        # a name is printed only as the kernel's own identifier for it, never as written:
        # SymPy names come from declarations and model files
        if expr in self.names:
            return self.names[expr]
        raise CodegenError(f"the kernel has no value for the symbol {expr.name!r}")

    def _print_Integer(self, expr):
        return self._number(f"{int(expr)}.0")

    def _print_Rational(self, expr):
        return self._number(repr(float(expr)))

    def _print_Float(self, expr):
        return self._number(repr(float(expr)))

    def _print_Half(self, expr):
        return self._number("0.5")

    def _print_Pow(self, expr, rational=False):
        base, e = expr.args
        b = self.parenthesize(base, 1000)
        if e == sp.S.Half:
            return f"math.sqrt({self._print(base)})"
        if e == -sp.S.Half:
            return f"({self._number('1.0')} / math.sqrt({self._print(base)}))"
        if e.is_Integer and 1 <= abs(int(e)) <= 4:
            prod = " * ".join([b] * abs(int(e)))
            return f"({prod})" if e > 0 else f"({self._number('1.0')} / ({prod}))"
        return f"{b} ** {self.parenthesize(e, 1000)}"

    def _print_exp(self, expr):
        return f"vexp({self._print(expr.args[0])})"  # codegen.vecmath: vectorisable

    def _print_Exp1(self, expr):
        return self._number("math.e")

    def _print_Pi(self, expr):
        return self._number("math.pi")


class Emitter:
    """Collects indented source lines."""

    def __init__(self):
        self.lines: list[str] = []
        self.depth = 0

    def __call__(self, line=""):
        self.lines.append("    " * self.depth + line if line else "")

    def comment(self, text: str):
        """``# text`` on one line, whatever ``text`` holds (see :func:`comment_text`)."""
        self(f"# {comment_text(text)}")

    def indent(self, by=1):
        self.depth += by

    def text(self):
        return "\n".join(self.lines)


def comment_text(text: str) -> str:
    """``text`` made safe to follow a ``#`` in generated source: every character that is not
    printable (a line break of any kind, a control character) is written as its escape, so no
    name or formula can end the comment and become code."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _identifier(name: str, used: set[str]) -> str:
    ok = name.isidentifier() and not keyword.iskeyword(name) and name not in RESERVED
    ok = ok and not name.startswith(("_", "s_", "d_", "z_", "acc_"))  # generated names
    out = name if ok and name not in used else f"_b{len(used)}"
    used.add(out)
    return out


def _dims(shape):
    return tuple("n" if d == BATCH else str(d) for d in shape)


def _narrow(dims) -> bool:
    """Batch rows and at most MINOR fixed columns: stored and looped over batch-minor."""
    r, c = dims
    return r == "n" and c != "n" and int(c) <= MINOR


def _wide(dims) -> bool:
    """Batch rows and at least WIDE fixed columns."""
    r, c = dims
    return r == "n" and c != "n" and int(c) >= WIDE


def _touched(group) -> set[str]:
    """The buffers a group of instructions reads or writes."""
    return {a for ins in group for a in (*ins.args, ins.out)}


class Kernel:
    """The source of one Program as a jitted function ``name(n, leaves..., workspaces...)``.

    Elementwise instructions (maps, small GEMMs, row and column sums) that share an iteration
    space are fused into one loop nest (see :meth:`schedule`); a value used only inside its loop
    nest stays a local variable and is never stored.
    """

    def __init__(self, name: str, program: Program):
        self.name = name
        self.program = program
        used: set[str] = set()
        self.ident = {b.name: _identifier(b.name, used) for b in program.buffers}
        self.leaves = [b for b in program.buffers if b.role != "temp"]
        self.temps = [b for b in program.buffers if b.role == "temp"]
        outputs = {buf for _, buf in program.outputs}
        # n×c workspaces with few columns are stored transposed, c×n, so that loops over the
        # batch run along contiguous memory and vectorise (see _fused); so are most with many
        self.minor = {b.name for b in self.temps
                      if b.name not in outputs and _narrow(_dims(b.shape))}
        self.thin_ok = False  # the layout is chosen with every thin product a call of its own
        self.minor |= self._wide_minor(outputs)
        self.thin_ok = True  # then they join loop nests, if every such nest is batch-minor
        self.thin_ok = all(self._minor_nest(g) for g in self.schedule()
                           if any(self.thin(ins) for ins in g))
        self.uses: dict[str, int] = {}
        for ins in program.instrs:
            for a in ins.args:
                self.uses[a] = self.uses.get(a, 0) + 1
        for _, buf in program.outputs:
            self.uses[buf] = self.uses.get(buf, 0) + 1
        self.counter = 0

    def _wide_minor(self, outputs) -> set[str]:
        """The wide n×c workspaces (c ≥ WIDE) to store batch-minor, c×n. The products that
        make and read a layer's activations and their gradients run 10–20 % faster on OpenBLAS
        with them c×n than n×c (784→1024→1024, batch 512: 197–207 against 168–177 GFLOP/s for
        X·W1, A1·W2 and δ2·W2ᵀ, the weight gradients alike; measured), and so do those with a
        narrow output layer. But seed002's 32-wide layers trained 15 % slower batch-minor,
        hence the two bounds. A loop nest must run along contiguous memory of all it reads and
        writes, so a nest that touches a wide input or output (stored n×c), or an instruction
        that is not a loop nest or a product (logsumexp loops over rows), keeps the wide
        workspaces it touches n×c, and so on through the nests that share them."""
        wide = {b.name for b in self.temps if b.name not in outputs and _wide(_dims(b.shape))}
        rows = {b.name for b in self.program.buffers
                if _wide(_dims(b.shape)) and b.name not in wide}
        groups = [g for g in self.schedule() if g[0].op is not Op.GEMM or self.space(g[0])]
        changed = True
        while changed:
            changed = False
            for group in groups:
                touched = _touched(group)
                if (touched & rows or self.space(group[0]) is None) and touched & wide:
                    rows |= touched & wide
                    wide -= touched
                    changed = True
        return wide

    def gathered(self) -> Kernel:
        """These statements as ``train_epochs`` runs them: it copies each batch's rows into the
        input buffers itself, so it stores the narrow inputs batch-minor too. The workspaces
        keep their layout (they are the same arrays), and the CSE names restart at ``_c0``."""
        body = copy.copy(self)
        body.minor = self.minor | {b.name for b in self.leaves
                                   if b.role == "input" and _narrow(_dims(b.shape))}
        body.counter = 0
        return body

    def signature(self) -> list[str]:
        return ["n", *(self.ident[b.name] for b in self.leaves),
                *(self.ident[b.name] for b in self.temps)]

    def shape(self, name):
        return _dims(self.program.buffer(name).shape)

    # -- scheduling
    def space(self, ins):
        """The (rows, cols) a fusible instruction iterates over, or None if it is not fusible."""
        side = self.thin(ins)
        if ins.op is Op.MAP or side == "out" or (
                ins.op is Op.GEMM and self.small(ins) and self.inner(ins) != "n"):
            return self.shape(ins.out)
        if ins.op in (Op.ROWSUM, Op.COLSUM) or self.batch_sum(ins):
            return self.shape(ins.args[-1])
        if side == "a":
            return self.shape(ins.args[0])
        return None

    def thin(self, ins) -> str | None:
        """Where a product with a thin side beside a wide one runs, if it runs in a loop nest:
        "out" for an n×c output with many columns, each entry a sum of at most ``THIN`` terms
        (δ3·W3ᵀ through a 10-wide output layer), in the nest that reads it; "a" for an aᵀ·b
        summed over the batch with b at most ``THIN`` columns wide (A2ᵀ·δ3), in the nest over
        a. OpenBLAS ran wide's two at 81 and 45 GFLOP/s: with the nest that reads the first,
        1.8 % of its epoch, against 1.0 % with both in it (cycle counters). (The mirror, Xᵀ·δ1
        with X thin, stays a call: δ1 is computed in the nest, so its sums would be in the
        inner loop, which costs compile time: see _batch_sum.)

        Only for wide workspaces stored batch-minor, chosen as if the thin products were
        calls, and only if every nest they join runs its batch loop innermost (``thin_ok``)."""
        if ins.op is not Op.GEMM or self.small(ins) or not self.thin_ok:
            return None
        k = self.inner(ins)
        if k != "n":
            return "out" if int(k) <= THIN and self._wide_minor_buffer(ins.out) else None
        if ins.trans != (True, False):
            return None
        a, b = ins.args
        return "a" if int(self.shape(b)[1]) <= THIN and self._wide_minor_buffer(a) else None

    def _wide_minor_buffer(self, name) -> bool:
        return name in self.minor and _wide(self.shape(name))

    def batch_sum(self, ins):
        """A small aᵀ·b summed over the batch: fused into the loop over b, row by row. (A thin
        one runs over a: see thin.)"""
        return (ins.op is Op.GEMM and ins.trans == (True, False) and self.inner(ins) == "n"
                and self.small(ins))

    def entrywise(self, ins) -> tuple[str, ...]:
        """The arguments an instruction reads only at its own loop position (i, j)."""
        if self.batch_sum(ins):
            return ins.args[1:]
        if self.thin(ins) == "a":
            return ins.args[:1]
        return () if ins.op is Op.GEMM else ins.args

    def inner(self, ins):
        return self.shape(ins.args[0])[0 if ins.trans[0] else 1]

    def small(self, ins):
        r, c = self.shape(ins.out)
        return np.prod([int(d) for d in (r, c, self.inner(ins)) if d != "n"]) <= SMALL_GEMM

    def schedule(self) -> list[list]:
        """Groups of instructions, in an order that respects every dependency. A group is one
        non-fusible instruction, or fusible ones over the same iteration space, each reading
        values of its group only entry by entry (a GEMM reads none; nobody reads a sum that is
        still accumulating)."""
        pending = list(self.program.instrs)
        done = {b.name for b in self.leaves}
        groups = []
        while pending:
            first = pending.pop(0)
            space = self.space(first)
            group = [first]
            if space is not None:
                # values complete at entry (i, j) once the nest has reached it; the nest's sums
                # are complete only after it, so nothing in the nest may read them
                local = {first.out} if space == self.shape(first.out) else set()
                for ins in list(pending):
                    if self.space(ins) == space and all(
                            a in done or (a in local and a in self.entrywise(ins))
                            for a in ins.args):
                        group.append(ins)
                        pending.remove(ins)
                        if space == self.shape(ins.out):
                            local.add(ins.out)
            done |= {ins.out for ins in group}
            groups.append(group)
        return groups

    # -- emitting
    def emit(self, out: Emitter):
        out(JIT)
        out(f"def {self.name}({', '.join(self.signature())}):")
        out.indent()
        self.emit_body(out)
        out.indent(-1)

    def emit_body(self, out: Emitter):
        """The statements, for the first ``n`` batch rows of the leaves and the workspaces
        (which are sized for the largest batch: see :func:`_alloc`)."""
        self.layout_note(out)
        out("nf = DT(n)")
        for group in self.schedule():
            self.emit_group(group, out)

    def layout_note(self, out: Emitter):
        """A comment naming the buffers stored batch-minor (c×n), if any."""
        minor = [self.ident[b.name] for b in self.program.buffers if b.name in self.minor]
        if minor:
            out(f"# stored batch-minor: {', '.join(minor)}")

    def emit_group(self, group, out: Emitter, columns: str | None = None):
        """One group of :meth:`schedule`, after its notes; a batch-minor loop nest over
        ``range(columns)`` rather than all its columns, if given (see :meth:`shared`)."""
        for ins in group:
            if ins.note:
                out.comment(ins.note)
        if self.space(group[0]) is None:
            getattr(self, f"_{group[0].op.value}")(group[0], out)
        else:
            self._fused(group, out, columns)

    def _minor_nest(self, group) -> bool:
        """Whether the group's loop nest has its batch loop innermost (see :meth:`_fused`)."""
        r, c = self.space(group[0])
        return _narrow((r, c)) or (_wide((r, c)) and all(
            a in self.minor for a in _touched(group) if self.shape(a) == (r, c)))

    def shared(self, group) -> int | None:
        """The column count of a loop nest that two threads can run on halves of its columns:
        batch-minor, over at least ``SHARE`` columns, and with no sum across them (a row
        sum); else None. Each column's entries are computed as on one thread, bit for bit."""
        space = self.space(group[0])
        if space is None or not self._minor_nest(group) or any(
                ins.op is Op.ROWSUM for ins in group):
            return None
        c = space[1]
        return int(c) if c != "n" and int(c) >= SHARE else None

    def _fused(self, group, out, columns=None):
        """One loop nest over the group's space. Over n×c with few columns the batch loop is
        innermost (batch-minor workspaces make it contiguous), the column sums accumulate in
        local variables, and the column loop's count is ``opaque`` (codegen.opaque); otherwise
        rows are outermost. Over n×c with many columns, the batch loop is innermost when every
        such buffer the nest touches is stored batch-minor (``_wide_minor``)."""
        r, c = self.space(group[0])
        minor = self._minor_nest(group)
        values: dict[str, str] = {}  # buffer → local variable holding its entry (i, j)
        pre, body, post = [], [], []  # around the inner loop (batch-minor order only)
        sums = []  # after the inner loop: the thin products' sums (see _batch_sum)
        for ins in group:
            o = self.ident[ins.out]
            if ins.op is Op.COLSUM:
                if minor:
                    pre.append(f"acc_{o} = DT(0.0)")
                    body.append(f"acc_{o} += {self.entry(ins.args[0], r, c, values)}")
                    post.append(f"{o}[0, j] = acc_{o}")
                    continue
                out(f"for j in range({c}):")
                out(f"    {o}[0, j] = DT(0.0)")
                body.append(f"{o}[0, j] += {self.entry(ins.args[0], r, c, values)}")
                continue
            if ins.op is Op.ROWSUM:
                out(f"for i in range({r}):")
                out(f"    {self.at(ins.out, 'i', 0)} = DT(0.0)")
                body.append(f"{self.at(ins.out, 'i', 0)} += {self.entry(ins.args[0], r, c, values)}")
                continue
            if self.batch_sum(ins) or self.thin(ins) == "a":
                self._batch_sum(ins, minor, values, (r, c), out, pre, body, post, sums)
                continue
            local = f"z_{o}"
            if ins.op is Op.GEMM:
                body += self._dot(ins, local)
            else:
                body += self._map(ins, local, r, c, values)
            values[ins.out] = local
            if self.uses.get(ins.out, 0) > sum(a == ins.out for g in group for a in g.args):
                body.append(f"{self.at(ins.out, 'i', 'j')} = {local}")  # read after the nest
        if minor:  # a count LLVM cannot see, so that it does not copy the inner loop c times
            out(f"for j in range({columns or (f'opaque({c})' if int(c) > 1 else c)}):")
            for line in pre:
                out(f"    {line}")
            out(f"    for i in range({r}):")
            for line in body:
                out(f"        {line}")
            for line in sums:
                out(f"    {line}")
            for line in post:
                out(f"    {line}")
            return
        out(f"for i in range({r}):")
        out(f"    for j in range({c}):")
        for line in body:
            out(f"        {line}")

    def _batch_sum(self, ins, minor, values, space, out, pre, body, post, sums):
        """An aᵀ·b summed over the batch, in the nest over ``space``: out[p, j] = Σ_i a[i, p]·
        b[i, j] for each of a's columns p in a small one (:meth:`batch_sum`), which runs over b;
        out[j, p] = Σ_i a[i, j]·b[i, p] for each of b's in a thin one, which runs over a. The
        sums are local variables when the batch loop is innermost. A thin product's, over a
        stored a, are a loop of their own after the inner one, over the column of a that it
        has just read (from L1). As ten accumulators of a second batch loop they cost wide
        0.4 s of cold compile against 0.2 s as this loop, for 3 ms of its epoch; in the inner
        loop they ran slower than this loop (cycle counters), and compiled slower still in a
        kernel of their own."""
        o, a, b = self.ident[ins.out], *ins.args
        over_a = self.thin(ins) == "a"
        here, other = (a, b) if over_a else (b, a)
        v = self.entry(here, *space, values)
        k = int(self.shape(other)[1])
        alpha = "" if ins.alpha == 1 else f" * {ScalarPrinter({SIZE: 'nf'}).doprint(ins.alpha)}"

        def at(p, j):
            return f"{o}[{j}, {p}]" if over_a else f"{o}[{p}, {j}]"

        if minor and over_a and here not in values:
            sums.append(f"for p in range(opaque({k})):")
            sums.append("    acc = DT(0.0)")
            sums.append(f"    for i in range({space[0]}):")
            sums.append(f"        acc += {self.at(other, 'i', 'p')} * {v}")
            sums.append(f"    {at('p', 'j')} = acc{alpha}")
        elif minor:
            for p in range(k):
                pre.append(f"acc_{o}_{p} = DT(0.0)")
                body.append(f"acc_{o}_{p} += {self.at(other, 'i', p)} * {v}")
                post.append(f"{at(p, 'j')} = acc_{o}_{p}{alpha}")
        else:
            rows, cols = self.shape(ins.out)
            out(f"for i in range({rows}):")
            out(f"    for j in range({cols}):")
            out(f"        {o}[i, j] = DT(0.0)")
            body.append(f"for p in range({k}):")
            body.append(f"    {at('p', 'j')} += {self.at(other, 'i', 'p')} * {v}{alpha}")

    def at(self, name, i, j):
        """Buffer ``name``'s entry (i, j), wherever its layout puts it."""
        return f"{self.ident[name]}[{j}, {i}]" if name in self.minor else f"{self.ident[name]}[{i}, {j}]"

    def entry(self, name, r, c, values):
        """The entry (i, j) of buffer ``name`` in a loop over r×c, broadcasting 1×c, r×1, 1×1."""
        if name in values:
            return values[name]
        ar, ac = self.shape(name)
        i = "0" if ar == "1" and r != "1" else "i"
        j = "0" if ac == "1" and c != "1" else "j"
        return self.at(name, i, j)

    def _dot(self, ins, local):
        """Entry (i, j) of a small product: a sum written out for up to sixteen terms."""
        a, b = ins.args
        ta, tb = ins.trans
        inner = self.inner(ins)

        def term(k):
            return (f"{self.at(a, k, 'i') if ta else self.at(a, 'i', k)} * "
                    f"{self.at(b, 'j', k) if tb else self.at(b, k, 'j')}")

        if inner != "n" and int(inner) <= 16:  # a balanced sum: no chain of dependent adds
            lines = [f"{local} = {_tree_sum([term(k) for k in range(int(inner))])}"]
        else:
            lines = [f"{local} = DT(0.0)", f"for k in range({inner}):", f"    {local} += {term('k')}"]
        if ins.alpha != 1:
            lines.append(f"{local} *= {ScalarPrinter({SIZE: 'nf'}).doprint(ins.alpha)}")
        return lines

    def _map(self, ins, local, r, c, values):
        syms = arg_symbols(len(ins.args))
        names = {s: self.entry(a, r, c, values) for s, a in zip(syms, ins.args)} | {SIZE: "nf"}
        start = self.counter
        temps, (body,) = sp.cse(ins.body, symbols=sp.numbered_symbols("_c", start=start),
                                optimizations="basic")
        self.counter += len(temps)
        printer = ScalarPrinter(names | {sym: sym.name for sym, _ in temps})
        try:
            return [f"{sym} = {printer.doprint(e)}" for sym, e in temps] + [
                f"{local} = {printer.doprint(body)}"]
        except Exception as err:  # the strict printer names what it cannot print
            raise CodegenError(f"the numba backend cannot compute {ins.note or ins.body}: "
                               f"{str(err).splitlines()[0]}") from None

    def _gemm(self, ins, out):
        (a, b), (ta, tb), o = ins.args, ins.trans, ins.out
        r, c = self.shape(ins.out)
        alpha = ScalarPrinter({SIZE: "nf"}).doprint(ins.alpha)
        if self.small(ins):  # a small product summed over the batch: rows outermost, so that
            out(f"for i in range({r}):")  # the innermost loop runs along contiguous rows
            out(f"    for j in range({c}):")
            out(f"        {self.at(o, 'i', 'j')} = DT(0.0)")
            out(f"for k in range({self.inner(ins)}):")
            out(f"    for i in range({r}):")
            out(f"        a_ki = {self.at(a, 'k', 'i') if ta else self.at(a, 'i', 'k')}")
            out(f"        for j in range({c}):")
            out(f"            {self.at(o, 'i', 'j')} += a_ki * "
                f"{self.at(b, 'j', 'k') if tb else self.at(b, 'k', 'j')}")
            if ins.alpha != 1:
                out(f"for i in range({r}):")
                out(f"    for j in range({c}):")
                out(f"        {self.at(o, 'i', 'j')} *= {alpha}")
            return
        k = self.inner(ins)
        if o in self.minor:  # stored transposed: oᵀ = op(b)ᵀ·op(a)ᵀ
            (a, ta), (b, tb), (r, c) = (b, not tb), (a, not ta), (c, r)
        ta, tb = ta != (a in self.minor), tb != (b in self.minor)  # a stored operand's transpose
        out(f"gemm({ta}, {self.ident[a]}, {tb}, {self.ident[b]}, {self.ident[o]}, {alpha}, DT(0.0), "
            f"{r}, {c}, {k})")

    def _logsumexp(self, ins, out):
        a, o = ins.args[0], ins.out
        r, c = self.shape(a)
        out(f"for i in range({r}):")
        out(f"    top = {self.at(a, 'i', 0)}")
        out(f"    for j in range(1, {c}):")
        out(f"        top = max(top, {self.at(a, 'i', 'j')})")
        out("    if not math.isfinite(top):")
        out("        top = DT(0.0)")
        out("    acc = DT(0.0)")
        out(f"    for j in range({c}):")
        out(f"        acc += vexp({self.at(a, 'i', 'j')} - top)")
        out(f"    {self.at(o, 'i', 0)} = top + math.log(acc)")

    def _transpose(self, ins, out):
        a, o = ins.args[0], ins.out
        r, c = self.shape(o)
        out(f"for i in range({r}):")
        out(f"    for j in range({c}):")
        out(f"        {self.at(o, 'i', 'j')} = {self.at(a, 'j', 'i')}")


def _leave(out: Emitter, how: str):
    """End the step loop with ``status`` set: ``return`` at this epoch and batch (after
    restoring the caller's floating-point mode) or ``break`` (the pooled loop, which returns
    after it)."""
    if how == "break":
        out("    break")
    else:
        out("    set_fpmode(mode)")
        out("    return e, s, t, status")


def _tree_sum(terms: list[str]) -> str:
    if len(terms) == 1:
        return terms[0]
    half = len(terms) // 2
    return f"({_tree_sum(terms[:half])} + {_tree_sum(terms[half:])})"


def _hoist(expr, per_step: set, found: dict) -> sp.Expr:
    """Replace each maximal non-atomic subexpression that depends only on ``per_step`` symbols
    by a new symbol recorded in ``found``: it is computed once per step, not once per entry."""
    if expr.is_number:
        return expr
    if expr.free_symbols <= per_step:
        if expr not in found:
            found[expr] = sp.Symbol(f"_h{len(found)}", real=True)
        return found[expr]
    if expr.is_Atom or not expr.args:
        return expr
    return expr.func(*[_hoist(a, per_step, found) for a in expr.args])


class TrainKernel:
    """``train_epochs``: every minibatch of one or more epochs, in one call — gather the shuffled
    rows, loss and gradients, a finiteness check, the update in place."""

    def __init__(self, grad: Kernel, update: Update, losses_of: str):
        self.grad = grad
        # the statements inside the loop: as ``grad``'s, but they read the narrow inputs (the
        # one-hot labels, say) batch-minor, as the gather writes them, so that the loop nests
        # over the output layer read them along contiguous memory. Over seed002's 10-wide
        # output that nest took ~4.4 ms of a 0.078 s epoch with the labels n×c, where every
        # read of the labels was a stride of ten floats (measured with cycle counters).
        self.body = grad.gathered()
        self.update = update
        self.loss = grad.ident[losses_of]
        prog = grad.program
        self.inputs = [b for b in prog.buffers if b.role == "input"]
        self.params = [b for b in prog.buffers if b.role == "param"]
        self.grad_of = {name: grad.ident[buf] for name, buf in prog.outputs if name != "loss"}
        self.rule = "; ".join(f"{lhs} ← {rhs}" for lhs, rhs in update.steps)
        self._split_update()
        # the large parameters, whose second half of rows the helper thread updates (codegen.pool)
        self.half = {p.name for p in self.params if p.shape[0] >= 2 and p.shape[0] * p.shape[1] >= SPLIT}

    def signature(self):
        ins = [self.grad.ident[b.name] for b in self.inputs]
        states = [f"s_{s}_{self.grad.ident[p.name]}" for p in self.params for s in self.update.state]
        return ["orders", "batch", "t0", "limit", "stop", "losses", *(f"d_{x}" for x in ins), *ins,
                *(self.grad.ident[p.name] for p in self.params), *states,
                *(self.grad.ident[b.name] for b in self.grad.temps), "hf", "role"]

    def emit(self, out: Emitter):
        """The loss-and-gradient statements are written out inside the loop rather than called:
        numba would otherwise compile them twice, once on their own and once more when linking
        them into this kernel (0.1–0.25 s of seed002's 2.7 s cold compile, measured).

        With a large parameter, both threads run this one loop (``role`` 1 on the main thread,
        2 on the helper: see codegen.pool). The main thread chooses each step and runs what is
        not shared; in a step on two threads (``par``), the phases that are shared, the gather,
        the wide loop nests (:meth:`Kernel.shared`) and the update of the large parameters, run
        in halves (``pool.share``), between ``pool.begin`` and ``pool.end``, and the helper runs
        OpenBLAS's second job of each product while it waits. Each shared statement is written
        once, for both threads: copies of them for the helper cost 0.7–1.5 s of wide's cold
        compile (measured)."""
        self.emit_helpers(out)
        out()
        out()
        out(JIT)  # the helper thread runs it too: codegen.native calls it without the GIL
        out(f"def train_epochs({', '.join(self.signature())}):")
        out.indent()
        out("mode = get_fpmode()  # flush subnormals to zero while training (codegen.fpmode)")
        out("set_fpmode(mode | np.uint32(FTZ_DAZ))")
        out("lo = np.int64(0)  # not a literal 0: numba would compile update_entries for each literal")
        out(f"rows = d_{self.grad.ident[self.inputs[0].name]}.shape[0]")
        out("batches = (rows + batch - 1) // batch")
        out("t = t0")
        if self.half:
            self._emit_steps(out)
        else:
            out("for e in range(orders.shape[0]):")
            out("    for s in range(batches):")
            out.indent(2)
            self._stop_check(out, "return")
            out("start = s * batch")
            out("n = min(batch, rows - start)")
            self._gather(out, "lo", "n")
            self.body.emit_body(out)
            self._finish_step(out)
            self._update(out)
            self._update_check(out, "return")
            out.indent(-2)
            out("e, s, status = orders.shape[0], lo, lo")
        out("set_fpmode(mode)")
        out(f"return e, s, t, status  # {', '.join(f'{x.value}: {x.name}' for x in Status)}")
        out.indent(-1)

    @staticmethod
    def _stop_check(out: Emitter, leave: str):
        """Before a step: stop at the step limit, or when the caller asks (``stop[0]``: Ctrl-C),
        so that a call ends between two whole steps."""
        out("if t == limit or stop[0] != 0:")
        out(f"    status = {Status.STOPPED.value}")
        _leave(out, leave)

    @staticmethod
    def _update_check(out: Emitter, leave: str):
        """After the update: ``bad`` is 0 if every updated parameter and state entry is finite,
        NaN otherwise (see ``update_entries``)."""
        out("if bad != 0.0:  # NaN: an updated entry is not finite")
        out(f"    status = {Status.UPDATE.value}")
        _leave(out, leave)

    def _emit_steps(self, out: Emitter):
        """The steps, on the main thread (``role`` 0 alone, 1 with the helper) and the helper.
        The shared phases' bounds and waits are intrinsics (codegen.pool) rather than
        branches: each branch of numba's IR costs compile time (0.6 s of wide's cold compile
        with them written as branches, measured)."""
        out("e, s, start, n, status = lo, lo - 1, lo, lo, lo")
        out("par = role == 2  # this step runs on two threads (the helper's steps all do)")
        out("now = -1  # on the main thread with the helper: two threads (0) or one (1), as")
        out("# codegen.pace's watcher asks")
        out("phase = lo  # the phases run on two threads so far: both threads count them alike")
        out("if role == 2:")
        out("    pool.store(pool.UP, 1)")
        out("while batches > 0:")
        out.indent()
        out("if role != 2:  # the main thread's next step")
        out("    s += 1")
        out("    if s == batches:")
        out("        e, s = e + 1, lo")
        out("    if e == orders.shape[0]:")
        out("        break")
        out.indent()
        self._stop_check(out, "break")
        out.indent(-1)
        out("    start = s * batch")
        out("    n = min(batch, rows - start)")
        out("    if role == 1:")
        out("        if pool.load(pool.WANT) != now:")
        out("            now = pool.load(pool.WANT)")
        out("            pace.switch(now)")
        out("        par = now == 0")
        out("        pool.store(pool.EPOCH, e)")
        out("        pool.store(pool.START, start)")
        out("        pool.store(pool.ROWS, n)")
        self._begin(out, "the gather: the helper learns the step, and copies half of its rows")
        out("if role == 2:")
        out("    e, start, n = pool.load(pool.EPOCH), pool.load(pool.START), pool.load(pool.ROWS)")
        out("r0, r1 = pool.share(role, par, n)")
        self._gather(out, "r0", "r1")
        out("pool.end(role, par, phase)")
        out("nf = DT(n)")
        self.body.layout_note(out)
        alone = []  # the main thread's statements since the last shared phase
        for group in self.body.schedule():
            columns = self.body.shared(group)
            if columns is None:
                alone.append(group)
                continue
            with self._alone(out):
                for g in alone:
                    self.body.emit_group(g, out)
            alone = []
            self._begin(out, "a loop nest, in halves of its columns")
            out(f"j0, j1 = pool.share(role, par, opaque({columns}))")
            self.body.emit_group(group, out, "j0, j1")
            out("pool.end(role, par, phase)")
        with self._alone(out):
            for g in alone:
                self.body.emit_group(g, out)
            self._finish_step(out)
            self._step_scalars(out)
            for k, h in enumerate(self.hoisted):
                out(f"hf[{k}] = {h}  # for the helper")
        self._begin(out, "the update: the helper takes the second half of the large parameters' rows")
        out("bad = DT(0.0)")
        if self.hoisted:
            out("if role == 2:")
            for k, h in enumerate(self.hoisted):
                out(f"    {h} = DT(hf[{k}])")
        for p in self.params:
            if p.name in self.half:
                x = self.grad.ident[p.name]
                out.comment(f"update {p.name}: {self.rule}")
                out(f"r0, r1 = pool.share(role, par, {x}.shape[0])")
                out(f"bad += {self._update_call(p, 'r0', 'r1')}")
        with self._alone(out):
            for p in self.params:
                if p.name not in self.half:
                    x = self.grad.ident[p.name]
                    out.comment(f"update {p.name}: {self.rule}")
                    out(f"bad += {self._update_call(p, 'lo', f'{x}.shape[0]')}")
        out("if role == 2:  # the helper's finiteness, for the main thread after the phase")
        out(f"    hf[{len(self.hoisted)}] = bad")
        out("pool.end(role, par, phase)")
        out("if role != 2:")
        out.indent()
        out("if par:")
        out(f"    bad += hf[{len(self.hoisted)}]")
        self._update_check(out, "break")
        out.indent(-1)
        out("if role == 1:")
        out("    pool.store(pool.DONE, pool.load(pool.DONE) + n)")
        out.indent(-1)
        out("if role == 2:")
        out("    pool.store(pool.UP, 0)")

    @staticmethod
    @contextlib.contextmanager
    def _alone(out: Emitter):
        """What the block writes, on the main thread only."""
        mark = len(out.lines)
        out("if role != 2:")
        out.indent()
        yield
        out.indent(-1)
        if len(out.lines) == mark + 1:  # nothing
            out.lines.pop()

    @staticmethod
    def _begin(out: Emitter, what: str):
        """The start of a phase both threads run in a step on two threads (codegen.pool)."""
        out(f"phase = pool.begin(role, par, phase)  # {what}")
        out("if phase < 0:  # the helper, told to exit")
        out("    break")

    def _finish_step(self, out: Emitter):
        """The loss of the step, which ends training when it is not finite."""
        out(f"loss = {self.loss}[0, 0]")
        out("losses[e, s] = loss")
        out("if not math.isfinite(loss):")
        out(f"    status = {Status.LOSS.value}")
        out("    set_fpmode(mode)")
        out("    return e, s, t, status")
        out("t += 1")

    def _step_scalars(self, out: Emitter):
        """The per-step scalars of the update (the clip factor, a scheduled rate)."""
        if self.update.clip_norm is not None:
            out("# clip: min(1, clip_norm / (‖g‖₂ + 1e-6)) over all gradients")
            squares = [f"sum_of_squares({self.grad_of[p.name]})" for p in self.params]
            out(f"sq = {' + '.join(squares)}")
            out(f"clip = min(1.0, {self.update.clip_norm!r} / (math.sqrt(sq) + 1e-6))")
        out("tf = float(t)")
        for line in self.step_lines:
            out(line)

    def _update(self, out):
        """On one thread: the per-step scalars, then one call of ``update_entries`` per
        parameter."""
        self._step_scalars(out)
        out("bad = DT(0.0)")
        for p in self.params:
            x = self.grad.ident[p.name]
            out.comment(f"update {p.name}: {self.rule}")
            out(f"bad += {self._update_call(p, 'lo', f'{x}.shape[0]')}")

    def _update_call(self, p, first: str, last: str) -> str:
        """``update_entries`` on rows first..last of parameter ``p``, its gradient and state."""
        x = self.grad.ident[p.name]
        args = [x, self.grad_of[p.name], *(f"s_{s}_{x}" for s in self.update.state),
                *self.hoisted, first, last]
        return f"update_entries({', '.join(args)})"

    def _gather(self, out: Emitter, first: str, last: str):
        """Copy the shuffled rows first..last of this step's batch into the input buffers."""
        gi = self.grad.ident
        out(f"for r in range({first}, {last}):")
        out("    i = orders[e, start + r]")
        for b in self.inputs:
            x = gi[b.name]
            out(f"    for j in range({_dims(b.shape)[1]}):")
            out(f"        {self.body.at(b.name, 'r', 'j')} = d_{x}[i, j]")

    def _split_update(self):
        """Split the update rule into per-step scalar lines (a scheduled lr, bias corrections:
        in float64, as torch computes them) and the per-entry rule, over hoisted scalars."""
        sym = UPDATE_SYMBOLS
        per_step = {sym["t"], sym["clip"]}
        self.names = {sym["p"]: "p", sym["g"]: "g"}
        self.names.update({sp.Symbol(s, real=True): f"_st_{s}" for s in self.update.state})
        step_names = {sym["t"]: "tf", sym["clip"]: "clip"}
        f64 = ScalarPrinter(step_names, cast="")
        found: dict = {}
        self.step_lines, self.entry_steps = [], []
        for lhs, rhs in self.update.steps:
            if lhs not in self.names and rhs.free_symbols <= per_step:  # e.g. a scheduled lr
                step_names[lhs] = f"_u_{lhs.name}"
                self.step_lines.append(f"_u_{lhs.name} = {f64.doprint(rhs)}")
                per_step.add(lhs)
            else:
                self.names.setdefault(lhs, f"_u_{lhs.name}")  # a per-entry temporary
                self.entry_steps.append((lhs, _hoist(rhs, per_step, found)))
        self.step_lines += [f"{h} = DT({f64.doprint(e)})" for e, h in found.items()]
        self.hoisted = [h.name for h in found.values()]
        self.names.update({h: h.name for h in found.values()})

    def emit_helpers(self, out: Emitter):
        """``update_entries`` (the rule over one parameter, its gradient and its state) and
        ``sum_of_squares``: compiled once and called for every parameter. They take the 2-D
        arrays as they are: a flat view per call cost tiny 12 % of its step time (measured)."""
        printer = ScalarPrinter(self.names)
        states = [f"s_{s}" for s in self.update.state]
        out(JIT)
        out(f"def update_entries({', '.join(['ps', 'gs', *states, *self.hoisted, 'r0', 'r1'])}):")
        out.indent()
        out.comment(f"{self.rule}, on rows r0 to r1")
        out.indent(-1)
        out("    acc = DT(0.0)")
        out("    for i in range(r0, r1):")
        out("        for j in range(ps.shape[1]):")
        out("            p = ps[i, j]")
        out("            g = gs[i, j]")
        for s in self.update.state:
            out(f"            _st_{s} = s_{s}[i, j]")
        for lhs, rhs in self.entry_steps:
            out(f"            {self.names[lhs]} = {printer.doprint(rhs)}")
        out("            ps[i, j] = p")
        for s in self.update.state:
            out(f"            s_{s}[i, j] = _st_{s}")
        finite = " + ".join(["(p - p)", *(f"(_st_{s} - _st_{s})" for s in self.update.state)])
        out(f"            acc += {finite}  # stays 0 while every entry is finite, else NaN")
        out("    return acc")
        if self.update.clip_norm is not None:
            out()
            out()
            out(JIT)
            out("def sum_of_squares(x):")
            out("    acc = 0.0")
            out("    for i in range(x.shape[0]):")
            out("        for j in range(x.shape[1]):")
            out("            acc += x[i, j] * x[i, j]")
            out("    return acc")


def generate(programs: dict[str, Program], update: Update | None, dtype):
    """The module text for ``programs`` (and ``train_epochs`` when ``update`` is given), its
    kernels, and the TrainKernel (or None)."""
    dtype = np.dtype(dtype)
    out = Emitter()
    out(f'"""Generated by symnet (codegen version {CODEGEN_VERSION}) for {dtype.name}."""')
    out()
    out("import math")
    out()
    out("import numba as nb")
    out("import numpy as np")
    out()
    out("from codegen import pace, pool")
    out("from codegen.blas import gemm")
    out("from codegen.fpmode import FTZ_DAZ, get_fpmode, set_fpmode")
    out("from codegen.opaque import opaque")
    out(f"from codegen.vecmath import exp{dtype.itemsize * 8} as vexp")
    out()
    out(f"DT = np.{dtype.name}")
    out(f"FASTMATH = {FASTMATH}")
    kernels = {name: Kernel(name, prog) for name, prog in programs.items()}
    for kernel in kernels.values():
        out()
        out()
        kernel.emit(out)
    trainer = None
    if update is not None:
        out()
        out()
        trainer = TrainKernel(kernels["loss_and_grad"], update,
                              dict(programs["loss_and_grad"].outputs)["loss"])
        trainer.emit(out)
    return out.text() + "\n", kernels, trainer


def _runtime_digest() -> str:
    """A hash of the codegen package's source, whose functions and intrinsics the generated
    kernels compile in. numba's cache checks only the generated module's own file, so without
    it a change to one of them would load machine code built from the old one. Hashing every
    module, rather than a list of the imported ones, leaves no list to keep in step."""
    global _RUNTIME_DIGEST
    if _RUNTIME_DIGEST is None:
        text = b"".join(path.read_bytes() for path in _runtime_files())
        _RUNTIME_DIGEST = hashlib.sha256(text).hexdigest()
    return _RUNTIME_DIGEST


def _runtime_files() -> list[Path]:
    return sorted(Path(__file__).parent.glob("*.py"))


_RUNTIME_DIGEST = None


def load(source: str, directory: Path | None = None):
    """The module of ``source``, from the kernel cache (``codegen.cache``)."""
    return cache.load(source, f"{CODEGEN_VERSION}\n{_runtime_digest()}", directory)


class NumbaRunner:
    """Runs the generated kernels on preallocated workspaces that grow with the largest batch."""

    def __init__(self, programs: dict[str, Program], update: Update | None, dtype="float32"):
        self.dtype = np.dtype(dtype)
        self.programs = programs
        self.update = update
        self.source, self.kernels, self.trainer = generate(programs, update, self.dtype)
        if os.environ.get("SYMNET_DEBUG"):
            print(self.source, file=sys.stderr)
        self.module = load(self.source)
        self.call = {name: NativeCall(getattr(self.module, name))
                     for name in [*self.kernels, *(["train_epochs"] if update is not None else [])]}
        self.work: dict[str, dict[str, np.ndarray]] = {}
        self.capacity: dict[str, int] = {}
        self.tuning: dict[int, np.ndarray] = {}
        self.pinned = pace.PIN_HELPER  # the mode without SYMNET_POOL=auto (tests set others)

    def pacing(self, batch_size: int) -> np.ndarray:
        """``codegen.pace``'s state for training with ``batch_size``, kept between calls (its
        costs are per row of that batch size). It chooses modes only with
        ``SYMNET_POOL=auto``: one thread rounds some products differently."""
        tune = self.tuning.setdefault(batch_size, np.zeros(pace.SLOTS, np.int64))
        tune[pace.FORCE] = pace.ADAPT if os.environ.get("SYMNET_POOL") == "auto" else self.pinned
        return tune

    def workspace(self, name: str, rows: int) -> dict[str, np.ndarray]:
        if self.capacity.get(name, -1) < rows:
            kernel = self.kernels[name]
            self.work[name] = {b.name: _alloc(b.shape, rows, self.dtype, b.name in kernel.minor)
                               for b in kernel.temps}
            self.capacity[name] = rows
        return self.work[name]

    def run(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        kernel = self.kernels[name]
        n = _batch_rows(kernel, feeds)
        work = self.workspace(name, n)
        with pool.LOCK, _jit_errors():
            self.call[name](n, *(feeds[b.name] for b in kernel.leaves),
                            *(work[b.name] for b in kernel.temps))
        prog = self.programs[name]
        return {out: _view(work[buf], prog.buffer(buf).shape, n).copy()
                for out, buf in prog.outputs}

    def train(self, data: dict[str, np.ndarray], params: dict[str, np.ndarray],
              state: dict[str, dict[str, np.ndarray]], orders: np.ndarray, batch_size: int,
              t0: int, limit: int = -1, stop: np.ndarray | None = None):
        """Runs the epochs of ``orders`` from step ``t0`` in one call, updating ``params`` and
        ``state`` in place; returns (per-batch losses, epoch, batch, t, :class:`Status`). It
        stops before step ``limit + 1`` (-1: no limit) and before the next step once
        ``stop[0]`` is set, so a call always ends between whole steps. The kernel runs on
        another thread while the calling thread waits, so that the caller's signal handlers
        (Ctrl-C) run meanwhile and can set ``stop``."""
        kernel = self.kernels["loss_and_grad"]
        rows = min(batch_size, len(orders[0]))
        work = self.workspace("loss_and_grad", rows)
        inputs = [b for b in kernel.leaves if b.role == "input"]
        if self.capacity.get("batch", -1) < rows:  # stored as the train_epochs gathers them
            self.work["batch"] = {b.name: _alloc(b.shape, rows, self.dtype,
                                                 b.name in self.trainer.body.minor)
                                  for b in inputs}
            self.capacity["batch"] = rows
        batch_bufs = self.work["batch"]
        batches = -(-len(orders[0]) // batch_size)
        losses = np.zeros((len(orders), batches), self.dtype)
        pnames = [b.name for b in kernel.leaves if b.role == "param"]
        states = [state[p][s] for p in pnames for s in self.update.state]
        stop = np.zeros(1, np.int64) if stop is None else stop
        args = (orders, batch_size, t0, limit, stop, losses, *(data[b.name] for b in inputs),
                *(batch_bufs[b.name] for b in inputs), *(params[p] for p in pnames), *states,
                *(work[b.name] for b in kernel.temps),
                np.zeros(len(self.trainer.hoisted) + 1))  # the update's scalars, for the helper
        train_epochs = self.call["train_epochs"]
        serve = (lambda: train_epochs(*args, 2)) if self.trainer.half else None
        with (_jit_errors(), pool.helper(serve) as pooled,
              pace.watching(self.pacing(batch_size), rows, pooled)):
            e, s, t, status = _off_this_thread(lambda: train_epochs(*args, 1 if pooled else 0),
                                                stop)
        return losses, int(e), int(s), int(t), Status(status)


def _off_this_thread(call, stop: np.ndarray):
    """``call()`` (a kernel that watches ``stop``) on a thread of its own, while this one
    waits: Python runs signal handlers only between its own instructions, so a kernel that
    runs for seconds on this thread would hold back Ctrl-C until it returns. If the wait is
    interrupted, the kernel is asked to stop after its step and waited for (a second Ctrl-C
    does not cut that short: an abandoned kernel would keep the model's arrays in use)."""
    result: list = []

    def run():
        try:
            result.append((True, call()))
        except BaseException as err:  # raised again on the waiting thread
            result.append((False, err))

    worker = threading.Thread(target=run, name="symnet-kernel", daemon=True)
    try:
        worker.start()
        worker.join()
    except BaseException:
        stop[0] = 1
        while worker.is_alive():
            with contextlib.suppress(BaseException):
                worker.join()
        raise
    ok, value = result[0]
    if not ok:
        raise value
    return value


@contextlib.contextmanager
def _jit_errors():
    """numba's typing and lowering errors, as a CodegenError that says where to look."""
    try:
        yield
    except numba.core.errors.NumbaError as err:
        first = str(err).strip().splitlines()[0]
        raise CodegenError(f"numba could not compile the generated kernel ({first}); "
                           f"SYMNET_DEBUG=1 prints its source") from None


def warm_up(runner: NumbaRunner, params: dict[str, np.ndarray]) -> bool:
    """JIT-compile (or load from the disk cache) the kernels that training, evaluation and
    prediction use by running each once on one row of zeros and copies of ``params``; True if
    all machine code came from the cache. With an update, ``loss_and_grad`` is left to its first
    direct call: ``train_epochs`` has its statements inline."""
    params = {k: v.copy() for k, v in params.items()}
    names = [n for n in runner.kernels if runner.update is None or n != "loss_and_grad"]
    for name in names:
        kernel = runner.kernels[name]
        rows = {b.name: np.zeros((1, b.shape[1]), runner.dtype) for b in kernel.leaves
                if b.role == "input"}
        runner.run(name, {**rows, **params})
    if runner.update is not None:
        state = {p: {s: np.zeros_like(v) for s in runner.update.state} for p, v in params.items()}
        inputs = {b.name: np.zeros((1, b.shape[1]), runner.dtype)
                  for b in runner.kernels["loss_and_grad"].leaves if b.role == "input"}
        runner.train(inputs, params, state, np.zeros((1, 1), np.int64), 1, 0)
    functions = [*names, *(["train_epochs"] if runner.update is not None else [])]
    return all(sum(runner.call[f].stats.cache_misses.values()) == 0 for f in functions)


def _alloc(shape, rows, dtype, minor=False):
    """A workspace for up to ``rows`` batch rows, transposed if it is stored batch-minor; a
    kernel on a smaller batch uses its first n rows (or columns)."""
    dims = tuple(rows if d == BATCH else d for d in shape)
    return np.zeros(dims[::-1] if minor else dims, dtype)


def _view(work, shape, n):
    """The part of an output workspace that holds ``n`` batch rows."""
    return work[tuple(slice(n) if d == BATCH else slice(None) for d in shape)]


def _batch_rows(kernel, feeds):
    rows = {feeds[b.name].shape[0] for b in kernel.leaves if b.shape[0] == BATCH}
    return rows.pop() if rows else 1
