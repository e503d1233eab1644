"""The thread team (codegen.numba.runtime): any thread count gives the same numbers bit for bit,
a kernel takes any number of arrays (a 24-layer network), a busy neighbour changes nothing but
time, and a forked child gets a team of its own."""

import ctypes
import os
import subprocess
import sys
import textwrap
import warnings

import numba as nb
import numpy as np
import pytest

import symnet as sn
from codegen.numba import protocol
from codegen.numba import runtime as rt


@nb.njit(nogil=True)
def _pieces(blk_addr, tid):
    """A test kernel: phases of pieces, each piece recording its value and the thread that
    computed it."""
    blk = rt.block(blk_addr, 32)
    team = blk[0]
    phases, count, work = blk[1], blk[2], blk[3]
    values = rt.array(blk, 16, np.float64)
    threads = rt.array(blk, 19, np.int64)
    base = 0
    for phase in range(phases):
        p = rt.claim(team, base, count, -1, tid)
        while p >= 0:
            acc = 0.0
            for i in range(work):
                acc += np.sqrt(i + p + phase * count + (values[phase - 1, p] if phase else 0.0))
            values[phase, p] = acc
            threads[phase, p] = tid
            p = rt.next(team, base, count, p, tid)
        base = rt.wait(team, base, count, tid)


_KERNEL = rt.compile_kernel(_pieces.py_func, cache=False)[1]


def run_pieces(phases=40, count=6, work=3000, step_work=None):
    """(values, the thread of each piece, the team's address or 0 alone); ``step_work`` is the
    work run() is told of."""
    values, threads = np.zeros((phases, count)), np.full((phases, count), -1, np.int64)
    blk = np.zeros(32, np.int64)
    blk[1:4] = phases, count, work
    blk[16:19] = values.ctypes.data, phases, count
    blk[19:22] = threads.ctypes.data, phases, count
    rt.run(_KERNEL, blk, step_work)
    return values, threads, int(blk[0])


def test_the_team_takes_pieces_on_every_thread_and_computes_them_alike(monkeypatch):
    """Which threads take pieces depends on which get a core: on a busy machine a worker may
    wake only after a short kernel has ended, so the kernel is long here (~30 ms) and sharing
    is asked of one of a few runs, equal numbers of every run."""
    monkeypatch.setenv("SYMNET_NUM_THREADS", "1")
    alone, threads, team = run_pieces(work=30_000)
    assert (threads == 0).all() and team == 0
    for count in ("2", "4"):
        monkeypatch.setenv("SYMNET_NUM_THREADS", count)
        shared = False
        for _ in range(10):
            values, threads, team = run_pieces(work=30_000)
            np.testing.assert_array_equal(values, alone)  # each piece reads the phase before's
            assert team != 0 and (threads >= 0).all() and threads.max() < int(count)
            shared = shared or len(np.unique(threads)) > 1
            if shared:
                break
        assert shared, threads


def test_while_threads_wait_for_cores_small_steps_run_alone_until_the_team_is_tried_again(
        monkeypatch):
    """A team call whose threads were on a core for half its time (a busy neighbour) sends
    small steps to the calling thread alone, large ones still to the team, for RETRY seconds;
    a call with its threads on their cores, or a short one, decides nothing new."""
    monkeypatch.setenv("SYMNET_NUM_THREADS", "2")
    load = rt._Load()
    monkeypatch.setattr(rt, "_load", load)
    monkeypatch.setattr(rt, "others_running", lambda samples: 1)  # the neighbour runs on
    reference, _, _ = run_pieces()
    small, large = rt.PARALLEL_WORK, rt.ALONE_UNDER_LOAD
    load.record(cpu=0.1, wall=0.1, count=2)
    assert load.contended()
    values, threads, team = run_pieces(step_work=small)
    assert team == 0 and (threads == 0).all()
    np.testing.assert_array_equal(values, reference)
    assert run_pieces(step_work=large)[2] != 0
    load.record(cpu=0.1, wall=0.1, count=2)  # whatever that call measured
    load.record(cpu=0.001, wall=0.001, count=2)  # too short to judge
    assert load.contended()
    monkeypatch.setattr(rt.time, "monotonic", lambda: load.until + 1)  # RETRY has passed
    assert run_pieces(step_work=small)[2] != 0
    load.record(cpu=0.19, wall=0.1, count=2)
    assert not load.contended()


