"""One helper thread that runs both OpenBLAS's threaded jobs and half of the rest of each step.

With two threads, OpenBLAS splits each product into two jobs, one for the calling thread and
one for its own worker, and the generated ``train_epochs`` ran everything that is not a product
on the calling thread alone. A second pool for that work (numba's ``prange``) fights OpenBLAS's
for the two cores. Instead, while ``train_epochs`` runs, OpenBLAS hands its jobs to this
module's callback (``openblas_set_threads_callback_function``, a public OpenBLAS API), which
runs the second job on a helper thread of symnet's own. Between products, the same helper
takes the second half of each shared phase of the step: the gather of the batch's shuffled
rows, the wide loop nests (columns) and the update of the large parameters (rows:
``numba_backend.SPLIT``). One pool, two cores, no fight.

The helper is the generated ``train_epochs`` itself, called with ``role == 2``, and it runs
the same statements as the main thread (``role == 1``): the main thread chooses the steps and
runs what is not shared, and each shared phase is one statement, between ``begin`` and
``end``, with ``share`` giving each thread its half. A kernel of the helper's own, or copies of
the shared statements for it, would cost their own cold compile (measured: see
``numba_backend.TrainKernel.emit``).

The threads talk through a small block of integers (``CONTROL``), given to LLVM as the symbol
``symnet_pool_control`` so that cached machine code links against it in every process, as
``codegen.blas`` does for the GEMMs. The main thread publishes the phase it has begun
(``BEGUN``) and each step's epoch, first row and count (``EPOCH``, ``START``, ``ROWS``); the
helper, the phase it has finished (``FINISHED``). Slot ``JOB`` holds work for the helper while
it waits for a phase: ``IDLE``, ``BLAS`` (run OpenBLAS's job whose function, data and argument
are in the next slots), ``WAKE`` (nothing: the main thread's way to know the helper is awake)
or ``EXIT``; the helper sets it back to ``IDLE`` when done. While slot ``NOW`` is 1, the main
thread trains on one thread (``codegen.pace`` decides when) and the waiting helper naps rather
than spins. Every kernel call holds ``LOCK``, so one symnet kernel runs at a time in a
process. With an OpenBLAS thread count other than two, or ``SYMNET_POOL=0``, training runs
without the helper, as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import threading
import time

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import blas
from .fpmode import X86

IDLE, BLAS, EXIT, WAKE = 0, 1, 4, 5
JOB, FN, DATA, ARG, EPOCH, START, ROWS = 0, 1, 2, 3, 4, 5, 6  # slots of CONTROL
UP = 8  # the helper is running: 64 bytes after JOB, apart from the slots that change per job
# codegen.pace: the mode the main thread trains in (-1 before its first step, 0 with the helper,
# 1 alone, when the idle helper naps), the mode the watcher asks for, the rows finished
NOW, WANT, DONE = 9, 10, 11
# the phases of the steps on two threads: the last one the main thread began, the last one the
# helper finished; each written by one thread only, 64 bytes apart
BEGUN, FINISHED = 16, 24
CONTROL = np.zeros(32, np.int64)
llvm.add_symbol("symnet_pool_control", CONTROL.ctypes.data)
NAP_US = 200  # the helper's nap while the main thread trains alone (codegen.pace)

_I32, _I64 = ir.IntType(32), ir.IntType(64)


def symbol(name: str, function) -> None:
    """Give LLVM a C function under a fixed name, which cached machine code links against in
    every process (as ``codegen.blas`` does for the GEMMs)."""
    llvm.add_symbol(name, ctypes.cast(function, ctypes.c_void_p).value)


def call(builder, name: str, ret, args):
    """Emit a call of the C function ``name`` (see ``symbol``)."""
    fnty = ir.FunctionType(ret, [a.type for a in args])
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), args)


symbol("symnet_usleep", ctypes.CDLL(None).usleep)


def _slot(builder, index):
    """A pointer to ``CONTROL[index]`` through the linked symbol."""
    gv = builder.module.globals.get("symnet_pool_control")
    if gv is None:
        gv = ir.GlobalVariable(builder.module, ir.ArrayType(_I64, len(CONTROL)),
                               "symnet_pool_control")
        gv.linkage = "external"
    return builder.gep(gv, [ir.Constant(ir.IntType(32), 0), index])


def _value(x):
    return ir.Constant(_I64, x) if isinstance(x, int) else x


def _get(builder, index):
    """``CONTROL[index]`` (an int or an i64 value), an acquiring load."""
    return builder.load_atomic(_slot(builder, _value(index)), "acquire", 8)


def _put(builder, index, value):
    """``CONTROL[index] = value`` (each an int or an i64 value), a releasing store."""
    builder.store_atomic(_value(value), _slot(builder, _value(index)), "release", 8)


def _int64(context, builder, signature, args, i):
    return context.cast(builder, args[i], signature.args[i], types.int64)


@intrinsic
def load(typingctx, index):
    """``CONTROL[index]``, an acquiring load: what the other thread wrote before its matching
    ``store`` is visible after it."""
    if not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return _get(builder, _int64(context, builder, signature, args, 0))

    return types.int64(index), codegen


@intrinsic
def store(typingctx, index, value):
    """``CONTROL[index] = value``, a releasing store."""
    if not isinstance(index, types.Integer) or not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        _put(builder, _int64(context, builder, signature, args, 0),
             _int64(context, builder, signature, args, 1))
        return context.get_dummy_value()

    return types.none(index, value), codegen


def _pause(builder):
    """x86's PAUSE in a spin loop: it tells the core that the thread is waiting, so that a
    sibling hardware thread gets the core's resources (nothing elsewhere)."""
    if X86:
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                            "llvm.x86.sse2.pause")
        builder.call(fn, [])


