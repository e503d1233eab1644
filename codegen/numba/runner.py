"""Runs the generated kernels: compiles them (or loads them from numba's cache) on first use,
keeps their workspaces, fills their argument blocks and calls them through the runtime."""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import weakref
from pathlib import Path

import numba.core.errors
import numpy as np
from numba.core.compiler_lock import global_compiler_lock

from ..intrinsics import blas
from ..ir import BATCH, CodegenError, Program, Status, Update
from ..notices import on_behalf
from . import cache, runtime, stages
from .emit import ARRAYS_AT, CODEGEN_VERSION, KERNEL_OPTIONS, TRAIN, Entry, generate


class NumbaRunner:
    """Every program of a model as a compiled kernel, on workspaces that grow with the largest
    batch."""

    def __init__(self, programs: dict[str, Program], update: Update | None, dtype="float32"):
        self.dtype = np.dtype(dtype)
        self.programs = programs
        self.update = update
        self.source, self.entries = generate(programs, update, self.dtype)
        if os.environ.get("SYMNET_DEBUG"):
            print(self.source, file=sys.stderr)
        self.module = cache.load(self.source, f"{CODEGEN_VERSION}\n{_runtime_digest()}")
        self.compiled: dict[str, tuple] = {}
        self.reused: dict[str, bool] = {}  # compiled by another runner of this process
        self.lowered_beside: dict[str, list[str]] = {}  # kernel → stages a helper lowered
        self.work: dict[str, dict[str, np.ndarray]] = {}
        self.capacity: dict[str, int] = {}
        self.blocks = Blocks()
        self.lock = threading.Lock()  # the workspaces and blocks serve one call at a time
        _RUNNERS.add(self)

    def kernel(self, name: str):
        """The ``ctypes`` caller of kernel ``name``, compiled (or loaded) on first use, once per
        process for all runners of the same module: numba never frees a compiled function's
        machine code, and every model loaded, unpickled or copied kept ~0.1-0.2 MB of it."""
        if name not in self.compiled:
            self.reused[name], self.compiled[name] = _uninterrupted(self._compile, name)
        return self.compiled[name][1]

    def _compile(self, name: str) -> tuple[bool, tuple]:
        with _COMPILING:
            _await_helper(self.module.__name__, name)
            known = _COMPILED.setdefault(self.module, {})
            reused = name in known
            if not reused:
                with _jit_errors():
                    known[name] = cache.compile_kernel(
                        getattr(self.module, name), self.module.CACHE, **KERNEL_OPTIONS)
            return reused, known[name]

    def prepare(self, names, spare=()) -> None:
        """Compile (or load) those of kernels ``names`` the programs have, now, and have the
        ``spare`` ones (those a later call will likely need) compiled meanwhile if a core is
        free. numba compiles on one core, so with two threads or more a cold compile shares a
        helper process: it lowers some stages of the first of ``names`` (the largest,
        ``train_epochs``, if it is one of them) while this process lowers the others, then
        compiles the other kernels into the cache, loaded from there when first used. Cold
        setups took 4.1-4.5 → 3.7-3.9 s (seed002) and 5.9-6.5 → 4.4-5.9 s (8 hidden layers) so
        in alternated processes, and the same beside a busy process (no helper either way)."""
        known = _COMPILED.get(self.module, {})

        def cold(kernels):
            return [n for n in dict.fromkeys(kernels) if n in self.entries and n not in known
                    and not cache.on_disk(self.module, n)]

        here = sorted(cold(names), key=lambda n: n != "train_epochs")
        if here and runtime.threads() > 1 and _a_core_is_free():
            # spares only beside a compile: a warm fit does not look for them (0.14 ms a call)
            beside = list(dict.fromkeys(here[1:] + [n for n in cold(spare) if n != here[0]]))
            self._compile_shared(here[0], beside)
        for name in here[:1] + [n for n in names if n in self.entries]:
            self.kernel(name)  # waits for the helper where it compiles one

    def _compile_shared(self, name: str, beside: list[str]) -> None:
        """Compile kernel ``name`` here while a helper process lowers some of its stages
        (:func:`.stages.shared`), then compiles kernels ``beside`` into the cache; nothing if no
        helper can be started (the kernel is then compiled alone)."""
        try:
            directory = Path(tempfile.mkdtemp(prefix="symnet-stages-"))
        except OSError:
            return
        try:
            helper = cache.compile_beside(self.module, beside, directory)
            if helper is None:
                return
            _BESIDE.append((helper, self.module.__name__, frozenset(beside)))
            with stages.shared(self.module.__name__, directory, helper) as share:
                self.kernel(name)
            self.lowered_beside[name] = share.taken
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def cached(self, name: str) -> bool:
        """Whether kernel ``name``'s machine code came from numba's cache or was in memory."""
        return self.reused[name] or self.compiled[name][0].cache_hits > 0

    def workspace(self, name: str, rows: int) -> dict[str, np.ndarray]:
        """The workspaces of program ``name`` for up to ``rows`` batch rows."""
        if self.capacity.get(name, -1) < rows:
            entry = self.entries["train_epochs" if name == TRAIN else name]
            self.work[name] = {b.name: _alloc(b.shape, rows, self.dtype, b.name in entry.layout.minor)
                               for b in self.programs[name].buffers if b.role == "temp"}
            self.capacity[name] = rows
        return self.work[name]

    def run(self, name: str, feeds: dict[str, np.ndarray], seed: int = 0,
            step: int = 0) -> dict[str, np.ndarray]:
        """The outputs of program ``name`` on ``feeds``; dropout masks are those of ``seed`` at
        training ``step``."""
        entry = self.entries[name]
        program = self.programs[name]
        n = _batch_rows(program, feeds)
        kernel = self.kernel(name)
        blas.check_neighbours()
        with self.lock:
            arrays = {**feeds, **self.workspace(name, n)}
            blk = self.blocks.fill(entry, {"n": n, "seed": seed, "t": step}, arrays)
            runtime.run(kernel, blk, entry.work(n))
            return {out: _view(arrays[buf], program.buffer(buf).shape, n).copy()
                    for out, buf in program.outputs}

    def train(self, data: dict[str, np.ndarray], params: dict[str, np.ndarray],
              state: dict[str, dict[str, np.ndarray]], orders: np.ndarray, batch_size: int,
              t0: int, limit: int = -1, stop: np.ndarray | None = None,
              running: dict[str, np.ndarray] | None = None, seed: int = 0, rate: float = 0.0,
              pending: list | None = None):
        """Runs the epochs of ``orders`` from step ``t0`` in one call, updating ``params``,
        ``state`` and batch norm's ``running`` statistics in place, with the learning rate
        ``rate`` and the dropout masks of ``seed``; returns (per-batch losses, epoch, batch, t,
        :class:`Status`). It stops before step ``limit + 1`` (-1: no limit), before a step whose
        batch has a non-finite entry (``Status.DATA``: the data is checked nowhere else) and
        before the next step once ``stop[0]`` is set, so a call always ends between whole steps.
        The kernel runs on another thread while the calling thread waits, so that the caller's
        signal handlers (Ctrl-C) run meanwhile and can set ``stop``; a call estimated to end
        within ``SHORT_CALL`` seconds runs on the calling thread. An exception that interrupts
        the wait (a handler that raises) stops the kernel after its step; it is appended to
        ``pending`` for the caller to raise once it has recorded the steps, or raised here
        without a ``pending``."""
        entry = self.entries["train_epochs"]
        rows = min(batch_size, len(orders[0]))
        kernel = self.kernel("train_epochs")
        blas.check_neighbours()
        stop = np.zeros(1, np.int64) if stop is None else stop
        batches = -(-len(orders[0]) // batch_size)
        losses = np.zeros((len(orders), batches), self.dtype)
        with self.lock:
            fbuf = np.zeros((1, 8))  # [0, 0]: the clip norm's sum; [0, 1]: the rate
            fbuf[0, 1] = rate
            arrays = {"orders": orders, "losses": losses, "stop": stop.reshape(1, 1),
                      "fbuf": fbuf, **params, **(running or {}),
                      **self.workspace(TRAIN if TRAIN in self.programs else "loss_and_grad", rows),
                      **self.batch_buffers(rows)}
            arrays.update({f"data/{k}": v for k, v in data.items()})
            arrays.update({f"state/{p}/{s}": v for p, st in state.items() for s, v in st.items()})
            blk = self.blocks.fill(entry, {"batch": batch_size, "t0": t0, "limit": limit,
                                           "seed": seed}, arrays)
            blk[runtime.STATUS] = -1
            blk[runtime.STOPCODE] = blk[runtime.BAD] = 0
            work = entry.work(rows)  # per step
            if _seconds(len(orders) * batches, work) <= SHORT_CALL:
                runtime.run(kernel, blk, work)
            else:
                _off_this_thread(lambda: runtime.run(kernel, blk, work), stop, pending)
        status = Status(int(blk[runtime.STATUS]))
        return losses, int(blk[runtime.E]), int(blk[runtime.S]), int(blk[runtime.T]), status

    def batch_buffers(self, rows: int) -> dict[str, np.ndarray]:
        """The input buffers train_epochs gathers each batch into (narrow ones batch-minor)."""
        if self.capacity.get("batch", -1) < rows:
            lay = self.entries["train_epochs"].layout
            self.work["batch"] = {f"batch/{b.name}": _alloc(b.shape, rows, self.dtype,
                                                            b.name in lay.minor)
                                  for b in self.programs["loss_and_grad"].buffers
                                  if b.role == "input"}
            self.capacity["batch"] = rows
        return self.work["batch"]


# a kernel module → {kernel: (cfunc, ctypes caller)}; weak, for tests that import a module anew
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COMPILING = threading.RLock()  # re-entrant: a fork's hook takes it (_before_fork)
_RUNNERS = weakref.WeakSet()  # the live runners, whose locks a forked child renews
# How often the main thread wakes from waiting for a kernel or a compile on another thread:
# a signal that another thread received (``signal.raise_signal`` there, a terminal's SIGINT
# delivered elsewhere) or ``_thread.interrupt_main`` only marks a handler pending, which runs
# once the main thread runs Python again; an untimed wait held a Ctrl-C back until fit ended.
WAKE_S = 0.1
_BESIDE: list = []  # (helper process, module name, kernels) of NumbaRunner.prepare
COMPILE_BESIDE_S = 600  # the longest a kernel waits for the helper compiling it


def _uninterrupted(work, *args):
    """``work(*args)`` on a thread of its own, waited for here: Ctrl-C then interrupts the wait
    at once, while the work runs on to its end. A KeyboardInterrupt inside numba's compiler
    could leave its registries half-filled, and every later compile of the process failing
    (1 in 10 cold compiles interrupted in their first second); an abandoned kernel is kept for
    the next call that needs it."""
    if threading.current_thread() is not threading.main_thread():
        return work(*args)  # signals reach the main thread only
    result = []

    def run():
        try:
            result.append((True, work(*args)))
        except BaseException as err:  # given to the waiting thread
            result.append((False, err))

    worker = on_behalf(threading.Thread(target=run, name="symnet-compile", daemon=True))
    if runtime.started(worker) is not None:
        return work(*args)
    while worker.is_alive():
        worker.join(WAKE_S)
    ok, value = result[0]
    if not ok:
        raise value
    return value


def _a_core_is_free() -> bool:
    """Whether a core is free beside this process's thread now: on a busy machine a helper
    only slows this process's own compile (a cold fit beside two busy processes took 6.0-7.6 s
    with one, 2.8-3.3 s without). Other processes' threads running now (Linux's
    ``procs_running``, less this process's own) rather than the load average, which still
    counted a process that had ended a minute before: back-to-back cold processes started no
    helper."""
    others = runtime.others_running()
    if others is not None:
        return others + 2 <= runtime.cores()
    try:
        return os.getloadavg()[0] + 1 <= runtime.cores()
    except OSError:
        return False


def _await_helper(module: str, name: str) -> None:
    """Wait for the helper process compiling kernel ``name`` of ``module``, if there is one: its
    machine code is then in the cache. One that does not finish in ``COMPILE_BESIDE_S`` is
    stopped, and the kernel compiled here."""
    _BESIDE[:] = [e for e in _BESIDE if e[0].poll() is None]  # finished ones: in the cache
    for entry in [e for e in _BESIDE if e[1] == module and name in e[2]]:
        helper = entry[0]
        try:
            helper.wait(timeout=COMPILE_BESIDE_S)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if helper.poll() is None:
                helper.kill()
                helper.wait()
            _BESIDE.remove(entry)


@atexit.register
def _stop_helpers() -> None:
    """A helper's kernels are of no use once this process ends."""
    for helper, _, _ in _BESIDE:
        if helper.poll() is None:
            helper.kill()


def _before_fork():
    """A fork waits for a compile or cache load on another thread to end: the child would
    inherit numba's compiler lock held by a thread it does not have, and LLVM half-way through,
    and its first kernel would wait for the lock forever (a pool forked while a warm-up thread
    loaded kernels hung). The forking thread holds both locks across the fork."""
    _COMPILING.acquire()
    global_compiler_lock.acquire()


def _after_fork_in_parent():
    global_compiler_lock.release()
    _COMPILING.release()


def _after_fork():
    """In a forked child only the forking thread runs: a lock another thread held (a kernel
    call serving beside it) would stay held forever; the compile locks are this thread's
    (:func:`_before_fork`)."""
    global _COMPILING
    global_compiler_lock.release()
    _COMPILING = threading.RLock()
    _BESIDE.clear()  # the parent's helper processes: not this process's children
    for runner in list(_RUNNERS):
        runner.lock = threading.Lock()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork)


