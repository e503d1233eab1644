"""Training with symnet's helper thread (codegen.pool): the same numbers as without it, bit for
bit, OpenBLAS's jobs on the helper, and no thread or lock left behind, even when a step diverges
or the helper cannot start."""

import ctypes
import threading

import numba as nb
import numpy as np
import pytest

import symnet as sn
from codegen import pool
from codegen.blas import LIBRARY


@pytest.fixture
def two_blas_threads():
    """The helper is used only with two OpenBLAS threads, whatever this machine's default."""
    before = pool.blas_threads()
    LIBRARY.scipy_openblas_set_num_threads(2)
    yield
    LIBRARY.scipy_openblas_set_num_threads(before)


def model(lr=1e-3):
    # W1 is 256×128: large enough to be updated in halves, and X·W1 on a 128-row batch large
    # enough for OpenBLAS to split it into two jobs
    X, Y = sn.Input("X", 256), sn.Input("Y", 3)
    out = sn.dense(sn.dense(X, 128, sn.relu), 3)
    return sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y],
                      prediction=out, optimizer=sn.optim.Adam(lr=lr), seed=0)


def data(rows=400):
    rng = np.random.default_rng(0)
    return rng.normal(size=(rows, 256)), np.eye(3)[rng.integers(0, 3, rows)]


def helpers():
    return [t for t in threading.enumerate() if t.name == "symnet-helper"]


def test_the_generated_update_gives_the_helper_the_second_half_of_large_parameters():
    source = model().source
    assert "lo, W1.shape[0] // 2 if role == 1 else W1.shape[0])" in source
    assert "W1.shape[0] // 2, W1.shape[0])" in source  # the helper's half, in its role == 2 loop
    assert "update_entries(b1, t" in source and "lo, b1.shape[0])" in source  # small: never split


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
    """The helper's loop, reduced to OpenBLAS's jobs."""
    pool.store(pool.UP, 1)
    while True:
        job = pool.load(pool.JOB)
        if job == pool.BLAS:
            pool.run_blas_job()
        elif job == pool.EXIT:
            break
        else:
            pool.pause()
    pool.store(pool.UP, 0)


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
