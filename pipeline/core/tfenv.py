"""The one door to TensorFlow: import it lazily, quietly, with Keras 2 (see pipeline/__init__.py).

Importing TensorFlow costs about 6 s, so nothing at module level in the CLI's path imports it;
stage functions call `tf()` / `keras()` when they need it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys


@functools.cache
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


@functools.cache
def keras():
    """Keras 2 (`tf_keras`): tensorflow-model-optimization 0.8 does not work with Keras 3."""
    tf()
    import tf_keras

    return tf_keras


@contextlib.contextmanager
def _fd2_to(target_fd: int):
    """Point file descriptor 2 at `target_fd` for the block (C++ logging bypasses sys.stderr);
    yields False, changing nothing, where there is no real stderr (embedded, some test runners)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield False
        return
    os.dup2(target_fd, 2)
    try:
        yield True
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def muted_stderr():
    """Send what anything writes to file descriptor 2 in the block to /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        with _fd2_to(devnull):
            yield
    finally:
        os.close(devnull)


# Lines TensorFlow's and LiteRT's C++ code print on every run that say nothing to a user:
# tf.data's "NodeDef mentions attribute use_unbounded_threadpool …" (a graph written by a newer
# TensorFlow than the runtime op registry; harmless, TensorFlow says so itself) and LiteRT's
# "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
NATIVE_NOISE = ("NodeDef mentions attribute", "Created TensorFlow Lite XNNPACK delegate")


@contextlib.contextmanager
def native_noise_filtered():
    """Hold what C++ code writes to file descriptor 2 in the block; then pass on every line but
    the NATIVE_NOISE ones. Unlike muted_stderr, a real message from native code still shows
    (after the block). Python's own sys.stderr writes in the block are held too: keep progress
    messages outside it."""
    import tempfile

    with tempfile.TemporaryFile() as held:
        try:
            with _fd2_to(held.fileno()):
                yield
        finally:
            held.seek(0)
            kept = [
                line
                for line in held.read().decode("utf-8", "replace").splitlines(True)
                if not any(noise in line for noise in NATIVE_NOISE)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


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
