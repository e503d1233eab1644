"""The team's protocol (see :mod:`.runtime`, its only user) written as LLVM IR: the functions a
kernel calls at its phase boundaries (``claim``, ``finish``, ``publish``, ``wait``), the piece
sizes it computes at run time (``tile``, ``product_least``), ``record``, and the two sides of a
job (``worker``, ``run``).

They are written with llvmlite rather than compiled from Python by numba: numba's pipeline took
~0.75 s to compile them in every process with an empty cache (a fifth of seed002's cold setup),
LLVM alone 0.13 s, and their machine code is kept in the kernel cache (0.01 s to load). They are
C functions of int64 arguments; :func:`build` gives LLVM each one's address as
``symnet_rt_<name>``, where the kernels' calls find it.

The control block is an int64 array at the address ``team``; its slots are the constants below.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import pickle
import platform
import sys
from pathlib import Path

import llvmlite.binding as llvm
from llvmlite import ir
from numba.core import cgutils
from numba.core.compiler_lock import global_compiler_lock
from numba.core.registry import cpu_target

from .. import files
from ..files import cache_dir

# The control block's int64 slots, the ones written by different threads 64 bytes apart.
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

# An argument block's slots after the team's address (0) and the kernel's scalars: train_epochs'
# results, written once per call by the thread that decides them (see record), and its flags.
E, S, T, STATUS, STOPCODE, BAD = 8, 9, 10, 11, 12, 13

_I32, _I64 = ir.IntType(32), ir.IntType(64)
_LINUX = sys.platform.startswith("linux")
_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(platform.machine().lower())
_FUTEX_WAIT, _FUTEX_WAKE = 128, 129  # FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def i64(value: int) -> ir.Constant:
    return ir.Constant(_I64, value)


class Writer(ir.IRBuilder):
    """An IRBuilder for one function of int64 arguments, with the team's operations on the
    int64 slots of a control block (``team``: its address; ``index``: an int64 value)."""

    def __init__(self, module: ir.Module, name: str, params: str, returns=_I64):
        fnty = ir.FunctionType(returns, [_I64] * len(params.split()))
        function = ir.Function(module, fnty, f"symnet_rt_{name}")
        for arg, param in zip(function.args, params.split()):
            arg.name = param
        super().__init__(function.append_basic_block("entry"))

    @property
    def args(self):
        return self.function.args

    def blocks(self, names: str) -> list[ir.Block]:
        return [self.function.append_basic_block(name) for name in names.split()]

    def variable(self, name: str, value) -> ir.AllocaInstr:
        """A mutable int64 (LLVM makes it a register)."""
        ptr = self.alloca(_I64, name=name)
        self.store(value, ptr)
        return ptr

    def returns_if(self, condition, value=None):
        """Return ``value`` (nothing: void) when ``condition`` holds, else go on."""
        with self.if_then(condition):
            if value is None:
                self.ret_void()
            else:
                self.ret(value)

    def less(self, a, b):
        return self.icmp_signed("<", a, b)

    def at_least(self, a, b):
        return self.icmp_signed(">=", a, b)

    def slot(self, team, index):
        """A pointer to the int64 slot ``index`` of the control block at address ``team``."""
        return self.inttoptr(self.add(team, self.mul(index, i64(8))), _I64.as_pointer())

    def get(self, team, index):
        """``team[index]``, an acquiring load."""
        return self.load_atomic(self.slot(team, index), "acquire", 8)

    def put(self, team, index, value):
        """``team[index] = value``, a releasing store, ordered with every other atomic."""
        self.store_atomic(value, self.slot(team, index), "seq_cst", 8)

    def fetch_add(self, team, index, value):
        """``team[index] += value``, atomically; the value before."""
        return self.atomic_rmw("add", self.slot(team, index), value, "seq_cst")

    def swap_if(self, team, index, expected, value):
        """``team[index] = value`` if it holds ``expected`` (compare and swap); whether it did."""
        pair = self.cmpxchg(self.slot(team, index), expected, value, "seq_cst", "seq_cst")
        return self.extract_value(pair, 1)

    def pause(self):
        """x86's PAUSE, in a spin loop: the core knows the thread is waiting."""
        if _X86:
            self.call(self._declare("llvm.x86.sse2.pause", ir.VoidType(), []), [])

    def cycles(self):
        """The processor's cycle counter (x86's RDTSC)."""
        return self.call(self._declare("llvm.readcyclecounter", _I64, []), [])

    def sleep_while(self, team, index, value):
        """Sleep until ``team[index]`` (its low 32 bits) may no longer be ``value``: a futex
        wait (Linux), else a 50 µs nap. It may return early; callers check again."""
        if _LINUX and _FUTEX is not None:
            low = self.and_(value, i64(0xFFFFFFFF))
            self.call(self._syscall(), [i64(_FUTEX), self.ptrtoint(self.slot(team, index), _I64),
                                        i64(_FUTEX_WAIT), low, i64(0)])
        else:
            self.call(self._declare("symnet_usleep", _I32, [_I32]), [ir.Constant(_I32, 50)])

    def wake(self, team, index):
        """Wake every thread asleep on ``team[index]`` (a futex wake; nothing off Linux)."""
        if _LINUX and _FUTEX is not None:
            self.call(self._syscall(), [i64(_FUTEX), self.ptrtoint(self.slot(team, index), _I64),
                                        i64(_FUTEX_WAKE), i64(2**31 - 1)])

    def call_kernel(self, fn, block, tid):
        """Call the kernel at address ``fn`` with its argument block and a thread number."""
        kernel = ir.FunctionType(ir.VoidType(), [_I64, _I64]).as_pointer()
        self.call(self.inttoptr(fn, kernel), [block, tid])

    def call_own(self, name: str, *args):
        """Call ``symnet_rt_<name>``, defined in this module."""
        return self.call(self.module.get_global(f"symnet_rt_{name}"), list(args))

    @contextlib.contextmanager
    def repeat(self, count):
        """A loop of ``count`` rounds; yields the round's number."""
        with cgutils.for_range(self, count) as loop:
            yield loop.index

    def _declare(self, name, returns, params, var_arg=False):
        return cgutils.get_or_insert_function(
            self.module, ir.FunctionType(returns, params, var_arg=var_arg), name)

    def _syscall(self):
        return self._declare("symnet_syscall", _I64, [_I64], var_arg=True)


