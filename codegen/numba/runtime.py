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
:func:`run`; the protocol they follow is written in LLVM IR (:mod:`.protocol`).
``SYMNET_NUM_THREADS`` sets the thread count (default: the cores this process may run on,
``os.sched_getaffinity``). :func:`run` gives a call to the calling thread alone when it is too
small to share, or small enough while the team's threads wait for cores (:class:`_Load`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
import time
from pathlib import Path

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils, sigutils
from numba.core.ccallback import CFunc
from numba.core.compiler_lock import global_compiler_lock
from numba.core.runtime import rtsys
from numba.extending import intrinsic
from numba.np.arrayobj import populate_array

from ..notices import warn
from . import protocol

# BAD, E, S, STATUS, STOPCODE, T: argument block slots the runner and the kernels read (rt.BAD)
from .protocol import BAD, MAX_THREADS, SLOTS, STATUS, STOPCODE, THREADS, E, S, T  # noqa: F401
from .stages import stage  # noqa: F401  (the generated modules' rt.stage)

_I64 = ir.IntType(64)


# ------------------------------------------------------------------------------ intrinsics


def _as_i64(context, builder, sig, args, i):
    return context.cast(builder, args[i], sig.args[i], types.int64)


def _integers(*args):
    return all(isinstance(a, types.Integer) for a in args)


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
# The protocol's functions (.protocol, LLVM IR) are compiled once per process, as C functions
# whose addresses LLVM knows by name (as codegen.intrinsics.blas does for the GEMMs); the
# kernels call them through the intrinsics below: numba types a call of a jitted helper at
# ~1 ms and compiles its body into every kernel again, while an external call costs a few
# nanoseconds.

_ADDRESSES = protocol.build()


def _call(builder, name: str, values):
    """A call of the protocol's ``name``."""
    fnty = ir.FunctionType(_I64, [_I64] * len(values))
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, f"symnet_rt_{name}"),
                        values)


