"""Training with symnet's helper thread (codegen.pool): the same numbers as without it, bit for
bit, OpenBLAS's jobs on the helper, and no thread or lock left behind, even when a step diverges
or the helper cannot start."""

import ctypes
import threading

import numba as nb
import numpy as np
import pytest
import sympy as sp

import symnet as sn
from codegen import pace, pool
from codegen.blas import LIBRARY
from codegen.ir import Buffer, Instr, Op, Program, arg_symbols
from codegen.numba_backend import Kernel


@pytest.fixture
def two_blas_threads():
    """The helper is used only with two OpenBLAS threads, whatever this machine's default."""
    before = pool.blas_threads()
    LIBRARY.scipy_openblas_set_num_threads(2)
    yield
    LIBRARY.scipy_openblas_set_num_threads(before)


def model(lr=1e-3, backend="numba", dtype="float32"):
    # W1 is 256×256: large enough to be updated in halves, X·W1 on a 128-row batch large enough
    # for OpenBLAS to split it into two jobs, and the hidden layer wide enough to be stored
    # batch-minor (numba_backend.WIDE)
    X, Y = sn.Input("X", 256), sn.Input("Y", 3)
    out = sn.dense(sn.dense(X, 256, sn.relu), 3)
    return sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y],
                      prediction=out, optimizer=sn.optim.Adam(lr=lr), seed=0, backend=backend,
                      dtype=dtype)


def data(rows=400):
    rng = np.random.default_rng(0)
    return rng.normal(size=(rows, 256)), np.eye(3)[rng.integers(0, 3, rows)]


def helpers():
    return [t for t in threading.enumerate() if t.name == "symnet-helper"]


def test_the_generated_code_shares_the_wide_nests_and_large_updates_between_the_threads():
    source = model().source
    # one statement for both threads: the main thread's half first, the helper's second
    assert "r0, r1 = pool.share(role, par, W1.shape[0])\n" in source
    assert "update_entries(W1, t" in source and "r0, r1)" in source
    assert "update_entries(b1, t" in source and "lo, b1.shape[0])" in source  # small: never split
    assert source.count("j0, j1 = pool.share(role, par, opaque(256))") == 2  # relu(X·W1 + b1)
    assert source.count("for j in range(j0, j1):") == 2  # and its gradient's mask
    assert source.count("pool.begin(role, par, phase)") == 4  # and the gather and the update
    assert source.count("pool.end(role, par, phase)") == 4


def test_a_wide_nest_with_a_sum_across_its_columns_is_not_shared():
    # the threads would add into the same row sums: such a nest stays on the main thread
    x, = arg_symbols(1)
    prog = Program(
        buffers=(Buffer("X", ("n", 256), "input"), Buffer("W", (256, 256), "param"),
                 Buffer("Z", ("n", 256)), Buffer("A", ("n", 256)), Buffer("S", ("n", 1)),
                 Buffer("L", (1, 1))),
        instrs=(Instr(Op.GEMM, "Z", ("X", "W")), Instr(Op.MAP, "A", ("Z",), sp.tanh(x)),
                Instr(Op.ROWSUM, "S", ("A",)), Instr(Op.COLSUM, "L", ("S",))),
        outputs=(("loss", "L"),))
    kernel = Kernel("k", prog)
    nests = [g for g in kernel.schedule() if kernel.space(g[0]) == ("n", "256")]
    assert [[ins.op for ins in g] for g in nests] == [[Op.MAP, Op.ROWSUM]]
    assert {"Z", "A"} <= kernel.minor and kernel.shared(nests[0]) is None
    assert kernel.shared(nests[0][:1]) == 256  # the same nest without the sum