class Blocks:
    """Each kernel's argument block, kept between calls: only the slots of arrays that changed
    are written again (a block of seed002's 40 arrays took 80 µs to fill, a tenth of a
    1000-step call on tiny). It knows its arrays by weak references: the caller holds them
    while the kernel runs, and a caller's input is not kept alive after its call (a 488 MB
    batch given to ``predict`` once stayed in memory until the next call)."""

    def __init__(self):
        self.blocks: dict[str, tuple[np.ndarray, list]] = {}

    def fill(self, entry: Entry, scalars: dict[str, int], arrays: dict[str, np.ndarray]):
        """The block for ``entry``: scalars from slot 1, then each array's data pointer and two
        dimensions (``runtime.array``)."""
        blk, held = self.blocks.get(entry.name) or (np.zeros(entry.length, np.int64),
                                                    [None] * len(entry.arrays))
        for k, name in enumerate(entry.scalars, start=1):
            blk[k] = scalars[name]
        for k, name in enumerate(entry.arrays):
            a = arrays[name]
            if held[k] is not None and held[k]() is a:
                continue
            if not (a.flags.c_contiguous and a.ndim == 2):
                raise CodegenError(f"the kernel {entry.name} takes C-contiguous 2-D arrays; "
                                   f"{name} is {a.ndim}-D"
                                   f"{'' if a.flags.c_contiguous else ', strided'}")
            at = ARRAYS_AT + 3 * k
            blk[at:at + 3] = a.ctypes.data, a.shape[0], a.shape[1]
            held[k] = weakref.ref(a)
        self.blocks[entry.name] = (blk, held)
        return blk


