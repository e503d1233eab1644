"""Cold compile and epoch time against depth: 2, 4, 8, 16 and 24 hidden layers of 64 units.

    python -m benchmarks.depth [--depths 2,4,8,16,24] [--backends numba,numpy] [--epochs 3]
                               [--dropout P] [--norm] [--out DIR]

Each network is 784-64×depth-10 with ReLU, softmax cross-entropy, Adam (lr 1e-3) and batch
128 on Fashion-MNIST, from He-normal weights; ``--dropout P`` adds dropout of rate P after
every hidden activation, ``--norm`` a batch norm before every hidden activation (what reads
its pre-activation three times, so a walk that treats the network as a tree costs 4 × more a
layer). Each (depth, backend) runs in a fresh process
with an empty kernel cache (``SYMNET_CACHE_DIR`` and ``NUMBA_CACHE_DIR`` in a new temporary
directory) and benchmarks.run's thread settings. Cold compile is the seconds from the
declaration to the first trained step on a throwaway model (benchmarks.run's setup_s); then
the measured model trains --epochs rounds of one ``fit(..., epochs=1)`` call each, and its
epoch is the median of the rounds after the first (min–max beside it). The numpy backend, the
reference interpreter, is timed the same way for comparison. A child that fails is reported
with its error in the table. Writes a markdown table to stdout and DIR/depth.md, and
DIR/depth.json (default benchmarks/results/; depth-dropout.md, depth-norm.md and their .json with
``--dropout``, ``--norm``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path

from .run import child_env, machine_info, run_child
from .workloads import WORKLOADS, initial_params, load_data


def workload(depth: int, epochs: int = 3, dropout: float = 0.0, norm: bool = False):
    return dataclasses.replace(WORKLOADS["adam-relu"], name=f"depth-{depth}",
                               sizes=(784, *[64] * depth, 10), batch=128, epochs=epochs,
                               dropout=(dropout,) * depth if dropout else (), norm=norm)


def child(depth: int, backend: str, epochs: int, dropout: float, norm: bool) -> dict:
    """Inside the child: cold setup and the measured rounds of one (depth, backend)."""
    from .peers import symnet_peer

    w = workload(depth, epochs, dropout, norm)
    result = symnet_peer.train(w, load_data(w), initial_params(w), backend=backend)
    return {"setup_s": result["setup_s"], "round_s": result["round_s"]}


def measure(depth: int, backend: str, epochs: int, dropout: float = 0.0,
            norm: bool = False) -> dict:
    """One (depth, backend) in a fresh process on an empty kernel cache."""
    with tempfile.TemporaryDirectory(prefix="symnet-depth-") as cache:
        r = run_child(["benchmarks.depth", "--child", str(depth), backend, str(epochs),
                       str(dropout), str(int(norm))], child_env(cache))
    row = {"depth": depth, "backend": backend, **r}
    steady = r.get("round_s", [])[1:]
    if steady:
        row.update(epoch_s=statistics.median(steady), min_s=min(steady), max_s=max(steady))
    return row


def cells(row: dict | None) -> list[str]:
    """Setup and epoch cells of one (depth, backend): seconds, or the child's error."""
    if row is None:
        return ["n/a", "n/a"]
    if "error" in row:
        return [f"error: {row['error']}", ""]
    epoch = (f"{row['epoch_s']:.4g} ({row['min_s']:.4g}–{row['max_s']:.4g})"
             if "epoch_s" in row else "n/a")
    return [f"{row['setup_s']:.2f}", epoch]


def markdown(rows: list[dict], backends: list[str], dropout: float = 0.0,
             norm: bool = False) -> str:
    head = [h for b in backends for h in (f"{b}: cold setup, s", f"{b}: epoch, s")]
    relu = "batch norm, ReLU" if norm else "ReLU"
    relu += f" and dropout {dropout:g}" if dropout else ""
    lines = [f"784-64×depth-10, {relu}, softmax CE, Adam, batch 128, Fashion-MNIST; a fresh "
             "process on an empty kernel cache each. Epoch: median (min–max) of the steady "
             "rounds.", "",
             f"| hidden layers | {' | '.join(head)} |", "|---" * (len(head) + 1) + "|"]
    for depth in dict.fromkeys(r["depth"] for r in rows):
        by_backend = {r["backend"]: r for r in rows if r["depth"] == depth}
        found = [c for b in backends for c in cells(by_backend.get(b))]
        lines.append(f"| {depth} | {' | '.join(found)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="2,4,8,16,24")
    parser.add_argument("--backends", default="numba,numpy")
    parser.add_argument("--epochs", type=int, default=3, help="rounds per child (at least 2)")
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="dropout rate after every hidden activation (default: none)")
    parser.add_argument("--norm", action="store_true",
                        help="a batch norm before every hidden activation")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        depth, backend, epochs, dropout, norm = args.child
        print(json.dumps(child(int(depth), backend, int(epochs), float(dropout), norm == "1")))
        return 0
    backends = args.backends.split(",")
    if args.epochs < 2 or not set(backends) <= {"numba", "numpy"}:
        parser.error("--epochs must be at least 2, and --backends numba and/or numpy")
    if not 0 <= args.dropout < 1:
        parser.error("--dropout must be at least 0 and below 1")
    rows = []
    for depth in (int(d) for d in args.depths.split(",")):
        for backend in backends:
            rows.append(measure(depth, backend, args.epochs, args.dropout, args.norm))
            status = rows[-1].get("error") or rows[-1].get("round_s")
            print(f"{depth:3} hidden layers  {backend:6} {status}", file=sys.stderr)
    text = markdown(rows, backends, args.dropout, args.norm)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "depth" + ("-norm" if args.norm else "") + ("-dropout" if args.dropout else "")
    (out / f"{stem}.md").write_text(text)
    machine = {**machine_info(), "threads": 2, "epochs": args.epochs, "dropout": args.dropout,
               "norm": args.norm}
    (out / f"{stem}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
