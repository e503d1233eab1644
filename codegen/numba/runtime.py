"""The thread team that runs the generated kernels, for any thread count.

A kernel is a sequence of *phases*; a phase is a number of independent *pieces* (tiles of a
product, column ranges of a loop nest, rows of the gather or of a parameter's update). Every
thread of the team runs the same kernel and, in each phase, takes pieces as it comes free
(``claim``) until none are left, then waits until the last piece is finished (``wait``), which
the thread that finishes it announces (``next``/``publish``). Nothing waits for a *thread*: a
thread that loses its core delays the others only by the piece it holds, and when it runs again
it finds the phases it missed complete and catches up. How a piece is computed does not depend
on which thread computes it, so results are the same bit for bit for any thread count.

A waiting thread polls for a while (``SPIN``, adapted per thread), then sleeps on a futex, so
that a partner that lost its core gets one back. With one thread (``team == 0``) the phase
functions are a local counter: nothing waits and nothing is atomic.

Kernels take one argument block (an int64 array: the team's address, results, scalars, and a
data pointer and two dimensions per array, see :func:`array`) and the thread's number, so a
kernel takes any number of arrays; they are compiled as C callbacks (``numba.cfunc``). The team
is ``threads() - 1`` worker threads that sleep between kernels, plus the thread that calls
:func:`run`. ``SYMNET_NUM_THREADS`` sets the thread count (default: the cores this process may
run on, ``os.sched_getaffinity``). :func:`run` gives a call to the calling thread alone when it
is too small to share, or small enough while the team's threads wait for cores (:class:`_Load`).
"""

from __future__ import annotations

import ctypes
import inspect
import os
import platform
import sys
import threading
import time
import warnings
import weakref

import llvmlite.binding as llvm
import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.compiler import Flags, compile_internal
from numba.core.registry import cpu_target
from numba.extending import intrinsic
from numba.np.arrayobj import populate_array

# The team's control block: int64 slots, the ones written by different threads 64 bytes apart.
THREADS = 0  # the team's size
FINISHED = 8  # pieces finished
DONE, SLEEPERS = 16, 17  # pieces whose phase is complete (the futex word); threads asleep on it
SEQ, FN, BLOCK, IDLE = 24, 25, 26, 27  # the job: its number, kernel, block; workers asleep on SEQ
ACKS, ACK_SLEEPERS = 32, 33  # workers that have finished the job; the caller asleep on ACKS
CLAIMS = 40  # thread t's share of the phase: pieces handed out from it, at CLAIMS + 8·t
TAG = 24  # a share's slot holds (the phase's base << TAG) | pieces handed out
MAX_THREADS = 256
BUDGETS = CLAIMS + 8 * MAX_THREADS  # thread t's spin budget (cycles) at BUDGETS + 8·t
SLOTS = BUDGETS + 8 * MAX_THREADS
SPIN = 25_000  # cycles a wait first polls before it sleeps (~10 µs); then per thread, doubled
SPIN_MIN, SPIN_MAX = 5_000, 500_000  # after a wait that ended polling, quartered after one
# that slept: on a quiet machine a thread rarely sleeps between phases (a futex wake-up in this
# VM costs tens of µs), and when its partner has lost its core it soon gives its own away
POLLS = 32  # polls between two PAUSEs: a virtual CPU that runs many PAUSEs in a row is taken
# off its core by the hypervisor (pause-loop exiting), which made long spins 2× slower here
GRACE = 64  # PAUSE rounds (~2 µs) before a thread takes pieces from a share not yet begun

_I32, _I64 = ir.IntType(32), ir.IntType(64)
I64 = np.int64  # a constant passed as I64(k) is an int64, not a literal numba compiles a callee for
_LINUX = sys.platform.startswith("linux")
_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(platform.machine().lower())
_FUTEX_WAIT, _FUTEX_WAKE = 128, 129  # FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")