def test_training_with_the_helper_agrees_with_the_numpy_backend(two_blas_threads):
    X, Y = data()
    pooled, reference = model(dtype="float64"), model(backend="numpy", dtype="float64")
    pool.CONTROL[pool.FN] = 0
    for m in (pooled, reference):
        m.fit(X, Y, epochs=2, batch_size=128, verbose=False)
    assert "pool.begin(role, par, phase)" in pooled.source
    assert pool.CONTROL[pool.FN] != 0  # OpenBLAS handed a job to the helper
    for k in reference.params:
        np.testing.assert_allclose(pooled.params[k], reference.params[k], rtol=1e-10, atol=1e-13)


def test_training_with_the_helper_gives_the_same_numbers_bit_for_bit(two_blas_threads, monkeypatch):
    X, Y = data()
    used = []
    helper = pool.helper

    def recording(serve):
        with helper(serve) as pooled:
            used.append(pooled)
            yield pooled

    monkeypatch.setattr(pool, "helper", pool.contextlib.contextmanager(recording))
    pool.CONTROL[pool.FN] = 0
    pooled = model()
    pooled.fit(X, Y, epochs=3, batch_size=128, verbose=False)
    assert used and all(used)
    assert pool.CONTROL[pool.FN] != 0  # OpenBLAS handed a job to the helper
    monkeypatch.setenv("SYMNET_POOL", "0")
    alone = model()
    used.clear()
    alone.fit(X, Y, epochs=3, batch_size=128, verbose=False)
    assert used and not any(used)
    for k in alone.params:
        np.testing.assert_array_equal(pooled.params[k], alone.params[k])
        for s in alone._state[k]:
            np.testing.assert_array_equal(pooled._state[k][s], alone._state[k][s])
    assert not helpers()


def _trained(pinned, X, Y, epochs=3):
    m = model()
    runner = m._runner()
    runner.pinned = pinned
    m.fit(X, Y, epochs=epochs, batch_size=128, verbose=False)
    return m, runner.tuning[128]


def test_one_thread_and_switching_between_modes_give_the_same_numbers_bit_for_bit(
        two_blas_threads):
    # where OpenBLAS blocks the products alike on one thread and two: inner dimensions of 256
    # and 128 (it cuts some longer ones differently, hence pacing only with SYMNET_POOL=auto)
    X, Y = data(4000)  # ~0.1 s of training: the watcher's windows are 4 ms
    helper, tune_h = _trained(pace.PIN_HELPER, X, Y, epochs=30)
    assert pool.CONTROL[pool.NOW] == pace.HELPER  # each pinned call trained in its mode
    solo, tune_s = _trained(pace.PIN_SOLO, X, Y, epochs=30)
    assert pool.CONTROL[pool.NOW] == pace.SOLO
    mixed, tune_m = _trained(pace.ALTERNATE, X, Y, epochs=30)
    assert tune_m[pace.SWITCHES] >= 2 and tune_m[pace.ROWS_H] > 0 and tune_m[pace.ROWS_S] > 0
    for m in (solo, mixed):
        for k in helper.params:
            np.testing.assert_array_equal(m.params[k], helper.params[k])
            for s in helper._state[k]:
                np.testing.assert_array_equal(m._state[k][s], helper._state[k][s])
    assert pool.blas_threads() == 2 and not helpers()  # one thread was OpenBLAS's for the call
    assert not [t for t in threading.enumerate() if t.name == "symnet-pace"]


def test_pacing_chooses_only_with_symnet_pool_auto(two_blas_threads, monkeypatch):
    X, Y = data(1000)
    m = model()
    m.fit(X, Y, epochs=2, batch_size=128, verbose=False)
    tune = m._runner().tuning[128]
    assert tune[pace.FORCE] == pace.PIN_HELPER and tune[pace.ROWS_H] == 0  # no watcher
    monkeypatch.setenv("SYMNET_POOL", "auto")
    m.fit(X, Y, epochs=2, batch_size=128, verbose=False)
    assert tune[pace.FORCE] == pace.ADAPT


