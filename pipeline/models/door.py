"""The one door a user's model file comes through: checked (a `.keras` zip, or an `.h5` taken
through h5file's safe path; no other HDF5, SavedModel, device or oversized file), its config
refused before anything is deserialized when it holds what bnpipe cannot take, loaded in safe
mode by the Keras that saved it (translated into tf_keras where QAT needs it), and saved back
deterministically. Also what every stage asks of a loaded model: its input shape and its
predictions.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.deadline import LOAD_SECONDS, bounded
from pipeline.core.errors import ModelError
from pipeline.core.tfenv import keras
from pipeline.models.article import CUSTOM_BN_NAME, custom_bn_class
from pipeline.models.cost import batch_that_fits, check_cost
from pipeline.models.names import NAMES_ATTR, loadable, user_names


def one_output(model, path: str | Path):
    """`model` if the stages after fold can take it: one input and one output, of any shape (a
    classifier's scores, a regressor's targets, an autoencoder's reconstruction: its task is
    analysis/tasks.py's). ModelError naming what it has otherwise."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(
            f"{path} has {len(model.inputs)} input(s) and {len(model.outputs)} output(s) "
            f"({', '.join(str(tuple(t.shape)) for t in model.outputs) or 'none'}); the stages "
            "after fold take one input and one output"
        )
    return model


def input_shape(model) -> tuple[int, ...]:
    """The model's one input shape without the batch axis, e.g. (784,) or (28, 28, 1)."""
    if len(model.inputs) != 1 or any(d is None for d in model.inputs[0].shape[1:]):
        raise ModelError(
            "bnpipe takes models with one input of fixed shape; this model takes "
            + ", ".join(str(tuple(t.shape)) for t in model.inputs)
        )
    return tuple(int(d) for d in model.inputs[0].shape[1:])


