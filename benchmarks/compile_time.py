"""Symbolic compile time of the seed002 network (784-32-32-10, sigmoid, per-row SSE).

Measures declaration → derivation → simplification → lowered programs, in a fresh process (no
SymPy caches warm). Run: python benchmarks/compile_time.py
"""

import time

start = time.perf_counter()
import symnet as sn  # noqa: E402

imported = time.perf_counter()
X, Y = sn.Input("X", 784), sn.Input("Y", 10)
h1 = sn.dense(X, 32, sn.sigmoid, name="1")
h2 = sn.dense(h1, 32, sn.sigmoid, name="2")
out = sn.dense(h2, 10, sn.sigmoid, name="3")
model = sn.compile(sn.sse(out, Y), inputs=[X], targets=[Y], prediction=out,
                   optimizer=sn.optim.AdaGrad(lr=0.1), seed=0)
done = time.perf_counter()
print(f"import symnet: {imported - start:.2f} s")
print(f"declare + compile (symbolic work): {done - imported:.2f} s "
      f"(model.symbolic_seconds = {model.symbolic_seconds:.2f} s)")
print(model.formulas())