# A training call estimated to take at most this long runs on the calling thread, which then
# runs a Ctrl-C's handler once the call has ended. Starting and joining the kernel's own thread
# took ~0.2 ms, 15 % of tiny's 1000-step call (1.34 ms against 1.15 ms, measured).
SHORT_CALL = 0.02
STEP_SECONDS = 2e-6  # the least a step takes (tiny's took 1.1 µs)
WORK_RATE = 1e9  # multiply-adds a second: a lower bound, the rate of one thread's loop nests


def _seconds(steps: int, work: int) -> float:
    """A generous estimate of how long ``steps`` steps of ``work`` multiply-adds each take."""
    return steps * (STEP_SECONDS + work / WORK_RATE)


def _off_this_thread(call, stop: np.ndarray, pending: list | None = None):
    """``call()`` (a kernel that watches ``stop``) on a thread of its own, while this one
    waits: Python runs signal handlers only between its own instructions, so a kernel that
    runs for seconds on this thread would hold back Ctrl-C until it returns. If the wait is
    interrupted, the kernel is asked to stop after its step and waited for (a second Ctrl-C
    does not cut that short: an abandoned kernel would keep the model's arrays in use); the
    exception is then appended to ``pending`` and the kernel's result returned, or, without a
    ``pending``, raised. Where no thread can be started (a limit on threads), the call runs
    here."""
    result: list = []
    done = threading.Event()  # not Thread.join: on Python 3.11 a join that an exception
    # interrupts marks the thread as ended although it runs on (bpo-45274's fix)

    def run():
        try:
            result.append((True, call()))
        except BaseException as err:  # raised again on the waiting thread
            result.append((False, err))
        finally:
            done.set()

    worker = on_behalf(threading.Thread(target=run, name="symnet-kernel", daemon=True))
    try:
        refused = runtime.started(worker) is not None
        while not refused and not done.wait(WAKE_S):
            pass
    except BaseException as err:  # in the wait, or in start's: the thread runs either way
        stop[0] = 1
        while not done.is_set():
            with contextlib.suppress(BaseException):
                done.wait()
        if pending is None or not result[0][0]:
            raise
        pending.append(err)
    else:
        if refused:
            return call()
    ok, value = result[0]
    if not ok:
        raise value
    return value


