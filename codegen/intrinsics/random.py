"""Dropout masks from a counter-based generator: entry (i, j) of mask ``stream`` at training step
``step`` is a hash of those numbers and the model's seed (SplitMix64's finaliser, applied three
times). No generator state is carried between entries, so any thread computes any piece of a mask
and every backend and thread count draws the same bits; a backward pass recomputes the mask of its
forward pass instead of storing it.

``keep`` is plain NumPy arithmetic on ``uint64``: called from Python with arrays it is the
reference backend's mask, and the kernels compile the same function (``register_jitable``).
"""

from __future__ import annotations

import numpy as np
from numba.extending import register_jitable

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S11, _S27, _S30, _S31 = (np.uint64(s) for s in (11, 27, 30, 31))
_UNIT = 2.0**-53


@register_jitable(inline="always")
def _mix(z):
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@register_jitable(inline="always")
def keep(seed, step, stream, i, j, p):
    """1.0 with probability 1 − p, else 0.0: entry (i, j) of mask ``stream`` at ``step``."""
    z = _mix(np.uint64(seed) * _GOLDEN + np.uint64(step))
    z = _mix(z ^ (np.uint64(stream) * _M1 + np.uint64(i)))
    z = _mix(z ^ (np.uint64(j) * _M2 + _GOLDEN))
    return ((z >> _S11) * _UNIT >= p) * 1.0