@pytest.mark.parametrize("others, alone", [(0, False), (1, True), (None, True)])
def test_a_wait_for_cores_sends_calls_alone_only_while_other_processes_still_run(
        monkeypatch, others, alone):
    """A neighbour that has gone (0 other threads running now) ends the verdict at once: else
    a whole ``fit``, one call, ran at one thread's speed after a passing neighbour; without
    ``/proc`` (None) the verdict holds for RETRY seconds."""
    monkeypatch.setenv("SYMNET_NUM_THREADS", "2")
    load = rt._Load()
    monkeypatch.setattr(rt, "_load", load)
    readings = []
    monkeypatch.setattr(rt, "others_running", lambda samples: readings.append(1) or others)
    load.record(cpu=0.1, wall=0.1, count=2)
    assert load.contended() is alone
    assert (load.until > 0) is alone  # a free machine is not asked again
    assert (run_pieces(step_work=rt.PARALLEL_WORK)[2] == 0) is alone
    if alone:  # (the team's call above may have judged anew where it ran)
        assert load.contended() and len(readings) == 1  # one reading per RECHECK


def test_the_thread_count_comes_from_the_environment_or_the_cores(monkeypatch):
    monkeypatch.setattr(rt, "_warned", set())  # each warning once a process
    monkeypatch.setenv("SYMNET_NUM_THREADS", "3")
    assert rt.threads() == 3
    monkeypatch.delenv("SYMNET_NUM_THREADS")
    assert rt.threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("SYMNET_NUM_THREADS", "many")
    with pytest.warns(UserWarning, match="not a positive integer"):
        assert rt.threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("SYMNET_NUM_THREADS", "1000")
    monkeypatch.setattr(rt, "cores", lambda: 2)
    with pytest.warns(UserWarning, match="more than a team's 256 threads; using 256") as seen, \
            pytest.warns(UserWarning, match="threads for each of the"):
        assert rt.threads() == protocol.MAX_THREADS
    assert seen[0].filename == __file__  # the caller's line, not codegen's


def _cgroup(tmp_path, own: str, files: dict[str, str]):
    """A fake /proc/self/cgroup of ``own`` lines and a cgroup tree of ``files``; its roots."""
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "cgroup").write_text(own)
    for name, text in files.items():
        (tmp_path / "cg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cg" / name).write_text(text)
    return str(tmp_path / "cg"), str(tmp_path / "proc")