def _external(name: str, *args, alone=None, calls=None):
    """(signature, codegen) of an intrinsic that calls the protocol's ``name`` with ``args``
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
    """See :func:`.protocol._claim`."""
    return _external("claim", team, base, count, previous, tid, alone=_after)


@intrinsic
def finish(typingctx, team, base, count, piece):
    """See :func:`.protocol._finish`."""

    def last(builder, values):
        is_last = builder.icmp_signed("==", values[3],
                                      builder.sub(values[2], ir.Constant(_I64, 1)))
        return builder.zext(is_last, _I64)

    return _external("finish", team, base, count, piece, alone=last)


@intrinsic
def publish(typingctx, team, base, count):
    """See :func:`.protocol._publish`."""
    return _external("publish", team, base, count, alone=lambda b, v: ir.Constant(_I64, 0))


def _finish_and_claim(builder, values):
    """Finish the piece (publishing the phase if it was the last) and claim another: three
    calls, so that no protocol function has the other three compiled into it again."""
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
    """See :func:`.protocol._wait`."""
    return _external("wait", team, base, count, tid, alone=lambda b, v: b.add(v[1], v[2]))


@intrinsic
def tile(typingctx, length, work, target, least):
    """See :func:`.protocol._tile`."""
    return _external("tile", length, work, target, least)


@intrinsic
def product_least(typingctx, length):
    """See :func:`.protocol._product_least`."""
    return _external("product_least", length)


@intrinsic
def record(typingctx, blk_addr, epoch, batch, step, status):
    """See :func:`.protocol._record`."""
    return _external("record", blk_addr, epoch, batch, step, status)


# ------------------------------------------------------------------------------ the team

_SIGNATURE = types.void(types.int64, types.int64)


_KERNEL = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64)
_RUN = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)(
    _ADDRESSES["run"])
_WORKER = _KERNEL(_ADDRESSES["worker"])


class Team:
    """``threads - 1`` worker threads (Python threads inside :func:`_worker`, which does not hold
    the GIL) and a control block; the thread that calls :meth:`run` is thread 0."""

    def __init__(self, threads: int):
        if not 1 <= threads <= MAX_THREADS:
            raise ValueError(f"a team has 1 to {MAX_THREADS} threads, not {threads}")
        self.requested = threads
        self.control = np.zeros(SLOTS, np.int64)
        self.address = self.control.ctypes.data
        self.workers = []
        for tid in range(1, threads):
            worker = threading.Thread(target=_WORKER, args=(self.address, tid), daemon=True,
                                      name=f"symnet-worker-{tid}")
            refused = started(worker)
            if refused is not None:
                warn(f"a team of {threads} threads was asked for (SYMNET_NUM_THREADS, or the "
                     f"cores), but only {tid} could run ({refused}); training runs on {tid}, "
                     f"with the same results. Set SYMNET_NUM_THREADS={tid} or fewer.")
                break
            self.workers.append(worker)
        self.threads = 1 + len(self.workers)
        self.control[THREADS] = self.threads  # read by the workers only in a job

    def run(self, kernel: int, blk: int) -> None:
        _RUN(self.address, kernel, blk, len(self.workers))

    def close(self) -> None:
        """End the workers (a job without a kernel) and wait for them."""
        _RUN(self.address, 0, 0, len(self.workers))
        for worker in self.workers:
            worker.join()


def started(thread: threading.Thread) -> RuntimeError | None:
    """Start ``thread``; the system's refusal (a limit on threads or memory, which a team's
    threads may have used up: "can't start new thread"), or None once it runs."""
    try:
        thread.start()
    except RuntimeError as err:
        return err
    return None


_team: Team | None = None
_lock = threading.Lock()  # one kernel at a time has the team; others run alone meanwhile


def threads() -> int:
    """``SYMNET_NUM_THREADS``, or the cores this process may run on; at most ``MAX_THREADS``
    (the control block's size). A count of more than ``OVERSUBSCRIBED`` threads per core is
    warned about; each warning once a process (every kernel call reads the setting)."""
    text = os.environ.get("SYMNET_NUM_THREADS", "").strip()
    if text:
        try:
            count = int(text)
        except ValueError:
            count = 0
        if count > MAX_THREADS:
            _warn_once(f"SYMNET_NUM_THREADS={text} is more than a team's {MAX_THREADS} threads; "
                       f"using {MAX_THREADS}")
            count = MAX_THREADS
        if count >= 1:
            if count > OVERSUBSCRIBED * cores():
                _warn_once(f"SYMNET_NUM_THREADS={text} is more than {OVERSUBSCRIBED} threads for "
                           f"each of the {cores()} cores this process may run on: threads wait "
                           f"for cores and for each other, and training slows down (on 2 "
                           f"cores, 32 threads took 2.2 × and 256 threads 140 × the time of "
                           f"2). Leave it unset to use the cores.")
            return count
        _warn_once(f"SYMNET_NUM_THREADS={text!r} is not a positive integer; using the cores this "
                   f"process may run on")
    return min(cores(), MAX_THREADS)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warn(message)


OVERSUBSCRIBED = 8  # threads per core beyond which threads() warns (16 on 2 cores: 1.4 × 2's time)


def cores() -> int:
    """The cores this process may use: those it may run on, or fewer when its cgroup's CPU
    quota allows fewer (a container's ``--cpus``, systemd's ``CPUQuota``). With a quota of one
    core on this 2-core machine, two threads took seed002's epochs 1.2-3.5 × and adam-relu's
    1.1 × as long as one thread: the quota stops both threads for the rest of each period."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    quota = cpu_quota()
    return max(1, min(count, quota)) if quota is not None else count


@functools.cache
def cpu_quota(root: str = "/sys/fs/cgroup", proc: str = "/proc") -> int | None:
    """The cores this process's CPU quota amounts to, rounded up (cgroup v2's ``cpu.max``, v1's
    ``cpu.cfs_quota_us``, the least of its cgroup's and their parents'), or None without one.
    Read once a process: every kernel call asks for the thread count."""
    try:
        lines = Path(proc, "self", "cgroup").read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one hierarchy, "0::/path"
            quotas += _quotas(Path(root), path, _cpu_max)
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's hierarchy
            mount = Path(root, controllers)  # or a link to it (this module's `next` is
            if not mount.is_dir():  # the kernels' intrinsic)
                mount = Path(root, "cpu")
            quotas += _quotas(mount, path, _cfs_quota)
    return min(quotas) if quotas else None


def _quotas(mount: Path, path: str, read) -> list[int]:
    """The quotas of the cgroup at ``path`` under ``mount`` and of its parents up to the
    mount's root. In a container the root is the container's own cgroup, and ``path`` may name
    the host's, which the container does not see (those reads fail)."""
    found = []
    here = mount / path.lstrip("/")
    while True:
        with contextlib.suppress(OSError, ValueError):
            quota = read(here)
            if quota is not None:
                found.append(quota)
        if mount not in here.parents:
            return found
        here = here.parent


def _cpu_max(cgroup: Path) -> int | None:
    quota, period = (cgroup / "cpu.max").read_text().split()[:2]
    return None if quota == "max" else -(-int(quota) // int(period))


def _cfs_quota(cgroup: Path) -> int | None:
    quota = int((cgroup / "cpu.cfs_quota_us").read_text())
    period = int((cgroup / "cpu.cfs_period_us").read_text())
    return None if quota <= 0 or period <= 0 else -(-quota // period)


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
RECHECK = 0.1  # seconds between two confirmations of a verdict (a reading takes ~2 ms)


class _Load:
    """Whether the team's last judged call found its threads waiting for cores: its process
    CPU time against wall time × the cores its threads could have had (more threads than cores
    is not by itself a wait). A measure of this process only, so it holds in a container, where
    ``/proc/loadavg`` counts the host's tasks. Before a call runs alone for it, the threads of
    other processes running now confirm it: one call's wait is often a passing neighbour (a
    helper process exiting), and ``fit`` is one call for all its epochs, so an unconfirmed
    verdict ran every round of 1 benchmark process in 6 at one thread's speed (seed002
    0.10-0.13 s an epoch against 0.08 s)."""

    def __init__(self):
        self.until = 0.0
        self.checked = float("-inf")  # when other processes were last seen running

    def contended(self) -> bool:
        now = time.monotonic()
        if now >= self.until:
            return False
        if now >= self.checked + RECHECK:  # not at every call: a loop of short calls would pay
            if others_running(samples=3) == 0:  # the cores are free again: try the team
                self.until = 0.0
                return False
            self.checked = now
        return True

    def record(self, cpu: float, wall: float, count: int) -> None:
        if wall >= MEASURED:
            self.until = time.monotonic() + RETRY if cpu < CONTENDED * wall * count else 0.0


_load = _Load()


def others_running(proc: str = "/proc", samples: int = 10) -> int | None:
    """The threads of other processes running now (Linux), or None: the least of readings a
    millisecond apart, since one reading also counts short-lived tasks, and this process's own
    threads as they go to sleep (one reading in five was one too many)."""
    try:
        least = _running(proc)
        for _ in range(samples - 1):
            time.sleep(0.001)
            least = min(least, _running(proc))
    except (OSError, ValueError, IndexError):
        return None
    return least


def _running(proc: str) -> int:
    with open(f"{proc}/stat") as f:  # (this module's `next` is the kernels' intrinsic)
        running, = [int(line.split()[1]) for line in f if line.startswith("procs_running ")]
    own = 0
    for task in Path(f"{proc}/self/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            own += (task / "stat").read_text().rsplit(")", 1)[1].split()[0] == "R"
    return max(running - own, 0)


def run(kernel, blk: np.ndarray, work: int | None = None) -> None:
    """Run the compiled kernel (a ``ctypes`` function of the argument block's address and the
    thread number) on the team, or alone when one thread is asked for, when the kernel's
    ``work`` per step (multiply-adds; None: share it) is too little to share, when it is small
    and the team's threads recently waited for cores for other processes that still run, or
    while another thread has the team. ``blk[0]`` is set to the team's address (0 alone). The
    numbers are the same either way."""
    count = threads()
    alone = count == 1 or (work is not None and (
        work < PARALLEL_WORK or (work < ALONE_UNDER_LOAD and _load.contended())))
    if count == 1 and _team is not None:  # SYMNET_NUM_THREADS=1 now: the workers are idle
        _close_team()
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


def _close_team() -> None:
    """End the team's workers, unless another thread's kernel has the team now."""
    global _team
    if _lock.acquire(blocking=False):
        try:
            old, _team = _team, None
            if old is not None:
                old.close()
        finally:
            _lock.release()


def _team_of(count: int) -> Team:
    """The team of ``count`` threads, made (anew, if the count changed) on first use."""
    global _team
    if _team is None or _team.requested != count:
        old, _team = _team, None  # a closed team is never kept, even if the new one fails
        if old is not None:
            old.close()
        _team = Team(count)
    return _team


def compile_kernel(function, cache: bool, **options):
    """``function(block_address, tid)`` as a C callback (``numba.cfunc``), loaded from numba's
    cache if it is there, and its ``ctypes`` caller."""
    compiled = CFunc(function, sigutils.normalize_signature(_SIGNATURE), locals={},
                     options={"nopython": True, **options})
    loaded = False
    if cache:
        compiled.enable_caching()
        with contextlib.suppress(AttributeError, TypeError):  # numba's internals moved: its
            loaded = _load_cached(compiled)  # own load, below
    if not loaded:
        compiled.compile()
    return compiled, _KERNEL(compiled.address)


def _load_cached(compiled) -> bool:
    """``CFunc.compile``'s load from the cache, without its first step, which loads numba's
    typing and lowering registries: machine code from the cache does not need them, and they
    took 0.3 s (scipy.linalg's import among it) of every process that loaded a kernel."""
    context = compiled._targetdescr.target_context
    with global_compiler_lock:
        rtsys.initialize(context)  # the symbols of numba's runtime, which the kernels call
        result = compiled._cache._load_overload(compiled._sig, context)
        if result is None:
            return False
        compiled._library = result.library
        compiled._wrapper_name = result.fndesc.llvm_cfunc_wrapper_name
        compiled._wrapper_address = result.library.get_pointer_to_function(compiled._wrapper_name)
        compiled._cache_hits += 1
    return True


def _forget_team():
    """In a forked child the workers do not exist: make a new team on first use."""
    global _team, _lock
    _team, _lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_team)
