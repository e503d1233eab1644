"""The numba backend: Programs and an Update → one generated module of kernels that a thread
team runs (``runtime``, its protocol written in LLVM IR in ``protocol``), planned once
(``plan``), printed (``emit``, ``printer``), cached on disk (``cache``) and called (``runner``).

The kernels compile in numba intrinsics and numba's array internals (``populate_array``, its
cache locator), which change between releases: the backend runs only with the numba and
llvmlite versions it is tested with (``SUPPORTED``, as pyproject.toml pins them), and says so
otherwise rather than failing inside numba.
"""

import os
import threading
from importlib.metadata import version

from ..errors import CodegenError

SUPPORTED = {"numba": ((0, 65), (0, 69)), "llvmlite": ((0, 47), (0, 51))}  # [from, to)


def _check_versions(found=None):
    found = found or {name: version(name) for name in SUPPORTED}
    for name, (low, high) in SUPPORTED.items():
        release = tuple(int(part) for part in found[name].split(".")[:2] if part.isdigit())
        if not low <= release < high:
            wanted = f"{name}>={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
            raise CodegenError(f"symnet's numba backend runs with {wanted}, and this environment "
                               f"has {name} {found[name]}: pip install '{wanted}'")


_check_versions()

__all__ = ["SUPPORTED", "NumbaRunner", "warm_up"]


# Held while the runner (and numba with it) is imported, and by a fork: a child forked while
# another thread imported it would wait forever for that thread's lock on the module.
_IMPORTING = threading.RLock()
os.register_at_fork(before=_IMPORTING.acquire, after_in_parent=_IMPORTING.release,
                    after_in_child=_IMPORTING.release)


def __getattr__(name):
    """The runner, imported on first use (after the version check): the helper process that
    compiles kernels imports only the cache and the runtime."""
    if name in ("NumbaRunner", "warm_up"):
        with _IMPORTING:
            from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
