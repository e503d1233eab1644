"""Program → Plan: where each buffer lives, which instructions share a loop nest, how each piece
of work is cut for the thread team, and which of them run as one phase. Computed once and
immutable; :mod:`codegen.numba.emit` only prints it.

- **Layout.** Batch-shaped workspaces with at most ``MINOR`` columns are stored batch-minor
  (c×n), so that loops over the batch run along contiguous memory and vectorise; so are those
  with at least ``WIDE``, whose products OpenBLAS runs 10–20 % faster c×n (784→1024→1024,
  batch 512: 197–207 against 168–177 GFLOP/s, measured), unless a loop nest that cannot run
  batch-minor touches them. seed002's 32-wide layers trained 15 % slower batch-minor, hence the
  two bounds.
- **Groups.** Elementwise work over one iteration space (maps, row and column sums, small
  products, and products with a ``THIN`` side beside a wide one) fuses into one loop nest; a
  value used only inside it is never stored. Other products are BLAS calls.
- **Pieces.** A loop nest is cut along an axis no sum runs across (so each entry and each sum
  is computed as on one thread); a product into tiles of its output, each a one-thread BLAS
  call, so its rounding does not depend on the thread count either.
- **Phases.** Consecutive groups that do not depend on each other share a phase; a phase ends
  where the next group reads what it writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ..ir import BATCH, Instr, Op, Program

SMALL_GEMM = 64  # products whose fixed dimensions multiply to at most this are loops, not calls
THIN = 16  # and so are products with a side this thin beside a wide one (Layout.thin)
MINOR = 16  # batch-shaped workspaces with at most this many columns are stored batch-minor,
WIDE = 128  # and so are those with at least this many (layout)
NEST_PIECE = 8192  # entries of a loop nest per piece (~5–20 µs)
GEMM_PIECE = 500_000  # multiply-adds of a product per tile (~10 µs at one thread's rate);
# how thin and how many tiles: runtime.product_least


def dims(shape) -> tuple[str, str]:
    return tuple("n" if d == BATCH else str(d) for d in shape)


def narrow(d) -> bool:
    """Batch rows and at most MINOR fixed columns: stored and looped over batch-minor."""
    r, c = d
    return r == "n" and c != "n" and int(c) <= MINOR


def wide(d) -> bool:
    """Batch rows and at least WIDE fixed columns."""
    r, c = d
    return r == "n" and c != "n" and int(c) >= WIDE


def touched(group) -> set[str]:
    """The buffers a group of instructions reads or writes."""
    return {a for ins in group for a in (*ins.args, ins.out)}


@dataclass(frozen=True)
class Layout:
    """Which buffers are stored batch-minor and whether thin products join loop nests; with
    them, the iteration space of every instruction and the schedule of groups."""

    program: Program
    minor: frozenset[str]
    thin_ok: bool

    def shape(self, name) -> tuple[str, str]:
        return dims(self.program.buffer(name).shape)

    def inner(self, ins):
        return self.shape(ins.args[0])[0 if ins.trans[0] else 1]

    def small(self, ins) -> bool:
        r, c = self.shape(ins.out)
        return np.prod([int(d) for d in (r, c, self.inner(ins)) if d != "n"]) <= SMALL_GEMM

    def thin(self, ins) -> str | None:
        """Where a product with a thin side beside a wide one runs, if in a loop nest: "out" for
        an n×c output with many columns, each entry a sum of at most ``THIN`` terms (δ3·W3ᵀ
        through a 10-wide output layer), in the nest that reads it; "a" for an aᵀ·b summed over
        the batch with b at most ``THIN`` columns wide (A2ᵀ·δ3), in the nest over a. OpenBLAS
        ran wide's two at 81 and 45 GFLOP/s; in the nests they cost half as much (cycle
        counters). The mirror, Xᵀ·δ1 with X thin, stays a call: its sums would sit in the inner
        loop, which costs compile time. Only beside wide buffers stored batch-minor, and only if
        every nest they join runs its batch loop innermost (``thin_ok``)."""
        if ins.op is not Op.GEMM or self.small(ins) or not self.thin_ok:
            return None
        k = self.inner(ins)
        if k != "n":
            return "out" if int(k) <= THIN and self._wide_minor(ins.out) else None
        if ins.trans != (True, False):
            return None
        a, b = ins.args
        return "a" if int(self.shape(b)[1]) <= THIN and self._wide_minor(a) else None

    def _wide_minor(self, name) -> bool:
        return name in self.minor and wide(self.shape(name))

    def batch_sum(self, ins) -> bool:
        """A small aᵀ·b summed over the batch: fused into the loop over b, row by row."""
        return (ins.op is Op.GEMM and ins.trans == (True, False) and self.inner(ins) == "n"
                and self.small(ins))

    def space(self, ins):
        """The (rows, cols) a fusible instruction iterates over, or None if it is not fusible;
        remembered, as the scheduler asks for every pair of instructions."""
        spaces = self.__dict__.setdefault("_spaces", {})
        if ins not in spaces:
            spaces[ins] = self._space(ins)
        return spaces[ins]

    def _space(self, ins):
        side = self.thin(ins)
        if ins.op is Op.MAP or side == "out" or (
                ins.op is Op.GEMM and self.small(ins) and self.inner(ins) != "n"):
            return self.shape(ins.out)
        if ins.op in (Op.ROWSUM, Op.COLSUM) or self.batch_sum(ins):
            return self.shape(ins.args[-1])
        if side == "a":
            return self.shape(ins.args[0])
        return None

    def entrywise(self, ins) -> tuple[str, ...]:
        """The arguments an instruction reads only at its own loop position (i, j)."""
        if self.batch_sum(ins):
            return ins.args[1:]
        if self.thin(ins) == "a":
            return ins.args[:1]
        return () if ins.op is Op.GEMM else ins.args

    @cached_property
    def schedule(self) -> tuple[tuple[Instr, ...], ...]:
        """Groups of instructions in an order that respects every dependency: one non-fusible
        instruction, or fusible ones over the same iteration space, each reading values of its
        group only entry by entry (nobody reads a sum that is still accumulating)."""
        pending = list(self.program.instrs)
        done = {b.name for b in self.program.buffers if b.role != "temp"}
        groups = []
        while pending:
            first = pending.pop(0)
            space = self.space(first)
            group = [first]
            if space is not None:
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
            groups.append(tuple(group))
        return tuple(groups)

    def minor_nest(self, group) -> bool:
        """Whether the group's loop nest runs its batch loop innermost."""
        r, c = self.space(group[0])
        return narrow((r, c)) or (wide((r, c)) and all(
            a in self.minor for a in touched(group) if self.shape(a) == (r, c)))

    def gathered(self) -> Layout:
        """This layout as ``train_epochs`` uses it: it copies each batch's rows into the input
        buffers itself, so the narrow inputs (one-hot labels) are stored batch-minor too."""
        inputs = {b.name for b in self.program.buffers
                  if b.role == "input" and narrow(dims(b.shape))}
        return Layout(self.program, self.minor | inputs, self.thin_ok)


