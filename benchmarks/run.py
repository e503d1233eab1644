"""Run the benchmarks: each (workload, peer) in its own process with 2 threads and cold JIT
caches, then a table of ratios to symnet.

    symnet bench [--workload seed002,tiny] [--peers symnet,numba,torch] [--repeat 3] [--out DIR]
                 [--load]
    python -m benchmarks.run ...   (the same)

With --repeat N, each workload's peers run N times in turn (A B C A B C ...), and a peer's
steady epoch time is the median of all its steady epochs: on a machine whose speed drifts (a
shared host), every peer then meets the slow and the fast periods alike.

With --load, one CPU-bound process (python -c "while True: pass") runs beside the whole run,
from before the first measured child to the end; results.json's machine info and results.md say
so.

Results go to DIR/results.json, DIR/results.md and DIR/*.png (default ./symnet-bench, so that
a run never overwrites the committed results in benchmarks/results/: pass --out for those).
A peer that is not installed, or cannot express a workload, is reported as such.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .busy import DESCRIPTION, busy_neighbour
from .peers import PEERS
from .workloads import WORKLOADS, initial_params, load_data

THREADS = {k: "2" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                            "NUMBA_NUM_THREADS", "SYMNET_NUM_THREADS")}
THREADS["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=2"


def metric(w, params, X, Y, running=None):
    """Test accuracy (classification) or final training loss, by one NumPy forward pass: batch
    norm on the ``running`` statistics, dropout the identity."""
    h = X.astype(np.float64)
    L = len(w.sizes) - 1
    for k in range(1, L + 1):
        h = h @ params[f"W{k}"].astype(np.float64) + params[f"b{k}"]
        if k < L:
            if w.norm:
                mean, var = running[f"running_mean{k}"], running[f"running_var{k}"]
                h = (h - mean) / np.sqrt(var + 1e-5) * params[f"gamma{k}"] + params[f"beta{k}"]
            h = np.maximum(h, 0) if w.activation == "relu" else 1 / (1 + np.exp(-h))
        elif w.output == "sigmoid":
            h = 1 / (1 + np.exp(-h))
    if w.classification:
        return float(np.mean(h.argmax(1) == Y.argmax(1)))
    return float(np.mean((h - Y) ** 2))


def grad_agreement(w, peer, data, params):
    """Max relative difference of the peer's float64 gradients from symnet's on one batch."""
    if not hasattr(peer, "grads"):
        return None  # (with dropout, on the loss without it: the peers' masks differ)
    from .peers import symnet_peer

    B = min(w.batch or len(data[0]), 64)
    X, Y = (a[:B].astype(np.float64) for a in data[:2])
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    ours, theirs = symnet_peer.grads(w, p64, X, Y), peer.grads(w, p64, X, Y)
    # a bias before a batch norm has a gradient of 0 up to rounding: against 1e-6 of the
    # largest gradient, not against its own rounding noise
    floor = 1e-6 * max(float(np.max(np.abs(g))) for g in ours.values())
    return max(float(np.max(np.abs(ours[k] - theirs[k])) / max(np.max(np.abs(ours[k])), floor))
               for k in ours)


def run_one(workload: str, peer_name: str) -> dict:
    """Inside the child process: train and measure one (workload, peer)."""
    w = WORKLOADS[workload]
    peer = importlib.import_module(PEERS[peer_name])
    reason = peer.applicable(w) if hasattr(peer, "applicable") else None
    if reason:
        return {"workload": workload, "peer": peer_name, "missing": reason}
    data = load_data(w)
    params0 = initial_params(w)
    result = peer.train(w, data, params0)
    rounds = result.pop("round_s")
    params = result.pop("params")
    running = result.pop("running", None)
    out = {"workload": workload, "peer": peer_name, **result,
           "first_epoch_s": rounds[0], "epoch_s": statistics.median(rounds[1:]),
           "rounds_s": rounds, "metric": metric(w, params, *data[2:], running),
           "metric_name": "test accuracy" if w.classification else "final loss",
           "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if peer_name != "symnet":
        out["grad_rel_diff"] = grad_agreement(w, peer, data, params0)
    return out


def child_env(cache_dir: str) -> dict[str, str]:
    """The environment of a measured child process: 2 threads everywhere, and its JIT caches
    (symnet's generated modules and numba's machine code) in ``cache_dir``."""
    return {**os.environ, **THREADS, "SYMNET_CACHE_DIR": cache_dir,
            "NUMBA_CACHE_DIR": os.path.join(cache_dir, "numba")}


def run_child(args: list[str], env: dict[str, str]) -> dict:
    """``python -m *args`` in a fresh process: the JSON of its last line of output, or
    ``{"error": its last line of stderr}`` if it failed."""
    proc = subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["(no output)"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spawn(workload, peer, cache_dir=None) -> dict:
    """Run one (workload, peer) in a fresh process; ``cache_dir`` reuses JIT caches, else they
    start empty."""
    env = child_env(cache_dir or tempfile.mkdtemp(prefix="symnet-bench-"))
    r = run_child(["benchmarks.run", "--child", workload, peer], env)
    return {"workload": workload, "peer": peer, **r} if "error" in r else r


def pool(runs: list[dict]) -> dict:
    """One result from repeated runs of a (workload, peer): the median of every run's steady
    epochs, the median setup and first epoch, the largest peak memory."""
    ok = [r for r in runs if "error" not in r and "missing" not in r]
    if len(ok) < 2:
        return (ok or runs)[0]
    pooled = dict(ok[0])
    pooled.update(
        epoch_s=statistics.median(x for r in ok for x in r["rounds_s"][1:]),
        first_epoch_s=statistics.median(r["first_epoch_s"] for r in ok),
        setup_s=statistics.median(r["setup_s"] for r in ok),
        peak_mb=max(r["peak_mb"] for r in ok),
        all_rounds_s=[x for r in ok for x in r["rounds_s"]],  # rounds_s stays the first run's
        epoch_s_per_run=[r["epoch_s"] for r in ok])
    return pooled


def available(peer) -> str | None:
    """None if the peer can be imported, else why not."""
    module = PEERS[peer]
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                          text=True)
    return None if proc.returncode == 0 else proc.stderr.strip().splitlines()[-1]


# The targets: symnet's steady epoch ÷ the fastest other peer's, at most; beside a busy
# process (--load), ÷ JAX's scan's.
TARGETS = {"seed002": 0.75, "adam-relu": 0.9, "wide": 1.0, "tiny": 0.6, "bn-dropout": 0.9}
LOAD_TARGETS = {"seed002": 1.0, "adam-relu": 1.0}


def _num(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def summary(results, targets=TARGETS) -> str:
    """Steady epoch time of every peer per workload (tiny per 1000 full-batch steps, in ms), the
    fastest in bold, and symnet's time over the fastest other peer's against its target."""
    workloads = list(dict.fromkeys(r["workload"] for r in results))
    peers = list(dict.fromkeys(r["peer"] for r in results))
    lines = [f"| workload | {' | '.join(peers)} | symnet ÷ fastest other |",
             "|---" * (len(peers) + 2) + "|"]
    for workload in workloads:
        scale = 1000 if workload == "tiny" else 1
        times = {r["peer"]: r["epoch_s"] * scale for r in results
                 if r["workload"] == workload and "epoch_s" in r}
        best = min(times.values(), default=None)
        cells = [("n/a" if p not in times else
                  f"**{_num(times[p])}**" if times[p] == best else _num(times[p])) for p in peers]
        others = {p: t for p, t in times.items() if p != "symnet"}
        ratio = ""
        if "symnet" in times and others:
            rival = min(others, key=others.get)
            ratio = f"**{times['symnet'] / others[rival]:.2f}** ({rival}"
            ratio += f"; target ≤ {targets[workload]})" if workload in targets else ")"
        lines.append(f"| {workload} | {' | '.join(cells)} | {ratio} |")
    return "\n".join(lines) + "\n"


def setup_summary(results, peers=("symnet", "numba", "torch", "jax", "jax-scan", "pytensor",
                                   "pytensor-numba")) -> str:
    """Setup seconds, declaration to the first trained step, of the JIT peers (symnet: cold /
    warm kernel cache), and how many times faster symnet's cold setup is than PyTensor NUMBA's.
    Only the peers the run measured have a column: n/a is a peer that cannot run a workload."""
    ran = {r["peer"] for r in results}
    peers = tuple(p for p in peers if p in ran)
    lines = [f"| workload | {' | '.join(peers)} | pytensor-numba ÷ symnet |",
             "|---" * (len(peers) + 2) + "|"]
    for workload in dict.fromkeys(r["workload"] for r in results):
        rows = {r["peer"]: r for r in results if r["workload"] == workload and "setup_s" in r}
        cells = [f"{rows[p]['setup_s']:.2f}" if p in rows else "n/a" for p in peers]
        if "symnet" in rows and "cached_setup_s" in rows["symnet"]:
            cells[peers.index("symnet")] += f" / {rows['symnet']['cached_setup_s']:.2f}"
        speedup = (f"{rows['pytensor-numba']['setup_s'] / rows['symnet']['setup_s']:.1f} ×"
                   if "symnet" in rows and "pytensor-numba" in rows else "")
        lines.append(f"| {workload} | {' | '.join(cells)} | {speedup} |")
    return "\n".join(lines) + "\n"


def markdown(machine, results) -> str:
    """results.md: the machine (and the load beside the run), the two summaries and the full
    per-workload tables."""
    load = f"Under load: {machine['load']}.\n\n" if machine.get("load") else ""
    return (f"Machine: {machine}\n\n{load}Steady epoch time, s (tiny: ms per 1000 steps):\n\n"
            + summary(results, LOAD_TARGETS if machine.get("load") else TARGETS)
            + "\nSetup, s (symnet: cold / warm kernel cache):\n\n"
            + setup_summary(results) + "\n" + table(results))


def machine_info() -> dict:
    """Platform, CPU, core count, Python, the BLAS symnet's kernels call, and any OPENBLAS_*
    settings of this environment."""
    from codegen.intrinsics import blas

    return {"platform": platform.platform(), "cpu": cpu_name(), "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "symnet_blas": blas.describe(),
            **{k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "SYMNET_BLAS"))}}


def cpu_name() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def table(results) -> str:
    lines = []
    for workload in dict.fromkeys(r["workload"] for r in results):
        rows = [r for r in results if r["workload"] == workload]
        ours = next((r for r in rows if r["peer"] == "symnet" and "error" not in r), None)
        lines += [f"### {workload}", "",
                  "| peer | setup s | first epoch s | epoch s | × symnet | metric | peak MB | "
                  "max grad rel. diff |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "error" in r or "missing" in r:
                lines.append(f"| {r['peer']} | {r.get('missing') or r['error']} |||||||")
                continue
            ratio = f"{r['epoch_s'] / ours['epoch_s']:.2f}" if ours else ""
            setup = f"{r['setup_s']:.2f}"
            if "cached_setup_s" in r:
                setup += f" (cached {r['cached_setup_s']:.2f})"
            diff = r.get("grad_rel_diff")
            lines.append(
                f"| {r['peer']} | {setup} | {r['first_epoch_s']:.4f} | {r['epoch_s']:.4f} | "
                f"{ratio} | {r['metric_name']} {r['metric']:.4f} | {r['peak_mb']:.0f} | "
                f"{'' if diff is None else f'{diff:.1e}'} |")
        lines.append("")
    return "\n".join(lines)


def measure(workload, peer, missing, first=True) -> dict:
    """One (workload, peer) process (symnet: a cold one, and on its first run a second process
    on the kernel cache the first one left), reported on stderr as it ends."""
    if missing:
        return {"workload": workload, "peer": peer, "missing": f"not installed ({missing})"}
    start = time.perf_counter()
    if peer == "symnet":
        cache = tempfile.mkdtemp(prefix="symnet-bench-")
        r = spawn(workload, peer, cache)
        if first and "error" not in r:
            r["cached_setup_s"] = spawn(workload, peer, cache).get("setup_s", float("nan"))
    else:
        r = spawn(workload, peer)
    status = r.get("error") or r.get("missing") or f"epoch {r['epoch_s']:.4f} s"
    print(f"{workload:10} {peer:14} {time.perf_counter() - start:6.1f} s  {status}", file=sys.stderr)
    return r


def _repeat(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def main(argv=None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default=",".join(WORKLOADS),
                        help=f"comma-separated, default all: {', '.join(WORKLOADS)}")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"comma-separated, default all: {', '.join(PEERS)}")
    parser.add_argument("--out", default="symnet-bench", metavar="DIR",
                        help="output directory (default ./symnet-bench; the committed results "
                             "are benchmarks/results)")
    parser.add_argument("--repeat", type=_repeat, default=1,
                        help="run each workload's peers this many times in turn, and pool them")
    parser.add_argument("--load", action="store_true",
                        help='run a CPU-bound process (python -c "while True: pass") beside the '
                             "whole run, and say so in the results")
    parser.add_argument("--merge", action="store_true",
                        help="keep DIR/results.json's other (workload, peer) results")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(*args.child)))
        return 0
    workloads, peers = args.workload.split(","), args.peers.split(",")
    unknown = [x for x in workloads if x not in WORKLOADS] + [p for p in peers if p not in PEERS]
    if unknown:
        parser.error(f"unknown workload or peer {unknown}; workloads {list(WORKLOADS)}, "
                     f"peers {list(PEERS)}")
    out = Path(args.out)
    try:  # before the run, not after it: a file written and removed (os.access says yes to
        out.mkdir(parents=True, exist_ok=True)  # root, even in /proc)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as err:
        parser.error(f"--out {args.out}: {err.strerror}")
    missing = {p: available(p) for p in peers}
    repeat = args.repeat
    results = []
    with busy_neighbour(args.load):
        for workload in workloads:
            runs = {peer: [] for peer in peers}
            for _ in range(repeat):
                for peer in peers:
                    runs[peer].append(measure(workload, peer, missing[peer], first=not runs[peer]))
            results += [pool(runs[peer]) for peer in peers]
    if args.merge and (out / "results.json").exists():
        fresh = {(r["workload"], r["peer"]): r for r in results}
        old = json.loads((out / "results.json").read_text())["results"]
        results = [fresh.pop((r["workload"], r["peer"]), r) for r in old] + list(fresh.values())
    machine = {**machine_info(), "threads": 2, "repeat": repeat,
               "load": DESCRIPTION if args.load else None}
    (out / "results.json").write_text(json.dumps({"machine": machine, "results": results},
                                                 indent=1))
    (out / "results.md").write_text(markdown(machine, results))
    print(table(results))
    try:
        from .plots import plot_results
    except ImportError as err:  # matplotlib is in the bench extra
        print(f"no plots: {err} (pip install -e \".[bench]\" installs the peers and matplotlib)",
              file=sys.stderr)
    else:
        for path in plot_results(results, out):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
