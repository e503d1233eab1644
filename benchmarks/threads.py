"""Epoch time against symnet's thread count, and whether the thread count changes the numbers.

    python -m benchmarks.threads [--threads 1,2,4] [--shapes seed002,tiny,512x3-b64] [--repeat 3]
                                 [--epochs 4] [--load] [--var SYMNET_NUM_THREADS] [--out DIR]

Shapes: the four workloads of benchmarks.run and two they do not use, 784-512-512-512-10 at
batch 64 (``512x3-b64``) and eight hidden layers of 64 at batch 256 (``64x8-b256``), both with
adam-relu's maths on Fashion-MNIST. Each shape's kernels are compiled once, in a process of its
own, into a kernel cache that its measured children then load. Each (shape, thread count)
trains in a fresh process with ``SYMNET_NUM_THREADS`` (or ``--var``) set to the count and
the rest of this environment inherited; a pass runs every (shape, count) in turn, and --repeat
passes follow one another, so a machine whose speed drifts meets every count alike. A child
trains from the shared initial parameters, one ``fit`` call per round as benchmarks.run times
symnet (an epoch; tiny: 1000 full-batch steps). A count's figure is the median of the steady
rounds (every child's rounds after its first) of all passes, with their min–max.

After its second round each child saves its parameters to an .npz; the parent compares every
child's with the first child's of the same shape with ``np.array_equal`` and reports, loudly,
any array that differs (exit status 1). With --load, one CPU-bound process runs beside the
whole run. Writes a markdown table to stdout and DIR/threads.md, and DIR/threads.json
(default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from .busy import DESCRIPTION, busy_neighbour
from .run import machine_info, run_child
from .workloads import WORKLOADS, initial_params, layers, load_data

SHAPES = {**WORKLOADS, **{w.name: w for w in [
    dataclasses.replace(WORKLOADS["adam-relu"], name="512x3-b64", sizes=(784, 512, 512, 512, 10),
                        batch=64),
    dataclasses.replace(WORKLOADS["adam-relu"], name="64x8-b256", sizes=(784, *[64] * 8, 10),
                        batch=256)]}}
PARITY_ROUND = 2  # the parameters compared are those after this many rounds


def child(name: str, epochs: int, npz: str) -> dict:
    """Inside a measured child: train ``epochs`` rounds, save the parameters after the second."""
    from .peers import symnet_peer

    w = dataclasses.replace(SHAPES[name], epochs=epochs)
    Xtr, Ytr = load_data(w)[:2]
    model = symnet_peer.measured_model(w, initial_params(w))
    rounds = []
    for r in range(w.epochs):
        rounds.append(symnet_peer.fit_round(model, w, Xtr, Ytr, r))
        if r + 1 == PARITY_ROUND:
            np.savez(npz, **model.params)
    return {"round_s": rounds}


def warm(name: str) -> dict:
    """Inside the first child of a shape: compile its kernels into the (empty) cache."""
    from .peers import symnet_peer

    w = SHAPES[name]
    return {"cold_setup_s": symnet_peer.setup(w, load_data(w))[0]}


def differences(reference: dict, other: dict) -> list[str]:
    """Names of the arrays that are not bit for bit the same in both (np.array_equal), a name
    only one of them has included."""
    return sorted(k for k in reference.keys() | other.keys()
                  if k not in reference or k not in other
                  or not np.array_equal(reference[k], other[k]))


def parity(saved: dict[str, dict]) -> dict:
    """Compare every run's parameters (``{label: {name: array}}``, in run order) with the first
    run's: ``{"identical", "compared", "mismatches": [one line per run that differs]}``."""
    if len(saved) < 2:
        return {"identical": None, "compared": len(saved), "mismatches": []}
    (first, ref), *rest = saved.items()
    mismatches = []
    for label, params in rest:
        names = differences(ref, params)
        if names:
            gap = max((float(np.max(np.abs(ref[k].astype(np.float64) - params[k])))
                       for k in names if k in ref and k in params
                       and ref[k].shape == params[k].shape), default=float("nan"))
            mismatches.append(f"{label} differs from {first}: {', '.join(names)} "
                              f"(max |Δ| {gap:.3g})")
    return {"identical": not mismatches, "compared": len(saved), "mismatches": mismatches}


def cell(row: dict) -> str:
    """``median (min–max)`` of a (shape, threads) row's steady rounds, or its error."""
    if not row.get("steady_s"):
        return f"error: {row['errors'][0]}" if row.get("errors") else "n/a"
    return f"{row['median_s']:.4g} ({row['min_s']:.4g}–{row['max_s']:.4g})"