_libc = ctypes.CDLL(None)
llvm.add_symbol("symnet_syscall", ctypes.cast(_libc.syscall, ctypes.c_void_p).value)
llvm.add_symbol("symnet_usleep", ctypes.cast(_libc.usleep, ctypes.c_void_p).value)


# ------------------------------------------------------------------------------ intrinsics


def _as_i64(context, builder, sig, args, i):
    return context.cast(builder, args[i], sig.args[i], types.int64)


def _slot(builder, team, index):
    """A pointer to the int64 slot ``index`` of the control block at address ``team``."""
    return builder.inttoptr(builder.add(team, builder.mul(index, ir.Constant(_I64, 8))),
                            _I64.as_pointer())


def _integers(*args):
    return all(isinstance(a, types.Integer) for a in args)


@intrinsic
def load(typingctx, team, index):
    """``team[index]``, an acquiring load."""
    if not _integers(team, index):
        return None

    def codegen(context, builder, sig, args):
        ptr = _slot(builder, *(_as_i64(context, builder, sig, args, i) for i in (0, 1)))
        return builder.load_atomic(ptr, "acquire", 8)

    return types.int64(team, index), codegen


@intrinsic
def store(typingctx, team, index, value):
    """``team[index] = value``, a releasing store, ordered with every other atomic operation."""
    if not _integers(team, index, value):
        return None

    def codegen(context, builder, sig, args):
        team_, index_, value_ = (_as_i64(context, builder, sig, args, i) for i in range(3))
        builder.store_atomic(value_, _slot(builder, team_, index_), "seq_cst", 8)
        return context.get_dummy_value()

    return types.none(team, index, value), codegen


@intrinsic
def add(typingctx, team, index, value):
    """``team[index] += value``, atomically; returns the value before."""
    if not _integers(team, index, value):
        return None

    def codegen(context, builder, sig, args):
        team_, index_, value_ = (_as_i64(context, builder, sig, args, i) for i in range(3))
        return builder.atomic_rmw("add", _slot(builder, team_, index_), value_, "seq_cst")

    return types.int64(team, index, value), codegen


@intrinsic
def swap_if(typingctx, team, index, expected, value):
    """``team[index] = value`` if it holds ``expected`` (compare and swap); whether it did."""
    if not _integers(team, index, expected, value):
        return None

    def codegen(context, builder, sig, args):
        team_, index_, expected_, value_ = (_as_i64(context, builder, sig, args, i)
                                            for i in range(4))
        pair = builder.cmpxchg(_slot(builder, team_, index_), expected_, value_, "seq_cst",
                               "seq_cst")
        return builder.extract_value(pair, 1)

    return types.boolean(team, index, expected, value), codegen


@intrinsic
def pause(typingctx):
    """x86's PAUSE, in a spin loop: the core knows the thread is waiting (nothing elsewhere)."""

    def codegen(context, builder, sig, args):
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def cycles(typingctx):
    """The processor's cycle counter (``llvm.readcyclecounter``: x86's RDTSC)."""

    def codegen(context, builder, sig, args):
        fn = builder.module.declare_intrinsic("llvm.readcyclecounter",
                                              fnty=ir.FunctionType(_I64, []))
        return builder.call(fn, [])

    return types.int64(), codegen


@intrinsic
def sleep_while(typingctx, team, index, value):
    """Sleep until ``team[index]`` (its low 32 bits) may no longer be ``value``: a futex wait
    (Linux), else a 50 µs nap. It may return early; callers check again."""
    if not _integers(team, index, value):
        return None

    def codegen(context, builder, sig, args):
        team_, index_, value_ = (_as_i64(context, builder, sig, args, i) for i in range(3))
        if _LINUX and _FUTEX is not None:
            fnty = ir.FunctionType(_I64, [_I64], var_arg=True)
            fn = cgutils.get_or_insert_function(builder.module, fnty, "symnet_syscall")
            word = builder.ptrtoint(_slot(builder, team_, index_), _I64)
            low = builder.and_(value_, ir.Constant(_I64, 0xFFFFFFFF))
            builder.call(fn, [ir.Constant(_I64, _FUTEX), word, ir.Constant(_I64, _FUTEX_WAIT),
                              low, ir.Constant(_I64, 0)])
        else:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I32, [_I32]),
                                                "symnet_usleep")
            builder.call(fn, [ir.Constant(_I32, 50)])
        return context.get_dummy_value()

    return types.none(team, index, value), codegen


