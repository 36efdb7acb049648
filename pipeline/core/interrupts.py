"""Ctrl-C (SIGINT), SIGTERM and SIGHUP in bnpipe's own process.

Python turns a signal into an exception at whatever bytecode the main thread runs next. When that
bytecode belongs to a finalizer (a `__del__`, a weakref callback: TensorFlow's objects have many),
Python prints "Exception ignored in …" and the exception is gone: the stage would go on and commit
its files as though Ctrl-C had never been pressed. So the handlers that `install()` puts in place
also note the signal, and `raise_pending()` raises it again at the points that count: before a
transaction commits, at each progress line, after each epoch. `interrupts_deferred()` holds the
signals back while a commit's renames run.

Only the CLI's entry point installs the handlers; in-process callers (tests, notebooks) keep
Python's own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

from pipeline.core.errors import Terminated

_HELD_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
_noted: list[int] = []  # the signals _on_signal raised, in order (a swallowed one stays here)


def install() -> None:
    """Note-and-raise handlers: SIGINT → KeyboardInterrupt (if Ctrl-C has Python's default
    handler, i.e. was not ignored when the process started), SIGTERM and SIGHUP → Terminated (if
    they have the default action, death). A finalizer's lost KeyboardInterrupt is then not
    reported as a traceback: the CLI's one line says it."""
    for name in _HELD_SIGNALS:
        number = getattr(signal, name, None)
        if number is None:
            continue
        default = signal.default_int_handler if name == "SIGINT" else signal.SIG_DFL
        if signal.getsignal(number) is default:
            signal.signal(number, _on_signal)
    report = sys.unraisablehook

    def quiet_about_signals(unraisable) -> None:
        """Python's report of an exception a finalizer could not raise, but for the signals noted
        here: who pressed Ctrl-C gets one line from the CLI, not a traceback from a `__del__`."""
        if not isinstance(unraisable.exc_value, KeyboardInterrupt) or not _noted:
            report(unraisable)

    sys.unraisablehook = quiet_about_signals


def _on_signal(signum: int, frame) -> None:
    _noted.append(signum)
    raise KeyboardInterrupt if signum == signal.SIGINT else Terminated()


def raise_pending() -> None:
    """Raise the first signal `install()`'s handlers took if its exception may have been lost.

    Nothing happens while an exception is being handled (the cleanup that runs on Ctrl-C is not
    cut short by a second one) or when no handler fired."""
    if _noted and sys.exc_info()[1] is None:
        raise KeyboardInterrupt if _noted[0] == signal.SIGINT else Terminated()


@contextlib.contextmanager
def interrupts_deferred(note: str = "") -> Iterator[None]:
    """Hold Ctrl-C (SIGINT), SIGTERM and SIGHUP until the block ends, then act on the first one
    that came, as its handler before the block would have (a signal that was ignored stays
    ignored): KeyboardInterrupt(note) for SIGINT, the handler's own exception otherwise.

    The commit of a transaction is a handful of renames; letting a signal land between two of
    them would leave half a stage. Only the main thread can set signal handlers; elsewhere the
    block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raise_pending()  # one that came before the block and was lost: before, not after, the block
    received: list[int] = []
    numbers = [getattr(signal, name) for name in _HELD_SIGNALS if hasattr(signal, name)]
    previous = {n: signal.signal(n, lambda signum, frame: received.append(signum)) for n in numbers}
    try:
        yield
    finally:
        late = _restore(previous)
    for signum in received:
        _act_on(signum, previous[signum], note)
        return
    if late is not None:
        raise late


def _restore(previous: dict) -> BaseException | None:
    """Put the handlers back, every one of them even if a signal that came just before is raised
    by one of the calls (signal.signal runs pending handlers first); that exception is returned."""
    late = None
    for number, handler in reversed(previous.items()):  # SIGINT last: held until the end
        while True:
            try:
                signal.signal(number, handler)
                break
            except BaseException as exc:
                late = late or exc
    return late


def _act_on(signum: int, handler, note: str) -> None:
    """What `handler`, the handler before the block, would have done on `signum`."""
    if handler is signal.SIG_IGN:
        return
    if handler is signal.default_int_handler or (
        handler in (signal.SIG_DFL, None) and signum == signal.SIGINT
    ):
        raise KeyboardInterrupt(note) if note else KeyboardInterrupt
    if handler is _on_signal:
        _noted.append(signum)
        raise KeyboardInterrupt(note) if signum == signal.SIGINT else Terminated(note)
    if callable(handler):
        handler(signum, None)
    else:  # SIG_DFL for SIGTERM/SIGHUP: die of the signal, as without the block
        os.kill(os.getpid(), signum)