def _windows(costs, mode=pace.HELPER, **slots):
    """``codegen.pace.decide`` (as Python) over windows of the given costs: the modes it chose."""
    tune = np.zeros(pace.SLOTS, np.int64)
    tune[pace.MODE] = mode
    for k, v in slots.items():
        tune[getattr(pace, k)] = v
    chosen = []
    for cost in costs:
        mode = pace.decide(tune, cost)
        if mode != tune[pace.MODE]:
            tune[pace.MODE], tune[pace.COUNT] = mode, 0
        chosen.append(int(mode))
    return chosen, tune


H, S = pace.HELPER, pace.SOLO


def test_pacing_stays_on_the_helper_through_noise_and_single_slow_windows():
    chosen, _ = _windows([100, 104, 98, 190, 101, 99, 180, 170, 100, 100])
    assert chosen == [H] * 10  # two slow windows in a row are not yet a spell


def test_pacing_stays_on_the_helper_while_it_is_slower_than_lately_but_not_than_one_thread():
    k = 1000  # costs of a real size, for the drift of 1/256 a window
    chosen, tune = _windows([100 * k] * 5 + [150 * k] * 10, COST_S=200 * k)
    assert chosen == [H] * 15
    assert 188 * k < tune[pace.COST_S] < 200 * k  # it drifts: one high measurement does not last
    chosen, tune = _windows([100 * k] * 5 + [150 * k] * 10, COST_S=160 * k)  # 7/8 of it: 140 k
    assert chosen[:8] == [H] * 7 + [S]


def test_pacing_goes_to_one_thread_in_a_spell_and_back_after_it():
    spell, solo = 180, 140  # the helper 80 % slower, one thread 40 % slower than the quiet helper
    chosen, tune = _windows([100] * 5 + [spell] * 3)
    assert chosen == [H] * 7 + [S]
    assert tune[pace.COST_H] == spell
    # then the helper for a window to see if the spell is over, after 2, 4, 8, 16, 16 windows
    windows = [solo] * pace.FIRST_PROBE + [spell] + [solo] * 4 + [spell] + [solo] * 8 + [spell] + \
        [solo] * 16 + [spell] + [solo] * 16 + [spell]
    chosen, tune = _windows(windows, mode=S, COST_H=spell, BEST_H=100, SLOW=pace.SLOW_RUN)
    assert chosen == [S] * 1 + [H] + [S] * 4 + [H] + [S] * 8 + [H] + [S] * 16 + [H] + \
        [S] * 16 + [H] + [S]  # each time one slow window on the helper sends it back
    assert tune[pace.BEST_H] == 100
    chosen, _ = _windows([solo, 101, 100], mode=S, COST_H=spell, BEST_H=100,
                         SLOW=pace.SLOW_RUN, PERIOD=pace.PROBE, COUNT=pace.PROBE - 1)
    assert chosen == [H, H, H]  # over


def test_pacing_stays_on_one_thread_through_a_long_spell():
    # each visit to the helper in a spell is slow; it must not come to look like the new normal
    tune = np.zeros(pace.SLOTS, np.int64)
    cost = {H: 100, S: 140}
    seen = []
    for window in range(3000):
        if window == 200:
            cost[H] = 180  # the spell
        mode = pace.decide(tune, cost[int(tune[pace.MODE])])
        if mode != tune[pace.MODE]:
            tune[pace.MODE], tune[pace.COUNT] = mode, 0
        seen.append(int(mode))
    assert seen[:200] == [H] * 200
    in_spell = seen[300:]
    assert in_spell.count(S) / len(in_spell) >= pace.PROBE / (pace.PROBE + 1) - 0.01


def test_pacing_returns_to_the_helper_when_one_thread_is_no_faster_and_holds_on():
    # slow windows that one thread does not beat (another process on the machine, say), in
    # cycles per 1,024 rows of a real size: the lowest cost rises by 1/64 of it per window
    chosen, tune = _windows([150_000] * 3, BEST_H=100_000)
    assert chosen == [H, H, S]
    chosen, tune = _windows([160_000], mode=S, COST_H=tune[pace.COST_H],
                            BEST_H=tune[pace.BEST_H], SLOW=tune[pace.SLOW])
    assert chosen == [H] and tune[pace.HOLDING] == pace.HOLD
    chosen, tune = _windows([150_000] * (pace.HOLD + 20), BEST_H=tune[pace.BEST_H],
                            HOLDING=tune[pace.HOLDING], SLOW=tune[pace.SLOW])
    # held for HOLD windows; by then the lowest cost seen has risen to the new normal
    assert chosen == [H] * (pace.HOLD + 20)
    assert tune[pace.BEST_H] == 150_000


