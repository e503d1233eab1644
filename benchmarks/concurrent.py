"""Two symnet trainings at once against the same two one after the other, as a parallel sweep
runs them.

    python -m benchmarks.concurrent [--pair seed002,seed002] [--epochs 20] [--repeat 3]
                                    [--out DIR]

Each training is a process of its own with benchmarks.run's thread settings, on a kernel cache
warmed once beforehand. It loads the data and its kernels, says it is ready, and on the
parent's word runs one ``fit(..., epochs=E)`` from the shared initial parameters (tiny: E × 1000
full-batch steps). One after the other: the parent starts each training once the one before
has finished and adds up their times from its word to their result. Together: both are
started, and once both are ready the parent tells both to go and times until the second has
finished. A pass measures both ways (every other pass together first); the ratio is
together ÷ one after the other (the issue's target is at most 1.1). Writes a markdown table to
stdout and DIR/concurrent.md, and DIR/concurrent.json (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .run import child_env, machine_info, run_child
from .workloads import WORKLOADS, initial_params, load_data

TARGET = 1.1


class ChildError(RuntimeError):
    """A training process that failed: its last line of stderr."""


def child(name: str, epochs: int) -> None:
    """Inside a training process: get ready, wait for the parent's word, train, report."""
    from .peers import symnet_peer

    w = WORKLOADS[name]
    Xtr, Ytr = load_data(w)[:2]
    model = symnet_peer.measured_model(w, initial_params(w))
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    model.fit(Xtr, Ytr, epochs=epochs * w.steps_per_round, batch_size=w.batch or len(Xtr),
              shuffle=w.shuffle, seed=1, verbose=False)
    print(json.dumps({"train_s": time.perf_counter() - start}), flush=True)


def _line(proc, log) -> str:
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        log.seek(0)
        raise ChildError((log.read().strip().splitlines() or ["(no output)"])[-1])
    return line


def trainings(names: list[str], epochs: int, env: dict) -> dict:
    """Start a training per name, tell them all to go once all are ready, and time them until
    the last has finished: ``{"wall_s", "train_s": [each one's own fit]}``."""
    with contextlib.ExitStack() as stack:  # on any exit: kill what still runs, close the logs
        procs = []
        for name in names:
            log = stack.enter_context(tempfile.TemporaryFile("w+"))
            proc = stack.enter_context(subprocess.Popen(
                [sys.executable, "-m", "benchmarks.concurrent", "--child", name, str(epochs)],
                env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log))
            stack.callback(proc.kill)
            procs.append((proc, log))
        for proc, log in procs:
            _line(proc, log)  # "ready"
        start = time.perf_counter()
        for proc, _ in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        train_s = [json.loads(_line(proc, log))["train_s"] for proc, log in procs]
        return {"wall_s": time.perf_counter() - start, "train_s": train_s}


def one_pass(names: list[str], epochs: int, env: dict, together_first: bool = False) -> dict:
    """Both ways once: the pair one after the other and together, in either order.
    ``*_each_s`` are the trainings' own fit times."""
    together = trainings(names, epochs, env) if together_first else None
    alone = [trainings([name], epochs, env) for name in names]
    together = together or trainings(names, epochs, env)
    sequential = sum(r["wall_s"] for r in alone)
    return {"sequential_s": sequential, "sequential_each_s": [r["train_s"][0] for r in alone],
            "together_s": together["wall_s"], "together_each_s": together["train_s"],
            "ratio": together["wall_s"] / sequential}


def _seconds(xs) -> str:
    return ", ".join(f"{x:.3f}" for x in xs)


def markdown(names: list[str], epochs: int, passes: list[dict]) -> str:
    lines = [f"{' and '.join(names)}, {epochs} epochs each (tiny: ×1000 steps); wall time from "
             f"the start signal to the last result; target together ÷ one after the other ≤ "
             f"{TARGET}.", "",
             "| pass | one after the other, s (each) | together, s (each) | together ÷ one after "
             "the other |", "|---|---|---|---|"]
    for i, p in enumerate(passes, start=1):
        lines.append(f"| {i} | {p['sequential_s']:.3f} ({_seconds(p['sequential_each_s'])}) | "
                     f"{p['together_s']:.3f} ({_seconds(p['together_each_s'])}) | "
                     f"{p['ratio']:.2f} |")
    if len(passes) > 1:
        med = {k: statistics.median(p[k] for p in passes)
               for k in ("sequential_s", "together_s", "ratio")}
        lines.append(f"| median | {med['sequential_s']:.3f} | {med['together_s']:.3f} | "
                     f"**{med['ratio']:.2f}** |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="seed002,seed002", help="two workloads")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--warm", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0
    if args.warm:
        from .peers import symnet_peer

        w = WORKLOADS[args.warm]
        print(json.dumps({"cold_setup_s": symnet_peer.setup(w, load_data(w))[0]}))
        return 0
    names = args.pair.split(",")
    if len(names) != 2 or not set(names) <= set(WORKLOADS):
        parser.error(f"--pair takes two of {list(WORKLOADS)}")
    passes = []
    with tempfile.TemporaryDirectory(prefix="symnet-concurrent-") as cache:
        env = child_env(cache)
        for name in dict.fromkeys(names):
            warmed = run_child(["benchmarks.concurrent", "--warm", name], env)
            if "error" in warmed:
                print(f"compiling {name}: {warmed['error']}", file=sys.stderr)
                return 1
        for i in range(max(args.repeat, 1)):
            try:
                passes.append(one_pass(names, args.epochs, env, together_first=i % 2 == 1))
            except ChildError as err:
                print(f"a training failed: {err}", file=sys.stderr)
                return 1
            print(f"pass {i + 1}: {passes[-1]}", file=sys.stderr)
    text = markdown(names, args.epochs, passes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "concurrent.md").write_text(text)
    machine = {**machine_info(), "threads": 2, "pair": names, "epochs": args.epochs}
    (out / "concurrent.json").write_text(json.dumps({"machine": machine, "passes": passes},
                                                    indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