# ------------------------------------------------------------------------------ a phase
#
# Below, a team of one (``team == 0``) never calls: the kernels' intrinsics do its part inline.


def _claim(module):
    """claim(team, base, count, previous, tid): the next piece of the phase whose pieces are
    ``base`` to ``base + count`` of the job (counted from 0 here), or -1 when all are taken.

    Thread t first takes the pieces of its own share, the t-th of the team's size, then those
    left in the others': on a quiet machine each thread computes the same part of every phase,
    step after step, so the rows it makes and reads stay in its core's cache (seed002's update
    and small nests took 2.5× as long on two threads when pieces went to whoever came first);
    when a thread loses its core, the others take its share. A share's slot is tagged with the
    phase's base, so a thread that fell behind never takes a later phase's piece. Before taking
    from a share its owner has not begun, a thread gives the owner ``GRACE`` PAUSEs."""
    w = Writer(module, "claim", "team base count previous tid")
    team, base, count, _, tid = w.args
    threads = w.get(team, i64(THREADS))
    k, grace = w.variable("k", i64(0)), w.variable("grace", i64(0))
    share, wait_owner, take, begin, go_on, next_share = w.blocks(
        "share wait_owner take begin go_on next_share")
    w.branch(share)

    w.position_at_end(share)  # for k in range(threads): the share of owner = (tid + k) % threads
    w.returns_if(w.at_least(w.load(k), threads), i64(-1))
    owner = w.add(tid, w.load(k))
    owner = w.select(w.at_least(owner, threads), w.sub(owner, threads), owner)
    first = w.sdiv(w.mul(count, owner), threads)
    size = w.sub(w.sdiv(w.mul(count, w.add(owner, i64(1))), threads), first)
    slot = w.add(i64(CLAIMS), w.mul(i64(8), owner))
    w.store(i64(0), grace)
    w.cbranch(w.icmp_signed("!=", owner, tid), wait_owner, take)

    w.position_at_end(wait_owner)  # until the owner has begun, GRACE rounds at most
    w.cbranch(w.less(w.load(grace), i64(GRACE)), begin, take)
    w.position_at_end(begin)
    w.store(w.add(w.load(grace), i64(1)), grace)
    begun = w.at_least(w.ashr(w.get(team, slot), i64(TAG)), base)
    with w.if_then(w.not_(begun)):
        w.pause()
    w.cbranch(begun, take, wait_owner)

    w.position_at_end(take)  # while the share has pieces left
    w.cbranch(w.icmp_signed(">", size, i64(0)), go_on, next_share)
    w.position_at_end(go_on)
    word = w.get(team, slot)
    tag = w.ashr(word, i64(TAG))
    w.returns_if(w.icmp_signed(">", tag, base), i64(-1))  # the phase is complete: fell behind
    with w.if_then(w.less(tag, base)):  # the first claim from this share in this phase
        started = w.swap_if(team, slot, word, w.or_(w.shl(base, i64(TAG)), i64(1)))
        w.returns_if(started, first)
        w.branch(take)
    taken = w.and_(word, i64((1 << TAG) - 1))
    with w.if_then(w.at_least(taken, size)):
        w.branch(next_share)
    w.returns_if(w.swap_if(team, slot, word, w.add(word, i64(1))), w.add(first, taken))
    w.branch(take)

    w.position_at_end(next_share)
    w.store(w.add(w.load(k), i64(1)), k)
    w.branch(share)


