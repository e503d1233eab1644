"""The generated numba kernels against the numpy reference, float64, on networks that use every
activation, loss and instruction; and the on-disk kernel cache."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numba as nb
import numpy as np
import pytest
import sympy as sp
from conftest import make_data

import symnet as sn
from codegen import numba_backend, vecmath
from codegen.blas import gemm
from codegen.opaque import opaque


def networks():
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    n = sn.batch
    h = sn.dense(sn.dense(X, 6, sn.sigmoid), 5, sn.tanh)
    yield "sigmoid_tanh_softmax_ce_l2", sn.softmax_cross_entropy(sn.dense(h, 3), Y) + sn.l2(
        0.01, *sn.weights(h)), sn.optim.Adam(lr=0.01)
    h = sn.dense(sn.dense(X, 6, sn.relu), 5, sn.leaky_relu(0.1))
    h = sn.dense(sn.dense(h, 5, sn.elu(1.0)), 4, sn.softplus)
    yield "relu_leaky_elu_softplus_mse_l1", sn.mse(sn.dense(h, 3), Y) + sn.l1(
        0.01, *sn.weights(h)), sn.optim.AdaDelta()
    h = sn.dense(sn.dense(X, 5, sn.gelu), 5, sn.swish)
    h = sn.dense(sn.dense(h, 4, sn.hard_sigmoid), 4, sn.hard_tanh)
    yield "gelu_swish_hard_bce", sn.binary_cross_entropy(sn.dense(h, 3, sn.sigmoid), Y), \
        sn.optim.RMSProp(centered=True, momentum=0.5, clip_norm=1.0)
    h = sn.dense(sn.dense(X, 5, sn.prelu), 4, sn.maxout(2))
    yield "prelu_maxout_log_softmax_ce", sn.cross_entropy(sn.softmax(sn.dense(h, 3)), Y), \
        sn.optim.SGD(lr=sn.schedules.cosine(0.1, 10), momentum=0.9, nesterov=True)
    W1, W2 = sp.MatrixSymbol("W1", 4, 8), sp.MatrixSymbol("W2", 8, 3)
    A1 = sn.tanh(X * W1)  # raw SymPy, a transpose product and a per-row sum of squares
    yield "raw_sympy_transposes", sn.sum(sn.square(A1 * W2 - Y)) / n + sn.sum(
        (X * W1).T * (X * W1)) / (100 * n), sn.optim.AdamW(lr=0.01)


NETWORKS = {name: (loss, opt) for name, loss, opt in networks()}


@pytest.mark.parametrize("name", NETWORKS)
def test_numba_kernels_equal_the_numpy_reference(name):
    loss, opt = NETWORKS[name]
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    models = [sn.compile(loss, inputs=[X], targets=[Y], prediction=None, optimizer=opt,
                         dtype="float64", seed=1, backend=b) for b in ("numba", "numpy")]
    Xb, Yb = make_data(n=23, kind="prob", seed=2)
    (l1, g1), (l2, g2) = (m.loss_and_grad(Xb, Yb) for m in models)
    assert l1 == pytest.approx(l2, rel=1e-10, abs=1e-12)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-10, atol=1e-12, err_msg=k)
    for m in models:  # 23 rows in batches of 10: two full batches and a short one, per epoch
        m.fit(Xb, Yb, epochs=2, batch_size=10, verbose=False)
    for k in models[0].params:
        np.testing.assert_allclose(models[0].params[k], models[1].params[k], rtol=1e-10,
                                   atol=1e-12, err_msg=k)


def test_wide_layers_are_stored_batch_minor_unless_a_loop_nest_reads_a_wide_input():
    """A 128-wide hidden layer is stored and looped over batch-minor (numba_backend.WIDE); the
    128-class output layer, whose loss reads the 128-wide targets (stored n×c) and whose
    logsumexp loops over rows, stays n×c. Both train as the numpy reference does."""
    X, Y = sn.Input("X", 8), sn.Input("Y", 128)
    loss = sn.softmax_cross_entropy(sn.dense(sn.dense(X, 128, sn.tanh), 128), Y)
    models = [sn.compile(loss, inputs=[X], targets=[Y], optimizer=sn.optim.Adam(lr=0.01),
                         dtype="float64", seed=1, backend=b) for b in ("numba", "numpy")]
    source = models[0].source
    # X·W1, eight terms an entry, is summed in the loop nest that writes tanh(Z1) 128×n
    assert "gemm(True, W1" not in source and "t7[j, i] = z_t7" in source  # (Kernel.thin)
    # every nest runs along contiguous memory of all it touches: entry [j, i] of a batch-minor
    # buffer in a nest whose batch loop is innermost, [i, j] of an n×c one otherwise
    nests = {"minor": r"for j in range\(opaque\(128\)\):\n(\s+)for i in range\(n\):\n",
             "rows": r"for i in range\(n\):\n(\s+)for j in range\(128\):\n"}
    for order, head in nests.items():
        bodies = [re.match(rf"({m[1]}    .*\n)*", source[m.end():])[0]
                  for m in re.finditer(head, source)]
        assert bodies  # the hidden layer's nests, and the output layer's
        wrong = "[i, j]" if order == "minor" else "[j, i]"
        assert not any(wrong in body for body in bodies), order
    Xb, Yb = make_data(n=23, cols=8, out=128, seed=2)
    for m in models:
        m.fit(Xb, Yb, epochs=2, batch_size=10, verbose=False)
    for k in models[0].params:
        np.testing.assert_allclose(models[0].params[k], models[1].params[k], rtol=1e-10,
                                   atol=1e-12, err_msg=k)


def test_thin_products_run_in_the_wide_loop_nests_with_the_same_numbers(monkeypatch):
    """Through a 4-wide output layer after a 128-wide one, δ2·W2ᵀ (four terms an entry) and
    A1ᵀ·δ2 (four sums over the batch for each of A1's columns) run inside the loop nest that
    masks δ2·W2ᵀ by relu'(A1), not as OpenBLAS calls; X·W1, six terms an entry, runs in the
    nest that applies relu. Xᵀ·δ1, whose thin side is X, stays a call (Kernel.thin). The
    numbers are those of the calls, to rounding, and the numpy reference's."""
    X, Y = sn.Input("X", 6), sn.Input("Y", 4)
    loss = sn.softmax_cross_entropy(sn.dense(sn.dense(X, 128, sn.relu), 4), Y)

    def model(backend):
        return sn.compile(loss, inputs=[X], targets=[Y], optimizer=sn.optim.SGD(lr=0.1, momentum=0.9),
                          dtype="float64", seed=1, backend=backend)

    thin = model("numba")
    monkeypatch.setattr(numba_backend, "THIN", 0)  # the same network with every product a call
    calls, reference = model("numba"), model("numpy")
    train = thin.source[thin.source.index("def train_epochs"):]
    assert re.search(r"z_t\d+ = \(\(t\d+\[0, i\] \* W2\[j, 0\] \+ t\d+\[1, i\] \* W2\[j, 1\]\) \+ "
                     r"\(t\d+\[2, i\] \* W2\[j, 2\] \+ t\d+\[3, i\] \* W2\[j, 3\]\)\)", train)
    assert re.search(r"for p in range\(opaque\(4\)\):\n\s+acc = DT\(0.0\)\n\s+for i in range\(n\):\n"
                     r"\s+acc \+= t\d+\[p, i\] \* t\d+\[j, i\]\n\s+t\d+\[j, p\] = acc\n", train)
    called = r"# (.*)\n\s+gemm\("  # the products that are calls, by their formulas
    assert re.findall(called, train) == ["A1·W2", "Xᵀ·δ1"]
    train = calls.source[calls.source.index("def train_epochs"):]
    assert sorted(re.findall(called, train)) == ["A1·W2", "A1ᵀ·δ2", "X·W1", "Xᵀ·δ1", "δ2·W2ᵀ"]
    Xb, Yb = make_data(n=23, cols=6, out=4, seed=2)
    (loss0, grads0), *others = (m.loss_and_grad(Xb, Yb) for m in (thin, calls, reference))
    for value, grads in others:
        assert loss0 == pytest.approx(value, rel=1e-12)
        for k in grads:
            np.testing.assert_allclose(grads0[k], grads[k], rtol=1e-10, atol=1e-14, err_msg=k)
    for m in (thin, calls, reference):
        m.fit(Xb, Yb, epochs=2, batch_size=10, verbose=False)
    for m in (calls, reference):
        for k in m.params:
            np.testing.assert_allclose(thin.params[k], m.params[k], rtol=1e-10, atol=1e-14,
                                       err_msg=k)


def test_blas_products_on_a_short_batch_use_the_first_rows_of_the_workspaces():
    """Workspaces are sized for the largest batch seen; a shorter batch's BLAS products (one of
    them into a batch-minor workspace) work on its first rows, with the full row length as the
    leading dimension."""
    X, Y = sn.Input("X", 20), sn.Input("Y", 3)
    out = sn.dense(sn.dense(X, 32, sn.tanh), 3)
    models = [sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y],
                         prediction=out, optimizer=sn.optim.Adam(lr=0.01),
                         dtype="float64", seed=1, backend=b) for b in ("numba", "numpy")]
    assert "gemm(True, W2, True, t" in models[0].source  # A1·W2 stored batch-minor
    Xb, Yb = make_data(n=23, cols=20, out=3, kind="onehot", seed=3)
    for rows in (23, 7):  # the second call runs on workspaces sized for 23 rows
        (l1, g1), (l2, g2) = (m.loss_and_grad(Xb[:rows], Yb[:rows]) for m in models)
        assert l1 == pytest.approx(l2, rel=1e-10)
        for k in g1:
            np.testing.assert_allclose(g1[k], g2[k], rtol=1e-10, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(models[0].predict(Xb[:5]), models[1].predict(Xb[:5]), rtol=1e-10)
    for m in models:  # batches of 10, 10 and 3 rows
        m.fit(Xb, Yb, epochs=2, batch_size=10, verbose=False)
    for k in models[0].params:
        np.testing.assert_allclose(models[0].params[k], models[1].params[k], rtol=1e-10,
                                   atol=1e-12, err_msg=k)


def test_train_epochs_gathers_narrow_inputs_batch_minor():
    """train_epochs copies each batch's rows of a narrow input (the 3-class targets) into a
    batch-minor buffer, and its loop nests read them so; loss_and_grad, called with the
    caller's n×c arrays, reads them row by row. Training agrees with the numpy reference over
    short last batches and after the batch buffers grow."""
    X, Y = sn.Input("X", 20), sn.Input("Y", 3)
    out = sn.dense(sn.dense(X, 32, sn.sigmoid), 3, sn.sigmoid)
    models = [sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y],
                         optimizer=sn.optim.AdaGrad(lr=0.1), dtype="float64", seed=1, backend=b)
              for b in ("numba", "numpy")]
    source = models[0].source
    grad, train = source.split("def train_epochs")
    grad = grad.split("def loss_and_grad")[1].split("\n\n\n")[0]
    assert "Y[j, r] = d_Y[i, j]" in train and "X[r, j] = d_X[i, j]" in train  # X is 20 wide
    assert "Y[j, i]" in train and " Y[i, j]" not in train and "(Y[i, j]" not in train
    assert "Y[i, j]" in grad and "Y[j, i]" not in grad
    Xb, Yb = make_data(n=23, cols=20, out=3, kind="onehot", seed=4)
    for m in models:  # batches of 4 (the last of 3 rows), then of 10 (the last of 3)
        m.fit(Xb, Yb, epochs=1, batch_size=4, verbose=False)
        m.fit(Xb, Yb, epochs=2, batch_size=10, verbose=False)
    for k in models[0].params:
        np.testing.assert_allclose(models[0].params[k], models[1].params[k], rtol=1e-10,
                                   atol=1e-12, err_msg=k)