def layout(program: Program) -> Layout:
    """Choose the layout in two steps: which wide buffers to store batch-minor, with every thin
    product a call; then whether thin products can join the nests that layout gives."""
    outputs = {buf for _, buf in program.outputs}
    temps = [b for b in program.buffers if b.role == "temp" and b.name not in outputs]
    first = Layout(program, frozenset(b.name for b in temps if narrow(dims(b.shape))), False)
    minor = first.minor | _wide_minor(first, {b.name for b in temps if wide(dims(b.shape))})
    candidate = Layout(program, minor, True)
    thin_ok = all(candidate.minor_nest(g) for g in candidate.schedule
                  if any(candidate.thin(ins) for ins in g))
    return Layout(program, minor, thin_ok)


def _wide_minor(draft: Layout, wide_temps: set[str]) -> frozenset[str]:
    """The wide workspaces that can be stored batch-minor: a loop nest must run along
    contiguous memory of all it reads and writes, so a nest that touches a wide input or output
    (stored n×c), or an instruction that is neither a loop nest nor a product (logsumexp loops
    over rows), keeps the wide workspaces it touches n×c, and so on through the nests that
    share them."""
    rows = {b.name for b in draft.program.buffers
            if wide(dims(b.shape)) and b.name not in wide_temps}
    candidates = set(wide_temps)
    groups = [g for g in draft.schedule if g[0].op is not Op.GEMM or draft.space(g[0])]
    changed = True
    while changed:
        changed = False
        for group in groups:
            seen = touched(group)
            if (seen & rows or draft.space(group[0]) is None) and seen & candidates:
                rows |= seen & candidates
                candidates -= seen
                changed = True
    return frozenset(candidates)