def _finish(module):
    """finish(team, base, count, piece): record that ``piece`` is computed; 1 for the thread
    that finished the phase's last piece, which must then run the phase's epilogue, if any,
    and ``publish`` it."""
    w = Writer(module, "finish", "team base count piece")
    team, base, count, _ = w.args
    finished = w.add(w.fetch_add(team, i64(FINISHED), i64(1)), i64(1))
    w.ret(w.zext(w.icmp_signed("==", finished, w.add(base, count)), _I64))


def _publish(module):
    """publish(team, base, count): the phase is complete; let the threads that wait for it
    go on."""
    w = Writer(module, "publish", "team base count")
    team, base, count = w.args
    w.put(team, i64(DONE), w.add(base, count))
    with w.if_then(w.icmp_signed(">", w.get(team, i64(SLEEPERS)), i64(0))):
        w.wake(team, i64(DONE))
    w.ret(i64(0))


def _wait_for(module):
    """wait_for(team, index, sleepers, target, tid): until ``team[index] >= target``, poll for
    thread ``tid``'s spin budget (``SPIN`` for a ``tid`` of -1: a worker waiting for the next
    job), then sleep on the futex, counted in ``team[sleepers]`` so that the thread that changes
    the slot knows to wake it. A wait that ended polling doubles the thread's budget, one that
    slept quarters it. Polls come ``POLLS`` to a PAUSE: a virtual CPU that runs PAUSEs back to
    back is taken off its core by the hypervisor (pause-loop exiting: epochs 2× slower)."""
    w = Writer(module, "wait_for", "team index sleepers target tid", ir.VoidType())
    w.function.linkage = "internal"
    team, index, sleepers, target, tid = w.args
    own = w.at_least(tid, i64(0))
    budget_slot = w.add(i64(BUDGETS), w.mul(i64(8), tid))
    budget = w.variable("budget", i64(SPIN))
    with w.if_then(own):
        kept = w.get(team, budget_slot)
        w.store(w.select(w.icmp_signed("==", kept, i64(0)), i64(SPIN), kept), budget)
    budget = w.load(budget)
    deadline = w.add(w.cycles(), budget)
    poll, polls, slept, sleep = w.blocks("poll polls slept sleep")
    w.branch(poll)

    w.position_at_end(poll)  # while the cycle counter is before the deadline
    w.cbranch(w.less(w.cycles(), deadline), polls, slept)
    w.position_at_end(polls)
    with w.repeat(i64(POLLS)), w.if_then(w.at_least(w.get(team, index), target)):
        with w.if_then(own):
            doubled = w.mul(budget, i64(2))
            w.put(team, budget_slot,
                  w.select(w.less(doubled, i64(SPIN_MAX)), doubled, i64(SPIN_MAX)))
        w.ret_void()
    w.pause()
    w.branch(poll)

    w.position_at_end(slept)
    with w.if_then(own):
        quarter = w.sdiv(budget, i64(4))
        w.put(team, budget_slot, w.select(w.less(quarter, i64(SPIN_MIN)), i64(SPIN_MIN), quarter))
    w.branch(sleep)

    w.position_at_end(sleep)
    w.fetch_add(team, sleepers, i64(1))
    seen = w.get(team, index)
    with w.if_then(w.less(seen, target)):
        w.sleep_while(team, index, seen)
    w.fetch_add(team, sleepers, i64(-1))
    w.returns_if(w.at_least(w.get(team, index), target))
    w.branch(sleep)


