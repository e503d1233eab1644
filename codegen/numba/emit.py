"""Plan → module source: one kernel per program (``forward``, ``loss``, ``loss_and_grad``) and
``train_epochs``, each statement under a comment with the formula it computes.

A kernel is a function ``name(blk_addr, tid)`` of its argument block (``runtime.block``) that
every thread of the team runs: each phase of the plan becomes a loop that claims pieces
(``rt.claim``/``rt.next``) and a wait for the phase to complete (``rt.wait``). A loop nest is
the scalar SymPy body after ``sympy.cse`` (``exp`` as ``codegen.intrinsics.vecmath``'s), over
the piece's rows or columns; a product is ``gemm_at`` on the piece's tile of its output.
Workspaces are sized for the largest batch; a kernel works on the first ``n`` batch rows and
never takes a view.

``train_epochs`` runs whole epochs: each step gathers the batch's shuffled rows, computes loss
and gradients, and updates the parameters. Two decisions per step are taken by the thread that
completes a phase (its *epilogue*) and read by all after it: whether the loss is finite, and,
after the update, whether every updated entry is finite and whether to stop (a step limit, or
``stop`` set by Ctrl-C). A thread that fell behind finds those phases complete and follows.
"""

from __future__ import annotations

import contextlib
import functools
import re

import numpy as np
import sympy as sp

from ..ir import (
    COL,
    ROW,
    SEED,
    SIZE,
    STEP,
    UPDATE_SYMBOLS,
    CodegenError,
    Op,
    Program,
    Status,
    Update,
    arg_symbols,
)
from .plan import GEMM_PIECE, NEST_PIECE, Group, Layout, Plan, dims, layout, plan
from .printer import Lines, ScalarPrinter, comment_text, identifier
from .protocol import product_least, tile

CODEGEN_VERSION = 28  # bump whenever the generated code changes for the same Program
FASTMATH = '{"contract", "reassoc"}'  # no "nnan": the NaN checks must stay
# helpers are compiled without wrappers: only kernels are called from outside, as C callbacks
JIT = ("@nb.njit(cache=CACHE, error_model='numpy', fastmath=FASTMATH, no_cfunc_wrapper=True, "
       "no_cpython_wrapper=True)")
KERNEL_OPTIONS = {"error_model": "numpy", "fastmath": {"contract", "reassoc"}}
UPDATE_PIECE = 4096  # parameter entries updated per piece
ARRAYS_AT = 16  # the first array's slot in an argument block (runtime.FIRST_ARRAY)
TRAIN = "train"  # the program of a training step, when it differs from loss_and_grad


@contextlib.contextmanager
def pieces(out: Lines, epilogue=None):
    """The loop of a phase of ``P`` pieces (``P`` set before it): the lines written inside the
    ``with`` compute piece ``p``; threads claim pieces until none are left, then wait for the
    phase to complete. ``epilogue(out)`` runs once, on the thread that completes it."""
    out("p = rt.claim(team, base, P, -1, tid)")
    with out.block("while p >= 0:"):
        yield
        if epilogue is None:
            out("p = rt.next(team, base, P, p, tid)")
        else:
            with out.block("if rt.finish(team, base, P, p):"):
                epilogue(out)
                out("rt.publish(team, base, P)")
            out("p = rt.claim(team, base, P, p, tid)")
    out("base = rt.wait(team, base, P, tid)")


class Entry:
    """What the runner needs to call one kernel: the order of its argument block, the layout of
    its workspaces, and its work per batch row (for whether to share it among threads)."""

    def __init__(self, name, scalars, arrays, lay: Layout, work_per_row, work_fixed):
        self.name = name
        self.scalars = scalars  # names of the block's scalar slots from 1
        self.arrays = arrays  # names of the arrays, in block order from ARRAYS_AT
        self.layout = lay
        self.length = ARRAYS_AT + 3 * len(arrays)
        self.work_per_row, self.work_fixed = work_per_row, work_fixed

    def work(self, rows: int) -> int:
        """Multiply-adds (or entries) the kernel does on ``rows`` batch rows."""
        return self.work_per_row * rows + self.work_fixed