def markdown(rows: list[dict], checks: dict, threads: list[int], var: str, load: bool) -> str:
    """The table: one line per shape, a column per thread count, and the parameter check."""
    lines = [f"Steady round, s: median (min–max) over all passes; {var} = the column's count; "
             f"an epoch, tiny 1000 full-batch steps."
             + (f" Under load: {DESCRIPTION}." if load else ""), "",
             f"| shape | batch | {' | '.join(f'{t} thread' + 's' * (t > 1) for t in threads)} "
             f"| parameters after {PARITY_ROUND} rounds |",
             "|---" * (len(threads) + 3) + "|"]
    for name in dict.fromkeys(r["shape"] for r in rows):
        by_t = {r["threads"]: r for r in rows if r["shape"] == name}
        first = next(iter(by_t.values()))
        check = checks[name]
        verdict = ("not compared" if check["identical"] is None else
                   f"identical in {check['compared']} runs" if check["identical"] else
                   f"**DIFFER** in {len(check['mismatches'])} of {check['compared']} runs")
        lines.append(f"| {name} ({layers(first['sizes'])}) | {first['batch']} | "
                     f"{' | '.join(cell(by_t[t]) for t in threads)} | {verdict} |")
    mismatches = [m for name in checks for m in checks[name]["mismatches"]]
    if mismatches:
        lines += ["", "**Parameters differ between runs:**", ""] + [f"- {m}" for m in mismatches]
    return "\n".join(lines) + "\n"


def summarise(name: str, t: int, runs: list[dict]) -> dict:
    """One (shape, thread count) over all passes: its steady rounds pooled, and any errors."""
    steady = [x for r in runs if "round_s" in r for x in r["round_s"][1:]]
    w = SHAPES[name]
    row = {"shape": name, "sizes": list(w.sizes), "batch": w.batch or "full", "threads": t,
           "steady_s": steady, "rounds_s": [r.get("round_s") for r in runs],
           "errors": [r["error"] for r in runs if "error" in r]}
    if steady:
        row.update(median_s=statistics.median(steady), min_s=min(steady), max_s=max(steady))
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2,4")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--repeat", type=int, default=3, help="passes over every (shape, count)")
    parser.add_argument("--epochs", type=int, default=4, help="rounds per child (at least 2)")
    parser.add_argument("--var", default="SYMNET_NUM_THREADS",
                        help="the variable set to the thread count (e.g. OPENBLAS_NUM_THREADS)")
    parser.add_argument("--load", action="store_true",
                        help="run a CPU-bound process beside the whole run")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--warm", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.child[2])))
        return 0
    if args.warm:
        print(json.dumps(warm(args.warm)))
        return 0
    threads = [int(t) for t in args.threads.split(",")]
    shapes = args.shapes.split(",")
    if [s for s in shapes if s not in SHAPES] or args.epochs < PARITY_ROUND or min(threads) < 1:
        parser.error(f"shapes are {list(SHAPES)}, --epochs at least {PARITY_ROUND}, threads ≥ 1")
    runs = {(s, t): [] for s in shapes for t in threads}
    saved = {s: {} for s in shapes}
    with tempfile.TemporaryDirectory(prefix="symnet-threads-") as tmp, busy_neighbour(args.load):
        env = {s: {**os.environ, "SYMNET_CACHE_DIR": f"{tmp}/{s}",
                   "NUMBA_CACHE_DIR": f"{tmp}/{s}/numba"} for s in shapes}
        warmed = {s: run_child(["benchmarks.threads", "--warm", s], env[s]) for s in shapes}
        for p in range(max(args.repeat, 1)):
            for s in (s for s in shapes if "error" not in warmed[s]):
                for t in threads:
                    npz = f"{tmp}/{s}-{t}-{p}.npz"
                    r = run_child(["benchmarks.threads", "--child", s, str(args.epochs), npz],
                                  {**env[s], args.var: str(t)})
                    runs[s, t].append(r)
                    if "error" not in r:
                        with np.load(npz) as f:
                            saved[s][f"threads {t} pass {p + 1}"] = dict(f)
                    print(f"pass {p + 1} {s:10} {t} threads  {r.get('error') or r['round_s']}",
                          file=sys.stderr)
    for s in shapes:  # a shape whose compile failed: its error in every cell
        if "error" in warmed[s]:
            for t in threads:
                runs[s, t].append({"error": f"compiling: {warmed[s]['error']}"})
    rows = [summarise(s, t, runs[s, t]) for s in shapes for t in threads]
    checks = {s: parity(saved[s]) for s in shapes}
    text = markdown(rows, checks, threads, args.var, args.load)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "threads.md").write_text(text)
    machine = {**machine_info(), "var": args.var, "repeat": args.repeat, "epochs": args.epochs,
               "load": DESCRIPTION if args.load else None}
    (out / "threads.json").write_text(json.dumps(
        {"machine": machine, "rows": rows, "parity": checks, "warm": warmed}, indent=1))
    print(text)
    if any(c["identical"] is False for c in checks.values()):
        print("PARAMETERS DIFFER BETWEEN THREAD COUNTS (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
