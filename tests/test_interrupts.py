"""Ctrl-C during training: every update is applied whole or not at all, the step counter follows
the updates applied, no thread is left running, and the process trains on as if it had never
been interrupted."""

import _thread
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import symnet as sn

# Full-batch training without shuffling: every step sees the same data, so the parameters after
# T steps are the same however the steps were split between calls and interrupts, and a clean
# model trained for T epochs must equal the interrupted one bit for bit.
CHILD = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    from pathlib import Path
    import numpy as np
    import symnet as sn

    # a process started by a background job of a shell without job control inherits SIGINT
    # ignored, and Python then raises no KeyboardInterrupt: Ctrl-C is what this child tests
    signal.signal(signal.SIGINT, signal.default_int_handler)

    backend, flag = sys.argv[1], Path(sys.argv[2])
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(256, 64)), np.eye(3)[rng.integers(0, 3, 256)]

    def build():
        Xs, Ys = sn.Input("X", 64), sn.Input("Y", 3)
        out = sn.dense(sn.dense(Xs, 64, sn.tanh), 3)
        return sn.compile(sn.softmax_cross_entropy(out, Ys), inputs=[Xs], targets=[Ys],
                          optimizer=sn.optim.Adam(lr=1e-3), dtype="float64", seed=0,
                          backend=backend)

    def fit(model, epochs):
        return model.fit(X, Y, epochs=epochs, batch_size=256, shuffle=False, verbose=False)

    model = build()
    fit(model, 1)  # compiled before the storm
    print("ready", flush=True)
    caught = 0
    while True:  # an interrupt may land anywhere in this loop, not only inside fit
        try:
            while not flag.exists():
                try:
                    fit(model, 3000 if backend == "numba" else 40)
                except KeyboardInterrupt:
                    caught += 1
            break
        except KeyboardInterrupt:
            caught += 1
    steps = model._steps
    reference = build()
    fit(reference, steps)
    same = all(np.array_equal(model.params[k], reference.params[k]) and
               all(np.array_equal(model._state[k][s], reference._state[k][s])
                   for s in model._state[k]) for k in model.params)
    fit(model, 5)  # and it trains on
    fit(reference, 5)
    same_after = all(np.array_equal(model.params[k], reference.params[k]) for k in model.params)
    # the team's workers sleep between kernels and stay; nothing else of symnet's may run
    threads = sorted(t.name for t in threading.enumerate()
                     if t.name.startswith("symnet") and not t.name.startswith("symnet-worker"))
    workers = sum(t.name.startswith("symnet-worker") for t in threading.enumerate())
    assert workers <= max(0, len(os.sched_getaffinity(0)) - 1)
    print(json.dumps({"caught": caught, "steps": steps, "same": bool(same),
                      "same_after": bool(same_after), "threads": threads}))