# ------------------------------------------------------------------------------ pieces


@dataclass(frozen=True)
class Group:
    """One statement of a kernel: a loop nest (``space``), a BLAS call, or a loop over rows;
    ``split`` is the axis its pieces cut ("rows" or "cols" of its space, or of a product's
    stored output), or None for one piece."""

    instrs: tuple[Instr, ...]
    space: tuple[str, str] | None
    minor: bool
    split: str | None
    reads: frozenset[str] = field(default=frozenset())
    writes: frozenset[str] = field(default=frozenset())


def group_of(lay: Layout, instrs: tuple[Instr, ...]) -> Group:
    first = instrs[0]
    space = lay.space(first)
    reads = frozenset(a for ins in instrs for a in ins.args)
    writes = frozenset(ins.out for ins in instrs)
    if space is None:
        split = None
        if first.op is Op.GEMM and not lay.small(first):
            split = "call"  # tiles of the output: the emitter picks the side
        elif first.op in (Op.LOGSUMEXP, Op.TRANSPOSE):
            split = "rows"
        return Group(instrs, None, False, split, reads, writes)
    minor = lay.minor_nest(instrs)
    across_rows = any(ins.op is Op.COLSUM or lay.batch_sum(ins) or lay.thin(ins) == "a"
                      for ins in instrs)  # sums down each column
    across_cols = any(ins.op is Op.ROWSUM for ins in instrs)  # sums along each row
    order = ("cols", "rows") if minor else ("rows", "cols")  # the outer loop's axis first
    allowed = {"rows": not across_rows, "cols": not across_cols}
    split = next((axis for axis in order if allowed[axis]), None)
    return Group(instrs, space, minor, split, reads, writes)


def phases(groups: tuple[Group, ...]) -> tuple[tuple[int, ...], ...]:
    """Each group joins the earliest phase after every group it reads from (or would overwrite
    a value of): the team then takes the pieces of a phase's groups in any order, with no wait
    between them, and waits only where a value is needed. (δ2·W2ᵀ and A1ᵀ·δ2 both read δ2 and
    nothing of each other: one phase.)"""
    level: list[int] = []
    for k, g in enumerate(groups):
        after = [level[h] for h, other in enumerate(groups[:k])
                 if g.reads & other.writes or g.writes & (other.writes | other.reads)]
        level.append(1 + max(after, default=-1))
    return tuple(tuple(k for k, lv in enumerate(level) if lv == phase)
                 for phase in range(max(level, default=-1) + 1))


@dataclass(frozen=True)
class Plan:
    """A kernel's groups in schedule order and its phases (indices into ``groups``)."""

    layout: Layout
    groups: tuple[Group, ...]
    phases: tuple[tuple[int, ...], ...]


def plan(lay: Layout) -> Plan:
    groups = tuple(group_of(lay, g) for g in lay.schedule)
    return Plan(lay, groups, phases(groups))