def _wait(module):
    """wait(team, base, count, tid): wait until the phase is complete; the next phase's base."""
    w = Writer(module, "wait", "team base count tid")
    team, base, count, tid = w.args
    end = w.add(base, count)
    with w.if_then(w.less(w.get(team, i64(DONE)), end)):
        w.call_own("wait_for", team, i64(DONE), i64(SLEEPERS), end, tid)
    w.ret(end)


# --------------------------------------------------------------------- sizes and results


def tile(length: int, work: int, target: int, least: int) -> int:
    """The piece size along an axis of ``length``: about ``work / target`` pieces, a power of
    two (so that 1, 2, 4 or 8 threads share them evenly), none shorter than ``least``. The
    kernels compute it at run time where the sizes are known only then (:func:`_tile`)."""
    pieces = 1
    while 2 * pieces <= work // target and 2 * pieces <= length // least:
        pieces *= 2
    return -(-length // pieces)


def _tile(module):
    """tile(length, work, target, least): :func:`tile`, for non-negative arguments."""
    w = Writer(module, "tile", "length work target least")
    length, work, target, least = w.args
    pieces = w.variable("pieces", i64(1))
    doubling, done = w.blocks("doubling done")
    w.branch(doubling)
    w.position_at_end(doubling)
    twice = w.mul(w.load(pieces), i64(2))
    fits = w.and_(w.icmp_signed("<=", twice, w.sdiv(work, target)),
                  w.icmp_signed("<=", twice, w.sdiv(length, least)))
    with w.if_then(fits):
        w.store(twice, pieces)
        w.branch(doubling)
    w.branch(done)
    w.position_at_end(done)
    w.ret(w.sdiv(w.sub(w.add(length, w.load(pieces)), i64(1)), w.load(pieces)))


def product_least(length: int) -> int:
    """The narrowest tile of a product whose tiles cut an axis of ``length``, and so at most 4
    tiles. Each tile is a one-thread BLAS call that packs the other operand again: with
    OpenBLAS, on adam-relu's and wide's products, tiles 32 wide took 15-25 % longer in all than
    one call, 64 wide 5-10 %, 128 wide 1-2 %, and wide's products took 3 % longer in 8 tiles
    than in 4 (benchmarks.tiles; MKL's tiles cost 4 % in all); below 128 rows, ~25-row tiles
    were faster than one call (OpenBLAS's small-matrix kernels). Measured on one thread."""
    least = 128 if length >= 256 else 64 if length >= 128 else 16
    return max(least, length // 4)


def _product_least(module):
    """product_least(length): :func:`product_least`, for a non-negative length."""
    w = Writer(module, "product_least", "length")
    (length,) = w.args
    least = w.select(w.at_least(length, i64(256)), i64(128),
                     w.select(w.at_least(length, i64(128)), i64(64), i64(16)))
    quarter = w.sdiv(length, i64(4))
    w.ret(w.select(w.less(least, quarter), quarter, least))


def _record(module):
    """record(blk_addr, epoch, batch, step, status): end training at (epoch, batch) after
    ``step`` steps with ``status``; every thread sees it (``blk[STOPCODE]``) once the phase
    whose epilogue records it is complete."""
    w = Writer(module, "record", "blk_addr epoch batch step status")
    blk, *values = w.args
    for index, value in zip((E, S, T, STATUS, STOPCODE), [*values, i64(1)]):
        w.put(blk, i64(index), value)
    w.ret(i64(0))


# ------------------------------------------------------------------------------ a job


def _worker(module):
    """worker(team, tid): a worker's life; run every job the team is given, until a job with
    no kernel. It starts at job 0, not at the job it sees, which may have been posted before it
    ran."""
    w = Writer(module, "worker", "team tid", ir.VoidType())
    team, tid = w.args
    seen = w.variable("seen", i64(0))
    job, end = w.blocks("job end")
    w.branch(job)
    w.position_at_end(job)  # jobs are numbered 1, 2, …
    w.call_own("wait_for", team, i64(SEQ), i64(IDLE), w.add(w.load(seen), i64(1)), i64(-1))
    w.store(w.get(team, i64(SEQ)), seen)
    fn = w.get(team, i64(FN))
    has_kernel = w.icmp_signed("!=", fn, i64(0))
    with w.if_then(has_kernel):
        w.call_kernel(fn, w.get(team, i64(BLOCK)), tid)
    w.fetch_add(team, i64(ACKS), i64(1))
    with w.if_then(w.icmp_signed(">", w.get(team, i64(ACK_SLEEPERS)), i64(0))):
        w.wake(team, i64(ACKS))
    w.cbranch(has_kernel, job, end)
    w.position_at_end(end)
    w.ret_void()


def _run(module):
    """run(team, fn, blk, workers): the calling thread's side of a job; post it, run the
    kernel as thread 0, and return once every worker has finished it (so the arrays it uses
    may be freed)."""
    w = Writer(module, "run", "team fn blk workers", ir.VoidType())
    team, fn, blk, workers = w.args
    with w.repeat(w.get(team, i64(THREADS))) as owner:
        w.put(team, w.add(i64(CLAIMS), w.mul(i64(8), owner)), i64(0))
    for index, value in ((FINISHED, i64(0)), (DONE, i64(0)), (ACKS, i64(0)), (FN, fn),
                         (BLOCK, blk)):
        w.put(team, i64(index), value)
    w.fetch_add(team, i64(SEQ), i64(1))
    with w.if_then(w.icmp_signed(">", w.get(team, i64(IDLE)), i64(0))):
        w.wake(team, i64(SEQ))
    with w.if_then(w.icmp_signed("!=", fn, i64(0))):
        w.call_kernel(fn, blk, i64(0))
    with w.if_then(w.less(w.get(team, i64(ACKS)), workers)):
        w.call_own("wait_for", team, i64(ACKS), i64(ACK_SLEEPERS), workers, i64(-1))
    w.ret_void()


_FUNCTIONS = (_wait_for, _claim, _finish, _publish, _wait, _tile, _product_least, _record,
              _worker, _run)


_LIBRARIES: list = []  # the machine code must stay loaded


def build() -> dict[str, int]:
    """Compile the protocol, or load its machine code from the kernel cache; the address of
    each exported function, by name (``claim``, …), which LLVM also knows as
    ``symnet_rt_<name>``."""
    libc = ctypes.CDLL(None)
    for name in ("syscall", "usleep"):
        llvm.add_symbol(f"symnet_{name}", ctypes.cast(getattr(libc, name), ctypes.c_void_p).value)
    codegen = cpu_target.target_context.codegen()
    library = codegen.create_library("symnet_protocol")
    module = library.create_ir_module("symnet_protocol")
    for define in _FUNCTIONS:
        define(module)
    stored = _stored(codegen, module)
    library = _load(codegen, stored) or _compile(library, module, stored)
    addresses = {}
    for function in module.functions:
        if function.is_declaration or function.linkage == "internal":
            continue
        address = library.get_pointer_to_function(function.name)
        llvm.add_symbol(function.name, address)  # for kernels loaded from numba's cache too
        addresses[function.name.removeprefix("symnet_rt_")] = address
    _LIBRARIES.append(library)
    return addresses


def _stored(codegen, module) -> Path:
    """Where the kernel cache keeps the protocol's machine code: under a hash of its IR and of
    the machine it was compiled for (numba's ``magic_tuple``: triple, CPU, features)."""
    key = f"{module}\n{codegen.magic_tuple()}\n{llvm.llvm_version_info}".encode()
    return cache_dir() / f"protocol-{hashlib.sha256(key).hexdigest()[:20]}.pickle"


def _load(codegen, stored: Path):
    """The protocol's library from the kernel cache, or None (absent, unreadable or damaged: it
    is then compiled). Compiling it took 0.13 s of every process, a third of a cached setup."""
    try:
        state = pickle.loads(stored.read_bytes())
        with global_compiler_lock:
            return codegen.unserialize_library(state)
    except Exception:  # any failure to load is a reason to compile
        return None


def _compile(library, module, stored: Path):
    library.enable_object_caching()
    library.add_ir_module(module)
    with global_compiler_lock:
        library.finalize()
    with contextlib.suppress(OSError, RuntimeError):  # no cache (RuntimeError: no home)
        state = pickle.dumps(library.serialize_using_object_code())
        stored.parent.mkdir(parents=True, exist_ok=True)
        files.atomic_write(stored, lambda f: f.write(state))
    return library
