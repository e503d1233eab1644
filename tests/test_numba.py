"""The generated numba kernels against the numpy reference, float64, on networks that use every
activation, loss and instruction; what the plan decides (layouts, loop nests, products); the
intrinsics; and the on-disk kernel cache."""

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
import symnet.model
from codegen.intrinsics import vecmath
from codegen.intrinsics.blas import gemm, gemm_at
from codegen.intrinsics.opaque import opaque
from codegen.ir import BATCH, Op
from codegen.numba import emit, plan, protocol, runner
from codegen.numba.printer import identifier


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


def both(loss, X, Y, optimizer=None, **kw):
    return [sn.compile(loss, inputs=[X], targets=[Y], optimizer=optimizer, dtype="float64",
                       seed=1, backend=b, **kw) for b in ("numba", "numpy")]


def assert_same_params(a, b, rtol=1e-10, atol=1e-12):
    for k in b.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=rtol, atol=atol, err_msg=k)


def test_matrices_named_as_the_kernels_own_variables_train_as_on_numpy():
    """The stages rename arrays by their names, so a matrix named as one of the kernel's own
    variables (its piece count P, the update's row w, ...) took that variable over; such names
    are reserved and the matrix gets another in the generated code. Every name a stage assigns
    is reserved or made by the emitter."""
    from codegen.numba.printer import RESERVED

    X, Y, rate = sn.Input("P", 5), sn.Input("w", 3), sn.Constant("rate")
    h = sn.tanh(X * sp.MatrixSymbol("c", 5, 4) + sp.OneMatrix(sn.batch, 1) * sp.MatrixSymbol("x", 1, 4))
    out = h * sp.MatrixSymbol("seed", 4, 3)
    numba_model, numpy_model = both(sn.softmax_cross_entropy(out, Y) + sn.l2(rate, *sn.weights(out)),
                                    X, Y, sn.optim.Adam(lr=1e-2), constants={rate: 1e-3})
    data = make_data(n=12, cols=5, out=3)
    for model in (numba_model, numpy_model):
        model.fit(*data, epochs=3, batch_size=5, verbose=False)
    assert_same_params(numba_model, numpy_model)
    made = r"(a|z_a|acc_a|P_sz|sz|_c|_h|_st_|_u_|_b|d_)\w*"
    assigned = set(re.findall(r"^ +([A-Za-z_]\w*) = ", numba_model.source, re.M))
    assert {v for v in assigned if not re.fullmatch(made, v)} <= RESERVED


def test_an_input_named_x_trains_when_its_product_is_a_phase_of_its_own():
    """A phase that is one tiled product calls the shared product stage with its arrays' names
    in the generated code; it was given the matrices' own names, so an input named x (reserved,
    renamed in the kernel) failed to compile with a KeyError."""
    X, Y = sn.Input("x", 5), sn.Input("v", 2)
    out = sn.dense(sn.relu(sn.dense(X, 16, name="first")), 2, name="c")
    numba_model, numpy_model = both(sn.softmax_cross_entropy(out, Y), X, Y, sn.optim.SGD(lr=0.1))
    assert "_product(" in numba_model.source  # the shared product stage is called
    data = make_data(n=40, cols=5, out=2)
    for model in (numba_model, numpy_model):
        model.fit(*data, epochs=2, batch_size=16, verbose=False)
    assert_same_params(numba_model, numpy_model)


def test_a_kernel_numba_cannot_compile_is_a_declaration_error_in_fit_too(monkeypatch):
    """fit compiles the training kernel on its first call; what numba refuses there is named
    with the fallback, as in compile_kernels and loss_and_grad."""
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    model = sn.compile(sn.mse(sn.dense(X, 3), Y), inputs=[X], targets=[Y], seed=0)

    def refuses(*args, **kwargs):
        raise nb.core.errors.TypingError("no implementation for this")

    monkeypatch.setattr(runner.cache, "compile_kernel", refuses)
    with pytest.raises(sn.DeclarationError, match=r"numba could not compile the generated kernel "
                                                  r"\(no implementation for this\).*Compile with "
                                                  r"backend='numpy' to train without it"):
        model.fit(*make_data(n=6), epochs=1, verbose=False)


