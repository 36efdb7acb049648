"""What a bad model file makes TensorFlow or Keras raise, turned into one ModelError line at the
door (exit 2), while an error of bnpipe's own code stays an internal error (exit 70).

Bad input: MemoryError, OverflowError and RecursionError anywhere; TensorFlow's own errors
(ResourceExhaustedError, InvalidArgumentError …: tf.errors.OpError, whose module is
TensorFlow's); and a ValueError or TypeError raised inside TensorFlow, Keras, h5py or the JSON
encoder (their builders' checks: "negative dimension", "Out of range float values are not JSON
compliant"). A ValueError raised in bnpipe's own code is a bug and passes through, as does
KeyboardInterrupt (not an Exception).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from pipeline.core.errors import BnpipeError, ModelError

LIBRARIES = ("tensorflow", "keras", "tf_keras", "h5py")  # installed packages


def _raised_in_library(exc: BaseException) -> bool:
    """True if the innermost frame of exc's traceback is in one of LIBRARIES."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    parts = Path(tb.tb_frame.f_code.co_filename).parts
    if len(parts) >= 2 and parts[-2] == "json":  # the standard library's encoder
        return True
    for i, part in enumerate(parts[:-1]):
        if part in ("site-packages", "dist-packages"):
            return parts[i + 1] in LIBRARIES
    return False


def is_bad_input(exc: BaseException) -> bool:
    """Whether `exc`, raised while building or running a user's model, is the file's fault."""
    if isinstance(exc, BnpipeError):
        return False  # already one line
    if isinstance(exc, (MemoryError, OverflowError, RecursionError)):
        return True
    if type(exc).__module__.startswith("tensorflow"):
        return True
    return isinstance(exc, (ValueError, TypeError)) and _raised_in_library(exc)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] if text else type(exc).__name__) + (
        "" if text.startswith(type(exc).__name__) else f" ({type(exc).__name__})"
    )


@contextlib.contextmanager
def refused_at_the_door(path, doing: str = "load"):
    """Turn what a bad file at `path` makes the libraries raise into ModelError (one line)."""
    try:
        yield
    except Exception as exc:
        if not is_bad_input(exc):
            raise
        raise ModelError(f"cannot {doing} {path}: {_one_line(exc)}") from None
