"""Warnings that point at the user's line rather than at codegen's.

A warning is attributed to the first frame outside codegen and the packages that ``hide`` their
frames (symnet does), as Python 3.12's ``skip_file_prefixes`` would: a fixed ``stacklevel``
named a different internal line for each path that reaches the same warning.
"""

from __future__ import annotations

import sys
import warnings

_HIDDEN = {__name__.split(".")[0]}  # top-level packages whose frames a warning skips


def hide(package: str) -> None:
    """Attribute codegen's warnings to the callers of ``package``, not to its own lines."""
    _HIDDEN.add(package)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` at the first frame outside the hidden packages."""
    frame, level = sys._getframe(1), 2  # level 2 is warn's caller
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in _HIDDEN:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