@pytest.mark.parametrize("own, files, quota", [
    ("0::/\n", {"cpu.max": "max 100000\n"}, None),  # v2, no quota
    ("0::/\n", {"cpu.max": "150000 100000\n"}, 2),  # a container's --cpus=1.5
    ("0::/user.slice/run\n", {"cpu.max": "max 100000", "user.slice/cpu.max": "100000 100000",
                              "user.slice/run/cpu.max": "300000 100000"}, 1),  # a parent's
    ("0::/host/path\n", {"cpu.max": "200000 100000"}, 2),  # the host's path, unseen
    ("2:cpu,cpuacct:/job\n1:memory:/\n", {"cpu,cpuacct/cpu.cfs_quota_us": "-1",
                                            "cpu,cpuacct/cpu.cfs_period_us": "100000",
                                            "cpu,cpuacct/job/cpu.cfs_quota_us": "50000",
                                            "cpu,cpuacct/job/cpu.cfs_period_us": "100000"}, 1),
    ("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
    ("", {}, None),  # no cgroups
])
def test_a_cgroup_cpu_quota_counts_as_fewer_cores(tmp_path, own, files, quota):
    root, proc = _cgroup(tmp_path, own, files)
    assert rt.cpu_quota(root, proc) == quota


def test_the_default_thread_count_keeps_within_the_cpu_quota(monkeypatch):
    monkeypatch.delenv("SYMNET_NUM_THREADS", raising=False)
    monkeypatch.setattr(rt, "cpu_quota", lambda: 1)
    assert rt.threads() == 1
    monkeypatch.setattr(rt, "cpu_quota", lambda: 64)
    assert rt.threads() == len(os.sched_getaffinity(0))


def test_a_warning_from_code_run_by_python_c_is_shown_with_its_line():
    """warnings.warn_explicit looks up the caller's source through its module's loader; the
    __main__ of `python -c` (and of a REPL, or a script on stdin) has none that can, and every
    symnet warning raised ImportError there."""
    run = subprocess.run([sys.executable, "-c", "from codegen.numba import runtime as rt\n"
                          "print(rt.threads() >= 1)"], capture_output=True, text=True,
                         env={**os.environ, "SYMNET_NUM_THREADS": "many"}, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "True", run.stderr
    assert "<string>:2: UserWarning: SYMNET_NUM_THREADS='many' is not a positive integer" \
        in run.stderr, run.stderr


def test_more_threads_than_the_cores_can_serve_are_warned_about_at_the_callers_line(
        monkeypatch):
    import threading

    from codegen.notices import on_behalf

    monkeypatch.setattr(rt, "cores", lambda: 2)
    monkeypatch.setattr(rt, "_warned", set())
    monkeypatch.setenv("SYMNET_NUM_THREADS", "16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rt.threads() == 16  # 8 a core: no warning
    monkeypatch.setenv("SYMNET_NUM_THREADS", "17")
    counts = []
    kernel = on_behalf(threading.Thread(target=lambda: counts.append(rt.threads())))
    with pytest.warns(UserWarning, match="more than 8 threads for each of the 2 cores") as seen:
        kernel.start()
        kernel.join()
    assert counts == [17]
    assert seen[0].filename == __file__  # on a thread run for this one: this one's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once a process, though every kernel call asks
        assert rt.threads() == 17


def test_threads_that_cannot_start_leave_a_smaller_team_with_the_same_results(monkeypatch):
    """A limit on threads or memory (ulimit, a container's pids limit): the team has the threads
    that started, says so, and computes the same numbers."""
    import threading

    monkeypatch.setenv("SYMNET_NUM_THREADS", "4")
    values = run_pieces()[0]
    rt._close_team()
    started = []

    class Limited(threading.Thread):
        def start(self):
            if self.name.startswith("symnet-worker"):
                if len(started) == 1:
                    raise RuntimeError("can't start new thread")
                started.append(self.name)
            super().start()

    monkeypatch.setattr(rt.threading, "Thread", Limited)
    try:
        with pytest.warns(UserWarning, match=r"a team of 4 threads was asked for .*, but only 2 "
                                             r"could run \(can't start new thread\); training "
                                             r"runs on 2"):
            again, pieces_of, _ = run_pieces()
        assert rt._team.threads == 2 and rt._team.requested == 4
        assert np.array_equal(again, values)
        assert set(np.unique(pieces_of)) <= {0, 1}
    finally:
        monkeypatch.undo()
        rt._close_team()

def test_when_no_thread_can_start_the_calls_run_on_the_callers_thread(monkeypatch, tmp_path):
    """The team's threads may use up a limit on threads: a training call, which waits for its
    kernel on a thread of its own, and a compile, then run on the calling thread."""
    import threading

    monkeypatch.setenv("SYMNET_NUM_THREADS", "1")
    monkeypatch.setenv("SYMNET_CACHE_DIR", str(tmp_path))  # a compile of its own
    start = threading.Thread.start

    def refused(thread):
        if thread.name in ("symnet-kernel", "symnet-compile"):
            raise RuntimeError("can't start new thread")
        start(thread)

    model, reference = wide_model(dtype="float64"), wide_model(dtype="float64", backend="numpy")
    with monkeypatch.context() as patched:
        patched.setattr(threading.Thread, "start", refused)
        for m in (model, reference):
            m.fit(*data(), epochs=30, batch_size=64, verbose=False)  # long: off this thread
        predicted = model.predict(data()[0])
    np.testing.assert_allclose(predicted, reference.predict(data()[0]), rtol=1e-9, atol=1e-12)

def test_a_team_that_could_not_be_made_leaves_no_closed_team_behind(monkeypatch):
    """Changing the thread count closes the old team before making the new one; when making it
    fails, the closed team must not stay in use: the next kernel would wait forever for its
    workers, which have ended."""
    monkeypatch.setenv("SYMNET_NUM_THREADS", "3")
    values = run_pieces()[0]

    def fails(threads):
        raise MemoryError("no threads left")

    with monkeypatch.context() as patched:
        patched.setattr(rt, "Team", fails)
        with pytest.raises(MemoryError):
            rt._team_of(2)
    assert rt._team is None
    monkeypatch.setenv("SYMNET_NUM_THREADS", "2")
    assert np.array_equal(run_pieces()[0], values)


def test_the_kernels_piece_sizes_are_the_ones_the_emitter_computes():
    """The protocol's tile and product_least (LLVM IR, called by kernels whose sizes are known
    only at run time) agree with the Python the emitter uses at compile time."""
    tile = ctypes.CFUNCTYPE(*[ctypes.c_int64] * 5)(rt._ADDRESSES["tile"])
    least = ctypes.CFUNCTYPE(*[ctypes.c_int64] * 2)(rt._ADDRESSES["product_least"])
    for length in (1, 7, 16, 100, 127, 128, 255, 256, 1000, 60_000):
        assert least(length) == protocol.product_least(length)
        for work in (0, 1, 5_000, 65_536, 10**6, 10**9):
            for target, smallest in ((4096, 8), (65_536, 16), (1, 1)):
                assert tile(length, work, target, smallest) == protocol.tile(
                    length, work, target, smallest), (length, work, target, smallest)
    assert protocol.tile(1000, 10**9, 4096, 8) == 16  # 64 pieces: a power of two, none under 8
    assert protocol.product_least(1000) == 250  # 4 tiles: each packs the other operand again
    assert protocol.product_least(300) == 128 and protocol.product_least(60) == 16


def wide_model(dtype="float32", backend="numba"):
    # 256-wide layers on batches of 64: every phase has pieces for several threads
    X, Y = sn.Input("X", 192), sn.Input("Y", 3)
    out = sn.dense(sn.dense(sn.dense(X, 256, sn.relu), 256, sn.tanh), 3)
    return sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y], prediction=out,
                      optimizer=sn.optim.Adam(lr=1e-3), seed=0, backend=backend, dtype=dtype)


def data(rows=300):
    rng = np.random.default_rng(0)
    return rng.normal(size=(rows, 192)), np.eye(3)[rng.integers(0, 3, rows)]


def trained(threads, monkeypatch, epochs=3):
    monkeypatch.setenv("SYMNET_NUM_THREADS", str(threads))
    model = wide_model()
    model.fit(*data(), epochs=epochs, batch_size=64, verbose=False)
    return model


def test_one_two_and_four_threads_train_to_the_same_parameters_bit_for_bit(monkeypatch):
    alone = trained(1, monkeypatch)
    X = data()[0][:5]
    for count in (2, 4):
        other = trained(count, monkeypatch)
        for k in alone.params:
            np.testing.assert_array_equal(other.params[k], alone.params[k], err_msg=k)
            for s in alone._state[k]:
                np.testing.assert_array_equal(other._state[k][s], alone._state[k][s])
        np.testing.assert_array_equal(other.predict(X), alone.predict(X))
        assert other.loss_and_grad(*data(64))[0] == alone.loss_and_grad(*data(64))[0]


def test_the_workers_end_when_the_thread_count_drops_to_one(monkeypatch):
    import threading

    from codegen.numba import runtime

    def workers():
        return [t for t in threading.enumerate() if t.name.startswith("symnet-worker")]

    # on a busy machine (tests run beside each other) steps run alone, leaving the team as it is
    monkeypatch.setattr(runtime._load, "contended", lambda: False)
    trained(2, monkeypatch, epochs=1)
    assert len(workers()) == 1
    trained(1, monkeypatch, epochs=1)
    assert workers() == []


def test_blocks_train_to_the_same_numbers_on_one_two_and_four_threads(monkeypatch):
    """Batch norm's column statistics and running updates, dropout's masks (drawn by whichever
    thread computes a piece), layer norm's row statistics."""
    X, Y = sn.Input("X", 192), sn.Input("Y", 3)
    h = sn.dropout(sn.relu(sn.batch_norm(sn.dense(X, 256, name="1"), "1")), 0.2)
    h = sn.tanh(sn.layer_norm(sn.dense(h, 256, name="2"), "2"))
    out = sn.dense(h, 3, name="3")
    runs = []
    for count in (1, 2, 4):
        monkeypatch.setenv("SYMNET_NUM_THREADS", str(count))
        model = sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y],
                           prediction=out, optimizer=sn.optim.Adam(lr=1e-3), seed=0)
        model.fit(*data(), epochs=2, batch_size=64, verbose=False)
        runs.append(model)
    alone = runs[0]
    for other in runs[1:]:
        for k in (*alone.params, *alone.running):
            got = other.params.get(k, other.running.get(k))
            np.testing.assert_array_equal(got, alone.params.get(k, alone.running.get(k)), k)
        np.testing.assert_array_equal(other.predict(data()[0]), alone.predict(data()[0]))


