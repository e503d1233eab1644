"""The ``symnet`` command line: ``symnet demo``."""

from __future__ import annotations

import argparse
import statistics
import sys


def demo(args) -> int:
    import symnet as sn

    (Xtr, Ytr), (Xte, Yte) = sn.datasets.load_digits()
    print(f"digits: {len(Xtr)} training and {len(Xte)} test images of {Xtr.shape[1]} pixels\n")
    X = sn.Input("X", Xtr.shape[1])
    Y = sn.Input("Y", Ytr.shape[1])
    h1 = sn.dense(X, args.hidden, sn.sigmoid, name="1")
    h2 = sn.dense(h1, args.hidden, sn.sigmoid, name="2")
    out = sn.dense(h2, Ytr.shape[1], name="3")
    loss = sn.softmax_cross_entropy(out, Y)
    model = sn.compile(loss, inputs=[X], targets=[Y], prediction=out,
                       optimizer=sn.optim.SGD(lr=args.lr, momentum=0.9), seed=args.seed,
                       backend="numpy")
    print("Derived formulas\n" + model.formulas() + "\n")
    hist = model.fit(Xtr, Ytr, epochs=args.epochs, batch_size=args.batch_size,
                     validation_data=(Xte, Yte), verbose=not args.quiet)
    result = model.evaluate(Xte, Yte)
    epoch_s = statistics.median(hist.seconds)
    print(f"\ntest accuracy {result['accuracy']:.4f}  test loss {result['loss']:.4f}")
    print(f"compile {model.symbolic_seconds:.2f} s (symbolic work)  median epoch {epoch_s:.3f} s "
          f"(numpy backend)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="symnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="derive, show and train a sigmoid MLP on the digits data")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(run=demo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