def test_float32_is_the_default_and_kernels_compute_in_it():
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    out = sn.dense(sn.dense(X, 6, sn.sigmoid), 3)
    model = sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y], prediction=out)
    assert model.backend == "numba" and model.params["W1"].dtype == np.float32
    assert "DT = np.float32" in model.source
    assert "vexp(" in model.source and "math.exp" not in model.source  # codegen.vecmath's exp
    Xb, Yb = make_data(n=7)
    assert model.predict(Xb).dtype == np.float32
    loss32, g32 = model.loss_and_grad(Xb, Yb)
    loss64, g64 = model.loss_and_grad(Xb, Yb, dtype="float64")
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    np.testing.assert_allclose(g32["W1"], g64["W1"], rtol=1e-3, atol=1e-6)


def test_source_is_cached_under_its_hash_and_reused_by_a_second_process(tmp_path):
    script = textwrap.dedent("""
        import numpy as np, symnet as sn
        X, Y = sn.Input("X", 3), sn.Input("Y", 2)
        out = sn.dense(sn.dense(X, 4, sn.tanh), 2)
        m = sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], prediction=out, seed=0)
        m.fit(np.ones((5, 3)), np.ones((5, 2)), epochs=1, verbose=False)
        mod = m._runner().module
        print(mod.__file__, sum(mod.train_epochs.stats.cache_hits.values()))
    """)
    env = {**os.environ, "SYMNET_CACHE_DIR": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                           check=True).stdout.split() for _ in range(2)]
    assert runs[0][0] == runs[1][0] and runs[0][0].startswith(str(tmp_path))
    assert runs[0][1] == "0" and int(runs[1][1]) >= 1  # the second run loaded the machine code
    source = Path(runs[0][0]).read_text()
    assert f"codegen version {numba_backend.CODEGEN_VERSION}" in source