class KernelWriter:
    """The statements of one program under one layout."""

    def __init__(self, name: str, program: Program, lay: Layout, ident: dict[str, str]):
        self.name = name
        self.program = program
        self.layout = lay
        self.plan: Plan = plan(lay)
        self.ident = ident
        self.minor = lay.minor
        self.uses: dict[str, int] = {}
        for ins in program.instrs:
            for a in ins.args:
                self.uses[a] = self.uses.get(a, 0) + 1
        for _, buf in program.outputs:
            self.uses[buf] = self.uses.get(buf, 0) + 1
        self.counter = 0  # CSE names
        self.sizes = 0  # piece-size variables

    def shape(self, name):
        return self.layout.shape(name)

    # -- phases
    def phase(self, out: Lines, groups: list[Group], epilogue=None):
        """One phase: claim pieces of its groups until none are left, then wait for the phase
        to complete. ``epilogue(out)`` runs once, on the thread that completes it."""
        for g in groups:
            for ins in g.instrs:
                if ins.note:
                    out.comment(ins.note)
        counts = [self.count(g, out) for g in groups]
        out(f"P = {' + '.join(c for c, _ in counts)}")
        with pieces(out, epilogue):
            self.dispatch(out, groups, counts)

    def dispatch(self, out: Lines, groups, counts):
        """The body of piece ``p``: the piece ``q`` of the group it belongs to."""
        offset = "0"
        for g, (count, size), head in zip(groups, counts, _branches([c for c, _ in counts])):
            with out.block(head) if head else contextlib.nullcontext():
                out("q = p" if offset == "0" else f"q = p - ({offset})")
                self.piece(out, g, size)
            offset = count if offset == "0" else f"{offset} + {count}"

    def axis(self, g: Group):
        """(length, the dimensions whose product is the work, target work per piece, least
        piece length) of the axis a group's pieces cut, as source text; None for one piece."""
        if g.split is None:
            return None
        if g.split == "call":
            (r, c), k, _ = self.stored_product(g.instrs[0])
            rows = cut_rows(r, c)
            if isinstance(rows, str):  # the longer of the batch and a fixed length
                length = f"max(n, {c if r == 'n' else r})"
                return length, (r, c, k), GEMM_PIECE, f"rt.product_least({length})"
            length = r if rows else c
            least = "rt.product_least(n)" if length == "n" else product_least(int(length))
            return length, (r, c, k), GEMM_PIECE, least
        ins = g.instrs[0]
        if g.space is not None:
            r, c = g.space
        elif ins.op is Op.LOGSUMEXP:
            r, c = self.shape(ins.args[0])
        else:  # transpose: rows of its output
            r, c = self.shape(ins.out)
        length = r if g.split == "rows" else c
        return length, (r, c), NEST_PIECE, 16 if length == "n" else 1

    def count(self, g: Group, out: Lines) -> tuple[str, str | None]:
        """(pieces, piece size) of a group, as source text; computed here when static."""
        cut = self.axis(g)
        if cut is None:
            return "1", None
        length, factors, target, least = cut
        fixed = int(np.prod([int(f) for f in factors if f != "n"]))
        if length.isdigit() and int(length) < 2 * int(least):  # one piece, whatever the batch
            return "1", None
        if "n" not in factors:
            size = tile(int(length), fixed, target, least)
            count = -(-int(length) // size)
            return (str(count), str(size)) if count > 1 else ("1", None)
        name = f"sz_{self.sizes}"
        self.sizes += 1
        work = " * ".join(["n"] * factors.count("n") + [str(fixed)])
        out(f"{name} = rt.tile({length}, {work}, {target}, {least})")
        out(f"P_{name} = ({length} + {name} - 1) // {name}")
        return f"P_{name}", name

    def piece(self, out: Lines, g: Group, size):
        """Piece ``q`` of group ``g`` (all of it when ``size`` is None)."""
        span = None
        if size is not None:
            length = self.axis(g)[0]
            out(f"first = q * {size}")
            out(f"last = min(first + {size}, {length})")
            span = ("first", "last")
        ins = g.instrs[0]
        if g.space is not None:
            self.fused(g, out, span)
        elif ins.op is Op.GEMM:
            self.gemm(ins, out, g.split, span)
        elif ins.op is Op.LOGSUMEXP:
            self.logsumexp(ins, out, span)
        elif ins.op is Op.TRANSPOSE:
            self.transpose(ins, out, span)
        else:
            raise CodegenError(f"the numba backend has no statement for {ins.op}")

    def body(self, out: Lines, stages: Stages, loss_epilogue=None, loss_buffer=None):
        """A call of every phase of the program (each a stage); the phase that computes
        ``loss_buffer`` gets the epilogue (train_epochs' finiteness check)."""
        for phase in self.plan.phases:
            groups = [self.plan.groups[k] for k in phase]
            writes = set().union(*(g.writes for g in groups))
            epilogue = loss_epilogue if loss_buffer in writes else None
            product = self.lone_product(groups) if epilogue is None else None
            if product is not None:
                lines = stages.product(*product)
            else:
                lines = stages.add(lambda o, groups=groups, epilogue=epilogue:
                                   self.phase(o, groups, epilogue))
            for line in lines:
                out(line)

    def lone_product(self, groups: list[Group]):
        """(note, arrays a, b, out, the row of numbers ``Stages.product`` takes) of a phase that
        is one tiled product ``out = op(a)·op(b)``; None for any other phase."""
        if len(groups) != 1 or groups[0].split != "call" or groups[0].instrs[0].alpha != 1:
            return None
        ins = groups[0].instrs[0]
        (r, c), k, (a, ta, b, tb) = self.stored_product(ins)
        sizes = [-1 if d == "n" else int(d) for d in (r, c, k)]
        return ins.note, (self.ident[a], self.ident[b], self.ident[ins.out]), [int(ta), int(tb), *sizes]

    def work(self) -> tuple[int, int]:
        """(per batch row, fixed) multiply-adds or entries of the program's statements."""
        per_row = fixed = 0
        for ins in self.program.instrs:
            d = [*self.shape(ins.out)]
            if ins.op is Op.GEMM:
                d.append(self.layout.inner(ins))
            elif ins.args:
                d = [*self.shape(ins.args[0])]
            size = int(np.prod([int(x) for x in d if x != "n"]))
            if "n" in d:
                per_row += size
            else:
                fixed += size
        return per_row, fixed

    # -- statements
    def at(self, name, i, j):
        """Buffer ``name``'s entry (i, j), wherever its layout puts it."""
        x = self.ident[name]
        return f"{x}[{j}, {i}]" if name in self.minor else f"{x}[{i}, {j}]"

    def entry(self, name, r, c, values):
        """The entry (i, j) of buffer ``name`` in a loop over r×c, broadcasting 1×c, r×1, 1×1."""
        if name in values:
            return values[name]
        ar, ac = self.shape(name)
        i = "0" if ar == "1" and r != "1" else "i"
        j = "0" if ac == "1" and c != "1" else "j"
        return self.at(name, i, j)

    def fused(self, g: Group, out: Lines, span):
        """One loop nest over the group's space, restricted to the piece's rows or columns. Over
        n×c with the batch innermost (``g.minor``: batch-minor workspaces make it contiguous),
        column sums accumulate in local variables and the column loop's count is ``opaque``
        (codegen.intrinsics.opaque), so LLVM does not copy the inner loop once per column;
        otherwise rows are outermost."""
        group = g.instrs
        r, c = g.space
        rows = f"range({span[0]}, {span[1]})" if span and g.split == "rows" else f"range({r})"
        if span and g.split == "cols":
            cols = f"range({span[0]}, {span[1]})"
        elif g.minor and c != "n" and int(c) > 1:
            cols = f"range(opaque({c}))"
        else:
            cols = f"range({c})"
        values: dict[str, str] = {}  # buffer → local variable holding its entry (i, j)
        pre, body, post, sums = [], [], [], []  # around the inner loop (batch-minor only)
        for ins in group:
            o = self.ident[ins.out]
            if ins.op is Op.COLSUM:
                if g.minor:
                    pre.append(f"acc_{o} = DT(0.0)")
                    body.append(f"acc_{o} += {self.entry(ins.args[0], r, c, values)}")
                    post.append(f"{o}[0, j] = acc_{o}")
                    continue
                with out.block(f"for j in {cols}:"):
                    out(f"{o}[0, j] = DT(0.0)")
                body.append(f"{o}[0, j] += {self.entry(ins.args[0], r, c, values)}")
                continue
            if ins.op is Op.ROWSUM:
                with out.block(f"for i in {rows}:"):
                    out(f"{self.at(ins.out, 'i', 0)} = DT(0.0)")
                body.append(f"{self.at(ins.out, 'i', 0)} += {self.entry(ins.args[0], r, c, values)}")
                continue
            if self.layout.batch_sum(ins) or self.layout.thin(ins) == "a":
                self.batch_sum(ins, g.minor, values, (r, c), cols, out, pre, body, post, sums)
                continue
            local = f"z_{o}"
            if ins.op is Op.GEMM:
                body += self.dot(ins, local)
            else:
                body += self.map(ins, local, r, c, values)
            values[ins.out] = local
            if (self.uses.get(ins.out, 0) > sum(a == ins.out for x in group for a in x.args)
                    or self.program.buffer(ins.out).role == "state"):  # read after the nest
                body.append(f"{self.at(ins.out, 'i', 'j')} = {local}")
        if g.minor:
            with out.block(f"for j in {cols}:"):
                for line in pre:
                    out(line)
                with out.block(f"for i in {rows}:"):
                    for line in body:
                        out(line)
                for line in sums + post:
                    out(line)
            return
        with out.block(f"for i in {rows}:"), out.block(f"for j in {cols}:"):
            for line in body:
                out(line)

    def batch_sum(self, ins, minor, values, space, cols, out, pre, body, post, sums):
        """An aᵀ·b summed over the batch, in the nest over ``space``: out[p, j] = Σ_i a[i, p]·
        b[i, j] for each of a's columns p in a small one (over b); out[j, p] = Σ_i a[i, j]·
        b[i, p] for each of b's in a thin one (over a). The sums are local variables when the
        batch loop is innermost. A thin product's, over a stored a, are a loop of their own
        after the inner one, over the column of a that it has just read (from L1): as
        accumulators of the inner loop they ran slower and compiled slower (measured)."""
        o, a, b = self.ident[ins.out], *ins.args
        over_a = self.layout.thin(ins) == "a"
        here, other = (a, b) if over_a else (b, a)
        v = self.entry(here, *space, values)
        k = int(self.shape(other)[1])
        alpha = "" if ins.alpha == 1 else f" * {ScalarPrinter({SIZE: 'nf'}).doprint(ins.alpha)}"

        def at(p, j):
            return f"{o}[{j}, {p}]" if over_a else f"{o}[{p}, {j}]"

        if minor and over_a and here not in values:
            sums.append(f"for k in range(opaque({k})):")
            sums.append("    acc = DT(0.0)")
            sums.append(f"    for i in range({space[0]}):")
            sums.append(f"        acc += {self.at(other, 'i', 'k')} * {v}")
            sums.append(f"    {at('k', 'j')} = acc{alpha}")
        elif minor:
            for p in range(k):
                pre.append(f"acc_{o}_{p} = DT(0.0)")
                body.append(f"acc_{o}_{p} += {self.at(other, 'i', p)} * {v}")
                post.append(f"{at(p, 'j')} = acc_{o}_{p}{alpha}")
        else:
            with out.block(f"for j in {cols}:"), out.block(f"for k in range({k}):"):
                out(f"{at('k', 'j')} = DT(0.0)")
            body.append(f"for k in range({k}):")
            body.append(f"    {at('k', 'j')} += {self.at(other, 'i', 'k')} * {v}{alpha}")

    def dot(self, ins, local):
        """Entry (i, j) of a small product: a balanced sum written out for up to 16 terms."""
        a, b = ins.args
        ta, tb = ins.trans
        inner = self.layout.inner(ins)

        def term(k):
            return (f"{self.at(a, k, 'i') if ta else self.at(a, 'i', k)} * "
                    f"{self.at(b, 'j', k) if tb else self.at(b, k, 'j')}")

        if inner != "n" and int(inner) <= 16:
            lines = [f"{local} = {_tree_sum([term(k) for k in range(int(inner))])}"]
        else:
            lines = [f"{local} = DT(0.0)", f"for k in range({inner}):", f"    {local} += {term('k')}"]
        if ins.alpha != 1:
            lines.append(f"{local} *= {ScalarPrinter({SIZE: 'nf'}).doprint(ins.alpha)}")
        return lines

    def map(self, ins, local, r, c, values):
        syms = arg_symbols(len(ins.args))
        names = {s: self.entry(a, r, c, values) for s, a in zip(syms, ins.args)} | {SIZE: "nf"}
        names |= {ROW: "i", COL: "j", SEED: "seed", STEP: "t"}  # the nest's loop indices
        temps, body = _cse(ins.body)
        names |= {sym: f"_c{self.counter + k}" for k, (sym, _) in enumerate(temps)}
        self.counter += len(temps)
        printer = ScalarPrinter(names)
        try:
            return [f"{names[sym]} = {printer.doprint(e)}" for sym, e in temps] + [
                f"{local} = {printer.doprint(body)}"]
        except Exception as err:  # the strict printer names what it cannot print
            raise CodegenError(f"the numba backend cannot compute {ins.note or ins.body}: "
                               f"{str(err).splitlines()[0]}") from None

    def stored_product(self, ins):
        """((rows, cols) of the output as stored, inner dimension, (a, ta, b, tb) as the BLAS
        call takes them): a batch-minor output is computed transposed, oᵀ = op(b)ᵀ·op(a)ᵀ, and
        a batch-minor operand's transpose flag flips."""
        (a, b), (ta, tb) = ins.args, ins.trans
        r, c = self.shape(ins.out)
        if ins.out in self.minor:
            (a, ta), (b, tb), (r, c) = (b, not tb), (a, not ta), (c, r)
        ta, tb = ta != (a in self.minor), tb != (b in self.minor)
        return (r, c), self.layout.inner(ins), (a, ta, b, tb)

    def gemm(self, ins, out: Lines, split, span):
        if self.layout.small(ins):  # a small product summed over the batch: rows outermost
            self.small_gemm(ins, out)
            return
        (r, c), k, (a, ta, b, tb) = self.stored_product(ins)
        alpha = ScalarPrinter({SIZE: "nf"}).doprint(ins.alpha)

        def call(r, c, i0="0", j0="0"):
            out(f"gemm_at({ta}, {self.ident[a]}, {tb}, {self.ident[b]}, {self.ident[ins.out]}, "
                f"{alpha}, DT(0.0), {r}, {c}, {k}, {i0}, {j0})")

        rows = None if span is None else cut_rows(r, c)
        if rows is None:
            call(r, c)
        elif isinstance(rows, str):
            with out.block(f"if {rows}:"):
                call("last - first", c, i0="first")
            with out.block("else:"):
                call(r, "last - first", j0="first")
        elif rows:
            call("last - first", c, i0="first")
        else:
            call(r, "last - first", j0="first")

    def small_gemm(self, ins, out: Lines):
        (a, b), (ta, tb), o = ins.args, ins.trans, ins.out
        r, c = self.shape(o)
        with out.block(f"for i in range({r}):"), out.block(f"for j in range({c}):"):
            out(f"{self.at(o, 'i', 'j')} = DT(0.0)")
        with out.block(f"for k in range({self.layout.inner(ins)}):"), \
                out.block(f"for i in range({r}):"):
            out(f"a_ki = {self.at(a, 'k', 'i') if ta else self.at(a, 'i', 'k')}")
            with out.block(f"for j in range({c}):"):
                out(f"{self.at(o, 'i', 'j')} += a_ki * "
                    f"{self.at(b, 'j', 'k') if tb else self.at(b, 'k', 'j')}")
        if ins.alpha != 1:
            alpha = ScalarPrinter({SIZE: "nf"}).doprint(ins.alpha)
            with out.block(f"for i in range({r}):"), out.block(f"for j in range({c}):"):
                out(f"{self.at(o, 'i', 'j')} *= {alpha}")

    def logsumexp(self, ins, out: Lines, span):
        a, o = ins.args[0], ins.out
        r, c = self.shape(a)
        rows = f"range({span[0]}, {span[1]})" if span else f"range({r})"
        with out.block(f"for i in {rows}:"):
            out(f"top = {self.at(a, 'i', 0)}")
            with out.block(f"for j in range(1, {c}):"):
                out(f"top = max(top, {self.at(a, 'i', 'j')})")
            with out.block("if not math.isfinite(top):"):
                out("top = DT(0.0)")
            out("acc = DT(0.0)")
            with out.block(f"for j in range({c}):"):
                out(f"acc += vexp({self.at(a, 'i', 'j')} - top)")
            out(f"{self.at(o, 'i', 0)} = top + math.log(acc)")

    def transpose(self, ins, out: Lines, span):
        a, o = ins.args[0], ins.out
        r, c = self.shape(o)
        rows = f"range({span[0]}, {span[1]})" if span else f"range({r})"
        with out.block(f"for i in {rows}:"), out.block(f"for j in range({c}):"):
            out(f"{self.at(o, 'i', 'j')} = {self.at(a, 'j', 'i')}")


def _branches(counts) -> list[str | None]:
    """The heads of an if/elif/else chain choosing, by piece number ``p``, among consecutive
    ranges of the given sizes (source text); [None] for one range."""
    if len(counts) == 1:
        return [None]
    heads, end = [], "0"
    for k, count in enumerate(counts[:-1]):
        end = count if end == "0" else f"{end} + {count}"
        heads.append(f"{'if' if k == 0 else 'elif'} p < {end}:")
    return [*heads, "else:"]


def cut_rows(r: str, c: str) -> bool | str:
    """Whether a product's tiles cut the rows of its r×c output: the longer side, so that the
    operand packed again for every tile is the smaller one (cutting the batch, the 512 columns
    of wide's stored 1024×512 products, rather than their 1024 rows took 2–7 % longer in
    benchmarks.tiles).
    With the batch on one side and a fixed length on the other, the source of the test the
    kernel makes at run time."""
    if (r == "n") == (c == "n"):
        return r == "n" or int(r) >= int(c)
    return f"n >= {c}" if r == "n" else f"n <= {r}"


@functools.lru_cache(maxsize=4096)
def _cse(body: sp.Expr):
    """``sympy.cse`` of a MAP body: (temporaries, body). Each kernel of a module prints the same
    bodies again, and cse was half of generating a module (0.1 s a model)."""
    temps, (out,) = sp.cse(body, symbols=sp.numbered_symbols("_cse"), optimizations="basic")
    return temps, out


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


# ------------------------------------------------------------------------------- kernels


class Stages:
    """A kernel's phases as functions of their own ("stages", ``runtime.stage``) that it calls
    in order.

    numba's analyses (liveness, reaching definitions) grow faster than linearly with a
    function's size: an 8-layer network's training kernel as one function took 10 s to
    compile, 33 s at 16 layers. And the layers of a deep network make the same stages again and
    again, on other arrays: so a stage takes the block slots of its arrays as an argument, and
    stages that are the same but for them (and for the names the printer numbered) are compiled
    once. The formulas a call computes are comments above the call."""

    def __init__(self, prefix: str, slots: dict[str, tuple[int, str]], params: tuple[str, ...],
                 length: int):
        self.prefix = prefix
        self.slots = slots  # local name → (block slot, dtype)
        self.params = params
        self.length = length
        self.defs = Lines()
        self.known: dict[tuple, str] = {}  # canonical body → the stage's name
        self.rows: list[list[int]] = []  # the slots of each call: rows of a module constant

    def add(self, write) -> list[str]:
        """The lines that call a stage whose body ``write(lines)`` emits (a new stage, or one
        with the same code)."""
        body = Lines()
        body.depth = 1
        write(body)
        notes = [line.strip() for line in body.lines if line.strip().startswith("#")]
        code = [line for line in body.lines if not line.strip().startswith("#")]
        code, arrays = self._canonical(code)
        code, streams = _streams(code, len(arrays))
        key = ("\n".join(code), tuple(self.slots[a][1] for a in arrays))
        if key not in self.known:
            self.known[key] = self._define(code, key[1], notes)
        # the slots as a row of a constant array: a tuple of numbers would be typed by value
        # (numba's literal types), and compiled again for every call
        self.rows.append([self.slots[a][0] for a in arrays] + streams)
        row = f"{self.table}[{len(self.rows) - 1}]"
        return [*notes, f"base = {self.known[key]}({', '.join(self.params)}, {row})"]

    def product(self, note: str, arrays, numbers: list[int]) -> list[str]:
        """The lines that call the stage shared by every phase that is one tiled product
        ``arrays[2] = op(arrays[0])·op(arrays[1])``; ``numbers``: whether a and b are transposed,
        the output's rows, columns and the inner dimension as stored (-1: the batch); its tiles
        cut the longer side (:func:`cut_rows`). The products of seed002's training step were
        four stages of their own, with the same code but for these numbers (0.1 s of compile
        each)."""
        if any(self.slots[x][1] != "DT" for x in arrays):
            raise CodegenError(f"the numba backend multiplies only arrays of the network's "
                               f"dtype, not in {note}")
        name = f"{self.prefix}_product"
        if ("product",) not in self.known:
            self.known[("product",)] = name
            self._define_product(name)
        self.rows.append([self.slots[x][0] for x in arrays] + numbers)
        call = f"base = {name}({', '.join(self.params)}, {self.table}[{len(self.rows) - 1}])"
        return [f"# {comment_text(note)}"] * bool(note) + [call]

    def _define_product(self, name: str):
        d = self.defs
        d("@STAGE")
        with d.block(f"def {name}({', '.join(self.params)}, slots):"):
            d("# a2 = op(a0)·op(a1), in tiles of a2's longer side; the sizes as slots[3:] say "
              "(Stages.product)")
            d(f"blk = rt.block(blk_addr, {self.length})")
            for k in range(3):
                d(f"a{k} = rt.array(blk, slots[{k}], DT)")
            d("ta = slots[3] != 0")
            d("tb = slots[4] != 0")
            for k, dim in enumerate("rck", start=5):
                d(f"{dim} = n if slots[{k}] < 0 else slots[{k}]")
            d("rows = r >= c  # the longer side (cut_rows)")
            d("length = r if rows else c")
            d(f"size = rt.tile(length, r * c * k, {GEMM_PIECE}, rt.product_least(length))")
            d("P = (length + size - 1) // size")
            with pieces(d):
                d("first = p * size")
                d("last = min(first + size, length)")
                with d.block("if rows:"):
                    d("gemm_at(ta, a0, tb, a1, a2, DT(1.0), DT(0.0), last - first, c, k, first, 0)")
                with d.block("else:"):
                    d("gemm_at(ta, a0, tb, a1, a2, DT(1.0), DT(0.0), r, last - first, k, 0, first)")
            d("return base")
        d()
        d()

    @property
    def table(self) -> str:
        return f"{self.prefix.upper()}_SLOTS"

    def emit(self, out: Lines):
        """The slot table and the stages' definitions."""
        width = max(map(len, self.rows), default=0) or 1
        out(f"{self.table} = np.array([")
        for row in self.rows:
            out(f"    {row + [-1] * (width - len(row))},")
        out("], np.int64)")
        out()
        out()
        out.lines += self.defs.lines

    def _canonical(self, lines: list[str]) -> tuple[list[str], list[str]]:
        """``lines`` with the arrays renamed a0, a1, … in order of first use (and the names
        derived from them: z_, acc_), and piece sizes and CSE temporaries renumbered from 0."""
        text = "\n".join(lines)
        arrays: list[str] = []
        numbered: dict[str, dict[str, str]] = {"sz": {}, "c": {}}

        def rename(match):
            token = match.group(0)
            m = re.fullmatch(r"(z_|acc_)?([A-Za-z_]\w*?)(_\d+)?", token)
            for prefix, stem, tail in ((m[1] or "", m[2], m[3] or ""), ("", token, "")):
                if stem in self.slots and (prefix or not tail):
                    if stem not in arrays:
                        arrays.append(stem)
                    return f"{prefix}a{arrays.index(stem)}{tail if prefix else ''}"
            sized = re.fullmatch(r"(P_)?sz_(\d+)", token)
            if sized:
                index = numbered["sz"].setdefault(sized[2], str(len(numbered["sz"])))
                return f"{sized[1] or ''}sz{index}"
            temp = re.fullmatch(r"_c(\d+)", token)
            if temp:
                return f"_c{numbered['c'].setdefault(temp[1], str(len(numbered['c'])))}"
            return token

        text = re.sub(r"(?<![\w.])[A-Za-z_]\w*", rename, text)
        return text.split("\n"), arrays

    def _define(self, code: list[str], dtypes, notes) -> str:
        name = f"{self.prefix}_{len(self.known)}"
        used = set(re.findall(r"[A-Za-z_]\w*", "\n".join(code)))
        d = self.defs
        d("@STAGE")
        with d.block(f"def {name}({', '.join(self.params)}, slots):"):
            if notes:
                d.comment(f"first for: {'; '.join(note[2:] for note in notes)}")
            if dtypes or "blk" in used:
                d(f"blk = rt.block(blk_addr, {self.length})")
            for k, dtype in enumerate(dtypes):
                d(f"a{k} = rt.array(blk, slots[{k}], {dtype})")
            if "nf" in used:
                d("nf = DT(n)")
            if "lo" in used:
                d("lo = np.int64(0)")
        d.lines += code
        d("    return base")
        d()
        d()
        return name


def _streams(lines: list[str], after: int) -> tuple[list[str], list[int]]:
    """``lines`` with each dropout mask's stream number read from the stage's row of slots,
    after its ``after`` arrays, and those numbers: the layers' dropout phases differ in nothing
    else, and an 8-layer network's training kernel compiled 23 stages with dropout, 9 without
    (11 s against 4 s cold). The number is read once, into a local: read from the row in the
    loop, where a store may alias it, it kept LLVM from hoisting the mask's row hash (24
    layers' epochs 12 % longer). A shared stage is not inlined as a stage of one call was:
    24 layers' epochs still take ~5 % longer than with a stage per layer, against a cold
    compile of 7 s rather than 30 s."""
    streams: list[int] = []

    def number(match):
        streams.append(int(match[2]))
        return f"{match[1]}_ks{len(streams) - 1},"

    text = re.sub(r"(\bkeep\(\w+, \w+, )(\d+),", number, "\n".join(lines))
    loads = [f"    _ks{m} = slots[{after + m}]" for m in range(len(streams))]
    return loads + text.split("\n"), streams


def _slots(arrays: list[tuple[str, str]]) -> dict[str, tuple[int, str]]:
    """Each array's local name → (its slot in the argument block, its dtype)."""
    return {name: (ARRAYS_AT + 3 * k, dtype) for k, (name, dtype) in enumerate(arrays)}


ENTRY_SCALARS = ("n", "seed", "t")  # block slots 1, 2, 3: rows, and the dropout masks' key
ENTRY_STAGE = ("blk_addr", "team", "tid", "base", *ENTRY_SCALARS)


def entry_kernel(out: Lines, writer: KernelWriter) -> Entry:
    """``name(blk_addr, tid)``: the program on the first ``n`` rows (block slot 1), with the
    dropout masks of step ``t`` (slots 2, 3)."""
    program = writer.program
    leaves = [b for b in program.buffers if b.role != "temp"]
    temps = [b for b in program.buffers if b.role == "temp"]
    arrays = [(writer.ident[b.name], "DT") for b in (*leaves, *temps)]
    length = ARRAYS_AT + 3 * len(arrays)
    stages = Stages(f"_{writer.name}", _slots(arrays), ENTRY_STAGE, length)
    calls = Lines()
    calls.depth = 1
    writer.body(calls, stages)
    stages.emit(out)
    with out.block(f"def {writer.name}(blk_addr, tid):"):
        out(f"blk = rt.block(blk_addr, {length})")
        out("team = blk[0]")
        for k, name in enumerate(ENTRY_SCALARS, start=1):
            out(f"{name} = blk[{k}]")
        _layout_note(out, writer)
        out("base = np.int64(0)")
    out.lines += calls.lines
    return Entry(writer.name, ENTRY_SCALARS, tuple(b.name for b in (*leaves, *temps)),
                 writer.layout, *writer.work())


def _layout_note(out: Lines, writer: KernelWriter):
    minor = [writer.ident[b.name] for b in writer.program.buffers if b.name in writer.minor]
    if minor:
        out.comment(f"stored batch-minor: {', '.join(minor)}")


class TrainWriter:
    """``train_epochs(blk_addr, tid)``: every minibatch of one or more epochs in one call."""

    SCALARS = ("batch", "t0", "limit", "seed")  # block slots 1-4; runtime's results from 8

    def __init__(self, grad: KernelWriter, update: Update, loss_buffer: str):
        self.grad = grad
        # the same statements, reading the narrow inputs batch-minor as the gather writes them:
        # over seed002's 10-wide output the nest that reads the labels took 4.4 ms of a 0.078 s
        # epoch with them n×c (strided), 0.5 ms batch-minor (cycle counters)
        self.body = KernelWriter("train_epochs", grad.program, grad.layout.gathered(), grad.ident)
        self.update = update
        self.loss_buffer = loss_buffer
        prog = grad.program
        self.inputs = [b for b in prog.buffers if b.role == "input"]
        self.params = [b for b in prog.buffers if b.role == "param"]
        self.states = [b for b in prog.buffers if b.role == "state"]
        self.temps = [b for b in prog.buffers if b.role == "temp"]
        self.grad_of = {name: grad.ident[buf] for name, buf in prog.outputs if name != "loss"}
        self.rule = "; ".join(update.notes or [f"{lhs} ← {rhs}" for lhs, rhs in update.steps])
        self._split_update()

    def arrays(self) -> list[tuple[str, str, str]]:
        """(block name, local name, dtype) of every array, in block order."""
        gi = self.grad.ident
        out = [("orders", "orders", "np.int64"), ("losses", "losses", "DT"),
               ("stop", "stop", "np.int64"), ("fbuf", "fbuf", "np.float64")]
        out += [(f"data/{b.name}", f"d_{gi[b.name]}", "DT") for b in self.inputs]
        out += [(f"batch/{b.name}", gi[b.name], "DT") for b in self.inputs]
        out += [(b.name, gi[b.name], "DT") for b in self.params + self.states]
        out += [(f"state/{b.name}/{s}", f"s_{s}_{gi[b.name]}", "DT") for b in self.params
                for s in self.update.state]
        out += [(b.name, gi[b.name], "DT") for b in self.temps]
        return out

    STAGE = ("blk_addr", "team", "tid", "base", "n", "e", "s", "start", "t", "batches", "limit",
             "seed")

    def emit(self, out: Lines) -> Entry:
        self.emit_helpers(out)
        out()
        out()
        arrays = self.arrays()
        gi = self.grad.ident
        length = ARRAYS_AT + 3 * len(arrays)
        slots = _slots([(local, dtype) for _, local, dtype in arrays])
        self.tables(out, slots)
        stages = Stages("_train", slots, self.STAGE, length)
        step = Lines()
        step.depth = 3  # inside the function and the loops over epochs and batches
        self.step(step, stages)
        stages.emit(out)
        with out.block("def train_epochs(blk_addr, tid):"):
            out(f"blk = rt.block(blk_addr, {length})")
            out("team = blk[0]")
            for k, name in enumerate(self.SCALARS, start=1):
                out(f"{name} = blk[{k}]")
            data = f"d_{gi[self.inputs[0].name]}"
            for local in ("orders", data):
                out(f"{local} = rt.array(blk, {slots[local][0]}, {slots[local][1]})")
            out("mode = get_fpmode()  # flush subnormals to zero while training (fpmode)")
            out("set_fpmode(mode | np.uint32(FTZ_DAZ))")
            out("lo = np.int64(0)")
            out(f"rows = {data}.shape[0]")
            out("batches = (rows + batch - 1) // batch")
            out("t = t0")
            out("base = lo")
            out("going = t0 != limit")
            with out.block("if not going and tid == 0:"):
                out(f"rt.record(blk_addr, lo, lo, t, {Status.STOPPED.value})")
            out("e = lo")
            with out.block("while going and e < orders.shape[0]:"):
                out("s = lo")
                with out.block("while going and s < batches:"):
                    out.lines += step.lines
                    out("s += 1")
                out("e += 1")
            with out.block("if tid == 0 and blk[rt.STATUS] < 0:"):
                out(f"rt.record(blk_addr, orders.shape[0], lo, t, {Status.DONE.value})")
            out("set_fpmode(mode)")
        work = self.grad.work()
        return Entry("train_epochs", self.SCALARS, tuple(name for name, _, _ in arrays),
                     self.body.layout, *work)

    def step(self, out: Lines, stages: Stages):
        """One step, as calls of its stages: the gather, the loss and gradients, the update."""
        out("start = s * batch")
        out("n = min(batch, rows - start)")
        for line in stages.add(self.gather):
            out(line)
        out("going = blk[rt.STOPCODE] == 0  # each stage's epilogue may stop the step")
        with out.block("if going:"):
            _layout_note(out, self.body)
            self.body.body(out, stages, self.loss_check, self.loss_buffer)
            out("going = blk[rt.STOPCODE] == 0")
        with out.block("if going:"):
            out("t += 1")
            for line in stages.add(self.update_stage):
                out(line)
            out("going = blk[rt.STOPCODE] == 0")

    def update_stage(self, out: Lines):
        """The per-step scalars (in every thread: the clip factor, a scheduled rate, bias
        corrections) and the update."""
        if self.update.clip_norm is not None:
            self.clip(out)
        out("tf = float(t)")
        out("rate = fbuf[0, 1]  # the learning rate, given with the call")
        for line in self.step_lines:
            out(line)
        self.updates(out)

    def gather(self, out: Lines):
        """Copy the step's shuffled rows into the input buffers, in pieces of rows, and stop
        before the step if one of them is not finite (``data_check``). ``fit`` leaves the check
        of its data to this copy, which reads every row anyway: its own pass over
        Fashion-MNIST's images took 7 ms of every call, a twelfth of a seed002 epoch."""
        gi = self.grad.ident
        total = sum(int(dims(b.shape)[1]) for b in self.inputs)
        out.comment("the batch: its shuffled rows of the data")
        out(f"size = rt.tile(n, n * {total}, {NEST_PIECE}, 8)")
        out("P = (n + size - 1) // size")
        with pieces(out, self.data_check):
            out("bad = DT(0)")
            with out.block("for r in range(p * size, min(p * size + size, n)):"):
                out("i = orders[e, start + r]")
                for b in self.inputs:
                    with out.block(f"for j in range({dims(b.shape)[1]}):"):
                        out(f"v = d_{gi[b.name]}[i, j]")
                        out(f"{self.body.at(b.name, 'r', 'j')} = v")
                        out("bad += v * DT(0)  # NaN once an entry is not finite")
            with out.block("if bad != 0:"):
                out("blk[rt.BAD] = 1")

    def data_check(self, out: Lines):
        """The gather's epilogue: stop before the step if an entry of its batch is not
        finite."""
        with out.block("if blk[rt.BAD] != 0:"):
            out(f"rt.record(blk_addr, e, s, t, {Status.DATA.value})")
            out("blk[rt.BAD] = 0")

    def loss_check(self, out: Lines):
        """The epilogue of the phase that computes the loss: record it; stop if not finite."""
        out(f"loss = {self.body.at(self.loss_buffer, 0, 0)}")
        out("losses[e, s] = loss")
        with out.block("if not math.isfinite(loss):"):
            out(f"rt.record(blk_addr, e, s, t, {Status.LOSS.value})")

    def tables(self, out: Lines, slots):
        """Module constants the update stage reads its arrays' block slots from: one row per
        piece of the update (parameter, gradient, states, first and last row), and the
        gradients' slots for the clip norm. A table and one call, rather than a branch and a
        call per parameter: numba takes ~50 ms to compile each (measured at 8 layers)."""
        gi = self.grad.ident
        pieces = []
        for k, p in enumerate(self.params):
            x = gi[p.name]
            rows, cols = (int(d) for d in dims(p.shape))
            per = max(1, UPDATE_PIECE // cols)
            arrays = [x, self.grad_of[p.name], *(f"s_{s}_{x}" for s in self.update.state)]
            for r0 in range(0, rows, per):
                row = [slots[a][0] for a in arrays] + [r0, min(r0 + per, rows)]
                pieces.append((r0 / rows, k, row, p.name))
        # in order of where they start in their parameter: a thread's share of the phase
        # (runtime's claim) then holds the same part of every parameter, the rows whose gradient
        # it computed (a product's tiles are shared out along the same rows)
        out("_UPDATES = np.array([  # parameter, gradient, state slots; first and last row")
        for _, _, row, name in sorted(pieces, key=lambda x: x[:2]):
            out(f"    {row},  # {comment_text(name)}")
        out("], np.int64)")
        out(f"_GRADIENTS = np.array({[slots[self.grad_of[p.name]][0] for p in self.params]}, "
            f"np.int64)")
        out()

    def clip(self, out: Lines):
        """min(1, clip_norm / (‖g‖₂ + 1e-6)) over all gradients: one piece, a fixed order."""
        out.comment("clip: min(1, clip_norm / (‖g‖₂ + 1e-6)) over all gradients")
        out("P = 1")
        with pieces(out):
            out("sq = 0.0")
            with out.block("for k in range(_GRADIENTS.shape[0]):"):
                out("sq += sum_of_squares(rt.array(blk, _GRADIENTS[k], DT))")
            out("fbuf[0, 0] = sq")
        out(f"clip = min(1.0, {self.update.clip_norm!r} / (math.sqrt(fbuf[0, 0]) + 1e-6))")

    def updates(self, out: Lines):
        """The update of every parameter, in pieces of rows (``_UPDATES``); its epilogue
        decides the next step."""
        k = 2 + len(self.update.state)
        arrays = ", ".join(f"rt.array(blk, w[{j}], DT)" for j in range(k))
        out.comment(f"update: {self.rule}")
        out("P = _UPDATES.shape[0]")
        with pieces(out, self.decide):
            out("w = _UPDATES[p]")
            out(f"bad = update_entries({', '.join([arrays, *self.hoisted, f'w[{k}]', f'w[{k + 1}]'])})")
            with out.block("if bad != 0.0:  # NaN: an updated entry is not finite"):
                out("blk[rt.BAD] = 1")

    def decide(self, out: Lines):
        """The update's epilogue: stop if an updated entry is not finite (the update stays
        applied: the caller undoes it), or before the next step if the step limit is reached
        or a stop was asked for (``stop``: Ctrl-C)."""
        with out.block("if blk[rt.BAD] != 0:"):
            out(f"rt.record(blk_addr, e, s, t, {Status.UPDATE.value})")
        with out.block("elif t == limit or stop[0, 0] != 0:"):
            out("e1, s1 = (e + 1, lo) if s + 1 == batches else (e, s + 1)")
            with out.block("if e1 < orders.shape[0]:"):
                out(f"rt.record(blk_addr, e1, s1, t, {Status.STOPPED.value})")
        out("blk[rt.BAD] = 0")

    def _split_update(self):
        """Split the update rule into per-step scalar lines (a scheduled lr, bias corrections:
        in float64, as torch computes them) and the per-entry rule, over hoisted scalars."""
        sym = UPDATE_SYMBOLS
        per_step = {sym["t"], sym["clip"], sym["rate"]}
        self.names = {sym["p"]: "p", sym["g"]: "g"}
        self.names.update({sp.Symbol(s, real=True): f"_st_{s}" for s in self.update.state})
        step_names = {sym["t"]: "tf", sym["clip"]: "clip", sym["rate"]: "rate"}
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

    def emit_helpers(self, out: Lines):
        """``update_entries`` (the rule over rows of one parameter, its gradient and its state;
        returns 0, or NaN if an updated entry is not finite) and ``sum_of_squares``: compiled
        once and called for every parameter."""
        printer = ScalarPrinter(self.names)
        states = [f"s_{s}" for s in self.update.state]
        out(JIT)
        with out.block(f"def update_entries({', '.join(['ps', 'gs', *states, *self.hoisted, 'r0', 'r1'])}):"):
            out.comment(f"{self.rule}, on rows r0 to r1")
            out("acc = DT(0.0)")
            with out.block("for i in range(r0, r1):"), out.block("for j in range(ps.shape[1]):"):
                out("p = ps[i, j]")
                out("g = gs[i, j]")
                for s in self.update.state:
                    out(f"_st_{s} = s_{s}[i, j]")
                for lhs, rhs in self.entry_steps:
                    out(f"{self.names[lhs]} = {printer.doprint(rhs)}")
                out("ps[i, j] = p")
                for s in self.update.state:
                    out(f"s_{s}[i, j] = _st_{s}")
                finite = " + ".join(["(p - p)", *(f"(_st_{s} - _st_{s})" for s in self.update.state)])
                out(f"acc += {finite}  # stays 0 while every entry is finite, else NaN")
            out("return acc")
        if self.update.clip_norm is not None:
            out()
            out()
            out(JIT)
            with out.block("def sum_of_squares(x):"):
                out("acc = 0.0")
                with out.block("for i in range(x.shape[0]):"), \
                        out.block("for j in range(x.shape[1]):"):
                    out("acc += x[i, j] * x[i, j]")
                out("return acc")


def generate(programs: dict[str, Program], update: Update | None, dtype):
    """The module text for ``programs`` (and ``train_epochs`` when ``update`` is given) and the
    :class:`Entry` of each kernel."""
    dtype = np.dtype(dtype)
    out = Lines()
    out(f'"""Generated by symnet (codegen version {CODEGEN_VERSION}) for {dtype.name}."""')
    out()
    out("import math")
    out()
    out("import numba as nb")
    out("import numpy as np")
    out()
    out("from codegen.intrinsics.blas import gemm_at")
    out("from codegen.intrinsics.fpmode import FTZ_DAZ, get_fpmode, set_fpmode")
    out("from codegen.intrinsics.opaque import opaque")
    out("from codegen.intrinsics.random import keep")
    out(f"from codegen.intrinsics.vecmath import exp{dtype.itemsize * 8} as vexp")
    out("from codegen.numba import runtime as rt")
    out()
    out(f"DT = np.{dtype.name}")
    out(f"FASTMATH = {FASTMATH}")
    out("STAGE = rt.stage(error_model='numpy', fastmath=FASTMATH)")
    entries = {}
    writers = {}
    for name, prog in programs.items():
        used: set[str] = set()
        ident = {b.name: identifier(b.name, used) for b in prog.buffers}
        writers[name] = KernelWriter(name, prog, layout(prog), ident)
        if name == TRAIN:
            continue  # its statements run inside train_epochs only
        out()
        out()
        entries[name] = entry_kernel(out, writers[name])
    if update is not None:
        out()
        out()
        step = TRAIN if TRAIN in programs else "loss_and_grad"
        loss = dict(programs[step].outputs)["loss"]
        entries["train_epochs"] = TrainWriter(writers[step], update, loss).emit(out)
    return out.text(), entries

