"""A busy neighbour for measurements under load: one CPU-bound process
(``python -c "while True: pass"``, as a browser tab, a second run or a sweep's other worker
would be) running beside the measured children for the whole of a run.

    with busy_neighbour(args.load) as neighbour:   # None when not asked for
        ...                                        # every measured child runs here

The process is killed when the block ends, also on Ctrl-C or an error; on Linux it also dies
with the parent if the parent is killed outright.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys

COMMAND = "while True: pass"
DESCRIPTION = f'one CPU-bound process beside the whole run (python -c "{COMMAND}")'


def _die_with_parent() -> None:  # pragma: no cover (runs in the forked child)
    """Ask Linux to SIGKILL this process when its parent dies (prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


@contextlib.contextmanager
def busy_neighbour(enabled: bool = True):
    """Run the busy process for the duration of the block (nothing when not ``enabled``);
    yields the ``subprocess.Popen`` or None."""
    if not enabled:
        yield None
        return
    proc = subprocess.Popen([sys.executable, "-c", COMMAND], stdin=subprocess.DEVNULL,
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
