"""Choosing, while ``train_epochs`` runs, between training on two threads and on one.

With the helper (``codegen.pool``) the two threads meet several times a step: at each product's
two OpenBLAS jobs, and after the gather and the update halves. That pays on a quiet machine
(seed002's epoch 0.078 s against 0.111 s on one thread), but this project's 2-core machine has
spells of seconds in which it runs as if it had about one core: a thread that waits for the
other then waits for a whole time slice, and seed002's epoch takes 0.145 s with the helper
while one thread still takes 0.111 s (the README's "Slow spells"). No count of cores or steal
time reported to the guest shows a spell, so training can measure itself. While a training
call runs with the helper and ``SYMNET_POOL=auto``, a Python thread (``watching``) wakes
every ``WINDOW_S`` and reads the rows the main thread has finished (``pool.DONE``). Over
windows of at least one full batch, it takes the cost in nanoseconds per 1,024 rows, and
``decide`` chooses the mode:

- on the helper, it keeps the lowest cost seen lately. It rises by 1/64 per window towards
  windows that are not slow, or while training holds on to the helper, so that it follows a
  machine that changed for good, but not towards the helper's windows in a spell. A window is
  slow if it is ≥ 25 % above that and above 7/8 of one thread's last cost (once there is
  one). ``SLOW_RUN`` slow windows in a row switch to one thread, unless one thread lost a
  comparison in the last ``HOLD`` windows;
- on one thread, it goes back to the helper as soon as one thread's window costs at least the
  helper's last one (and holds on for ``HOLD`` windows), and now and then anyway, to see
  whether the spell is over: after ``FIRST_PROBE`` windows, then after twice as many as the
  time before, up to ``PROBE``. Slow windows also come in runs of tens of milliseconds, and
  with a fixed 16 windows on one thread after each, training was 4 % slower outside spells.

The main thread reads the chosen mode (``pool.WANT``) before each step and, when it changed,
switches (``switch``): on one thread, OpenBLAS runs one thread, the main thread runs whole
steps, and the helper sleeps (``pool.NAP_US`` at a time) instead of spinning, which would
take the core's time slices from the main thread.

It is on only with ``SYMNET_POOL=auto``, because the two modes do not always round alike.
The helper takes rows of the gather and the update and columns of the wide loop nests, which
each thread computes as one thread would, and OpenBLAS splits a product's output between its
two jobs, but on one thread OpenBLAS cuts a long inner dimension into blocks differently: on
this machine, products whose inner dimension is 500 or 784 differ in the last bits (1024 and
up to 384 do not). Which steps ran on one thread depends on the machine's timing, so with
pacing a run is not reproducible bit for bit; by default training stays on the helper, as
before (``PIN_HELPER``), and the watcher does not run.

The policy is Python, in a thread of its own, because compiled into ``train_epochs`` through
numba it cost 0.6 s of seed002's 1.8 s cold setup; the kernel only reads one slot, counts
rows, and switches through an intrinsic. The state is a small int64 array per model and batch
size (``NumbaRunner.tuning``), kept between calls. Its slot ``FORCE`` says whether to choose
(``ADAPT``), pins a mode, or, for the tests, switches at every window (``ALTERNATE``).
"""

from __future__ import annotations

import contextlib
import threading
import time

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from . import blas, pool

HELPER, SOLO = 0, 1  # the modes
ADAPT, PIN_HELPER, PIN_SOLO, ALTERNATE = 0, 1, 2, 3  # values of FORCE; ALTERNATE is for tests
# slots of the state array
(MODE, COST_H, COST_S, BEST_H, SLOW, COUNT, HOLDING, PERIOD, FORCE, SWITCHES, ROWS_H,
 ROWS_S) = range(12)
SLOTS = 12
WINDOW_S = 0.004  # the watcher's wake-up interval
SLOW_RUN = 3  # slow windows in a row on the helper that send training to one thread
HOLD = 16  # windows on the helper before one thread may be tried again after it lost
FIRST_PROBE, PROBE = 2, 16  # windows on one thread before the helper is tried again: the
# first time after FIRST_PROBE, then after twice as many as the time before, up to PROBE

_I32, _I64 = ir.IntType(32), ir.IntType(64)

pool.symbol("symnet_blas_set_threads", blas.LIBRARY.scipy_openblas_set_num_threads)