@intrinsic
def wake(typingctx, team, index):
    """Wake every thread asleep on ``team[index]`` (a futex wake; nothing off Linux)."""
    if not _integers(team, index):
        return None

    def codegen(context, builder, sig, args):
        team_, index_ = (_as_i64(context, builder, sig, args, i) for i in range(2))
        if _LINUX and _FUTEX is not None:
            fnty = ir.FunctionType(_I64, [_I64], var_arg=True)
            fn = cgutils.get_or_insert_function(builder.module, fnty, "symnet_syscall")
            word = builder.ptrtoint(_slot(builder, team_, index_), _I64)
            builder.call(fn, [ir.Constant(_I64, _FUTEX), word, ir.Constant(_I64, _FUTEX_WAKE),
                              ir.Constant(_I64, 2**31 - 1)])
        return context.get_dummy_value()

    return types.none(team, index), codegen


@intrinsic
def call(typingctx, fn, block, tid):
    """Call the kernel at address ``fn`` with its argument block and a thread number."""
    if not _integers(fn, block, tid):
        return None

    def codegen(context, builder, sig, args):
        fn_, block_, tid_ = (_as_i64(context, builder, sig, args, i) for i in range(3))
        kernel = builder.inttoptr(fn_, ir.FunctionType(ir.VoidType(), [_I64, _I64]).as_pointer())
        builder.call(kernel, [block_, tid_])
        return context.get_dummy_value()

    return types.none(fn, block, tid), codegen


def _element(dtype):
    """The numba type of a NumPy dtype argument (``np.float32``, ``DT``), or None."""
    if isinstance(dtype, types.NumberClass):
        return dtype.instance_type
    if isinstance(dtype, types.DType):
        return dtype.dtype
    return None


def _array(context, builder, ty, address, shape):
    """A C-contiguous array of ``ty`` and ``shape`` (LLVM values) over memory nobody here owns
    (no meminfo: the caller keeps it alive)."""
    arrty = types.Array(ty, len(shape), "C")
    ary = context.make_array(arrty)(context, builder)
    intp = context.get_value_type(types.intp)
    size = ir.Constant(intp, context.get_abi_sizeof(context.get_data_type(ty)))
    strides = [size]
    for extent in reversed(shape[1:]):
        strides.insert(0, builder.mul(extent, strides[0]))
    data = builder.inttoptr(address, context.get_data_type(ty).as_pointer())
    populate_array(ary, data=data, shape=list(shape), strides=strides, itemsize=size,
                   meminfo=None)
    return ary._getvalue()


@intrinsic
def block(typingctx, address, length):
    """The kernel's argument block: ``length`` int64 slots at ``address``. An intrinsic (as
    :func:`array`) rather than ``numba.carray``: numba types each call of a jitted helper at
    ~1 ms, and a kernel unpacks an array for every workspace."""
    if not _integers(address, length):
        return None

    def codegen(context, builder, sig, args):
        address_, length_ = (_as_i64(context, builder, sig, args, i) for i in range(2))
        return _array(context, builder, types.int64, address_, [length_])

    return types.Array(types.int64, 1, "C")(address, length), codegen


