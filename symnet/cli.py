"""The symnet command line: symnet demo and symnet bench."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import sys
import time
from pathlib import Path

DEFAULT_EPOCHS = {"digits": 30, "fashion-mnist": 15}


def load(data):
    import symnet as sn

    if data == "digits":
        return "digits", sn.datasets.load_digits()
    if data == "fashion-mnist":
        return "Fashion-MNIST", sn.datasets.load_fashion_mnist()
    return data, sn.datasets.load_idx(data)


def demo(args) -> int:
    import symnet as sn

    try:
        return _demo(args)
    except sn.SymnetError as err:  # e.g. a learning rate so large that the loss overflows
        print(f"symnet demo: {_as_options(err)}", file=sys.stderr)
        return 2


# the fixes the library's messages name, as this command's options
OPTIONS = {"load_fashion_mnist('path/to/dir')": "symnet demo --data path/to/dir",
           "backend='numpy'": "--backend numpy", "point load_idx at": "pass --data"}


def _as_options(err) -> str:
    text = str(err)
    for call, option in OPTIONS.items():
        text = text.replace(call, option)
    return text


def _demo(args) -> int:
    import symnet as sn

    start = time.perf_counter()
    name, ((Xtr, Ytr), (Xte, Yte)) = load(args.data)
    print(f"{name}: {len(Xtr)} training and {len(Xte)} test images of {Xtr.shape[1]} pixels "
          f"(each epoch's val_ figures are the test set's: nothing is chosen by them)\n")
    declared = time.perf_counter()
    X = sn.Input("X", Xtr.shape[1])
    Y = sn.Input("Y", Ytr.shape[1])
    h1 = sn.dense(X, args.hidden, sn.sigmoid, name="1")
    h2 = sn.dense(h1, args.hidden, sn.sigmoid, name="2")
    out = sn.dense(h2, Ytr.shape[1], name="3")
    loss = sn.softmax_cross_entropy(out, Y)
    model = sn.compile(loss, inputs=[X], targets=[Y], prediction=sn.softmax(out),
                       optimizer=sn.optim.AdaGrad(lr=args.lr), seed=args.seed, backend=args.backend)
    jit = model.compile_kernels()
    compiled = time.perf_counter()
    print("Derived formulas\n" + model.formulas() + "\n")
    epochs = args.epochs if args.epochs is not None else DEFAULT_EPOCHS.get(args.data, 15)
    hist = model.fit(Xtr, Ytr, epochs=epochs, batch_size=args.batch_size,
                     validation_data=(Xte, Yte), verbose=not args.quiet)
    result = model.evaluate(Xte, Yte)
    epoch_s = statistics.median(hist.seconds)
    cache = "loaded from the kernel cache" if model.kernels_cached else "cold: numba JIT"
    # the rest of compile: the kernels' source, and the backend's own start (numba's import)
    generated = max(compiled - declared - model.symbolic_seconds - jit, 0.0)
    print(f"\ntest accuracy {result['accuracy']:.4f}  test loss {result['loss']:.4f}  "
          f"({epochs} epoch{'s' * (epochs != 1)}, batch {args.batch_size}, AdaGrad lr {args.lr})")
    print(f"compile {compiled - declared:.2f} s: symbolic {model.symbolic_seconds:.2f} s, "
          f"code generation {generated:.2f} s, kernels {jit:.2f} s "
          f"({cache if args.backend == 'numba' else 'numpy backend'})")
    print(f"median epoch {epoch_s:.3f} s ({args.backend} backend); "
          f"total {time.perf_counter() - start:.1f} s")
    if args.report:
        try:
            model.report(args.report, Xte[:200], Yte[:200])
        except sn.DataError as err:
            print(f"symnet demo: {err}", file=sys.stderr)
            return 2
        print(f"report: {args.report}")
    return 0


def bench(argv: list[str]) -> int:
    """``symnet bench ARGS``: ``python -m benchmarks.run ARGS`` (its options and help)."""
    try:
        from benchmarks import run
    except ImportError as err:
        print(f"symnet bench needs the benchmarks package of a symnet checkout ({err})",
              file=sys.stderr)
        return 2
    return run.main(argv, prog="symnet bench")


def _number(kind, least: str, test):
    """An argparse type: ``kind`` of the text, which ``test`` must accept (``least`` says how)."""
    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not test(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {least}")
        return value
    return convert


POSITIVE = _number(int, "a positive integer", lambda v: v >= 1)
NATURAL = _number(int, "a non-negative integer", lambda v: v >= 0)
RATE = _number(float, "a positive finite number", lambda v: 0 < v < float("inf"))


def _writable(text: str) -> str:
    """An argparse type for an output file: its directory must exist and be writable, so that
    a mistyped path fails before training rather than after it."""
    path = Path(text).expanduser().absolute()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a directory; name a file in it, e.g. "
                                         f"{path / 'report.html'}")
    where = path.parent
    if not where.is_dir():
        raise argparse.ArgumentTypeError(f"the directory {where} does not exist")
    if not os.access(where, os.W_OK):
        raise argparse.ArgumentTypeError(f"the directory {where} is not writable")
    return text


def _version() -> str:
    """The installed distribution's version, without importing symnet (SymPy, numba: seconds)."""
    try:
        return importlib.metadata.version("symnet")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "(not installed)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="symnet", description=__doc__)
    parser.add_argument("--version", action="version", version=f"symnet {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="derive, show and train a 3-layer sigmoid MLP",
                       description="Declare the classic 3-layer sigmoid network, print the "
                                   "gradient formulas symnet derives, train it and test it.")
    p.add_argument("--data", default="digits",
                   help="digits (bundled, default), fashion-mnist (from "
                        "/usr/share/datasets/fashion-mnist) or a directory of MNIST-format IDX "
                        "files")
    p.add_argument("--epochs", type=POSITIVE, default=None,
                   help="default: 30 on digits, 15 on Fashion-MNIST and IDX directories")
    p.add_argument("--batch-size", type=POSITIVE, default=100, help="rows a step (default 100)")
    p.add_argument("--hidden", type=POSITIVE, default=32,
                   help="units of each hidden layer (default 32)")
    p.add_argument("--lr", type=RATE, default=0.1, help="AdaGrad's learning rate (default 0.1)")
    p.add_argument("--seed", type=NATURAL, default=0,
                   help="initial weights and shuffling (default 0)")
    p.add_argument("--backend", choices=["numba", "numpy"], default="numba",
                   help="numba kernels (default) or the numpy reference")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--report", metavar="PATH", type=_writable,
                   help="also write an HTML report (derivation, checks, training curves, "
                        "generated code) to PATH, e.g. out.html")
    p.set_defaults(run=demo, parser=p)
    sub.add_parser("bench", add_help=False,  # its options and help are benchmarks.run's
                   help="benchmark symnet against PyTorch, JAX, autograd, PyTensor, NumPy, a "
                        "hand-written numba kernel and scikit-learn (symnet bench --help)")
    args, rest = parser.parse_known_args(argv)
    if args.command != "bench" and rest:
        args.parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return bench(rest) if args.command == "bench" else args.run(args)
    except KeyboardInterrupt:  # Ctrl-C: a line, not a traceback; 128 + SIGINT, as shells do
        print(f"\nsymnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # symnet demo | head: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush
        return 141  # 128 + SIGPIPE, as shells report a command a pipe closed on


if __name__ == "__main__":
    sys.exit(main())