def _idle(builder, job):
    return builder.icmp_signed("==", job, ir.Constant(_I64, IDLE))


def _spin(builder, index=JOB, until=_idle):
    """Emit: loop, with PAUSE, until ``until(builder, CONTROL[index])`` holds; by default until
    the helper's job is done (CONTROL[JOB] is IDLE)."""
    loop = builder.append_basic_block("spin")
    done = builder.append_basic_block("spin_done")
    builder.branch(loop)
    builder.position_at_end(loop)
    ready = until(builder, _get(builder, index))
    wait_more = builder.append_basic_block("spin_pause")
    builder.cbranch(ready, done, wait_more)
    builder.position_at_end(wait_more)
    _pause(builder)
    builder.branch(loop)
    builder.position_at_end(done)


_JOB_TYPE = ir.FunctionType(ir.VoidType(), [ir.IntType(32), ir.IntType(8).as_pointer(),
                                            ir.IntType(32)])
# The thread numbers the two jobs run as. OpenBLAS's job function marks slot ``thread_status[k]``
# busy while job k runs and gives it the buffer ``blas_thread_buffer[k]``, and slot 0 belongs to
# OpenBLAS's own worker thread (the only one with two threads). Run as thread 0, the first job
# kept that worker from ever going back to sleep (it found its slot busy each time it was about
# to), and it spun beside the two threads that train, on two cores. In alternation with
# OpenBLAS's own threading, a sequence of wide's five products then took 49–62 ms a step
# against 25–26 ms. Slots 1 and 2 are no worker's with two threads (``helper`` checks that
# there are at least three).
_MAIN_JOB_SLOT, _HELPER_JOB_SLOT = 1, 2


def _run_blas_job(builder):
    fn = builder.inttoptr(_get(builder, FN), _JOB_TYPE.as_pointer())
    builder.call(fn, [ir.Constant(ir.IntType(32), _HELPER_JOB_SLOT),
                      builder.inttoptr(_get(builder, DATA), ir.IntType(8).as_pointer()),
                      builder.trunc(_get(builder, ARG), ir.IntType(32))])
    _put(builder, JOB, IDLE)


def _arguments(context, builder, signature, args):
    """(role == 2, par, the other arguments as int64) of ``begin``, ``end`` and ``share``."""
    role, par, *rest = (_int64(context, builder, signature, args, i) for i in range(len(args)))
    zero = ir.Constant(_I64, 0)
    return (builder.icmp_signed("==", role, ir.Constant(_I64, 2)),
            builder.icmp_signed("!=", par, zero), *rest)


def _integers(*arguments):
    return all(isinstance(a, (types.Integer, types.Boolean)) for a in arguments)


def _function(module: ir.Module, name: str, fnty: ir.FunctionType, build) -> ir.Function:
    """Function ``name`` of ``module``, defined by ``build(builder, *args)`` the first time: a
    wait loop that every phase calls rather than has a copy of, for LLVM's compile time."""
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, fnty, name)
        fn.linkage = "internal"
        fn.attributes.add("noinline")
        build(ir.IRBuilder(fn.append_basic_block("entry")), *fn.args)
    return fn


