"""The throughput of a hyperparameter search: one grid of 8 configurations × 3 folds on
scikit-learn's digits, with symnet's estimator, scikit-learn's MLPClassifier and skorch (PyTorch),
``GridSearchCV(n_jobs=2)`` each, in a process of its own.

    python -m benchmarks.search [--peers symnet,sklearn,skorch] [--repeat 3] [--out DIR]

Every peer trains the same networks: StandardScaler, then 64 → hidden (ReLU) → 10, softmax
cross-entropy, Adam, batch 32, 50 epochs (MLPClassifier with ``n_iter_no_change=50``, so that it
stops no earlier), an L2 penalty ``alpha``. The grid is hidden ∈ {64, 128} × learning rate ∈
{1e-3, 3e-3} × alpha ∈ {0, 1e-4}. Reported: the search's wall time, its best mean CV accuracy and
the test accuracy of its refitted best model on a held-out 20 %. symnet's searches are timed with
an empty kernel cache (``cold``: each configuration's kernels compiled in the workers) and after
``symnet.sklearn.warm_up`` filled it (``warm``, the warm-up not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HIDDEN, RATES, ALPHAS, EPOCHS, BATCH = (64, 128), (1e-3, 3e-3), (0.0, 1e-4), 50, 32
PEERS = ("symnet", "sklearn", "skorch")


def data():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return train_test_split(X.astype(np.float32), y, test_size=0.2, random_state=0, stratify=y)


def search(peer: str):
    """The pipeline and its grid for ``peer``."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if peer == "symnet":
        from symnet.sklearn import SymnetClassifier

        est = SymnetClassifier(epochs=EPOCHS, batch_size=BATCH, random_state=0)
        grid = {"hidden": [(h,) for h in HIDDEN], "learning_rate": list(RATES),
                "alpha": list(ALPHAS)}
    elif peer == "sklearn":
        from sklearn.neural_network import MLPClassifier

        est = MLPClassifier(max_iter=EPOCHS, batch_size=BATCH, n_iter_no_change=EPOCHS,
                            random_state=0)
        grid = {"hidden_layer_sizes": [(h,) for h in HIDDEN], "learning_rate_init": list(RATES),
                "alpha": list(ALPHAS)}
    else:
        import torch
        from skorch import NeuralNetClassifier

        class MLP(torch.nn.Module):
            def __init__(self, hidden=64):
                super().__init__()
                self.layers = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                                                  torch.nn.Linear(hidden, 10))

            def forward(self, X):
                return self.layers(X)

        torch.manual_seed(0)
        est = NeuralNetClassifier(MLP, max_epochs=EPOCHS, batch_size=BATCH,
                                  optimizer=torch.optim.Adam, criterion=torch.nn.CrossEntropyLoss,
                                  train_split=None, verbose=0)
        grid = {"module__hidden": list(HIDDEN), "lr": list(RATES),
                "optimizer__weight_decay": list(ALPHAS)}
    name = type(est).__name__.lower()
    pipe = make_pipeline(StandardScaler(), est)
    return pipe, {f"{name}__{k}": v for k, v in grid.items()}


def run_one(peer: str, warm: bool) -> dict:
    """Inside the child: one timed search."""
    from sklearn.model_selection import GridSearchCV

    warnings.filterwarnings("ignore")  # MLPClassifier's ConvergenceWarning at 50 epochs
    Xtr, Xte, ytr, yte = data()
    if peer == "skorch":
        ytr, yte = ytr.astype(np.int64), yte.astype(np.int64)
    pipe, grid = search(peer)
    warm_s = None
    if warm:
        from symnet.sklearn import warm_up

        start = time.perf_counter()
        warm_up(pipe, Xtr, ytr, grid)
        warm_s = time.perf_counter() - start
    start = time.perf_counter()
    gs = GridSearchCV(pipe, grid, cv=3, n_jobs=2).fit(Xtr, ytr)
    seconds = time.perf_counter() - start
    return {"peer": peer + (" (warm)" if warm else " (cold)" if peer == "symnet" else ""),
            "seconds": seconds, "warm_up_s": warm_s, "cv_accuracy": float(gs.best_score_),
            "test_accuracy": float(gs.score(Xte, yte)), "best": str(gs.best_params_)}


def spawn(peer: str, warm: bool) -> dict:
    env = {**os.environ, "SYMNET_CACHE_DIR": tempfile.mkdtemp(prefix="symnet-search-"),
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "SYMNET_NUM_THREADS": "1"}
    env["NUMBA_CACHE_DIR"] = os.path.join(env["SYMNET_CACHE_DIR"], "numba")
    args = [sys.executable, "-m", "benchmarks.search", "--child", peer] + (["--warm"] if warm
                                                                           else [])
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"peer": peer, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    sk = next((r["seconds"] for r in rows if r["peer"] == "sklearn" and "seconds" in r), None)
    lines = ["| peer | search s | × scikit-learn | best CV accuracy | test accuracy |",
             "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['peer']} | {r['error']} | | | |")
            continue
        ratio = f"{r['seconds'] / sk:.2f}" if sk else ""
        lines.append(f"| {r['peer']} | {r['seconds']:.2f} | {ratio} | {r['cv_accuracy']:.4f} | "
                     f"{r['test_accuracy']:.4f} |")
    return "\n".join(lines) + "\n"


def pooled(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    out = dict(ok[0])
    out["seconds"] = statistics.median(r["seconds"] for r in ok)
    out["seconds_per_run"] = [r["seconds"] for r in ok]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--child")
    parser.add_argument("--warm", action="store_true")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args.child, args.warm)))
        return 0
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeat):  # interleaved: each peer meets the machine's slow spells
        for peer in args.peers.split(","):
            for warm in ((False, True) if peer == "symnet" else (False,)):
                r = spawn(peer, warm)
                runs.setdefault(r["peer"], []).append(r)
                print(r, flush=True)
    rows = [pooled(v) for v in runs.values()]
    text = ("Grid search: 8 configurations × 3 folds on digits, GridSearchCV(n_jobs=2), the "
            f"median of {args.repeat} run(s):\n\n" + table(rows))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "search.json").write_text(json.dumps(rows, indent=1))
    (out / "search.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
