"""A kernel's phases as *stages*, and lowering them on two cores.

A stage is a function of its own in the LLVM module of each kernel that calls it (numba's
analyses grow faster than linearly with a function's size), typed and lowered once per kernel
however often the kernel calls it. Unlike an ``njit`` function's, its code is not optimised and
compiled to machine code on its own before the kernel's is: that did all the LLVM work of the
stages twice (~0.5 s of seed002's 3.8 s cold setup, measured).

Each stage is lowered (typed, turned into LLVM IR, its functions optimised) into a module of its
own, named after the kernel's module, the stage and its argument types, and these modules are
linked into the kernel just before LLVM optimises and compiles it as a whole. Lowering is most
of a cold compile (2.7-3.2 s of seed002's 4.2-5.0 s `train_epochs`), and this order lets a second
process share it: while a kernel compiles inside :func:`shared`, a helper process
(:func:`lower_beside`) lowers stages from the last one back while this process lowers them from
the first, each claiming a stage with a file before it lowers it, and the kernel links the
helper's modules as it would its own. Every module goes through bitcode whichever process
lowered it, and they are linked in the order of their names, so the kernel's machine code does
not depend on how the work was shared.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import pickle
import subprocess
import time
import types as pytypes
import weakref
from pathlib import Path

import llvmlite.binding as ll
from numba import types
from numba.core.compiler import Flags, compile_internal
from numba.core.registry import cpu_target
from numba.extending import intrinsic

from .. import files

_FUNCTIONS: dict[tuple[str, str], tuple] = {}  # (module, stage) → (Python function, Flags)
_TYPING_CONTEXT = inspect.Parameter("typingctx", inspect.Parameter.POSITIONAL_OR_KEYWORD)
_SHARE: list = []  # the Share of the kernel compiling inside shared(), if any
SIGNATURES = "stages.pickle"  # the file that tells the helper which stages the kernel calls
WAIT_S = 60  # the longest a kernel waits for a stage the helper claimed, then lowers it itself


def stage(**options):
    """A decorator: the function, whose arguments are int64 scalars and arrays and which returns
    an int64, as a stage of the kernels that call it, compiled with ``options`` (numba.njit's)."""
    flags = Flags()
    cpu_target.options.parse_as_flags(flags, {"nopython": True, **options})
    flags.no_compile = flags.no_cpython_wrapper = flags.no_cfunc_wrapper = True

    def decorate(function):
        argnames = list(inspect.signature(function).parameters)

        def typer(typingctx, *args):
            name = _name(function, args)
            share = _share_of(function)
            if share is not None:
                share.typed.setdefault(name, (function.__module__, function.__name__, args))

            def codegen(context, builder, sig, values):
                _kernel_stages(context.active_code_library).need(name, function, sig.args, flags)
                callee = pytypes.SimpleNamespace(mangled_name=name, restype=sig.return_type,
                                                 argtypes=sig.args, args=argnames,
                                                 noalias=False, inline=False)
                return context.call_internal(builder, callee, sig, values)

            return types.int64(*args), codegen

        # the stage's own parameters, not *args: numba folds a call's arguments by this signature
        params = inspect.signature(function).parameters.values()
        typer.__signature__ = inspect.Signature([_TYPING_CONTEXT, *params])
        typer.__name__ = function.__name__
        _FUNCTIONS[function.__module__, function.__name__] = (function, flags)
        return intrinsic(typer)

    return decorate


def _name(function, args) -> str:
    """The symbol of a stage lowered for ``args``: unique to the module's text (its name is a
    hash of it), since the JIT resolves symbols across all the modules of a process."""
    digest = hashlib.sha256(str(tuple(args)).encode()).hexdigest()[:12]
    return f"symnet_stage.{function.__module__}.{function.__name__}.{digest}"


def _lower(function, args, flags, name: str) -> bytes:
    """Stage ``function`` typed for ``args`` and lowered, with what it calls, into a module of
    its own in which it is called ``name``: the module's bitcode."""
    context = cpu_target.target_context
    library = context.codegen().create_library(name)
    fndesc = compile_internal(cpu_target.typing_context, context, library, function, args,
                              types.int64, flags.copy(), {}).fndesc
    module = library._final_module
    for linked in library._linking_libraries:  # njit functions it calls (linkonce_odr)
        module.link_in(linked._get_module_for_linking(), preserve=True)
    module.get_function(fndesc.mangled_name).name = name
    return module.as_bitcode()


class _KernelStages:
    """The stages one kernel's library calls, lowered here or by the helper, linked into it
    when numba finalizes it."""

    def __init__(self, library):
        self.share = None
        self.lowered: dict[str, bytes | None] = {}  # None: the helper lowers it
        self.todo: dict[str, tuple] = {}
        finalize = library.finalize

        def link_then_finalize():
            for name in sorted(self.lowered):
                library._final_module.link_in(self._module(name))
            del library.finalize  # numba's own again; and this, which refers to the library,
            _LIBRARIES.pop(library, None)  # no longer keeps it alive from a weak mapping
            finalize()

        library.finalize = link_then_finalize

    def need(self, name: str, function, args, flags) -> None:
        if name in self.lowered:
            return
        self.todo[name] = (function, args, flags)
        if not self.lowered:  # the kernel's first stage: its typing is complete
            self.share = _share_of(function)
        if self.share is not None:
            self.share.announce()
        mine = self.share is None or self.share.claim(name)
        self.lowered[name] = _lower(function, args, flags, name) if mine else None

    def _module(self, name: str):
        """Stage ``name``'s module: lowered here, else the helper's (lowered here after all if
        the helper wrote none, or one that does not parse)."""
        code = self.lowered[name]
        if code is None:
            with contextlib.suppress(RuntimeError):  # llvmlite's error for bad bitcode
                theirs = self.share.take(name)
                if theirs is not None:
                    module = ll.parse_bitcode(theirs)
                    self.share.taken.append(name)
                    return module
            code = _lower(*self.todo[name], name)
        return ll.parse_bitcode(code)


_LIBRARIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _share_of(function):
    """The Share of the compile in progress if ``function`` is a stage of its module (another
    thread may be compiling a kernel of another module meanwhile), else None."""
    share = _SHARE[0] if _SHARE else None
    return share if share is not None and share.module == function.__module__ else None


def _kernel_stages(library) -> _KernelStages:
    if library not in _LIBRARIES:
        _LIBRARIES[library] = _KernelStages(library)
    return _LIBRARIES[library]


class Share:
    """The stages of one kernel compile, shared with a helper process through ``directory``:
    a stage's ``.claim`` file says who lowers it, its ``.bc`` file holds the helper's module."""

    def __init__(self, module: str, directory: Path, helper: subprocess.Popen):
        self.module, self.directory, self.helper = module, directory, helper
        self.given_up = False  # the helper wrote nothing in WAIT_S: lower the rest here
        self.typed: dict[str, tuple] = {}  # name → (module, stage, argument types), in order
        self.taken: list[str] = []  # the stages whose modules came from the helper
        self.announced = False

    def announce(self) -> None:
        """Tell the helper the stages (at the first one lowered: typing is then complete)."""
        if not self.announced:
            self.announced = True
            with contextlib.suppress(OSError):
                files.atomic_write(self.directory / SIGNATURES,
                                   lambda f: pickle.dump(list(self.typed.items()), f))

    def claim(self, name: str) -> bool:
        return _claim(self.directory, name)

    def take(self, name: str) -> bytes | None:
        """The helper's module of stage ``name``, once it is written; None if the helper ended
        (or wrote nothing in ``WAIT_S``, once for all stages): the stage is then lowered here."""
        path = self.directory / f"{name}.bc"
        deadline = time.monotonic() + WAIT_S
        while not self.given_up:
            ended = self.helper.poll() is not None
            with contextlib.suppress(OSError):
                return path.read_bytes()
            if ended or not self.directory.exists():
                return None
            self.given_up = time.monotonic() > deadline
            time.sleep(0.002)
        return None


def _claim(directory: Path, name: str) -> bool:
    """Whether this process is the first to claim stage ``name`` (or cannot tell: it then
    lowers the stage, as it would alone)."""
    try:
        os.close(os.open(directory / f"{name}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    except OSError:
        return True
    return True


@contextlib.contextmanager
def shared(module: str, directory: Path, helper: subprocess.Popen):
    """Kernels of ``module`` compiled inside share their stages with ``helper``
    (:func:`lower_beside`); the :class:`Share` it yields tells which stages the helper
    lowered."""
    _SHARE.append(Share(module, directory, helper))
    try:
        yield _SHARE[0]
    finally:
        _SHARE.clear()


def lower_beside(module, directory: Path, alive=lambda: True, wait_s: float = WAIT_S) -> None:
    """The helper's part of a shared compile of a kernel of ``module``: the stages the kernel
    announces, from the last back, each that this process claims first. It stops when the
    kernel has them all, when ``directory`` is gone (the kernel was compiled), or once
    ``alive()`` is false (the compiling process was killed)."""
    deadline = time.monotonic() + wait_s
    signatures = directory / SIGNATURES
    cpu_target.typing_context.refresh()  # numba's registries, loaded while the kernel types
    cpu_target.target_context.refresh()
    while not signatures.exists():
        if time.monotonic() > deadline or not directory.exists() or not alive():
            return
        time.sleep(0.002)
    with signatures.open("rb") as f:
        typed = pickle.load(f)
    for name, (module_name, stage_name, args) in reversed(typed):
        if not alive() or not directory.exists():
            return
        if not _claim(directory, name):
            continue
        function, flags = _FUNCTIONS[module_name, stage_name]
        code = _lower(function, args, flags, name)
        files.atomic_write(directory / f"{name}.bc", lambda f, code=code: f.write(code))
