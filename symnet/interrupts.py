"""Ctrl-C during training: the step that runs is finished, the model's record of its steps is
brought up to date, and only then is the interrupt delivered."""

from __future__ import annotations

import contextlib
import signal
import threading

import numpy as np


@contextlib.contextmanager
def deferred(stop: np.ndarray):
    """Within the block, Ctrl-C (SIGINT under Python's own handler) sets ``stop[0]`` (which the
    training kernels read before each step) instead of interrupting; when the block ends, the
    interrupt is delivered as it would have been (a ``KeyboardInterrupt``, or the process ends
    under ``SIG_DFL``). A handler of the user's own runs when the signal comes, as it would
    without symnet, and training goes on unless it raises; what it raises is raised when the
    block ends. The block gets a list (``as pending``) for the exceptions that reach the
    training call some other way (another signal's handler, a handler the user's replaced this
    one with), which the call stops for and the block raises once its steps are recorded.
    Outside the main thread, where Python delivers no signals, and when SIGINT is ignored or
    not Python's, SIGINT is left alone."""
    stop[0] = 0
    pending: list = []
    previous = signal.getsignal(signal.SIGINT)
    if (threading.current_thread() is not threading.main_thread()
            or previous in (signal.SIG_IGN, None)):
        yield pending
        if pending:
            raise pending[0]
        return
    frames = []

    def hold(signum, frame):
        if previous in (signal.default_int_handler, signal.SIG_DFL):
            frames.append(frame)
            stop[0] = 1
            return
        try:
            previous(signum, frame)
        except BaseException as err:  # whatever the handler raises, as Ctrl-C after the step
            pending.append(err)
            stop[0] = 1

    signal.signal(signal.SIGINT, hold)
    try:
        yield pending
    finally:
        if signal.getsignal(signal.SIGINT) is hold:  # (a handler may have put another)
            signal.signal(signal.SIGINT, previous)
        if pending:
            raise pending[0]
        if frames:
            if callable(previous):
                previous(signal.SIGINT, frames[0])
            else:  # SIG_DFL: the default action, which ends the process
                signal.raise_signal(signal.SIGINT)