@contextlib.contextmanager
def _jit_errors():
    """numba's typing and lowering errors, as a CodegenError that says where to look."""
    try:
        yield
    except numba.core.errors.NumbaError as err:
        first = str(err).strip().splitlines()[0]
        raise CodegenError(f"numba could not compile the generated kernel ({first}); "
                           f"SYMNET_DEBUG=1 prints its source") from None


def warm_up(runner: NumbaRunner) -> bool:
    """Compile (or load from the disk cache) the kernels that training, evaluation and
    prediction use; True if all machine code came from the cache or was compiled before (by
    this runner, which a model's ``fresh`` copies share, or another of this process). With an
    update, ``loss_and_grad`` is left to its first direct call: ``train_epochs`` has its
    statements."""
    names = [n for n in runner.entries if runner.update is None or n != "loss_and_grad"]
    ready = all(name in runner.compiled for name in names)
    runner.prepare(names)
    return ready or all(runner.cached(name) for name in names)


@functools.cache
def _runtime_digest() -> str:
    """A hash of the codegen package's source, whose functions and intrinsics the generated
    kernels compile in: numba's cache checks only the generated module's own file, so without
    it a change to one of them would load machine code built from the old one."""
    text = b"".join(path.read_bytes() for path in runtime_files())
    return hashlib.sha256(text).hexdigest()