@intrinsic
def array(typingctx, blk, at, dtype):
    """The 2-D array whose data pointer and dimensions are ``blk[at:at + 3]``."""
    ty = _element(dtype)
    if ty is None or not isinstance(at, types.Integer) or not isinstance(blk, types.Array):
        return None
    arrty = types.Array(ty, 2, "C")

    def codegen(context, builder, sig, args):
        slots = context.make_array(sig.args[0])(context, builder, args[0]).data
        at_ = _as_i64(context, builder, sig, args, 1)
        address, rows, cols = (builder.load(builder.gep(slots, [builder.add(at_, ir.Constant(_I64, k))]))
                               for k in range(3))
        return _array(context, builder, ty, address, [rows, cols])

    return arrty(blk, at, dtype), codegen


# --------------------------------------------------------------------------- phases
#
# Each function below is compiled once, as a C function whose address is given to LLVM under a
# fixed name (as codegen.intrinsics.blas does for the GEMMs), and the kernels call it through an
# intrinsic of the same name: numba types a call of a jitted helper at ~1 ms, and compiles its
# body into every kernel again, while an external call costs a few nanoseconds.

# Argument block slots after the team's address (0) and the kernel's scalars: train_epochs'
# results, written once per call by the thread that decides them (see record), and its flags.
E, S, T, STATUS, STOPCODE, BAD = 8, 9, 10, 11, 12, 13


@nb.njit(cache=True, nogil=True)
def _claim(team, base, count, previous, tid):
    """The next piece of the phase whose pieces are ``base`` to ``base + count`` of the job
    (counted from 0 here), or -1 when all are taken. Alone (``team == 0``): the one after
    ``previous``.

    Thread t first takes the pieces of its own share, the t-th of the team's size, then those
    left in the others': on a quiet machine each thread computes the same part of every phase,
    step after step, so the rows it makes and reads stay in its core's cache (seed002's update
    and small nests took 2.5× as long on two threads when pieces went to whoever came first);
    when a thread loses its core, the others take its share. A share's slot is tagged with the
    phase's base, so a thread that fell behind never takes a later phase's piece."""
    if team == 0:
        piece = previous + 1
        return piece if piece < count else -1
    threads = load(team, THREADS)
    for k in range(threads):
        owner = tid + k
        if owner >= threads:
            owner -= threads
        first = count * owner // threads
        size = count * (owner + 1) // threads - first
        slot = CLAIMS + 8 * owner
        if owner != tid:  # a share its owner has not begun: give the owner a moment first
            for _ in range(GRACE):
                if load(team, slot) >> TAG >= base:
                    break
                pause()
        while size > 0:
            word = load(team, slot)
            tag = word >> TAG
            if tag > base:  # the phase is complete: this thread fell behind
                return -1
            if tag < base:  # the first claim from this share in this phase
                if swap_if(team, slot, word, (base << TAG) | 1):
                    return first
                continue
            taken = word & ((1 << TAG) - 1)
            if taken >= size:
                break
            if swap_if(team, slot, word, word + 1):
                return first + taken
    return -1


@nb.njit(cache=True, nogil=True)
def _finish(team, base, count, piece):
    """Record that ``piece`` is computed; 1 for the thread that finished the phase's last
    piece, which must then run the phase's epilogue, if any, and ``publish`` it."""
    if team == 0:
        return 1 if piece == count - 1 else 0
    return 1 if add(team, FINISHED, 1) + 1 == base + count else 0


@nb.njit(cache=True, nogil=True)
def _publish(team, base, count):
    """The phase is complete: let the threads that wait for it go on."""
    if team != 0:
        store(team, DONE, base + count)
        if load(team, SLEEPERS) > 0:
            wake(team, DONE)
    return 0