@intrinsic
def switch(typingctx, mode):
    """On the main thread, before a step: train in ``mode`` from now on. One thread: OpenBLAS
    runs one, and the idle helper naps. The helper: OpenBLAS runs two, and the helper is awake
    (it has answered a ``WAKE``) before this returns."""
    if not isinstance(mode, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        solo = builder.icmp_signed("==", context.cast(builder, args[0], signature.args[0],
                                                      types.int64), ir.Constant(_I64, SOLO))
        with builder.if_else(solo) as (alone, paired):
            with alone:
                pool.call(builder, "symnet_blas_set_threads", ir.VoidType(), [ir.Constant(_I32, 1)])
                pool._put(builder, pool.NOW, SOLO)
            with paired:
                pool.call(builder, "symnet_blas_set_threads", ir.VoidType(), [ir.Constant(_I32, 2)])
                pool._put(builder, pool.NOW, HELPER)
                pool._put(builder, pool.JOB, pool.WAKE)
                pool._spin(builder)
        return context.get_dummy_value()

    return types.none(mode), codegen


def decide(tune, cost: int) -> int:
    """The mode for the next window, after a window of the current mode that cost ``cost``."""
    tune[COUNT] += 1
    if tune[MODE] == HELPER:
        best = tune[BEST_H]
        # slow: 25 % above the lowest cost lately, and not well below one thread's last cost,
        # which itself drifts down (1/256 a window) so that one high measurement does not last
        tune[COST_S] -= tune[COST_S] // 256
        slow = best > 0 and cost * 4 > best * 5 and cost * 8 > tune[COST_S] * 7
        if best == 0 or cost < best:
            tune[BEST_H] = cost
        elif not slow or tune[HOLDING] > 0:  # not while a spell's windows come now and then
            tune[BEST_H] = min(best + best // 64, cost)
        if slow:  # the cheapest of this run of slow windows
            tune[COST_H] = cost if tune[SLOW] == 0 else min(tune[COST_H], cost)
            tune[SLOW] += 1
        else:
            tune[COST_H] = cost
            tune[SLOW] = 0
            tune[PERIOD] = FIRST_PROBE
        if tune[HOLDING] > 0:
            tune[HOLDING] -= 1
            return HELPER
        return SOLO if tune[SLOW] >= SLOW_RUN else HELPER
    tune[COST_S] = cost
    if cost >= tune[COST_H]:  # one thread is no faster: back to the helper, and stay a while
        tune[HOLDING] = HOLD
        tune[SLOW] = 0
        return HELPER
    if tune[COUNT] >= max(tune[PERIOD], FIRST_PROBE):  # is the helper fast again?
        tune[PERIOD] = min(2 * max(tune[PERIOD], FIRST_PROBE), PROBE)
        tune[SLOW] = SLOW_RUN - 1  # one slow window sends it back
        return HELPER
    return SOLO


def _watch(tune, batch: int, stop: threading.Event):
    """The watcher's loop: close a window every ``WINDOW_S`` in which the main thread finished
    at least ``batch`` rows, all in one mode, and ask for the mode ``decide`` chooses."""
    control = pool.CONTROL
    start, done, mode = time.perf_counter_ns(), control[pool.DONE], control[pool.NOW]
    while not stop.wait(WINDOW_S):
        now, rows = time.perf_counter_ns(), control[pool.DONE]
        if control[pool.NOW] != mode or control[pool.WANT] != mode:  # switching: start again
            start, done, mode = now, rows, control[pool.NOW]
            continue
        if rows - done < batch:
            continue
        cost = (now - start) * 1024 // (rows - done)
        tune[ROWS_H + mode] += rows - done
        chosen = decide(tune, cost) if tune[FORCE] == ADAPT else 1 - mode  # or ALTERNATE
        if chosen != mode:
            tune[MODE], tune[COUNT] = chosen, 0
            tune[SWITCHES] += 1
            control[pool.WANT] = chosen
        start, done = now, rows


@contextlib.contextmanager
def watching(tune, batch: int, pooled: bool):
    """While the block runs a training call (with the helper, if ``pooled``), choose its mode
    from ``tune``'s state, starting in the mode the last call ended in."""
    if not pooled:
        yield
        return
    pinned = tune[FORCE] in (PIN_HELPER, PIN_SOLO)
    if pinned:
        tune[MODE] = tune[FORCE] - PIN_HELPER
    pool.CONTROL[pool.WANT] = tune[MODE]
    pool.CONTROL[pool.NOW] = -1  # no mode yet: the main thread switches before its first step
    pool.CONTROL[pool.DONE] = 0
    if pinned:  # nothing to watch
        yield
        return
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(tune, batch, stop), name="symnet-pace",
                               daemon=True)
    try:
        watcher.start()
        yield
    finally:
        stop.set()
        pool._join(watcher)
