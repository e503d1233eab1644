"""Warnings that point at the user's line rather than at codegen's.

A warning is attributed to the first frame outside codegen and the packages that ``hide`` their
frames (symnet does), as Python 3.12's ``skip_file_prefixes`` would: a fixed ``stacklevel``
named a different internal line for each path that reaches the same warning. On a thread that
codegen runs for a caller (a kernel's, a compile's), that is the frame of the caller, which
waits for it.
"""

from __future__ import annotations

import sys
import threading
import warnings

# top-level packages whose frames a warning skips; importlib's: a warning at a module's import
# names the line that made the import
_HIDDEN = {__name__.split(".")[0], "threading", "importlib"}


def hide(package: str) -> None:
    """Attribute codegen's warnings to the callers of ``package``, not to its own lines."""
    _HIDDEN.add(package)


def on_behalf(thread: threading.Thread) -> threading.Thread:
    """``thread`` (not started), whose warnings are to name the line of the thread making it."""
    thread.caller = threading.get_ident()
    return thread


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` at the first frame outside the hidden packages."""
    frame = _outside(sys._getframe(1))
    caller = getattr(threading.current_thread(), "caller", None)
    if frame is None and caller is not None:
        frame = _outside(sys._current_frames().get(caller))
    if frame is None:
        warnings.warn(message, category, stacklevel=2)
        return
    where = dict(module=frame.f_globals.get("__name__", "<unknown>"),
                 registry=frame.f_globals.setdefault("__warningregistry__", {}))
    try:  # module_globals lets the warning show the caller's source line
        warnings.warn_explicit(message, category, frame.f_code.co_filename, frame.f_lineno,
                               module_globals=frame.f_globals, **where)
    except ImportError:  # whose loader has none: __main__ of `python -c`, a REPL, stdin
        warnings.warn_explicit(message, category, frame.f_code.co_filename, frame.f_lineno,
                               **where)


def _outside(frame):
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in _HIDDEN:
        frame = frame.f_back
    return frame