@nb.njit(cache=True, nogil=True)
def _wait_for(team, index, sleepers, target, tid):
    """Until ``team[index] >= target``: poll for thread ``tid``'s spin budget (``SPIN`` for a
    ``tid`` of -1: a worker waiting for the next job), then sleep on the futex, counted in
    ``team[sleepers]`` so that the thread that changes the slot knows to wake it. Polls come
    ``POLLS`` to a PAUSE: a virtual CPU that runs PAUSEs back to back is taken off its core by
    the hypervisor (pause-loop exiting, which made epochs 2× slower)."""
    budget = SPIN if tid < 0 else load(team, BUDGETS + 8 * tid)
    if budget == 0:
        budget = SPIN
    deadline = cycles() + budget
    while cycles() < deadline:
        for _ in range(POLLS):
            if load(team, index) >= target:
                if tid >= 0:
                    store(team, BUDGETS + 8 * tid, min(SPIN_MAX, 2 * budget))
                return
        pause()
    if tid >= 0:
        store(team, BUDGETS + 8 * tid, max(SPIN_MIN, budget // 4))
    while True:
        add(team, sleepers, 1)
        seen = load(team, index)
        if seen < target:
            sleep_while(team, index, seen)
        add(team, sleepers, -1)
        if load(team, index) >= target:
            return


@nb.njit(cache=True, nogil=True)
def _wait(team, base, count, tid):
    """Wait until the phase is complete; returns the next phase's base."""
    end = base + count
    if team != 0 and load(team, DONE) < end:
        _wait_for(team, I64(DONE), I64(SLEEPERS), end, tid)
    return end


@nb.njit(cache=True, nogil=True)
def _tile(length, work, target, least):
    """The piece size along an axis of ``length``: about ``work / target`` pieces, a power of
    two (so that 1, 2, 4 or 8 threads share them evenly), none shorter than ``least``
    (emit.tile computes the same where the sizes are known in advance)."""
    pieces = 1
    while 2 * pieces <= work // target and 2 * pieces <= length // least:
        pieces *= 2
    return (length + pieces - 1) // pieces


@nb.njit(cache=True, nogil=True)
def _product_least(length):
    """The narrowest tile of a product whose tiles cut an axis of ``length``, and so at most 8
    tiles. Each tile is a one-thread OpenBLAS call that packs the other operand again: on
    adam-relu's and wide's products, tiles 32 wide took 15-25 % longer in all than one call,
    64 wide 5-10 %, 128 wide 1-2 %; below 128 rows, ~25-row tiles were faster than one call
    (OpenBLAS's small-matrix kernels). Measured on one thread."""
    tile = 128 if length >= 256 else 64 if length >= 128 else 16
    return max(tile, length // 8)


@nb.njit(cache=True, nogil=True)
def _record(blk_addr, epoch, batch, step, status):
    """End training at (epoch, batch) after ``step`` steps with ``status``; every thread sees it
    (``blk[STOPCODE]``) once the phase whose epilogue records it is complete."""
    for index, value in ((E, epoch), (S, batch), (T, step), (STATUS, status), (STOPCODE, 1)):
        store(blk_addr, index, value)
    return 0


def _export(*functions) -> dict[str, int]:
    """Compile each function (int64 arguments, an int64 result) as a C function and give LLVM
    its address as ``symnet_rt<name>``."""
    for function in functions:
        py = function.py_func
        nargs = py.__code__.co_argcount
        compiled = nb.cfunc(types.int64(*[types.int64] * nargs), cache=True, nopython=True)(py)
        llvm.add_symbol(f"symnet_rt{py.__name__}", compiled.address)
        _EXPORTED.append(compiled)  # the machine code must stay loaded


_EXPORTED: list = []
_export(_claim, _finish, _publish, _wait, _tile, _product_least, _record)


def _call(builder, name: str, values):
    """A call of the exported ``_name``."""
    fnty = ir.FunctionType(_I64, [_I64] * len(values))
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, f"symnet_rt_{name}"),
                        values)


def _external(name: str, *args, alone=None, calls=None):
    """(signature, codegen) of an intrinsic that calls the exported ``_name`` with ``args``
    (or does ``calls(builder, values)``); with ``alone``, a team of 0 (one thread) gets
    ``alone(builder, values)`` inline instead, with no call: tiny's steps are a few
    microseconds, of which the calls took a fifth."""
    if not _integers(*args):
        return None
    calls = calls or (lambda builder, values: _call(builder, name, values))

    def codegen(context, builder, sig, values):
        values = [_as_i64(context, builder, sig, values, i) for i in range(len(args))]
        if alone is None:
            return calls(builder, values)
        solo = builder.icmp_signed("==", values[0], ir.Constant(_I64, 0))
        with builder.if_else(solo) as (then, otherwise):
            with then:
                inline = alone(builder, values)
                inline_block = builder.block
            with otherwise:
                called = calls(builder, values)
                called_block = builder.block
        result = builder.phi(_I64)
        result.add_incoming(inline, inline_block)
        result.add_incoming(called, called_block)
        return result

    return types.int64(*args), codegen


def _after(builder, values):
    """Alone: the piece after ``values[3]``, or -1 past ``values[2]`` pieces."""
    piece = builder.add(values[3], ir.Constant(_I64, 1))
    return builder.select(builder.icmp_signed("<", piece, values[2]), piece,
                          ir.Constant(_I64, -1))


@intrinsic
def claim(typingctx, team, base, count, previous, tid):
    """See :func:`_claim`."""
    return _external("claim", team, base, count, previous, tid, alone=_after)


@intrinsic
def finish(typingctx, team, base, count, piece):
    """See :func:`_finish`."""

    def last(builder, values):
        is_last = builder.icmp_signed("==", values[3],
                                      builder.sub(values[2], ir.Constant(_I64, 1)))
        return builder.zext(is_last, _I64)

    return _external("finish", team, base, count, piece, alone=last)


@intrinsic
def publish(typingctx, team, base, count):
    """See :func:`_publish`."""
    return _external("publish", team, base, count, alone=lambda b, v: ir.Constant(_I64, 0))


def _finish_and_claim(builder, values):
    """Finish the piece (publishing the phase if it was the last) and claim another: three
    calls, so that no exported function compiles the other three into it again."""
    team, base, count, piece, _ = values
    last = _call(builder, "finish", [team, base, count, piece])
    with builder.if_then(builder.icmp_signed("!=", last, ir.Constant(_I64, 0))):
        _call(builder, "publish", [team, base, count])
    return _call(builder, "claim", values)


@intrinsic
def next(typingctx, team, base, count, piece, tid):  # the name the generated kernels read best
    """Finish ``piece`` (publishing the phase if it was the last) and claim another."""
    return _external("next", team, base, count, piece, tid, alone=_after,
                     calls=_finish_and_claim)


@intrinsic
def wait(typingctx, team, base, count, tid):
    """See :func:`_wait`."""
    return _external("wait", team, base, count, tid, alone=lambda b, v: b.add(v[1], v[2]))


@intrinsic
def tile(typingctx, length, work, target, least):
    """See :func:`_tile`."""
    return _external("tile", length, work, target, least)


@intrinsic
def product_least(typingctx, length):
    """See :func:`_product_least`."""
    return _external("product_least", length)


@intrinsic
def record(typingctx, blk_addr, epoch, batch, step, status):
    """See :func:`_record`."""
    return _external("record", blk_addr, epoch, batch, step, status)


# ------------------------------------------------------------------------------ the team

_SIGNATURE = types.void(types.int64, types.int64)


@nb.cfunc(_SIGNATURE, cache=True, nopython=True)
def _worker(team, tid):
    """A worker's life: run every job the team is given, until a job with no kernel. It starts
    at job 0, not at the job it sees, which may have been posted before it ran."""
    seen = 0
    while True:
        _wait_for(team, I64(SEQ), I64(IDLE), seen + 1, I64(-1))  # jobs are numbered 1, 2, …
        seen = load(team, SEQ)
        fn = load(team, FN)
        if fn != 0:
            call(fn, load(team, BLOCK), tid)
        add(team, ACKS, 1)
        if load(team, ACK_SLEEPERS) > 0:
            wake(team, ACKS)
        if fn == 0:
            return


@nb.cfunc(types.void(types.int64, types.int64, types.int64, types.int64), cache=True,
          nopython=True)
def _run(team, fn, blk, workers):
    """The calling thread's side of a job: post it, run the kernel as thread 0, and return once
    every worker has finished it (so the arrays it uses may be freed)."""
    for owner in range(load(team, THREADS)):
        store(team, CLAIMS + 8 * owner, 0)
    store(team, FINISHED, 0)
    store(team, DONE, 0)
    store(team, ACKS, 0)
    store(team, FN, fn)
    store(team, BLOCK, blk)
    add(team, SEQ, 1)
    if load(team, IDLE) > 0:
        wake(team, SEQ)
    if fn != 0:
        call(fn, blk, 0)
    if load(team, ACKS) < workers:
        _wait_for(team, I64(ACKS), I64(ACK_SLEEPERS), workers, I64(-1))


_KERNEL = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64)
_RUN = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)(
    _run.address)