""")


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_random_interrupts_leave_a_model_that_trains_on_as_if_uninterrupted(backend, tmp_path):
    flag = tmp_path / "enough"
    child = subprocess.Popen([sys.executable, "-c", CHILD, backend, str(flag)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        rng = random.Random(0)
        for _ in range(25):
            time.sleep(rng.uniform(0.005, 0.08))
            child.send_signal(signal.SIGINT)
        time.sleep(0.2)
        flag.touch()
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["caught"] >= 10  # most of the 25 landed in training
    assert report["steps"] > 0
    assert report["same"] and report["same_after"]
    assert report["threads"] == []


def model(backend="numpy"):
    X, Y = sn.Input("X", 8), sn.Input("Y", 3)
    out = sn.dense(sn.dense(X, 16, sn.tanh), 3)
    return sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y],
                      optimizer=sn.optim.Adam(lr=1e-2), dtype="float64", seed=0, backend=backend)


def data():
    rng = np.random.default_rng(1)
    return rng.normal(size=(40, 8)), np.eye(3)[rng.integers(0, 3, 40)]


def sigint_during_training(m, *seconds, signum=signal.SIGINT, send=None):
    """A signal (SIGINT) at each of ``seconds`` into each of ``m``'s training calls (while its
    kernel runs, not while fit shuffles), sent to the process or by ``send()``; the (start,
    end) times of the calls, as they end."""
    train, calls = m._train, []
    send = send or (lambda: os.kill(os.getpid(), signum))

    def interrupted_train(*args):
        timers = [threading.Timer(t, send) for t in seconds]
        start = time.monotonic()
        for timer in timers:
            timer.start()
        try:
            return train(*args)
        finally:
            calls.append((start, time.monotonic()))
            for timer in timers:
                timer.join()

    m._train = interrupted_train
    return calls

@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_two_threads_fitting_one_model_lose_no_steps(backend):
    X, Y = data()
    shared, reference = model(backend), model(backend)
    workers = [threading.Thread(target=shared.fit, args=(X, Y),
                                kwargs=dict(epochs=30, batch_size=40, shuffle=False,
                                            verbose=False)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    reference.fit(X, Y, epochs=60, batch_size=40, shuffle=False, verbose=False)
    assert shared._steps == reference._steps == 60
    for k in reference.params:
        np.testing.assert_array_equal(shared.params[k], reference.params[k])


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("ended", ["epochs", "none"])
def test_an_interrupted_fit_leaves_the_history_of_the_epochs_it_ended(backend, ended):
    # one kernel call of many epochs (quiet), interrupted in the middle: model.history has
    # every epoch the call ended, as many as the step counter says, and their losses; none if
    # the first had not ended (the previous fit's history would not describe the model, whose
    # steps went on)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # even if ignored
    X, Y = data()
    m = model(backend)
    m.fit(X, Y, epochs=2, batch_size=10, verbose=False)
    before, steps = m.history, m._steps
    if ended == "epochs":  # epochs of 4 steps, Ctrl-C 0.3 s into them
        sigint_during_training(m, 0.3)
        epochs, batch_size = 10**5, 10
    else:  # an epoch of 400 000 steps, Ctrl-C 0.05 s into it
        rng = np.random.default_rng(2)
        X, Y = rng.normal(size=(400_000, 8)), np.eye(3)[rng.integers(0, 3, 400_000)]
        sigint_during_training(m, 0.05)
        epochs, batch_size = 1, 1
    try:
        with pytest.raises(KeyboardInterrupt):
            m.fit(X, Y, epochs=epochs, batch_size=batch_size, verbose=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert m.history is not before
    if ended == "none":
        assert steps < m._steps < steps + 400_000 and len(m.history.loss) == 0
        return
    assert len(m.history.loss) == (m._steps - steps) // 4 >= 1
    assert np.isfinite(m.history.loss).all() and len(m.history.seconds) == len(m.history.loss)
    assert m.history.loss[-1] < m.history.loss[0]


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("when", ["after the call's last step", "during the validation"])
def test_ctrl_c_once_a_call_ended_its_epochs_leaves_them_in_the_history(backend, when):
    # an interrupt too late for the kernel to stop a step (it had none left), or while the
    # epoch is validated: the epoch ended, so the history has it, with its validation figures
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # even if ignored
    X, Y = data()
    m = model(backend)
    train, evaluate = m._train, m._evaluate

    def ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # delivered here

    def late_train(*args):
        ended = train(*args)
        ctrl_c()
        return ended

    def interrupted_evaluate(*args):
        ctrl_c()
        return evaluate(*args)

    if when == "after the call's last step":
        m._train = late_train
    else:
        m._evaluate = interrupted_evaluate
    try:
        with pytest.raises(KeyboardInterrupt):
            m.fit(X, Y, epochs=5, batch_size=10, verbose=False, validation_data=(X, Y))
    finally:
        signal.signal(signal.SIGINT, previous)
    h = m.history
    assert h is not None and m._steps == 4  # one epoch of four batches, then the interrupt
    assert len(h.loss) == len(h.val_loss) == len(h.seconds) == 1


class Stopped(Exception):
    pass


@pytest.mark.parametrize("send", [lambda: signal.raise_signal(signal.SIGINT), _thread.interrupt_main],
                         ids=["raised-on-another-thread", "interrupt_main"])
def test_an_interrupt_that_reaches_another_thread_stops_fit_after_its_step(send):
    # a SIGINT another thread received, or _thread.interrupt_main (IDEs, timeout helpers), only
    # marks Python's handler pending: it ran once the whole fit had ended
    X, Y = data()
    m = model("numba")
    calls = sigint_during_training(m, 0.05, send=send)  # the call runs ~0.3 s or more
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # an xdist worker's
    try:  # may ignore SIGINT, and raise_signal and interrupt_main then do nothing
        with pytest.raises(KeyboardInterrupt):
            m.fit(X, Y, epochs=20_000, batch_size=10, shuffle=False, verbose=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(calls) == 1
    assert 4 <= m._steps < 4 * 20_000 and len(m.history.loss) == m._steps // 4
    assert np.all(np.isfinite(m.params[next(iter(m.params))]))


@pytest.mark.parametrize("backend, epochs", [("numba", 20_000), ("numpy", 2_000)])
@pytest.mark.parametrize("raises", [False, True])
def test_a_sigint_handler_of_the_callers_runs_when_the_signal_comes(backend, epochs, raises):
    # a handler of the user's own runs at once, as it would without symnet; if it returns,
    # training goes on to the end (it stopped silently before); if it raises, training stops
    # after its step and fit raises that, with the epochs it ended in the history
    X, Y = data()
    m, reference = model(backend), model(backend)
    called = []

    def handler(signum, frame):
        called.append(time.monotonic())
        if raises:
            raise Stopped

    calls = sigint_during_training(m, 0.05)  # the call runs ~0.3 s or more
    previous = signal.signal(signal.SIGINT, handler)
    try:
        if raises:
            with pytest.raises(Stopped):
                m.fit(X, Y, epochs=epochs, batch_size=10, shuffle=False, verbose=False)
        else:
            hist = m.fit(X, Y, epochs=epochs, batch_size=10, shuffle=False, verbose=False)
        time.sleep(0.01)
        assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, previous)
    (start, end), = calls
    assert len(called) == 1 and start < called[0] < end  # during the kernel's call
    if raises:
        assert 4 <= m._steps < 4 * epochs and len(m.history.loss) == m._steps // 4
    else:
        assert m._steps == 4 * epochs and len(hist.loss) == epochs
        reference.fit(X, Y, epochs=epochs, batch_size=10, shuffle=False, verbose=False)
        for k in reference.params:
            np.testing.assert_array_equal(m.params[k], reference.params[k])


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_what_another_signals_handler_raises_leaves_steps_and_parameters_agreeing(backend):
    # a timeout (SIGALRM) raising during fit: the kernels stop after their step and fit raises
    # it once the steps are counted; the NumPy backend, whose step it may cut in two, is undone
    X, Y = data()
    m, reference = model(backend), model(backend)

    def timeout(signum, frame):
        raise TimeoutError("time is up")

    previous = signal.signal(signal.SIGALRM, timeout)
    sigint_during_training(m, 0.05, signum=signal.SIGALRM)
    try:
        with pytest.raises(TimeoutError):  # full batch: an epoch a step
            m.fit(X, Y, epochs=10**6, batch_size=40, shuffle=False, verbose=False)
    finally:
        signal.signal(signal.SIGALRM, previous)
    if backend == "numba":
        assert m._steps >= 1 and len(m.history.loss) == m._steps
        reference.fit(X, Y, epochs=m._steps, batch_size=40, shuffle=False, verbose=False)
    else:
        assert m._steps == 0 and m.history is None
    for k in reference.params:
        np.testing.assert_array_equal(m.params[k], reference.params[k])
        for s in reference._state[k]:
            np.testing.assert_array_equal(m._state[k][s], reference._state[k][s])


def test_a_handler_that_puts_another_in_place_keeps_it_and_a_second_ctrl_c_counts_steps():
    # "press Ctrl-C again to abort": the first SIGINT's handler puts Python's in place, the
    # second raises KeyboardInterrupt out of the wait for the kernel
    X, Y = data()
    m, reference = model("numba"), model("numba")

    def first(signum, frame):
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, first)
    sigint_during_training(m, 0.05, 0.1)
    try:
        with pytest.raises(KeyboardInterrupt):
            m.fit(X, Y, epochs=10**6, batch_size=40, shuffle=False, verbose=False)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert m._steps >= 1 and len(m.history.loss) == m._steps
    reference.fit(X, Y, epochs=m._steps, batch_size=40, shuffle=False, verbose=False)
    for k in reference.params:
        np.testing.assert_array_equal(m.params[k], reference.params[k])

def test_a_short_training_call_runs_on_the_calling_thread_a_long_one_beside_it(monkeypatch):
    # the long call's kernel runs on a thread of its own, so that Ctrl-C's handler can run on
    # the caller's meanwhile; a short one is not worth starting a thread for
    from codegen.numba import runner, runtime

    X, Y = data()
    m = model("numba")
    seen = []
    run = runtime.run
    monkeypatch.setattr(runtime, "run", lambda *args: (seen.append(threading.current_thread()),
                                                      run(*args))[1])
    m.fit(X, Y, epochs=2, batch_size=40, verbose=False)
    monkeypatch.setattr(runner, "SHORT_CALL", 0.0)
    m.fit(X, Y, epochs=2, batch_size=40, verbose=False)
    assert seen[0] is threading.current_thread()
    assert seen[1] is not threading.current_thread() and seen[1].name == "symnet-kernel"
    reference = model("numba")
    reference.fit(X, Y, epochs=4, batch_size=40, verbose=False)
    for k in reference.params:
        np.testing.assert_array_equal(m.params[k], reference.params[k])


def test_ctrl_c_while_fit_compiles_its_kernel_is_not_held_back(monkeypatch):
    """fit compiles its training kernel before Ctrl-C is deferred to the end of a step, so an
    interrupt during a cold compile (seconds) stops it at once rather than after it."""
    from codegen.numba import cache

    seen = []
    compile_kernel = cache.compile_kernel

    def recording(function, *args, **kwargs):
        seen.append((function.__name__, signal.getsignal(signal.SIGINT)))
        return compile_kernel(function, *args, **kwargs)

    monkeypatch.setattr(cache, "compile_kernel", recording)
    X, Y = sn.Input("X", 8), sn.Input("Y", 3)
    out = sn.dense(sn.dense(X, 13, sn.tanh), 3)  # a declaration no other test compiles
    m = sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y], seed=0,
                   backend="numba")
    m.fit(*data(), epochs=1, batch_size=40, verbose=False)
    assert ("train_epochs", signal.getsignal(signal.SIGINT)) in seen


COLD = textwrap.dedent("""
    import json, os, signal, sys, threading
    import numpy as np
    import symnet as sn
    from codegen.numba import cache

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the test run ignores it
    started = threading.Event()
    compile_kernel = cache.compile_kernel

    def announced(function, *args, **kwargs):
        started.set()
        return compile_kernel(function, *args, **kwargs)

    def interrupt():
        started.wait(60)
        os.kill(os.getpid(), signal.SIGINT)

    cache.compile_kernel = announced
    X, Y = sn.Input("X", 8), sn.Input("Y", 3)
    out = sn.dense(sn.dense(X, 11, sn.sigmoid), 3)
    model = sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y],
                       prediction=out, seed=0, backend=sys.argv[1], dtype="float64")
    runner = model._runner()
    threading.Thread(target=interrupt).start()
    try:
        runner.kernel("forward")
        interrupted = False
    except KeyboardInterrupt:
        interrupted = "forward" not in runner.compiled
    runner.kernel("forward")
    x = np.random.default_rng(1).normal(size=(40, 8))
    print(json.dumps({"interrupted": interrupted, "reused": runner.reused["forward"],
                      "predicted": model.predict(x).tolist()}))
""")


def test_ctrl_c_during_a_cold_compile_returns_at_once_and_the_compile_runs_on(tmp_path):
    """An interrupt inside numba's compiler could leave it unable to compile anything again in
    the process; the compile runs on a thread of its own, Ctrl-C interrupts only the wait for
    it, and the next call that needs the kernel gets the one it compiled. In a process of its
    own, on an empty kernel cache: the compile must be a cold one."""
    env = {**os.environ, "SYMNET_CACHE_DIR": str(tmp_path)}
    child = subprocess.run([sys.executable, "-c", COLD, "numba"], capture_output=True,
                           text=True, timeout=300, env=env)
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["interrupted"]
    assert report["reused"]  # the interrupted call's compile, finished meanwhile
    X, Y = sn.Input("X", 8), sn.Input("Y", 3)
    out = sn.dense(sn.dense(X, 11, sn.sigmoid), 3)
    reference = sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y],
                           prediction=out, seed=0, backend="numpy", dtype="float64")
    x = np.random.default_rng(1).normal(size=(40, 8))
    np.testing.assert_allclose(report["predicted"], reference.predict(x), rtol=1e-12)
