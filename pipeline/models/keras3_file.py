"""Keras 3 itself, imported late, and a Keras 3 `.keras` file loaded by it in safe mode, with the
models inside it (a pretrained base called as a layer) flattened into their layers.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.deadline import LOAD_SECONDS, bounded
from pipeline.core.errors import ModelError
from pipeline.models.configcheck import CONFIG_MAX_BYTES, check_config, read_config_member
from pipeline.models.cost import check_cost
from pipeline.models.names import loadable, user_names


@functools.cache
def keras3():
    """Keras 3 (`import keras`), imported after TensorFlow so that TensorFlow starts quietly and
    with tf_keras as its `tf.keras` (see pipeline/__init__.py)."""
    from pipeline.core.tfenv import tf

    tf()
    import keras

    if not keras.__version__.startswith("3."):
        raise ModelError(f"Keras 3 is needed to read this model; `keras` is {keras.__version__}")
    return keras


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def load_keras3(path: str | Path, checked: bool = False):
    """A new, uncompiled Keras 3 model from the `.keras` file at `path`, in safe mode.

    Refuses (ModelError) before deserializing anything: names not ending in `.keras` (Keras 3
    sends those to its legacy HDF5 loader, which has no safe mode), files that are not zips, and
    every layer check_config refuses (Lambda, LSTM, custom classes …).
    """
    path = Path(path)
    if not path.name.endswith(".keras"):
        raise ModelError(f"{path} does not end in .keras; bnpipe loads only .keras files")
    renaming = contextlib.nullcontext((path, {}))  # the door renamed a checked file's names
    if not checked:  # the door (door.ModelFile) has checked this file's config already
        config = read_config_member(path, "config.json", CONFIG_MAX_BYTES, required=True)
        check_config(config, path)
        check_cost(config, path)  # what building and running it would take (cost.py)
        renaming = loadable(path, config)
    keras = keras3()
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras 3 warns about compile state we do not load
            with renaming as (src, names), bounded(LOAD_SECONDS, "Keras 3's loader"):
                return user_names(
                    keras.models.load_model(src, compile=False, safe_mode=True), names
                )
    except Exception as exc:  # Keras raises many types for a malformed archive
        raise ModelError(f"cannot load {path} with Keras 3: {one_line(exc)}") from None


def flatten_nested(model3):
    """`model3` itself when no layer of it is a model; else a new Functional Keras 3 model with
    every layer of the models inside it in their place (a pretrained base called as one layer
    becomes its own layers), each a copy with the same config and weights, called as the
    original calls it. A copy keeps its layer's name unless another layer of the flat model has
    it (a base saved in another session and a head built in this one can both hold a "dense"):
    then the name of the model it came from goes in front ("base_dense")."""
    k = keras3()
    if not any(isinstance(layer, k.Model) for layer in model3.layers):
        return model3
    # name → id of the layer whose copy holds it; the outer model's own layers keep theirs.
    names = {la.name: id(la) for la in model3.layers if not isinstance(la, k.Model)}
    flat = _Flat(k, {}, names)
    inputs = [_input_like(k, t, model3.name, i) for i, t in enumerate(model3.inputs)]
    outputs = flat.call(model3, inputs[0] if len(inputs) == 1 else inputs, "")
    try:
        return k.Model(inputs[0] if len(inputs) == 1 else inputs, outputs, name=model3.name)
    except ValueError as exc:  # a name clash the renaming did not foresee
        raise ModelError(f"model {model3.name!r} cannot be flattened: {one_line(exc)}") from None


def _input_like(k, tensor, model_name: str, i: int):
    name = tensor.name if not tensor.name.startswith("keras_tensor") else f"{model_name}_input_{i}"
    return k.Input(batch_shape=tuple(tensor.shape), dtype=tensor.dtype, name=name)


@dataclass
class _Flat:
    """flatten_nested's state: one copy per layer (a layer called twice stays one layer with two
    calls) and the names taken so far."""

    k: Any
    copies: dict
    names: dict

    def call(self, model, inputs, prefix: str):
        """`model` called on `inputs` layer by layer, models inside it likewise."""

        def operation(op):
            if isinstance(op, self.k.Model):
                return lambda x, **_: self.call(op, x, f"{prefix}{op.name}_")
            return self.copy_of(op, prefix)

        if isinstance(model, self.k.Sequential):
            x = inputs
            for layer in model.layers:
                x = operation(layer)(x)
            return x
        # Keras 3's own walk through a Functional graph (what its call() does), each operation
        # replaced by `operation(op)`. It is internal to Keras: a version without it is named.
        walk = getattr(model, "_run_through_graph", None)
        if walk is None:
            raise ModelError(
                f"model {model.name!r} cannot be flattened with Keras "
                f"{getattr(self.k, '__version__', '?')} (it has no Functional._run_through_graph); "
                "save your model without models inside it"
            )
        return walk(inputs, operation_fn=operation)

    def copy_of(self, layer, prefix: str):
        """A layer of the same class, config and (once built by its first call) weights."""
        if id(layer) not in self.copies:
            name = layer.name
            if self.names.setdefault(name, id(layer)) != id(layer):
                name = f"{prefix}{layer.name}"
                while self.names.setdefault(name, id(layer)) != id(layer):
                    name += "_"
            fresh = type(layer).from_config({**layer.get_config(), "name": name})
            weights = layer.get_weights()

            def call(*args, **kwargs):
                out = fresh(*args, **kwargs)  # builds it: its weights exist from here
                if weights:
                    fresh.set_weights(weights)
                return out

            self.copies[id(layer)] = call
        return self.copies[id(layer)]