_WORKER = _KERNEL(_worker.address)


class Team:
    """``threads - 1`` worker threads (Python threads inside :func:`_worker`, which does not hold
    the GIL) and a control block; the thread that calls :meth:`run` is thread 0."""

    def __init__(self, threads: int):
        self.threads = threads
        if not 1 <= threads <= MAX_THREADS:
            raise ValueError(f"a team has 1 to {MAX_THREADS} threads, not {threads}")
        self.control = np.zeros(SLOTS, np.int64)
        self.control[THREADS] = threads
        self.address = self.control.ctypes.data
        self.workers = [threading.Thread(target=_WORKER, args=(self.address, tid), daemon=True,
                                         name=f"symnet-worker-{tid}") for tid in range(1, threads)]
        for worker in self.workers:
            worker.start()

    def run(self, kernel: int, blk: int) -> None:
        _RUN(self.address, kernel, blk, len(self.workers))

    def close(self) -> None:
        """End the workers (a job without a kernel) and wait for them."""
        _RUN(self.address, 0, 0, len(self.workers))
        for worker in self.workers:
            worker.join()


_team: Team | None = None
_lock = threading.Lock()  # one kernel at a time has the team; others run alone meanwhile


def threads() -> int:
    """``SYMNET_NUM_THREADS``, or the cores this process may run on."""
    text = os.environ.get("SYMNET_NUM_THREADS", "").strip()
    if text:
        try:
            count = int(text)
            if count >= 1:
                return count
        except ValueError:
            pass
        warnings.warn(f"SYMNET_NUM_THREADS={text!r} is not a positive integer; using the "
                      f"cores this process may run on", stacklevel=3)
    return cores()


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# Below this many multiply-adds (or entries) a call runs on the calling thread alone: waking
# the team costs more than it saves (a kernel's results are the same either way).
PARALLEL_WORK = 200_000
# While the team's threads wait for cores (a busy neighbour, more threads than free cores), a
# kernel whose work per step is below this runs alone: every piece a descheduled thread holds
# then costs its partners a scheduler time slice. Measured beside one busy process on 2 cores,
# one thread beat two on steps of 5-153 M multiply-adds (seed002 by 11 %, adam-relu by 13 %,
# bn-dropout by 25 %, 512x3-b64 by 5 %), and lost on wide's 2.5 G (by 15 %).
ALONE_UNDER_LOAD = 500_000_000
CONTENDED = 0.75  # a team call whose threads were on a core for less than this share of it
RETRY = 1.0  # seconds after a contended call before the team is tried again
MEASURED = 0.02  # seconds: shorter team calls are not judged


