"""interrupts.py with real signals sent to this process: held through a block, noted when a
finalizer swallows them, raised again before a commit. No TensorFlow needed.

The handlers run between bytecodes of the main thread, so each test that sends a signal gives
them a loop of bytecodes to run in.
"""

from __future__ import annotations

import gc
import os
import signal
import sys

import pytest

from pipeline.core import interrupts
from pipeline.core.errors import Terminated
from pipeline.store import artifacts


def _let_handlers_run() -> None:
    for _ in range(1000):
        pass


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@pytest.fixture(autouse=True)
def as_from_a_terminal(monkeypatch):
    """Python's handlers as a process started from a terminal has them (under a background job
    pytest inherits SIGINT ignored), a fresh note of signals and the handlers of before, after."""
    monkeypatch.setattr(interrupts, "_noted", [])
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    saved = {n: signal.getsignal(n) for n in SIGNALS}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


@pytest.fixture
def installed():
    """bnpipe's handlers, as the CLI installs them."""
    interrupts.install()


class _SwallowsASignal:
    """An object whose finalizer is running when the signal's handler runs, as TensorFlow's
    `__del__`s and weakref callbacks are now and then: Python prints the exception and drops it."""

    def __init__(self, signum: int):
        self.signum = signum

    def __del__(self):
        os.kill(os.getpid(), self.signum)
        _let_handlers_run()


def _lose(signum: int) -> None:
    _SwallowsASignal(signum)  # dropped at once: its __del__ runs here
    gc.collect()


def test_interrupts_deferred_holds_sigint_to_the_end_of_the_block():
    reached_end = False
    with pytest.raises(KeyboardInterrupt), interrupts.interrupts_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        _let_handlers_run()
        reached_end = True
    assert reached_end
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_interrupts_deferred_leaves_an_ignored_sigint_ignored():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with interrupts.interrupts_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        _let_handlers_run()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # nothing raised, still ignored


def test_install_leaves_a_signal_the_process_was_told_to_ignore():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `nohup` or a background job starts it
    interrupts.install()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL


@pytest.mark.parametrize(
    ("signum", "raised"),
    [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_a_finalizer_swallowed_still_stops_the_commit(
    installed, tmp_path, capsys, signum, raised
):
    """The stage's code goes on after the lost signal; its files must not land all the same."""
    dest = tmp_path / "model.tflite"
    dest.write_text("before")
    went_on = False
    with pytest.raises(raised), artifacts.transaction():
        artifacts.write_text(dest, "after")
        _lose(signum)
        went_on = True  # the exception did not come here: the finalizer had it
    assert went_on
    assert dest.read_text() == "before"
    assert "Traceback" not in capsys.readouterr().err  # no report of the finalizer's exception
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]  # no temporary file left


def test_raise_pending_waits_while_an_exception_is_handled(installed):
    _lose(signal.SIGINT)
    try:
        raise ValueError("a stage's own failure")
    except ValueError:
        interrupts.raise_pending()  # cleanup code: not cut short
    with pytest.raises(KeyboardInterrupt):
        interrupts.raise_pending()


def test_raise_pending_is_quiet_without_a_signal(installed):
    interrupts.raise_pending()
    with interrupts.interrupts_deferred():
        pass


def test_a_signal_held_by_the_block_is_raised_by_bnpipes_handler_after_it(installed):
    with pytest.raises(Terminated, match="saved"), interrupts.interrupts_deferred("saved"):
        os.kill(os.getpid(), signal.SIGTERM)
        _let_handlers_run()
    handlers = {signal.getsignal(n) for n in SIGNALS}
    assert len(handlers) == 1  # bnpipe's one handler, back on all three
    assert handlers.isdisjoint({signal.default_int_handler, signal.SIG_DFL})