@pytest.mark.parametrize("name", NETWORKS)
def test_numba_kernels_equal_the_numpy_reference(name, monkeypatch):
    loss, opt = NETWORKS[name]
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    models = both(loss, X, Y, opt)
    Xb, Yb = make_data(n=23, kind="prob", seed=2)
    Yb /= Yb.sum(axis=1, keepdims=True)  # probabilities per entry (BCE) and per row (softmax)
    (l1, g1), (l2, g2) = (m.loss_and_grad(Xb, Yb) for m in models)
    assert l1 == pytest.approx(l2, rel=1e-10, abs=1e-12)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-10, atol=1e-12, err_msg=k)
    for m in models:  # 23 rows in batches of 10: two full batches and a short one, per epoch
        m.fit(Xb, Yb, epochs=2, batch_size=10, verbose=False)
    assert_same_params(*models)
    monkeypatch.setattr(symnet.model, "SECONDS_PER_CALL", 1e3)  # then epochs 2–5 in one call
    for m in models:
        m.fit(Xb, Yb, epochs=5, batch_size=10, verbose=False)
    assert models[0]._steps == models[1]._steps == 21
    assert_same_params(*models)


def layout_of(model, program="loss_and_grad"):
    return plan.layout(model._programs[program])


def buffer_of(model, formula, program="loss_and_grad"):
    """The buffer of the instruction whose formula is ``formula``."""
    return next(ins.out for ins in model._programs[program].instrs if ins.note == formula)


def test_wide_layers_are_stored_batch_minor_unless_a_loop_nest_reads_a_wide_input():
    """A 128-wide hidden layer is stored and looped over batch-minor (plan.WIDE); the
    128-class output layer, whose loss reads the 128-wide targets (stored n×c) and whose
    logsumexp loops over rows, stays n×c. Both train as the numpy reference does."""
    X, Y = sn.Input("X", 8), sn.Input("Y", 128)
    loss = sn.softmax_cross_entropy(sn.dense(sn.dense(X, 128, sn.tanh), 128), Y)
    models = both(loss, X, Y, sn.optim.Adam(lr=0.01))
    lay = layout_of(models[0])
    assert buffer_of(models[0], "tanh(Z1)") in lay.minor
    assert buffer_of(models[0], "A1·W2 + 𝟙·b2") not in lay.minor
    # every loop nest runs along contiguous memory of all it touches: batch innermost exactly
    # when the n×c buffers it touches are stored batch-minor
    for group in plan.plan(lay).groups:
        if group.space is not None and group.space[0] == "n":
            stored = {a in lay.minor for a in plan.touched(group.instrs)
                      if lay.shape(a) == group.space}
            assert stored <= {group.minor}, [ins.note for ins in group.instrs]
    Xb, Yb = make_data(n=23, cols=8, out=128, seed=2)
    for m in models:
        m.fit(Xb, Yb, epochs=2, batch_size=10, verbose=False)
    assert_same_params(*models)