def test_the_team_computes_what_the_numpy_reference_does(monkeypatch):
    monkeypatch.setenv("SYMNET_NUM_THREADS", "2")
    models = [wide_model("float64", backend) for backend in ("numba", "numpy")]
    for m in models:
        m.fit(*data(), epochs=2, batch_size=64, verbose=False)
    for k in models[1].params:
        np.testing.assert_allclose(models[0].params[k], models[1].params[k], rtol=1e-10,
                                   atol=1e-12, err_msg=k)


def test_a_busy_neighbour_changes_nothing_but_time(monkeypatch):
    alone = trained(1, monkeypatch)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for count in (2, 4):
            other = trained(count, monkeypatch)
            for k in alone.params:
                np.testing.assert_array_equal(other.params[k], alone.params[k], err_msg=k)
    finally:
        busy.kill()


def deep(layers, backend, dtype="float64"):
    X, Y = sn.Input("X", 12), sn.Input("Y", 4)
    h = X
    for k in range(layers):
        h = sn.dense(h, 16, sn.tanh, name=str(k + 1))
    loss = sn.softmax_cross_entropy(sn.dense(h, 4, name=str(layers + 1)), Y)
    return sn.compile(loss, inputs=[X], targets=[Y], optimizer=sn.optim.Adam(lr=1e-3), seed=0,
                      backend=backend, dtype=dtype)