def predict(model, x, batch_size: int = 1024):
    """The model's outputs for `x` (NumPy, float32), `batch_size` rows per call in inference
    mode. Plain calls instead of `model.predict`: no tf.data pipeline is built for data that is
    already in memory (and none of the native notice each pipeline prints)."""
    import numpy as np

    if len(x) == 0:
        return np.zeros((0, *model.outputs[0].shape[1:]), np.float32)
    batch_size = batch_that_fits(model, batch_size)  # within the activation budget (cost.py)
    parts = [
        np.asarray(model(x[i : i + batch_size], training=False), np.float32)
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(parts)


def classify(model, x, batch_size: int = 1024):
    """The class each row of `x` is given (the argmax of the model's outputs)."""
    return predict(model, x, batch_size).argmax(axis=1)


# The zip format's earliest date, which Keras already gives metadata.json and config.json.
KERAS_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def save_model(model, dest: str | Path) -> Path:
    """Save atomically in the .keras format (a temporary .keras beside dest, then rename).

    The same model gives the same bytes: the time of saving is taken out of the archive (see
    _without_save_time), so equal weights mean an equal sha256 in train.json and the manifest.
    """
    from pipeline.store.artifacts import atomic_path

    with atomic_path(dest, suffix=".keras") as tmp:
        model.save(tmp, overwrite=True)
        _without_save_time(tmp)
    return Path(dest)


def _without_save_time(path: Path) -> None:
    """Rewrite a .keras archive in place without the two clocks Keras puts into it.

    tf_keras stamps the time of saving into metadata.json ("date_saved") and, because it adds
    model.weights.h5 with ZipFile.writestr(name, …), into that entry's zip date; everything else
    in the archive (config.json, the HDF5 weights) is a function of the model alone. The time a
    model was saved is in the stage's JSON record ("created") and the manifest instead. Each
    entry keeps its name, order, compression and attributes; Keras's loader reads neither
    metadata.json nor the entry dates.
    """
    import json
    import zipfile

    with zipfile.ZipFile(path) as zf:
        entries = [(info, zf.read(info)) for info in zf.infolist()]
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in entries:
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta.pop("date_saved", None)
                data = json.dumps(meta).encode("utf-8")
            fixed = zipfile.ZipInfo(info.filename, date_time=KERAS_ZIP_DATE)
            fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
            zf.writestr(fixed, data)


def saved_with(path: str | Path) -> str:
    """ "keras2" (tf_keras) or "keras3": which Keras wrote the `.keras` file (ModelFile.kind)."""
    return ModelFile.open(path).kind


def load_model(path: str | Path):
    """A new, uncompiled tf_keras model from a `.keras` file, whichever Keras saved it: a Keras 3
    file translated and proved on probe inputs (ModelFile.tf_keras). A stage that asks more of
    one file opens it once as a ModelFile instead."""
    return ModelFile.open(path).tf_keras()


def load_reference(path: str | Path):
    """The model at `path` in the Keras that saved it (a Keras 3 model for a Keras 3 file): the
    reference every accuracy claim is measured against (ModelFile.reference)."""
    return ModelFile.open(path).reference()


def _check_config(config: dict, path: Path, kind: str) -> None:
    from pipeline.models.configcheck import KERAS3, check_config

    if kind == KERAS3:
        check_config(config, path)
    else:
        # Models inside a model are flattened on the way from Keras 3 (keras3_file.flatten_nested);
        # a tf_keras file keeps them whole, and a model is not a layer export can convert.
        check_config(config, path, allowed=(CUSTOM_BN_NAME,), nested=False)
    check_cost(config, path)  # what building and running it would take (cost.py)


# --- the one door: a model file opened, checked and fingerprinted once ---------------------------

# The largest model file bnpipe reads: 1 GiB is hundreds of times the small edge models it takes
# (the MNIST CNN is 1.6 MB as .keras) and the same bound the runtimes put on a .tflite file.
MODEL_MAX_BYTES = 1 << 30


@dataclass(eq=False)
class ModelFile:
    """A user's (or bnpipe's own) `.keras` file, read once: its bytes are checked and
    fingerprinted, and every model made from it later is loaded from those bytes (through a
    private temporary copy that lives only while Keras reads it). So the sha256 a record keeps is
    the one of the bytes loaded, and the user's file is opened once however many stages' worth
    of questions are asked of it.

    `kind` is which Keras saved it (configcheck.KERAS3 / KERAS2), `config` its config.json, checked
    (check_config) before anything is deserialized. The models are made lazily, each once:
    `reference()` in the Keras that saved it (the reference of every accuracy claim),
    `tf_keras()` the model fold and QAT work on (for a Keras 3 file its translation, proved by
    `translation()` on the inputs given, or on probe inputs).
    """

    path: Path
    sha256: str
    kind: str
    config: dict
    size: int
    _data: bytes = field(repr=False)
    _made: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> ModelFile:
        """Read, check and fingerprint the file at `path` (one open of it); ModelError (one line)
        for anything bnpipe may not load, before any Keras sees it."""
        import hashlib

        from pipeline.core.safeio import read_bytes
        from pipeline.models.configcheck import (
            CONFIG_MAX_BYTES,
            METADATA_MAX_BYTES,
            kind_of,
            read_config_member,
        )
        from pipeline.models.h5file import is_h5_name, read_h5

        path = _checked_name(Path(path))
        data = read_bytes(path, "model file", ModelError, MODEL_MAX_BYTES)
        sha256 = hashlib.sha256(data).hexdigest()
        if is_h5_name(path):  # the safe HDF5 path: config checked, model built, weights loaded
            kind, config = read_h5(path, data)
            return cls(
                path=path, sha256=sha256, kind=kind, config=config, size=len(data), _data=data
            )
        _refuse_hdf5(path, data)  # before the name: HDF5 under any name is named as such
        _keras_name(path)
        meta = read_config_member(path, "metadata.json", METADATA_MAX_BYTES, False, data)
        config = read_config_member(path, "config.json", CONFIG_MAX_BYTES, True, data)
        kind = kind_of(path, meta, config)
        _check_config(config, path, kind)
        return cls(path=path, sha256=sha256, kind=kind, config=config, size=len(data), _data=data)

    def bytes(self) -> bytes:
        """The bytes that were read, checked and fingerprinted."""
        return self._data

    def reference(self):
        """The model in the Keras that saved the file, loaded in safe mode (made once)."""
        if "reference" not in self._made:
            from pipeline.models.configcheck import KERAS3
            from pipeline.models.guard import refused_at_the_door
            from pipeline.models.h5file import is_h5_name, load_h5
            from pipeline.models.keras3_file import load_keras3

            if is_h5_name(self.path):
                with refused_at_the_door(self.path):
                    model = load_h5(self.path, self.kind, self.config, self._data)
                self._made["reference"] = model
                return model
            # Names TensorFlow refuses as scopes are safe ones in the copy (names.py).
            private = _private_copy(self.path.name, self._data)
            # refused_at_the_door: what the libraries raise on a bad file is a ModelError.
            refusing = refused_at_the_door(self.path)
            with refusing, private as copy, loadable(copy, self.config) as (src, names):
                if self.kind == KERAS3:
                    model = load_keras3(src, checked=True)
                else:
                    model = _load_tf_keras(src, self.path)
            self._made["reference"] = user_names(model, names)
        return self._made["reference"]

    def tf_keras(self, x=None):
        """The tf_keras model (the reference itself for a tf_keras file; for a Keras 3 file its
        translation, proved on `x` or probe inputs the first time it is asked for)."""
        from pipeline.models.configcheck import KERAS3

        if self.kind != KERAS3:
            return self.reference()
        return self.translation(x).model2

    def translation(self, x=None):
        """translation.Translation of a Keras 3 file: translated and proved once (on `x`, or on
        probe inputs); later calls return the same, whatever `x` they pass."""
        if "translation" not in self._made:
            import time

            from pipeline.models.guard import refused_at_the_door
            from pipeline.models.keras3 import to_tf_keras
            from pipeline.models.translation import (
                PROBE_SAMPLES,
                Translation,
                probe_inputs,
                translation_check,
            )

            t0 = time.perf_counter()
            model3 = self.reference()
            with refused_at_the_door(self.path, "translate"):
                model2 = user_names(to_tf_keras(model3), getattr(model3, NAMES_ATTR, {}))
                n = batch_that_fits(model3, PROBE_SAMPLES)  # within the activation budget
                probes = probe_inputs(model3, n) if x is None else x
                check = translation_check(model3, model2, probes)
            self._made["translation"] = Translation(
                model3=model3, model2=model2, check=check, seconds=time.perf_counter() - t0
            )
        return self._made["translation"]


def _checked_name(path: Path) -> Path:
    """`path` unless its kind or suffix already says bnpipe may not load it (a stat, no read):
    a directory (SavedModel), a device, FIFO or oversized file (safeio)."""
    from pipeline.core.safeio import regular_file

    if path.is_dir():
        raise ModelError(
            f"{path} is a directory (SavedModel?); bnpipe loads only .keras files, "
            "which Keras can load in safe mode"
        )
    regular_file(path, "model file", ModelError)
    return path


def _keras_name(path: Path) -> None:
    if not path.name.endswith(".keras"):
        # Both Keras choose their loader by this very test (case-sensitive): any other name goes
        # to the legacy loader, which reads HDF5 found anywhere in the file without safe mode.
        raise ModelError(
            f"{path} does not end in .keras; bnpipe loads only .keras files (Keras's "
            "safe format), so rename it if it is one"
        )


def _refuse_hdf5(path: Path, data: bytes) -> None:
    """An HDF5 signature at any offset HDF5 allows (0, 512, 1024, …) is where the legacy loader
    would find one even in a file that is also a zip: refused."""
    signature, offset = b"\x89HDF\r\n\x1a\n", 0
    while offset + len(signature) <= len(data):
        if data[offset : offset + len(signature)] == signature:
            raise ModelError(
                f"{path} is legacy HDF5, which bypasses Keras's safe mode; re-save the "
                "model as .keras (model.save('model.keras'))"
            )
        offset = 512 if offset == 0 else offset * 2


@contextlib.contextmanager
def _private_copy(name: str, data: bytes):
    """The bytes in a new file only this process knows (Keras loads from a path), removed when
    the block ends."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bnpipe-model-") as folder:
        copy = Path(folder) / (name if name.endswith(".keras") else "model.keras")
        copy.write_bytes(data)
        yield copy


def _load_tf_keras(copy: Path, shown: Path):
    k = keras()
    custom_bn_class()  # registers bnpipe>CustomBatchNorm for deserialization
    try:
        with bounded(LOAD_SECONDS, "Keras's loader"):  # a loader that loops is stopped
            return k.models.load_model(copy, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a malformed archive
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load {shown}: {msg[:300]}") from None