def runtime_files() -> list[Path]:
    return sorted(Path(__file__).parent.parent.rglob("*.py"))



# A workspace's data starts this many bytes after the start of its own allocation, so at least
# this far after the data of any other array. A vectorised loop that writes one array and reads
# another first checks that the written one does not start just above the read one (within a
# few vectors), and otherwise runs a scalar copy of itself, whose sums round differently: with
# workspaces where the allocator put them, ~1 cold process in 5 trained to other bits.
GUARD = 4096


def _alloc(shape, rows, dtype, minor=False):
    """A workspace for up to ``rows`` batch rows, transposed if it is stored batch-minor; a
    kernel on a smaller batch uses its first n rows (or columns). Its data starts ``GUARD``
    bytes into its allocation, on a 64-byte boundary."""
    d = tuple(rows if x == BATCH else x for x in shape)
    d = d[::-1] if minor else d
    size = int(np.prod(d)) * np.dtype(dtype).itemsize
    raw = np.zeros(GUARD + size + 64, np.uint8)
    start = GUARD + -(raw.ctypes.data + GUARD) % 64
    return raw[start:start + size].view(dtype).reshape(d)


def _view(work, shape, n):
    """The part of an output workspace that holds ``n`` batch rows."""
    return work[tuple(slice(n) if d == BATCH else slice(None) for d in shape)]


def _batch_rows(program, feeds):
    rows = {feeds[b.name].shape[0] for b in program.buffers
            if b.role != "temp" and b.shape[0] == BATCH}
    return rows.pop() if rows else 1