def test_a_24_layer_network_trains_on_the_default_backend():
    # 50 parameters with 100 Adam states: the kernels used to take each array member as a
    # ctypes argument (at most 1024); now one argument block of any length
    models = [deep(24, backend) for backend in ("numba", "numpy")]
    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(40, 12)), np.eye(4)[rng.integers(0, 4, 40)]
    for m in models:
        m.fit(X, Y, epochs=2, batch_size=16, verbose=False)
    assert len(models[0].params) == 50
    for k in models[1].params:
        np.testing.assert_allclose(models[0].params[k], models[1].params[k], rtol=1e-9,
                                   atol=1e-12, err_msg=k)


def test_a_forked_child_trains_with_a_team_of_its_own(tmp_path):
    script = textwrap.dedent("""
        import os, sys
        import numpy as np
        sys.path.insert(0, "tests")
        from test_runtime import data, wide_model
        os.environ["SYMNET_NUM_THREADS"] = "2"
        m = wide_model()
        m.fit(*data(), epochs=1, batch_size=64, verbose=False)  # the parent's team exists
        pid = os.fork()
        if pid == 0:
            m.fit(*data(), epochs=1, batch_size=64, verbose=False)
            os._exit(0 if np.isfinite(m.params["W1"]).all() else 1)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.strip() == "0", out.stderr


def test_a_child_forked_while_other_threads_use_the_model_can_use_it():
    """A thread of the parent serving predict (its model's and its runner's locks held) at the
    moment of a fork: the child predicts; a model another thread was training is refused
    with a DataError, for its parameters may be half a step's."""
    script = textwrap.dedent("""
        import os, signal, sys, threading
        import numpy as np
        sys.path.insert(0, "tests")
        import symnet as sn
        from test_runtime import data, wide_model
        X, Y = data()
        m, trainee = wide_model(), wide_model()
        m.predict(X)
        holding, release = threading.Event(), threading.Event()

        def serve():  # as if a predict were in its kernel call at the fork
            with m._lock, m._runner().lock:
                holding.set()
                release.wait()

        def train():
            trainee.fit(X, Y, epochs=300, batch_size=64, verbose=False)

        threads = [threading.Thread(target=serve), threading.Thread(target=train)]
        for t in threads:
            t.start()
        holding.wait()
        while not trainee._training:
            pass
        pid = os.fork()
        if pid == 0:
            signal.alarm(60)  # a hang ends the child with SIGALRM
            code = 0 if np.array_equal(m.predict(X), m.predict(X)) else 1
            try:
                trainee.predict(X)
                code = 2
            except sn.DataError as err:
                code = code if "forked while another thread" in str(err) else 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        release.set()
        for t in threads:
            t.join()
        print(os.waitstatus_to_exitcode(status))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.strip() == "0", out.stdout + out.stderr


def test_a_child_forked_while_another_thread_compiles_can_compile():
    """Another thread holds numba's compiler lock at the moment of a fork, as a compile or a
    cache load does: the fork waits for it, and the child loads the kernels of another model
    (it waited for the lock forever)."""
    script = textwrap.dedent("""
        import os, signal, sys, threading, time
        sys.path.insert(0, "tests")
        from numba.core.compiler_lock import global_compiler_lock
        from test_runtime import data, wide_model
        wide_model()  # the kernels of float32, loaded
        holding = threading.Event()

        def compile_():
            with global_compiler_lock:
                holding.set()
                time.sleep(0.5)

        thread = threading.Thread(target=compile_)
        thread.start()
        holding.wait()
        pid = os.fork()
        if pid == 0:
            signal.alarm(60)  # a hang ends the child with SIGALRM
            # the lock is free (a new thread of the child may reuse the dead holder's id, and
            # so take it anyway: a compile on the main thread could not)
            if not global_compiler_lock._lock.acquire(timeout=5):
                os._exit(2)
            global_compiler_lock._lock.release()
            wide_model("float64").fit(*data(), epochs=1, batch_size=64, verbose=False)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        thread.join()
        print(os.waitstatus_to_exitcode(status))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.strip() == "0", out.stdout + out.stderr


def test_an_unsupported_numba_is_named_with_the_supported_range():
    from codegen.ir import CodegenError
    from codegen.numba import _check_versions

    _check_versions()  # this environment's
    with pytest.raises(CodegenError, match=r"runs with numba>=0\.65,<0\.69, and this environment "
                                           r"has numba 0\.70\.1: pip install"):
        _check_versions({"numba": "0.70.1", "llvmlite": "0.50.0"})
    with pytest.raises(CodegenError, match=r"llvmlite>=0\.47,<0\.51"):
        _check_versions({"numba": "0.66.0", "llvmlite": "0.46.0rc1"})


_BLAS_CHILD = textwrap.dedent("""
    import hashlib, os, sys
    sys.path.insert(0, {tests!r})
    from test_runtime import data, wide_model
    from codegen.intrinsics.blas import BLAS
    digests = []
    for count in (1, 2, 4):
        os.environ["SYMNET_NUM_THREADS"] = str(count)
        model = wide_model()
        model.fit(*data(), epochs=2, batch_size=64, verbose=False)
        digests.append(hashlib.sha256(b"".join(model.params[k].tobytes()
                                               for k in sorted(model.params))).hexdigest())
        if count == 1:
            import numpy as np
            np.save(sys.argv[1], model.params["W1"])
    print(BLAS.name, *digests)
""")


@pytest.mark.parametrize("asked", ["openblas", "mkl"])
def test_each_blas_gives_one_two_and_four_threads_the_same_bits(asked, tmp_path):
    # the test extra installs MKL, so both libraries run here, whichever the CPU's default is
    code = _BLAS_CHILD.format(tests=os.path.dirname(__file__))
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "W1.npy")],
                          env={**os.environ, "SYMNET_BLAS": asked}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    name, *digests = proc.stdout.split()
    assert name == {"openblas": "OpenBLAS", "mkl": "MKL"}[asked], proc.stderr
    assert len(set(digests)) == 1, digests
    reference = wide_model(backend="numpy")
    reference.fit(*data(), epochs=2, batch_size=64, verbose=False)
    np.testing.assert_allclose(np.load(tmp_path / "W1.npy"), reference.params["W1"], atol=2e-5)


