"""models/guard.py: what TensorFlow, Keras or the JSON encoder raise on a bad model becomes one
ModelError line at the door; bnpipe's own errors and Ctrl-C pass through untouched."""

from __future__ import annotations

import json

import pytest

from pipeline.core.errors import ModelError
from pipeline.models.guard import refused_at_the_door


def _refused(action) -> str:
    with pytest.raises(ModelError) as info, refused_at_the_door("m.keras"):
        action()
    message = str(info.value)
    assert message.startswith("cannot load m.keras: ") and "\n" not in message
    return message


def test_tensorflow_and_keras_errors_are_model_errors(keras, tf):
    L = keras.layers
    dense = _refused(lambda: L.Dense(4)(keras.Input((None,))))  # Keras's builder: ValueError
    assert "(ValueError)" in dense and "Dense" in dense
    reshape = _refused(lambda: tf.reshape(tf.zeros(3), (2,)))  # an op: InvalidArgumentError
    assert "(InvalidArgumentError)" in reshape


def test_memory_overflow_and_non_finite_json_are_model_errors():
    def allocate():
        raise MemoryError("Unable to allocate 128. GiB for an array")

    assert "Unable to allocate 128. GiB" in _refused(allocate)
    assert "(OverflowError)" in _refused(lambda: float(10**400))
    message = _refused(lambda: json.dumps({"epsilon": float("inf")}, allow_nan=False))
    assert "Out of range float values are not JSON compliant" in message


def test_bnpipes_own_errors_and_interrupts_pass_through():
    def bug():
        raise ValueError("a bug in bnpipe")

    with pytest.raises(ValueError, match="a bug in bnpipe"), refused_at_the_door("m.keras"):
        bug()
    with pytest.raises(KeyboardInterrupt), refused_at_the_door("m.keras"):
        raise KeyboardInterrupt
    with pytest.raises(ModelError, match=r"^already one line$"), refused_at_the_door("m.keras"):
        raise ModelError("already one line")
