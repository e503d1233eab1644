"""One helper thread that runs both OpenBLAS's threaded jobs and half of the optimizer update.

With two threads, OpenBLAS splits each product into two jobs, one for the calling thread and
one for its own worker, and the generated ``train_epochs`` ran everything that is not a product
on the calling thread alone. A second pool for that work (numba's ``prange``) fights OpenBLAS's
for the two cores. Instead, while ``train_epochs`` runs, OpenBLAS hands its jobs to this
module's callback (``openblas_set_threads_callback_function``, a public OpenBLAS API), which
runs the second job on a helper thread of symnet's own; between products, the same helper
gathers the second half of each batch's shuffled rows and updates the second half of the rows
of each large parameter (``numba_backend.SPLIT``). One
pool, two cores, no fight. The helper is the generated ``train_epochs`` itself, called with
``role == 2`` (a kernel of its own would cost its own cold compile).

The thread and the kernels talk through a small block of integers (``CONTROL``), given to LLVM
as the symbol ``symnet_pool_control`` so that cached machine code links against it in every
process, as ``codegen.blas`` does for the GEMMs. Slot ``JOB`` holds the work for the helper:
``IDLE``, ``BLAS`` (run OpenBLAS's job whose function, data and argument are in the next slots),
``GATHER`` (copy the second half of the batch's shuffled rows, whose epoch, first row and
count are in slots ``EPOCH``, ``START``, ``ROWS``), ``UPDATE`` (the helper's half of the
update), ``WAKE`` (nothing: the main thread's way to know the helper is awake) or ``EXIT``. The
helper sets it back to ``IDLE`` when done; only one job is in flight. While slot ``NOW`` is 1,
the main thread trains on one thread (``codegen.pace`` decides when) and the idle helper naps
rather than spins. Every kernel call holds ``LOCK``, so one symnet kernel
runs at a time in a process. With an OpenBLAS thread count other than two, or
``SYMNET_POOL=0``, training runs without the helper, as before.
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

IDLE, BLAS, UPDATE, GATHER, EXIT, WAKE = 0, 1, 2, 3, 4, 5
JOB, FN, DATA, ARG, EPOCH, START, ROWS = 0, 1, 2, 3, 4, 5, 6  # slots of CONTROL
UP = 8  # the helper is running: 64 bytes after JOB, apart from the slots that change per job
# codegen.pace: the mode the main thread trains in (-1 before its first step, 0 with the helper,
# 1 alone, when the idle helper naps), the mode the watcher asks for, the rows finished
NOW, WANT, DONE = 9, 10, 11
CONTROL = np.zeros(16, np.int64)
llvm.add_symbol("symnet_pool_control", CONTROL.ctypes.data)

_I64 = ir.IntType(64)


def _slot(builder, index):
    """A pointer to ``CONTROL[index]`` through the linked symbol."""
    gv = builder.module.globals.get("symnet_pool_control")
    if gv is None:
        gv = ir.GlobalVariable(builder.module, ir.ArrayType(_I64, len(CONTROL)),
                               "symnet_pool_control")
        gv.linkage = "external"
    return builder.gep(gv, [ir.Constant(ir.IntType(32), 0), index])


def _int64(context, builder, signature, args, i):
    return context.cast(builder, args[i], signature.args[i], types.int64)


@intrinsic
def load(typingctx, index):
    """``CONTROL[index]``, an acquiring load: what the other thread wrote before its matching
    ``store`` is visible after it."""
    if not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        slot = _slot(builder, _int64(context, builder, signature, args, 0))
        return builder.load_atomic(slot, "acquire", 8)

    return types.int64(index), codegen


@intrinsic
def store(typingctx, index, value):
    """``CONTROL[index] = value``, a releasing store."""
    if not isinstance(index, types.Integer) or not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        slot = _slot(builder, _int64(context, builder, signature, args, 0))
        builder.store_atomic(_int64(context, builder, signature, args, 1), slot, "release", 8)
        return context.get_dummy_value()

    return types.none(index, value), codegen


def _pause(builder):
    """x86's PAUSE in a spin loop: it tells the core that the thread is waiting, so that a
    sibling hardware thread gets the core's resources (nothing elsewhere)."""
    if X86:
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                            "llvm.x86.sse2.pause")
        builder.call(fn, [])


def _spin(builder):
    """Emit: loop until CONTROL[JOB] is IDLE."""
    job = _slot(builder, ir.Constant(_I64, JOB))
    loop = builder.append_basic_block("spin")
    done = builder.append_basic_block("spin_done")
    builder.branch(loop)
    builder.position_at_end(loop)
    idle = builder.icmp_signed("==", builder.load_atomic(job, "acquire", 8), ir.Constant(_I64, IDLE))
    wait_more = builder.append_basic_block("spin_pause")
    builder.cbranch(idle, done, wait_more)
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


def _statement(emit, doc: str):
    """A numba intrinsic of no arguments whose code is what ``emit(builder)`` writes."""

    def typer(typingctx):
        def codegen(context, builder, signature, args):
            emit(builder)
            return context.get_dummy_value()

        return types.none(), codegen

    typer.__doc__ = doc
    return intrinsic(typer)


def _run_blas_job(builder):
    def slot(i):
        return builder.load_atomic(_slot(builder, ir.Constant(_I64, i)), "acquire", 8)

    fn = builder.inttoptr(slot(FN), _JOB_TYPE.as_pointer())
    builder.call(fn, [ir.Constant(ir.IntType(32), _HELPER_JOB_SLOT),
                      builder.inttoptr(slot(DATA), ir.IntType(8).as_pointer()),
                      builder.trunc(slot(ARG), ir.IntType(32))])
    builder.store_atomic(ir.Constant(_I64, IDLE), _slot(builder, ir.Constant(_I64, JOB)),
                         "release", 8)


pause = _statement(_pause, "PAUSE, in the helper's wait for work.")
wait = _statement(_spin, "Spin until the helper has finished its job.")
run_blas_job = _statement(
    _run_blas_job,
    "On the helper: OpenBLAS's second job, as its thread _HELPER_JOB_SLOT, then back to IDLE.")


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
            builder.store_atomic(value, _slot(builder, ir.Constant(_I64, index)), "release", 8)
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
        thread.start()
        try:  # from here on, whatever happens (even an interrupt), the helper is stopped
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
            thread.join()