def test_a_blas_that_cannot_be_had_is_warned_about_and_openblas_runs(monkeypatch):
    from codegen.intrinsics import blas

    with pytest.warns(UserWarning, match=r"SYMNET_BLAS='gpu' is neither 'openblas' nor 'mkl'"):
        monkeypatch.setattr(blas, "_intel", lambda: False)
        assert blas.choose("gpu").name == "OpenBLAS"
    monkeypatch.setattr(blas, "_mkl_path", lambda: None)
    with pytest.warns(UserWarning, match=r'SYMNET_BLAS=mkl, but MKL is not installed \(pip '
                                         r'install "mkl>=2026\.2"\); using OpenBLAS'):
        assert blas.choose("mkl").name == "OpenBLAS"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chosen = blas.choose("")
    assert (chosen.name, chosen.why) == ("OpenBLAS", "MKL is not installed")

    def taken(path, why):
        raise OSError("another library in this process already runs MKL with other settings")

    monkeypatch.setattr(blas, "_mkl_path", lambda: "libmkl_rt.so")
    monkeypatch.setattr(blas, "_mkl", taken)
    monkeypatch.setattr(blas, "_intel", lambda: True)
    with pytest.warns(UserWarning, match=r"MKL could not be used \(another library in this "
                                         r"process already runs MKL with other settings\); "
                                         r"using OpenBLAS"):
        assert blas.choose("").name == "OpenBLAS"


_TORCH_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    if sys.argv[1] == "before":
        import torch
    import symnet as sn
    X, Y = sn.Input("X", 8), sn.Input("Y", 2)
    model = sn.compile(sn.softmax_cross_entropy(sn.dense(X, 2), Y), inputs=[X], targets=[Y])
    model.fit(np.zeros((4, 8)), np.array([0, 1, 0, 1]), epochs=1, verbose=False)
    import torch
    model.fit(np.zeros((4, 8)), np.array([0, 1, 0, 1]), epochs=1, verbose=False)
    print(torch.get_num_threads())
""")


@pytest.mark.parametrize("when", ["before", "after"])
def test_torch_imported_after_symnet_loaded_mkl_is_warned_about(when):
    proc = subprocess.run([sys.executable, "-c", _TORCH_CHILD, when], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "SYMNET_BLAS": "mkl",
                                                      "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr
    warned = "torch was imported after symnet loaded MKL for its kernels" in proc.stderr
    assert warned == (when == "after"), proc.stderr
    assert proc.stderr.count("torch was imported after") <= 1  # once, not at every call
    if when == "before":
        assert proc.stdout.split() == ["2"]  # torch keeps its threads