class _Load:
    """Whether the team's last judged call found its threads waiting for cores: its process
    CPU time against wall time × the cores its threads could have had (more threads than cores
    is not by itself a wait). A measure of this process only, so it holds in a container, where
    ``/proc/loadavg`` counts the host's tasks."""

    def __init__(self):
        self.until = 0.0

    def contended(self) -> bool:
        return time.monotonic() < self.until

    def record(self, cpu: float, wall: float, count: int) -> None:
        if wall >= MEASURED:
            self.until = time.monotonic() + RETRY if cpu < CONTENDED * wall * count else 0.0


_load = _Load()


def run(kernel, blk: np.ndarray, work: int | None = None) -> None:
    """Run the compiled kernel (a ``ctypes`` function of the argument block's address and the
    thread number) on the team, or alone when one thread is asked for, when the kernel's
    ``work`` per step (multiply-adds; None: share it) is too little to share, when it is small
    and the team's threads recently waited for cores, or while another thread has the team.
    ``blk[0]`` is set to the team's address (0 alone). The numbers are the same either way."""
    count = threads()
    alone = count == 1 or (work is not None and (
        work < PARALLEL_WORK or (work < ALONE_UNDER_LOAD and _load.contended())))
    if alone or not _lock.acquire(blocking=False):
        blk[0] = 0
        kernel(blk.ctypes.data, 0)
        return
    try:
        team = _team_of(count)
        blk[0] = team.address
        cpu, wall = time.process_time(), time.perf_counter()
        team.run(ctypes.cast(kernel, ctypes.c_void_p).value, blk.ctypes.data)
        _load.record(time.process_time() - cpu, time.perf_counter() - wall,
                     min(count, cores()))
    finally:
        _lock.release()


