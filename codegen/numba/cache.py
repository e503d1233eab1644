"""The kernel cache: generated modules stored under the hash of their text, checked when they
are loaded, repaired when they are damaged, and compiled elsewhere when the cache location
cannot be written.

A module is written once to ``$SYMNET_CACHE_DIR`` (default ``~/.cache/symnet``) as
``symnet_<hash>.py`` and imported from there, so that numba's ``cache=True`` keeps its machine
code beside it (``__pycache__``) for the next process. Everything read back is verified: a
module file whose text is not the text its name promises is written again, and machine code
that numba cannot load (a truncated or garbage index or data file) is deleted and compiled
again (:func:`compile_kernel`). When the location cannot be written (read-only, a path under
a file, a full disk), kernels are compiled in a temporary directory, or in memory, with one
warning, instead of failing; those the location holds are copied from it and loaded.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import linecache
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numba.core.caching
import numba.core.errors

from .. import files
from ..errors import CodegenError
from ..files import cache_dir
from ..notices import warn
from . import runtime


class CacheWarning(UserWarning):
    """The kernel cache location cannot be used; kernels are compiled elsewhere."""


_usable: dict[Path, str | None] = {}  # location → None if writable, else why not
_fallback: list = []  # this process's replacement for unwritable locations: a Path, or None


def _problem(directory: Path) -> str | None:
    """None if ``directory`` exists (or can be made) and a file can be created in it, else the
    reason, as the OS gives it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except (FileExistsError, NotADirectoryError) as err:  # the OS's words: "File exists"
        in_the_way = next((p for p in (directory, *directory.parents) if p.is_file()), None)
        if in_the_way is not None:
            return f"{in_the_way} is a file, not a directory"
        if directory.is_symlink():
            return f"{directory} is a link to {os.readlink(directory)}, which does not exist"
        return err.strerror or str(err)
    except OSError as err:
        return err.strerror or str(err)
    return None


def location(preferred: Path) -> Path | None:
    """The directory to write modules to: ``preferred`` if it is writable, else a temporary
    directory of this process, else None (compile in memory)."""
    if preferred not in _usable:
        _usable[preferred] = _problem(preferred)
    if _usable[preferred] is None:
        return preferred
    if not _fallback:
        try:
            _fallback.append(Path(tempfile.mkdtemp(prefix="symnet-kernels-")))
        except OSError:
            _fallback.append(None)
        else:  # "not kept": removed when the process ends
            atexit.register(shutil.rmtree, _fallback[0], ignore_errors=True)
        where = _fallback[0] or "memory"
        what = "kernels" if where == "memory" else "kernels it holds are loaded from it, others"
        warn(f"the kernel cache {preferred} cannot be written ({_usable[preferred]}); {what} "
             f"are compiled in {where} for this process and not kept. Set SYMNET_CACHE_DIR to a "
             f"writable directory to keep them.", CacheWarning)
    return _fallback[0]


def key(source: str, salt: str) -> str:
    """The module name of ``source``: a hash of its text and of ``salt`` (the codegen version
    and the runtime's source)."""
    return "symnet_" + hashlib.sha256(f"{salt}\n{source}".encode()).hexdigest()[:20]


def load(source: str, salt: str, directory: Path | None = None) -> types.ModuleType:
    """The module of ``source``, imported from the cache (written there first if it is missing
    or damaged), or compiled in memory if no directory can be written."""
    name = key(source, salt)
    if name in sys.modules:
        return sys.modules[name]
    preferred = Path(directory) if directory is not None else cache_dir()
    directory = location(preferred)
    if directory is not None and directory != preferred:
        _copy_stored(preferred, directory, name, source)
    path = None if directory is None else _stored(directory / f"{name}.py", source)
    module = _from_file(name, path) if path is not None else _in_memory(name, source)
    module.SOURCE = source  # to write the file again if the cache is cleared (_kept)
    sys.modules[name] = module
    return module