def _follow(builder, phase):
    """The helper's wait until the main thread has begun ``phase``: it runs OpenBLAS's jobs,
    answers ``WAKE`` and naps while the main thread trains alone. Returns ``phase``, or -1 when
    told to ``EXIT``."""
    wait = builder.append_basic_block("wait")
    look = builder.append_basic_block("job")
    blas_job = builder.append_basic_block("blas")
    wake = builder.append_basic_block("wake")
    idle = builder.append_basic_block("idle")
    begun = builder.append_basic_block("begun")
    leave = builder.append_basic_block("exit")
    builder.branch(wait)
    builder.position_at_end(wait)
    builder.cbranch(builder.icmp_signed(">=", _get(builder, BEGUN), phase), begun, look)
    builder.position_at_end(look)
    switch = builder.switch(_get(builder, JOB), idle)
    switch.add_case(ir.Constant(_I64, BLAS), blas_job)
    switch.add_case(ir.Constant(_I64, WAKE), wake)
    switch.add_case(ir.Constant(_I64, EXIT), leave)
    builder.position_at_end(blas_job)
    _run_blas_job(builder)
    builder.branch(wait)
    builder.position_at_end(wake)
    _put(builder, JOB, IDLE)
    builder.branch(wait)
    builder.position_at_end(idle)
    alone = builder.icmp_signed("==", _get(builder, NOW), ir.Constant(_I64, 1))
    with builder.if_else(alone) as (nap, spin):
        with nap:
            call(builder, "symnet_usleep", _I32, [ir.Constant(_I32, NAP_US)])
        with spin:
            _pause(builder)
    builder.branch(wait)
    builder.position_at_end(begun)
    builder.ret(phase)
    builder.position_at_end(leave)
    builder.ret(ir.Constant(_I64, -1))


def _await(builder, phase):
    """The main thread's wait until the helper has finished ``phase``."""
    _spin(builder, FINISHED, lambda builder, value: builder.icmp_signed(">=", value, phase))
    builder.ret_void()


@intrinsic
def begin(typingctx, role, par, phase):
    """The start of a phase that both threads run, each on its share, in a step on two threads
    (``par``; else nothing): its number, one more than ``phase`` (both threads count them
    alike). The main thread (``role`` 1) lets the helper begin it; the helper (``role`` 2)
    waits until it has (``_follow``), and gets -1 if it was told to ``EXIT`` instead."""
    if not _integers(role, par, phase):
        return None

    def codegen(context, builder, signature, args):
        helper, par, phase = _arguments(context, builder, signature, args)
        follow = _function(builder.module, "symnet_pool_follow",
                           ir.FunctionType(_I64, [_I64]), _follow)
        entry = builder.block
        shared = builder.append_basic_block("begin_shared")
        main_block = builder.append_basic_block("begin_main")
        wait = builder.append_basic_block("begin_wait")
        done = builder.append_basic_block("begin_done")
        builder.cbranch(par, shared, done)
        builder.position_at_end(shared)
        following = builder.add(phase, ir.Constant(_I64, 1))
        builder.cbranch(helper, wait, main_block)
        builder.position_at_end(main_block)
        _put(builder, BEGUN, following)
        builder.branch(done)
        builder.position_at_end(wait)
        followed = builder.call(follow, [following])
        builder.branch(done)
        builder.position_at_end(done)
        result = builder.phi(_I64)
        result.add_incoming(phase, entry)
        result.add_incoming(following, main_block)
        result.add_incoming(followed, wait)
        return result

    return types.int64(role, par, phase), codegen


@intrinsic
def end(typingctx, role, par, phase):
    """The end of a phase that both threads run (in a step on two threads, ``par``; else
    nothing): the helper says it has finished its share, the main thread waits until it has."""
    if not _integers(role, par, phase):
        return None

    def codegen(context, builder, signature, args):
        helper, par, phase = _arguments(context, builder, signature, args)
        wait = _function(builder.module, "symnet_pool_await",
                         ir.FunctionType(ir.VoidType(), [_I64]), _await)
        with builder.if_then(par), builder.if_else(helper) as (tell, main):
            with tell:
                _put(builder, FINISHED, phase)
            with main:
                builder.call(wait, [phase])
        return context.get_dummy_value()

    return types.none(role, par, phase), codegen


@intrinsic
def share(typingctx, role, par, count):
    """This thread's share of ``range(count)`` in a shared phase: the first half on the main
    thread, the second on the helper, all of it in a step on one thread. Selects, not
    branches: numba's passes take time for each branch of ``train_epochs``."""
    if not _integers(role, par, count):
        return None
    pair = types.UniTuple(types.int64, 2)

    def codegen(context, builder, signature, args):
        helper, par, count = _arguments(context, builder, signature, args)
        half = builder.sdiv(count, ir.Constant(_I64, 2))
        first = builder.select(helper, half, ir.Constant(_I64, 0))
        last = builder.select(builder.and_(par, builder.not_(helper)), half, count)
        return context.make_tuple(builder, pair, (first, last))

    return pair(role, par, count), codegen


