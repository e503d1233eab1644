"""Scaling sweep: epoch time against batch size (16…1024) and hidden width (32…2048) for
symnet, the hand-written numba kernel, PyTorch and JAX (scan), with the GEMM roofline — the
epoch's GEMM FLOPs at the sgemm rate np.dot reaches on the same shapes — as the floor.

    python -m benchmarks.sweep [--peers symnet,numba,torch,jax-scan] [--repeat N] [--out DIR]

The workload is seed002's maths (sigmoid, per-row SSE, AdaGrad) on the first 10 000
Fashion-MNIST training images; each point runs in its own process with 2 threads. With
--repeat N the whole sweep runs N times over, and a point's time is the median of all its steady
epochs (as in ``benchmarks.run``); its sgemm rate is measured in every pass, and the best kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .peers import PEERS
from .run import child_env
from .workloads import WORKLOADS, flops_per_epoch, initial_params, load_data

ROWS = 10_000
BATCHES = (16, 64, 256, 1024)
WIDTHS = (32, 128, 512, 2048)


def workload(batch, width):
    return dataclasses.replace(WORKLOADS["seed002"], name=f"sweep-b{batch}-w{width}",
                               sizes=(784, width, width, 10), batch=batch, epochs=3)


def child(peer, batch, width):
    w = workload(batch, width)
    Xtr, Ytr, Xte, Yte = load_data(w)
    result = importlib.import_module(PEERS[peer]).train(w, (Xtr[:ROWS], Ytr[:ROWS]),
                                                        initial_params(w))
    return result["round_s"][1:]


def gemm_rate(batch, width, repeats=5):
    """FLOP/s of np.dot on this point's largest forward and backward products (float32), each
    timed at its best of ``repeats``: the floor is what BLAS can reach, not its average."""
    rng = np.random.default_rng(0)
    shapes = [(batch, 784, width), (784, batch, width), (batch, width, width)]
    flops, seconds = 0.0, 0.0
    for m, k, n in shapes:
        a = rng.random((m, k), dtype=np.float32)
        b = rng.random((k, n), dtype=np.float32)
        np.dot(a, b)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            np.dot(a, b)
            best = min(best, time.perf_counter() - start)
        seconds += best
        flops += 2.0 * m * k * n
    return flops / seconds


def run_child(peer, batch, width) -> list[float] | None:
    """The steady epochs of one (peer, point) in a fresh process with cold JIT caches."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.sweep", "--child", peer, str(batch),
                           str(width)], env=child_env(tempfile.mkdtemp(prefix="symnet-sweep-")),
                          capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", default="symnet,numba,torch,jax-scan")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--repeat", type=int, default=1, help="run the sweep this many times over")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        peer, batch, width = args.child
        print(json.dumps(child(peer, int(batch), int(width))))
        return 0
    points = [(b, 32) for b in BATCHES] + [(100, w) for w in WIDTHS]
    peers = args.peers.split(",")
    # the sgemm rate is measured beside each point in every pass, and the best kept: measured
    # once, a slow spell of the machine at that moment would put the floor above the peers
    rate = dict.fromkeys(points, 0.0)
    steady = {(batch, width, peer): [] for batch, width in points for peer in peers}
    for _ in range(max(args.repeat, 1)):
        for batch, width in points:
            rate[batch, width] = max(rate[batch, width], gemm_rate(batch, width))
            for peer in peers:
                rounds = run_child(peer, batch, width)
                steady[batch, width, peer] += rounds or []
                print(f"batch {batch:5} width {width:5} {peer:10} {rounds}", file=sys.stderr)
    rows = []
    for batch, width in points:
        row = {"batch": batch, "width": width,
               "roofline_s": flops_per_epoch(workload(batch, width), ROWS) / rate[batch, width]}
        for peer in peers:
            found = steady[batch, width, peer]
            row[peer] = statistics.median(found) if found else None
        rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(rows, indent=1))
    plot(rows, peers, out / "sweep.png")
    return 0


def plot(rows, peers, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, fixed in ((axes[0], "batch", ("width", 32)), (axes[1], "width", ("batch", 100))):
        sel = sorted((r for r in rows if r[fixed[0]] == fixed[1]), key=lambda r: r[key])
        xs = [r[key] for r in sel]
        for peer in peers:
            ax.plot(xs, [r.get(peer) or np.nan for r in sel], marker="o", label=peer,
                    color="tab:red" if peer == "symnet" else None)
        ax.plot(xs, [r["roofline_s"] for r in sel], "k--", label="GEMM roofline")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"{key} ({fixed[0]} {fixed[1]})")
        ax.set_ylabel(f"epoch time, {ROWS} rows (s)")
    axes[0].legend(fontsize=8)
    fig.suptitle("seed002 maths: epoch time against batch size and hidden width")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