def _stored(path: Path, source: str) -> Path | None:
    """``path`` holding exactly ``source``: kept if it does, else written atomically (a
    damaged file's machine code is deleted with it). None if it cannot be written."""
    try:
        if path.read_text(encoding="utf-8") == source:
            return path
        damaged = True
    except FileNotFoundError:
        damaged = False
    except (OSError, UnicodeDecodeError):
        damaged = True
    if damaged:  # numba's files were compiled from other text: they must not load
        _remove_machine_code(path.parent / "__pycache__", path.stem)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # the cache was removed meanwhile
        _write(path, source)
    except OSError as err:
        warn(f"cannot write the kernel module {path} ({err.strerror or err}); it is compiled "
             f"in memory and not kept", CacheWarning)
        return None
    return path


def _copy_stored(cache: Path, directory: Path, name: str, source: str) -> None:
    """Copy module ``name`` and its machine code from a cache that cannot be written (a
    read-only file system: a container's image, a shared installation) to ``directory``, if
    the cache holds exactly ``source``: its kernels then load, and only the missing ones are
    compiled (a cold compile is seconds, a copy milliseconds). Times are copied too: numba
    checks its machine code against its source file's time and size."""
    with contextlib.suppress(OSError, UnicodeDecodeError):  # else the kernels are compiled
        if (cache / f"{name}.py").read_text(encoding="utf-8") != source:
            return
        (directory / "__pycache__").mkdir(parents=True, exist_ok=True)
        for code in (cache / "__pycache__").glob(f"{name}.*"):
            shutil.copy2(code, directory / "__pycache__" / code.name)
        shutil.copy2(cache / f"{name}.py", directory / f"{name}.py")


def _write(path: Path, source: str) -> None:
    """Write ``path`` atomically (``codegen.files``): a reader never sees half a module, and a
    temporary file never outlives a failure."""
    files.atomic_write(path, lambda f: f.write(source.encode("utf-8")))


def _from_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    module.CACHE = True  # numba keeps machine code beside the file
    spec.loader.exec_module(module)
    return module


def _in_memory(name: str, source: str) -> types.ModuleType:
    """The module compiled from text, without a file: numba then cannot cache its machine
    code (``CACHE = False``); the text is registered with linecache for tracebacks."""
    filename = f"<symnet kernels {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(name)
    module.CACHE = False
    exec(compile(source, filename, "exec"), module.__dict__)
    return module


def _remove_machine_code(directory: Path, module_name: str) -> None:
    for path in directory.glob(f"{module_name}.*"):
        with contextlib.suppress(OSError):
            path.unlink()


def compile_kernel(function, cache: bool, **options):
    """``function`` compiled as a kernel (``runtime.compile_kernel``), loading its machine code
    from numba's cache when there is some. If loading fails (a damaged index or data file:
    ``UnpicklingError``, ``EOFError`` and the like), the module's cached machine code is deleted
    and the kernel compiled anew; if that fails too (numba cannot write its files: a full disk),
    it is compiled without the cache, with a warning. A module file removed since it was loaded
    (a cache cleared while this process runs) is written again first."""
    cache = cache and _kept(function)
    try:
        return runtime.compile_kernel(function, cache, **options)
    except numba.core.errors.NumbaError:
        raise  # the kernel itself does not compile: not a cache problem
    except Exception as err:  # numba does not say which; any failure to load is damage
        damage = err
    if cache:
        path = numba.core.caching.FunctionCache(function)._cache_path
        _remove_machine_code(Path(path), function.__module__)
        try:
            return runtime.compile_kernel(function, cache, **options)
        except numba.core.errors.NumbaError:
            raise
        except Exception as err:  # not damage: numba cannot write its files (a full disk)
            damage = err
    try:
        compiled = runtime.compile_kernel(function, False, **options)
    except numba.core.errors.NumbaError:
        raise
    except Exception as err:
        raise CodegenError(f"the kernel {function.__name__} could not be compiled ({damage!r}, "
                           f"then without the cache {err!r})") from None
    if cache:
        warn(f"the kernel cache could not keep the machine code of {function.__name__} "
             f"({damage}); it is compiled for this process only. Free space in "
             f"{cache_dir()}, or set SYMNET_CACHE_DIR to a writable directory.", CacheWarning)
    return compiled