def test_the_cache_key_covers_every_codegen_module_the_kernels_compile_in(monkeypatch, tmp_path):
    # numba's cache checks only the generated file: a change to codegen.pace, say, must give
    # the kernels a new name, or machine code built from the old one is loaded
    X, Y = sn.Input("X", 300), sn.Input("Y", 2)
    out = sn.dense(sn.dense(X, 20, sn.relu), 2)  # W1 is large enough for the helper
    m = sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], prediction=out, seed=0)
    imported = set(re.findall(r"^from codegen(?:\.(\w+))? import (.+)$", m.source, re.M))
    modules = {mod or name for mod, names in imported for name in names.split(", ")}
    assert {"pace", "pool", "blas"} <= modules
    assert modules <= {path.stem for path in numba_backend._runtime_files()}
    first = numba_backend.load(m.source, tmp_path).__name__
    monkeypatch.setattr(numba_backend, "_RUNTIME_DIGEST", "a changed codegen module")
    assert numba_backend.load(m.source, tmp_path).__name__ != first


def test_tiny_products_are_loops_and_large_ones_blas():
    X, Y = sn.Input("X", 1), sn.Input("Y", 1)
    small = sn.compile(sn.mse(sn.dense(sn.dense(X, 10, sn.relu), 1), Y), inputs=[X],
                       targets=[Y]).source
    assert "gemm(" not in small and "z_t6 = X[i, 0] * W1[0, j]" in small
    # its 10-wide hidden layer is stored batch-minor: the batch loop is innermost
    assert "# stored batch-minor: t6, t7," in small
    assert "for j in range(opaque(10)):\n        for i in range(n):" in small
    X = sn.Input("X", 64)
    large = sn.compile(sn.mse(sn.dense(sn.dense(X, 32, sn.relu), 1), Y), inputs=[X],
                       targets=[Y]).source
    assert "gemm(False, X, False, W1, t" in large
    assert "gemm(True, X, False, " in large  # a transpose is a BLAS flag, not a view