def test_thin_products_run_in_the_wide_loop_nests_with_the_same_numbers(monkeypatch):
    """Through a 4-wide output layer after a 128-wide one, δ2·W2ᵀ (four terms an entry) and
    A1ᵀ·δ2 (four sums over the batch for each of A1's columns) run inside loop nests, not as
    BLAS calls; X·W1, six terms an entry, runs in the nest that applies relu. Xᵀ·δ1, whose thin
    side is X, stays a call (Layout.thin). The numbers are those of the calls, to rounding."""
    X, Y = sn.Input("X", 6), sn.Input("Y", 4)
    loss = sn.softmax_cross_entropy(sn.dense(sn.dense(X, 128, sn.relu), 4), Y)
    opt = sn.optim.SGD(lr=0.1, momentum=0.9)
    thin, reference = both(loss, X, Y, opt)

    def calls(model):
        p = plan.plan(layout_of(model))
        return sorted(g.instrs[0].note for g in p.groups if g.split == "call")

    def fused(model):
        p = plan.plan(layout_of(model))
        return {ins.note for g in p.groups if g.space is not None for ins in g.instrs
                if ins.op is Op.GEMM}

    assert calls(thin) == ["A1·W2", "Xᵀ·δ1"]
    assert {"δ2·W2ᵀ", "A1ᵀ·δ2"} <= fused(thin)
    monkeypatch.setattr(plan, "THIN", 0)  # the same network with every product a call
    called = sn.compile(loss, inputs=[X], targets=[Y], optimizer=opt, dtype="float64", seed=1)
    assert calls(called) == ["A1·W2", "A1ᵀ·δ2", "X·W1", "Xᵀ·δ1", "δ2·W2ᵀ"]
    Xb, Yb = make_data(n=23, cols=6, out=4, seed=2)
    (loss0, grads0), *others = (m.loss_and_grad(Xb, Yb) for m in (thin, called, reference))
    for value, grads in others:
        assert loss0 == pytest.approx(value, rel=1e-12)
        for k in grads:
            np.testing.assert_allclose(grads0[k], grads[k], rtol=1e-10, atol=1e-14, err_msg=k)
    for m in (thin, called, reference):
        m.fit(Xb, Yb, epochs=2, batch_size=10, verbose=False)
    for m in (called, reference):
        assert_same_params(thin, m, atol=1e-14)