# ------------------------------------------------------------------------------ a second core


def _kept(function) -> bool:
    """Whether the module file of kernel ``function`` is there for numba's cache to key its
    machine code on (numba refuses to cache a function whose file is gone); written again if the
    cache was cleared since the module was loaded. False if it cannot be (then warned)."""
    module = sys.modules.get(function.__module__)
    path = Path(getattr(module, "__file__", None) or "")
    if path.is_file():
        return True
    source = getattr(module, "SOURCE", None)
    if source is not None and path.name != "" and _stored(path, source) is not None:
        return True
    if module is not None:
        module.CACHE = False  # its other kernels too, without a warning each
    return False


def on_disk(module: types.ModuleType, name: str) -> bool:
    """Whether numba's cache holds machine code of kernel ``name`` of ``module`` (an index file;
    whether it loads is found out by loading it)."""
    if not module.CACHE or not Path(module.__file__).is_file():
        return False
    where = Path(numba.core.caching.FunctionCache(getattr(module, name))._cache_path)
    return any(where.glob(f"{module.__name__}.{name}-*.nbi"))


def compile_beside(module: types.ModuleType, names: list[str],
                   stages: Path | None = None) -> subprocess.Popen | None:
    """A process that lowers the stages the kernel compiling here announces in ``stages``
    (:func:`.stages.lower_beside`), if given, then compiles kernels ``names`` of ``module`` into
    numba's cache, for this one to load when it has compiled its own; None if it cannot be
    started or there is no cache to share them through (a module compiled in memory), or if
    this interpreter is not a ``python`` program (an application embedding Python, which ``-c``
    might not run). Its failure only costs this process the work it would have done anyway, so
    its output is dropped."""
    program = Path(sys.executable or "").name.lower()
    if not module.CACHE or not program.startswith(("python", "pypy")):
        return None
    root = str(Path(__file__).resolve().parents[2])  # where this codegen package is imported from
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    code = "import sys; from codegen.numba.cache import _compile_files; _compile_files(sys.argv[1:])"
    try:
        return subprocess.Popen([sys.executable, "-c", code, module.__file__, str(stages or ""),
                                 str(os.getpid()), *names],
                                env={**os.environ, "PYTHONPATH": path}, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None


def _compile_files(argv: list[str]) -> None:
    """The helper process of :func:`compile_beside`: ``argv`` is a module file, the shared
    stages' directory (or an empty string), the compiling process's pid and kernel names."""
    from .emit import KERNEL_OPTIONS
    from .stages import lower_beside

    path, stages, parent, *names = argv

    def parent_alive() -> bool:  # else the compiling process was killed: nobody needs the work
        return os.getppid() == int(parent)  # (it may be killed before this process starts)

    module = sys.modules[Path(path).stem] = _from_file(Path(path).stem, Path(path))
    try:
        if stages:
            with contextlib.suppress(OSError):  # the directory went away: the kernel is compiled
                lower_beside(module, Path(stages), parent_alive)
        for name in names:
            if not parent_alive():
                break
            compile_kernel(getattr(module, name), True, **KERNEL_OPTIONS)
        # the kernel reads the helper's stages from the directory until it has linked them, and
        # then removes it; a compiling process killed before that leaves it to this process
        while stages and parent_alive() and Path(stages).exists():
            time.sleep(0.02)
    finally:
        if stages and not parent_alive():  # it could not remove its directory
            shutil.rmtree(stages, ignore_errors=True)