def _team_of(count: int) -> Team:
    """The team of ``count`` threads, made (anew, if the count changed) on first use."""
    global _team
    if _team is None or _team.threads != count:
        if _team is not None:
            _team.close()
        _team = Team(count)
    return _team


_TYPING_CONTEXT = inspect.Parameter("typingctx", inspect.Parameter.POSITIONAL_OR_KEYWORD)


def stage(**options):
    """A decorator: the function, whose arguments are int64 scalars and arrays and which returns
    an int64, as a *stage* of the kernels that call it, compiled with ``options`` (numba.njit's).

    A stage is a function of its own in the LLVM module of each kernel that calls it (numba's
    analyses grow faster than linearly with a function's size), typed and lowered once per kernel
    however often the kernel calls it. Unlike an ``njit`` function's, its code is not optimised
    and compiled to machine code on its own before the kernel's is: that did all the LLVM work of
    the stages twice (~0.5 s of seed002's 3.8 s cold setup, measured)."""
    flags = Flags()
    cpu_target.options.parse_as_flags(flags, {"nopython": True, **options})
    flags.no_compile = flags.no_cpython_wrapper = flags.no_cfunc_wrapper = True

    def decorate(function):
        lowered = weakref.WeakKeyDictionary()  # a kernel's code library → {signature: fndesc}

        def typer(typingctx, *args):
            def codegen(context, builder, sig, values):
                library = context.active_code_library
                known = lowered.setdefault(library, {})
                if sig not in known:
                    known[sig] = compile_internal(context.typing_context, context, library,
                                                  function, sig.args, sig.return_type,
                                                  flags.copy(), {}).fndesc
                return context.call_internal(builder, known[sig], sig, values)

            return types.int64(*args), codegen

        # the stage's own parameters, not *args: numba folds a call's arguments by this signature
        params = inspect.signature(function).parameters.values()
        typer.__signature__ = inspect.Signature([_TYPING_CONTEXT, *params])
        typer.__name__ = function.__name__
        return intrinsic(typer)

    return decorate


def compile_kernel(function, cache: bool, **options):
    """``function(block_address, tid)`` as a C callback, and its ``ctypes`` caller."""
    compiled = nb.cfunc(_SIGNATURE, cache=cache, nopython=True, **options)(function)
    return compiled, _KERNEL(compiled.address)


def _forget_team():
    """In a forked child the workers do not exist: make a new team on first use."""
    global _team, _lock
    _team, _lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_team)
