"""One thread's time for the products of a training step, cut into tiles in different ways.

    python -m benchmarks.tiles [--shapes wide,adam-relu] [--repeat 5] [--steps 20]

Each product runs as the generated kernels run it, a one-thread BLAS call per tile
(``gemm_at``), one tile after another on one thread: the sum is the thread time a step's
products cost the team, and every way of cutting them does the same arithmetic. Each tile
packs the operand it shares with the other tiles again, so the ways differ in that copying:

- ``kernels``: what the kernels do (``emit.cut_rows``, ``protocol.tile`` and
  ``protocol.product_least``): cut the longer side into at most 4 tiles;
- ``batch side``: cut the batch's side whenever it has one (the rule before 2026-12-05),
  into as many tiles as the kernels' rule gives that side;
- ``8 tiles``: the longer side, into at most 8 tiles (the limit before 2026-12-05);
- ``one call``: no tiles; the floor.

The products are those of the shape's ``loss_and_grad`` program as the kernels store them
(batch-minor buffers transposed), with the shape's batch. Each pass runs every (product, way)
``--steps`` times; a figure is the median over ``--repeat`` passes of the per-step time, with
its min–max. Shapes: those of benchmarks.threads.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from .threads import SHAPES

WAYS = ("kernels", "batch side", "8 tiles", "one call")


def products(name: str) -> list[tuple]:
    """(note, ta, tb, r, c, k, batch_rows) of each product the shape's kernels tile, sizes as
    numbers; ``batch_rows``: whether the batch is its rows (None: neither side is)."""
    from codegen.numba import emit, plan

    from .peers import symnet_peer

    w = SHAPES[name]
    model = symnet_peer.build(w)
    program = model._programs["loss_and_grad"]
    p = plan.plan(plan.layout(program))
    writer = emit.KernelWriter("k", program, p.layout, {})
    found = []
    for g in p.groups:
        if g.split == "call":
            (r, c), k, (_, ta, _, tb) = writer.stored_product(g.instrs[0])
            batch_rows = (r == "n") if "n" in (r, c) else None
            r, c, k = (w.batch if d == "n" else int(d) for d in (r, c, k))
            found.append((g.instrs[0].note, ta, tb, r, c, k, batch_rows))
    return found


def grid(way: str, r: int, c: int, k: int, batch_rows: bool | None) -> tuple[int, int]:
    """(row tiles, column tiles) of an r×c product with inner dimension k, cut ``way``;
    ``batch_rows``: whether the batch is its rows (None: no batch side)."""
    from codegen.numba import plan, protocol

    if way == "one call":
        return 1, 1
    rows = r >= c if way != "batch side" or batch_rows is None else batch_rows
    length = r if rows else c
    least = protocol.product_least(length)
    if way == "8 tiles":
        least = max(128 if length >= 256 else 64 if length >= 128 else 16, length // 8)
    size = protocol.tile(length, r * c * k, plan.GEMM_PIECE, least)
    count = -(-length // size)
    return (count, 1) if rows else (1, count)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="wide,adam-relu")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)

    import numba as nb

    from codegen.intrinsics.blas import gemm_at

    @nb.njit
    def tiled(ta, a, tb, b, out, r, c, k, tr, tc, steps):
        rows, cols = -(-r // tr), -(-c // tc)
        for _ in range(steps):
            for i0 in range(0, r, rows):
                for j0 in range(0, c, cols):
                    gemm_at(ta, a, tb, b, out, np.float32(1), np.float32(0), min(rows, r - i0),
                            min(cols, c - j0), k, i0, j0)

    rng = np.random.default_rng(0)
    for name in args.shapes.split(","):
        print(f"\n{name}: ms of one thread per step, median (min–max) of {args.repeat} passes\n")
        print(f"| product (stored r×c, inner k) | {' | '.join(WAYS)} |")
        print("|---" * (len(WAYS) + 1) + "|")
        totals = {way: [0.0] * args.repeat for way in WAYS}
        for note, ta, tb, r, c, k, batch_rows in products(name):
            a = rng.standard_normal((k, r) if ta else (r, k)).astype(np.float32)
            b = rng.standard_normal((c, k) if tb else (k, c)).astype(np.float32)
            out = np.empty((r, c), np.float32)
            grids = {way: grid(way, r, c, k, batch_rows) for way in WAYS}
            tiled(ta, a, tb, b, out, r, c, k, 1, 1, 1)
            times = {way: [] for way in WAYS}
            for rep in range(args.repeat):
                for way in WAYS:
                    start = time.perf_counter()
                    tiled(ta, a, tb, b, out, r, c, k, *grids[way], args.steps)
                    times[way].append(1e3 * (time.perf_counter() - start) / args.steps)
                    totals[way][rep] += times[way][-1]
            cells = [f"{statistics.median(times[w]):.2f} ({min(times[w]):.2f}–"
                     f"{max(times[w]):.2f}) {grids[w][0]}×{grids[w][1]}" for w in WAYS]
            print(f"| {note} ({r}×{c}, {k}) | {' | '.join(cells)} |")
        cells = [f"**{statistics.median(totals[w]):.2f}** ({min(totals[w]):.2f}–"
                 f"{max(totals[w]):.2f})" for w in WAYS]
        print(f"| all | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