def _callback_module() -> ir.Module:
    """OpenBLAS's threads callback, ``void callback(int sync, dojob, int numjobs, size_t size,
    void *jobs, int arg)``: job 0 on the calling thread, job 1 (of two) on the helper, as
    OpenBLAS's threads ``_MAIN_JOB_SLOT`` and ``_HELPER_JOB_SLOT``; it returns when both are
    done. OpenBLAS's jobs wait for each other, so they must run at the same time: the helper
    spins on the control block whenever this is installed, and OpenBLAS splits a product into
    at most as many jobs as it has threads, two while it is installed.
    Written in LLVM IR directly: through numba it cost ~0.5 s of cold compile."""
    module = ir.Module("symnet_pool")
    i32, byte_ptr = ir.IntType(32), ir.IntType(8).as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [i32, _JOB_TYPE.as_pointer(), i32, _I64, byte_ptr, i32])
    fn = ir.Function(module, fnty, "symnet_blas_callback")
    _, dojob, numjobs, size, jobs, arg = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    multi = builder.icmp_signed(">", numjobs, ir.Constant(i32, 1))
    with builder.if_then(multi):  # hand job 1 to the helper
        for index, value in ((FN, builder.ptrtoint(dojob, _I64)),
                             (DATA, builder.add(builder.ptrtoint(jobs, _I64), size)),
                             (ARG, builder.sext(arg, _I64)), (JOB, ir.Constant(_I64, BLAS))):
            _put(builder, index, value)
    builder.call(dojob, [ir.Constant(i32, _MAIN_JOB_SLOT), jobs, arg])
    with builder.if_then(multi):
        _spin(builder)
    builder.ret_void()
    return module


_ENGINE = None


def _callback_address() -> int:
    global _ENGINE
    if _ENGINE is None:
        module = llvm.parse_assembly(str(_callback_module()))
        machine = llvm.Target.from_default_triple().create_target_machine()
        _ENGINE = llvm.create_mcjit_compiler(module, machine)
        _ENGINE.finalize_object()
    return _ENGINE.get_function_address("symnet_blas_callback")


# One symnet kernel at a time in a process: the BLAS callback is process-wide, so another
# thread's kernel must not call OpenBLAS while a training call has the helper. (Before the
# helper, every kernel held the GIL while it ran, which had the same effect.)
LOCK = threading.RLock()


def blas_threads() -> int:
    return int(blas.LIBRARY.scipy_openblas_get_num_threads())


def _blas_slots() -> int:
    """How many threads' slots OpenBLAS has (its build's MAX_THREADS; 0 if it does not say)."""
    blas.LIBRARY.scipy_openblas_get_config.restype = ctypes.c_char_p
    found = re.search(rb"MAX_THREADS=(\d+)", blas.LIBRARY.scipy_openblas_get_config())
    return int(found.group(1)) if found else 0


BLAS_SLOTS = _blas_slots()


@contextlib.contextmanager
def helper(serve):
    """Holds ``LOCK``; while the block runs, ``serve()`` (the generated ``train_epochs`` in its
    helper role, which spins on the control block without the GIL) runs on a helper thread,
    and OpenBLAS's jobs go through it. Yields whether it does: not when ``serve`` is None (no
    parameter is large enough to split), when OpenBLAS runs other than two threads or has no
    free slot for the helper's jobs, or when ``SYMNET_POOL=0``."""
    with LOCK:
        if (serve is None or os.environ.get("SYMNET_POOL") == "0" or blas_threads() != 2
                or BLAS_SLOTS <= _HELPER_JOB_SLOT):
            yield False
            return
        failure = []

        def run():
            try:
                serve()
            except BaseException as err:  # raised again on the calling thread
                failure.append(err)

        CONTROL[:] = IDLE
        thread = threading.Thread(target=run, name="symnet-helper", daemon=True)
        try:  # from here on, whatever happens (even an interrupt), the helper is stopped
            thread.start()
            while CONTROL[UP] == 0:
                if not thread.is_alive():
                    raise failure[0] if failure else RuntimeError("symnet's helper thread stopped")
                time.sleep(1e-5)
            blas.LIBRARY.scipy_openblas_set_threads_callback_function(
                ctypes.c_void_p(_callback_address()))
            yield True
        finally:
            blas.LIBRARY.scipy_openblas_set_threads_callback_function(ctypes.c_void_p(0))
            blas.LIBRARY.scipy_openblas_set_num_threads(2)  # codegen.pace may have left one
            CONTROL[JOB] = EXIT
            _join(thread)


def _join(thread: threading.Thread) -> None:
    """Wait for ``thread`` to end, through any interrupt: a helper left running would spin
    on the control block beside the next training call."""
    while thread.is_alive():
        try:
            thread.join()
        except BaseException:  # a second Ctrl-C while it winds down
            continue
