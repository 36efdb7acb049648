"""A time bound on a call into a library that may loop for ever on a crafted input (Keras's model
loaders), without a child process: the real-time timer (`signal.setitimer`) raises in the main
thread when the bound has passed, and again every second after, so that an exception a finalizer
swallowed, or a library's own `except Exception`, only delays it.

Python runs a signal handler between two bytecodes of the main thread, so the bound holds for
loops in Python (Keras's loaders are) and is late by at most one native call (a TensorFlow kernel
of a small model: milliseconds). Elsewhere than the main thread, or when the timer is already in
use, the call runs unbounded: a signal cannot reach another thread.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from pipeline.core.errors import ModelError

# Keras loads the models bnpipe takes in seconds (a few layers, kilobytes to megabytes of
# weights); two minutes leaves room for a machine under load and still ends a loader's endless
# loop long before anyone would give up on it.
LOAD_SECONDS = 120.0
REPEAT_SECONDS = 1.0  # after the bound, the handler fires again this often until the call ends


class _Overdue(BaseException):
    """Raised by the timer's handler; a BaseException, so that a library's `except Exception`
    does not take it for an error of its own and carry on."""


def _on_alarm(signum, frame) -> None:
    raise _Overdue


def _late(signum, frame) -> None:
    """The handler left in place after a bound: an alarm already on its way does nothing."""


@contextlib.contextmanager
def bounded(seconds: float, what: str) -> Iterator[None]:
    """Run the block at most `seconds`; past that, ModelError(f"{what} took longer than …").
    The timer is off when the block ends; SIGALRM's handler is left as one that does nothing
    (restoring the default action, death, would let an alarm already on its way kill bnpipe)."""
    usable = (
        threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.SIG_IGN, _late)
    )
    if not usable:
        yield
        return
    overdue = False
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds, REPEAT_SECONDS)
        yield
    except _Overdue:
        overdue = True
    finally:
        while True:  # an alarm may land on any bytecode here, until the handler is _late
            try:
                signal.signal(signal.SIGALRM, _late)
                break
            except _Overdue:
                overdue = True
        signal.setitimer(signal.ITIMER_REAL, 0)
    if overdue:
        raise ModelError(
            f"{what} took longer than {seconds:g} s and was stopped; a model bnpipe can take "
            "loads in seconds"
        )