def test_a_diverging_step_stops_the_helper_and_training_can_go_on(two_blas_threads):
    X, Y = data(256)
    m = model(lr=1e30)
    with pytest.raises(sn.DataError, match="before this step"):
        m.fit(X * 1e30, Y, epochs=2, batch_size=128, verbose=False)
    assert not helpers()
    fine = model()
    fine.fit(X, Y, epochs=1, batch_size=128, verbose=False)
    assert all(np.isfinite(v).all() for v in fine.params.values())


def test_a_helper_that_cannot_start_raises_on_the_calling_thread_and_frees_the_lock(
        two_blas_threads):
    def broken():
        raise ValueError("no helper today")

    with pytest.raises(ValueError, match="no helper today"), pool.helper(broken):
        pass
    free = []

    def try_lock():  # from another thread: the calling thread's RLock would let it in anyway
        free.append(pool.LOCK.acquire(blocking=False))
        if free[-1]:
            pool.LOCK.release()

    other = threading.Thread(target=try_lock)
    other.start()
    other.join()
    assert free == [True] and not helpers()


@nb.njit(nogil=True)
def _serve_blas_jobs():
    """The helper's wait for a phase that the main thread never begins: OpenBLAS's jobs, until
    it is told to exit."""
    pool.store(pool.UP, 1)
    told_to_exit = pool.begin(2, True, 0) < 0
    pool.store(pool.UP, 0)
    return told_to_exit


def test_openblas_jobs_run_as_threads_that_are_not_its_own_worker(two_blas_threads):
    # OpenBLAS marks thread k's slot busy while job k runs; slot 0 is its worker's, which then
    # never went back to sleep and spun beside the helper (codegen.pool._MAIN_JOB_SLOT)
    seen = []
    job = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
    record = job(lambda thread, data, arg: seen.append((thread, data - jobs_at, arg)))
    callback = ctypes.CFUNCTYPE(None, ctypes.c_int, job, ctypes.c_int, ctypes.c_size_t,
                                ctypes.c_void_p, ctypes.c_int)(pool._callback_address())
    jobs = (ctypes.c_char * 64)()
    jobs_at = ctypes.addressof(jobs)
    with pool.helper(_serve_blas_jobs) as pooled:
        assert pooled
        callback(1, record, 2, 32, jobs_at, 7)  # two jobs of 32 bytes each
    assert sorted(seen) == [(1, 0, 7), (2, 32, 7)]  # each job once, neither as thread 0
    assert pool.BLAS_SLOTS > 2


def test_an_interrupt_while_the_helper_starts_stops_it_and_training_goes_on(two_blas_threads,
                                                                            monkeypatch):
    # Thread.start waits for the new thread: a Ctrl-C there used to leave the helper running
    X, Y = data()
    start = threading.Thread.start

    def interrupted(self):
        start(self)
        if self.name == "symnet-helper":
            raise KeyboardInterrupt

    m, reference = model(), model()
    monkeypatch.setattr(threading.Thread, "start", interrupted)
    with pytest.raises(KeyboardInterrupt):
        m.fit(X, Y, epochs=1, batch_size=128, verbose=False)
    monkeypatch.undo()
    assert not helpers() and m._steps == 0
    m.fit(X, Y, epochs=2, batch_size=128, verbose=False, seed=3)
    reference.fit(X, Y, epochs=2, batch_size=128, verbose=False, seed=3)
    for k in reference.params:
        np.testing.assert_array_equal(m.params[k], reference.params[k])