def test_blas_products_on_a_short_batch_use_the_first_rows_of_the_workspaces():
    """Workspaces are sized for the largest batch seen; a shorter batch's products (one of
    them into a batch-minor workspace) work on its first rows, with the full row length as the
    leading dimension."""
    X, Y = sn.Input("X", 20), sn.Input("Y", 3)
    out = sn.dense(sn.dense(X, 32, sn.tanh), 3)
    models = both(sn.softmax_cross_entropy(out, Y), X, Y, sn.optim.Adam(lr=0.01), prediction=out)
    assert buffer_of(models[0], "A1·W2") in layout_of(models[0]).minor
    Xb, Yb = make_data(n=23, cols=20, out=3, kind="onehot", seed=3)
    for rows in (23, 7):  # the second call runs on workspaces sized for 23 rows
        (l1, g1), (l2, g2) = (m.loss_and_grad(Xb[:rows], Yb[:rows]) for m in models)
        assert l1 == pytest.approx(l2, rel=1e-10)
        for k in g1:
            np.testing.assert_allclose(g1[k], g2[k], rtol=1e-10, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(models[0].predict(Xb[:5]), models[1].predict(Xb[:5]), rtol=1e-10)
    for m in models:  # batches of 10, 10 and 3 rows
        m.fit(Xb, Yb, epochs=2, batch_size=10, verbose=False)
    assert_same_params(*models)


def test_a_workspace_starts_far_from_every_other_array():
    """A vectorised loop that writes one array takes its scalar copy, whose sums round
    differently, when the written array starts just above one it reads: a workspace's data
    starts ``GUARD`` bytes into its own allocation, so the numbers do not depend on where the
    allocator put the arrays."""
    arrays = []
    for k in range(40):  # workspaces among other small arrays, as a model's lie in memory
        arrays.append(("workspace", runner._alloc((BATCH, 3 + k % 5), 16, np.float32,
                                                   minor=k % 2)))
        arrays.append(("other", np.zeros((16, 3), np.float32)))
    for kind, w in arrays:
        if kind != "workspace":
            continue
        assert w.ctypes.data % 64 == 0 and w.flags.c_contiguous and w.flags.writeable
        for _, a in arrays:
            assert not 0 < w.ctypes.data - a.ctypes.data < runner.GUARD


def test_train_epochs_gathers_narrow_inputs_batch_minor():
    """train_epochs copies each batch's rows of a narrow input (the 3-class targets) into a
    batch-minor buffer; loss_and_grad, called with the caller's n×c arrays, reads them row by
    row. Training agrees with the numpy reference over short last batches and after the batch
    buffers grow."""
    X, Y = sn.Input("X", 20), sn.Input("Y", 3)
    out = sn.dense(sn.dense(X, 32, sn.sigmoid), 3, sn.sigmoid)
    models = both(sn.mse(out, Y), X, Y, sn.optim.AdaGrad(lr=0.1))
    entries = models[0]._runner().entries
    assert "Y" in entries["train_epochs"].layout.minor and "X" not in entries["train_epochs"].layout.minor
    assert "Y" not in entries["loss_and_grad"].layout.minor
    Xb, Yb = make_data(n=23, cols=20, out=3, kind="onehot", seed=4)
    for m in models:  # batches of 4 (the last of 3 rows), then of 10 (the last of 3)
        m.fit(Xb, Yb, epochs=1, batch_size=4, verbose=False)
        m.fit(Xb, Yb, epochs=2, batch_size=10, verbose=False)
    assert_same_params(*models)


def test_float32_is_the_default_and_kernels_compute_in_it():
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    out = sn.dense(sn.dense(X, 6, sn.sigmoid), 3)
    model = sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y], prediction=out)
    assert model.backend == "numba" and model.params["W1"].dtype == np.float32
    assert "DT = np.float32" in model.source
    assert "vexp(" in model.source and "math.exp" not in model.source  # intrinsics.vecmath's exp
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
        r = m._runner()
        print(r.module.__file__, int(r.cached("train_epochs")))
    """)
    env = {**os.environ, "SYMNET_CACHE_DIR": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                           check=True).stdout.split() for _ in range(2)]
    assert runs[0][0] == runs[1][0] and runs[0][0].startswith(str(tmp_path))
    assert runs[0][1] == "0" and runs[1][1] == "1"  # the second run loaded the machine code
    source = Path(runs[0][0]).read_text()
    assert f"codegen version {emit.CODEGEN_VERSION}" in source


def test_the_cache_key_covers_every_codegen_module_the_kernels_compile_in(monkeypatch, tmp_path):
    # numba's cache checks only the generated file: a change to codegen.numba.runtime, say,
    # must give the kernels a new name, or machine code built from the old one is loaded
    X, Y = sn.Input("X", 300), sn.Input("Y", 2)
    out = sn.dense(sn.dense(X, 20, sn.relu), 2)
    m = sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], prediction=out, seed=0)
    imported = set(re.findall(r"^from (codegen\.[\w.]+) import", m.source, re.M))
    assert {"codegen.intrinsics.blas", "codegen.numba"} <= imported
    files = {".".join(p.relative_to(Path(emit.__file__).parents[2]).with_suffix("").parts)
             for p in runner.runtime_files()}
    assert imported <= files | {"codegen.numba"}
    assert "codegen.numba.runtime" in files
    first = m._runner().module.__name__
    monkeypatch.setattr(runner, "_runtime_digest", lambda: "a changed codegen module")
    assert runner.NumbaRunner(m._programs, m._update, "float32").module.__name__ != first


def test_tiny_products_are_loops_and_large_ones_blas_tiles():
    X, Y = sn.Input("X", 1), sn.Input("Y", 1)
    small = sn.compile(sn.mse(sn.dense(sn.dense(X, 10, sn.relu), 1), Y), inputs=[X], targets=[Y])
    p = plan.plan(layout_of(small))
    assert not [g for g in p.groups if g.split == "call"]
    assert buffer_of(small, "relu(Z1)") in p.layout.minor  # 10 wide: batch innermost
    X = sn.Input("X", 64)
    large = sn.compile(sn.mse(sn.dense(sn.dense(X, 32, sn.relu), 1), Y), inputs=[X], targets=[Y])
    p = plan.plan(layout_of(large))
    assert sorted(g.instrs[0].note for g in p.groups if g.split == "call") == ["X·W1", "Xᵀ·δ1"]
    writer = emit.KernelWriter("k", large._programs["loss_and_grad"], p.layout, {})
    grad = next(g.instrs[0] for g in p.groups if g.instrs[0].note == "Xᵀ·δ1")
    assert writer.stored_product(grad)[2][:2] == ("X", True)  # a transpose is a BLAS flag


def test_a_products_tiles_cut_its_longer_side_which_the_batch_may_decide_at_run_time():
    """Tiles cut the longer side of a product's output, so that the operand each tile packs
    again is the smaller one. Beside the batch the kernel decides when it knows the batch:
    X·W1 (a phase of its own) and δ2·W2ᵀ (beside A1ᵀ·δ2), stored 160×n, are cut along the batch
    in batches of 200 rows and along their 160 rows in batches of 100, with the numbers of the
    numpy reference."""
    assert emit.cut_rows("1024", "512") is True and emit.cut_rows("784", "1024") is False
    assert emit.cut_rows("n", "160") == "n >= 160" and emit.cut_rows("160", "n") == "n <= 160"
    X, Y = sn.Input("X", 64), sn.Input("Y", 3)
    loss = sn.softmax_cross_entropy(sn.dense(sn.dense(sn.dense(X, 160, sn.relu), 160, sn.relu),
                                             3), Y)
    models = both(loss, X, Y, sn.optim.SGD(lr=0.1, momentum=0.9))
    p = plan.plan(layout_of(models[0]))
    program, used = models[0]._programs["loss_and_grad"], set()
    writer = emit.KernelWriter("k", program, p.layout,
                               {b.name: identifier(b.name, used) for b in program.buffers})
    for note in ("X·W1", "δ2·W2ᵀ"):
        group = next(g for g in p.groups if g.instrs[0].note == note)
        assert writer.stored_product(group.instrs[0])[0] == ("160", "n")
        assert writer.axis(group)[0] == "max(n, 160)"
    assert writer.lone_product([next(g for g in p.groups if g.instrs[0].note == "X·W1")])
    assert any({"δ2·W2ᵀ", "A1ᵀ·δ2"} <= {p.groups[k].instrs[0].note for k in phase}
               for phase in p.phases)
    for rows in (200, 100):  # two tiles either way (protocol.tile)
        assert protocol.tile(max(rows, 160), rows * 160 * 64, plan.GEMM_PIECE,
                             protocol.product_least(max(rows, 160))) == max(rows, 160) // 2
    Xb, Yb = make_data(n=400, cols=64, out=3, seed=4)
    for rows in (200, 100):
        (l1, g1), (l2, g2) = (m.loss_and_grad(Xb[:rows], Yb[:rows]) for m in models)
        assert l1 == pytest.approx(l2, rel=1e-10)
        for k in g1:
            np.testing.assert_allclose(g1[k], g2[k], rtol=1e-10, atol=1e-12, err_msg=k)
        for m in models:
            m.fit(Xb, Yb, epochs=1, batch_size=rows, verbose=False)
        assert_same_params(*models)


def test_a_phase_holds_groups_that_do_not_depend_on_each_other():
    """δ2·W2ᵀ and A1ᵀ·δ2 both read δ2 and neither the other: one phase; a group that reads a
    value of the phase before waits for it."""
    X, Y = sn.Input("X", 64), sn.Input("Y", 48)
    loss = sn.mse(sn.dense(sn.dense(X, 40, sn.relu), 48), Y)
    p = plan.plan(layout_of(sn.compile(loss, inputs=[X], targets=[Y])))
    notes = [{ins.note for k in phase for ins in p.groups[k].instrs} for phase in p.phases]
    assert any({"δ2·W2ᵀ", "A1ᵀ·δ2"} <= phase for phase in notes)
    for before, after in zip(p.phases, p.phases[1:]):
        writes = set().union(*(p.groups[k].writes for k in before))
        for k in after:
            assert not (p.groups[k].writes & writes)


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
    # so it cannot unroll a loop over range(opaque(c)) (emit.KernelWriter.fused)
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


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_gemm_tiles_make_up_the_whole_product(ta, tb):
    @nb.njit
    def tiled(ta, a, tb, b, out, m, n, k, rows, cols):
        for i0 in range(0, m, rows):
            for j0 in range(0, n, cols):
                gemm_at(ta, a, tb, b, out, 1.0, 0.0, min(rows, m - i0), min(cols, n - j0), k,
                        i0, j0)

    rng = np.random.default_rng(1)
    a = rng.standard_normal((9, 11) if ta else (11, 9))
    b = rng.standard_normal((13, 9) if tb else (9, 13))
    out = np.full((12, 14), np.nan)  # larger than the product: the rest is not touched
    tiled(ta, a, tb, b, out, 11, 13, 9, 4, 5)
    np.testing.assert_allclose(out[:11, :13], (a.T if ta else a) @ (b.T if tb else b), rtol=1e-12)
    assert np.isnan(out[11]).all() and np.isnan(out[:, 13]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_calls_a_blas_for_small_and_for_large_products_alike(dtype):
    # below blas.SMALL multiply-adds a product calls OpenBLAS, from it the chosen BLAS (MKL on
    # an Intel CPU with the test extra): both are right, in both layouts of each operand
    from codegen.intrinsics import blas

    @nb.njit
    def call(ta, a, tb, b, out, m, n, k):
        gemm(ta, a, tb, b, out, 1.0, 0.0, m, n, k)

    rng = np.random.default_rng(2)
    for m, n, k in [(99, 100, 100), (100, 100, 100), (128, 96, 200)]:
        assert (m * n * k < blas.SMALL) == (m == 99)
        for ta, tb in [(False, False), (True, True)]:
            a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
            b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
            out = np.zeros((m, n), dtype)
            call(ta, a, tb, b, out, m, n, k)
            expected = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b)
            np.testing.assert_allclose(out, expected, rtol=1e-4 if dtype == np.float32 else 1e-12,
                                       atol=1e-3 if dtype == np.float32 else 1e-11)


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


def _small(seed=0):
    X, Y = sn.Input("X", 6), sn.Input("Y", 3)
    out = sn.dense(sn.dense(X, 7, sn.tanh), 3)
    return sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y], prediction=out,
                      seed=seed, dtype="float64")


def test_models_of_one_declaration_share_its_compiled_kernels(tmp_path):
    """numba never frees a compiled function: a model loaded, unpickled or compiled again takes
    the process's compiled kernels instead of compiling (and keeping) its own."""
    import pickle

    first = _small()
    first.predict(np.zeros((2, 6)))
    first.save(tmp_path / "m.npz")
    for other in (sn.load(tmp_path / "m.npz"), pickle.loads(pickle.dumps(first)), _small(1)):
        assert other._runner() is not first._runner()
        other.predict(np.zeros((2, 6)))
        assert other._runner().compiled["forward"] is first._runner().compiled["forward"]
        assert other._runner().cached("forward")


def test_no_kernel_call_keeps_the_callers_arrays_alive():
    import weakref

    model = _small()
    X, Y = make_data(40, 6, 3)
    X, Y = X.astype(np.float64), Y.astype(np.float64)
    model.fit(X, Y, epochs=1, batch_size=8, verbose=False)
    model.predict(X)
    model.evaluate(X, Y)
    refs = [weakref.ref(X), weakref.ref(Y)]
    del X, Y
    assert [r() for r in refs] == [None, None]
