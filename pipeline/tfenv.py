"""The one door to TensorFlow: import it lazily, quietly, and with Keras 2 (see pipeline/__init__.py).

Importing TensorFlow costs about 6 s, so nothing at module level in the CLI's path imports it;
stage functions call `tf()` / `keras()` when they need it.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys


@functools.lru_cache(maxsize=None)
def tf():
    import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before the first TensorFlow import)

    # TensorFlow's C++ side logs start-up notices (oneDNN, "no CUDA drivers") through absl before
    # its log level applies; they would bury bnpipe's output, so stderr is muted while it starts.
    with muted_stderr():
        import tensorflow

        tensorflow.config.list_physical_devices()
        tensorflow.constant(0.0) + 1.0  # the first op initializes the devices (and logs)
    tensorflow.get_logger().setLevel(logging.ERROR)
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass
    return tensorflow


@functools.lru_cache(maxsize=None)
def keras():
    """Keras 2 (`tf_keras`): tensorflow-model-optimization 0.8 does not work with Keras 3."""
    tf()
    import tf_keras

    return tf_keras


@contextlib.contextmanager
def muted_stderr():
    """Point file descriptor 2 at /dev/null for the block (C++ logging bypasses sys.stderr)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded, some test runners)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TensorFlow's ops deterministic.

    Same seed, same data, same machine ⇒ the same weights, bit for bit.
    """
    keras().utils.set_random_seed(seed)
    t = tf()
    try:
        t.config.experimental.enable_op_determinism()
    except Exception:  # already enabled in this process
        pass