def test_opaque_is_its_argument_but_not_a_constant_to_llvm():
    @nb.njit
    def loop(step):
        total = 0
        for _ in range(opaque(10)):
            total += step
        return total, opaque(np.int32(7)), opaque(step)

    assert loop(3) == (30, 7, 3)

    @nb.njit
    def hidden():
        return opaque(10)

    @nb.njit
    def seen():
        return 10

    assert hidden() == seen() == 10
    # in the optimised IR, LLVM stores the plain constant as the result but not the hidden one,
    # so it cannot unroll a loop over range(opaque(c)) (numba_backend.Kernel._fused)
    assert "store i64 10, ptr %retptr" in seen.inspect_llvm(seen.signatures[0])
    ir = hidden.inspect_llvm(hidden.signatures[0])
    assert "store i64 10," not in ir and 'asm "", "=r,0"(i64 10)' in ir


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_gemm_is_alpha_op_a_op_b_plus_beta_out(dtype, ta, tb):
    @nb.njit
    def call(ta, a, tb, b, out, alpha, beta, m, n, k):
        gemm(ta, a, tb, b, out, alpha, beta, m, n, k)

    rng = np.random.default_rng(0)
    a = rng.standard_normal((7, 5) if ta else (5, 7)).astype(dtype)
    b = rng.standard_normal((3, 7) if tb else (7, 3)).astype(dtype)
    out = rng.standard_normal((5, 3)).astype(dtype)
    expected = 2.0 * (a.T if ta else a) @ (b.T if tb else b) + 0.5 * out
    call(ta, a, tb, b, out, 2.0, 0.5, 5, 3, 7)
    np.testing.assert_allclose(out, expected, rtol=1e-5 if dtype == np.float32 else 1e-12)
    # the top-left 4×2 block over the first 6 inner terms; the rest of out stays as it was
    opa, opb = (a.T if ta else a)[:4, :6], (b.T if tb else b)[:6, :2]
    expected[:4, :2] = opa @ opb - expected[:4, :2]
    call(ta, a, tb, b, out, 1.0, -1.0, 4, 2, 6)
    np.testing.assert_allclose(out, expected, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_exp_is_within_one_ulp_and_keeps_inf_nan_and_subnormals(dtype):
    exp = vecmath.exp32 if dtype == np.float32 else vecmath.exp64

    @nb.njit
    def apply(x, out):
        for i in range(x.size):
            out[i] = exp(x[i])

    info = np.finfo(dtype)
    top, bottom = np.log(info.max), np.log(info.smallest_subnormal)
    x = np.concatenate([np.linspace(bottom - 5, top + 5, 200_001),
                        np.random.default_rng(0).normal(0, 3, 100_000)]).astype(dtype)
    out = np.empty_like(x)
    apply(x, out)
    exact = np.exp(x.astype(np.longdouble))
    finite = exact < info.max
    ulps = np.abs(out[finite] - exact[finite]) / np.spacing(exact[finite].astype(dtype))
    assert ulps.max() <= 1.0
    assert np.all(np.isposinf(out[~finite]))
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, bottom + 1, bottom - 1], dtype)
    out = np.empty_like(special)
    apply(special, out)
    assert out[0] == np.inf and out[1] == 0 and np.isnan(out[2]) and out[3] == out[4] == 1
    assert 0 < out[5] < info.tiny and out[6] == 0  # subnormal results are kept, not flushed
