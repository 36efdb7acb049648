"""The one door a user's model file comes through: checked (a `.keras` zip, no HDF5 or SavedModel,
no device or oversized file), its config refused before anything is deserialized when it holds
what bnpipe cannot take, loaded in safe mode by the Keras that saved it (translated into tf_keras
where QAT needs it), and saved back deterministically. Also what every stage asks of a loaded
model: its input shape and its predictions.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.deadline import LOAD_SECONDS, bounded
from pipeline.core.errors import ModelError
from pipeline.core.tfenv import keras
from pipeline.models.article import CUSTOM_BN_NAME, custom_bn_class
from pipeline.models.names import loadable, user_names


def checked_keras_file(path: str | Path) -> Path:
    """`path` if it is a `.keras` zip bnpipe may load, else ModelError saying why not.

    Legacy HDF5 (`.h5`) and SavedModel directories bypass Keras's safe mode; a device, FIFO or
    oversized file is refused before it is read (safeio)."""
    from pipeline.core.safeio import regular_file

    path = Path(path)
    if path.is_dir():
        raise ModelError(
            f"{path} is a directory (SavedModel?); bnpipe loads only .keras files, "
            "which Keras can load in safe mode"
        )
    regular_file(path, "model file", ModelError)  # a FIFO or a device: refused before reading
    if path.suffix.lower() in (".h5", ".hdf5") or _is_hdf5(path):
        raise ModelError(
            f"{path} is legacy HDF5, which bypasses Keras's safe mode; re-save the "
            "model as .keras (model.save('model.keras'))"
        )
    if not path.name.endswith(".keras"):
        # Both Keras choose their loader by this very test (case-sensitive): any other name goes
        # to the legacy loader, which reads HDF5 found anywhere in the file without safe mode.
        raise ModelError(
            f"{path} does not end in .keras; bnpipe loads only .keras files (Keras's "
            "safe format), so rename it if it is one"
        )
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ModelError(
            f"{path} is not a Keras .keras file (expected a zip archive holding "
            "config.json and model.weights.h5)"
        )
    return path


def saved_with(path: str | Path) -> str:
    """ "keras2" (tf_keras) or "keras3": which Keras wrote the checked `.keras` file."""
    from pipeline.models.configcheck import saved_by

    return saved_by(checked_keras_file(path))


def load_model(path: str | Path):
    """A new, uncompiled tf_keras model from a `.keras` file, whichever Keras saved it.

    Safe: the file is checked (checked_keras_file) and its config.json refused before anything
    is deserialized when it holds a Lambda, a layer bnpipe cannot export or a custom class
    (keras3.check_config). A Keras 3 file is loaded by Keras 3 in safe mode and translated
    (keras3.translate_file, checked on probe inputs); use load_reference for the original.
    """
    from pipeline.models.configcheck import KERAS3
    from pipeline.models.translation import translate_file

    if saved_with(path) == KERAS3:
        return translate_file(path).model2
    config = _check_config(Path(path))
    k = keras()
    custom_bn_class()  # registers bnpipe>CustomBatchNorm for deserialization
    try:
        with loadable(Path(path), config) as (src, names), bounded(LOAD_SECONDS, "Keras's loader"):
            return user_names(k.models.load_model(src, compile=False, safe_mode=True), names)
    except Exception as exc:  # Keras raises many types for a malformed archive
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load {path}: {msg[:300]}") from None


def load_reference(path: str | Path):
    """The model at `path` in the Keras that saved it (a Keras 3 model for a Keras 3 file): the
    reference every accuracy claim is measured against. Safe as load_model."""
    from pipeline.models.configcheck import KERAS3
    from pipeline.models.keras3_file import load_keras3

    if saved_with(path) == KERAS3:
        return load_keras3(path)
    return load_model(path)


def classifier(model, path: str | Path):
    """`model` if it is a classifier the stages after fold can take: one input, and one output of
    one score per class, (batch, classes). ModelError naming what it has otherwise. (Fold itself
    takes any graph: its check compares every output.)"""
    shapes = [tuple(t.shape) for t in model.outputs]
    if len(model.inputs) != 1 or len(shapes) != 1 or len(shapes[0]) != 2:
        raise ModelError(
            f"{path} has {len(model.inputs)} input(s) and output(s) of shape "
            f"{', '.join(map(str, shapes)) or 'none'}; bnpipe takes a classifier with one input "
            "and one output of shape (batch, classes)"
        )
    return model


def _check_config(path: Path) -> dict:
    from pipeline.models.configcheck import CONFIG_MAX_BYTES, check_config, read_config_member

    config = read_config_member(path, "config.json", CONFIG_MAX_BYTES, required=True)
    # Models inside a model are flattened on the way from Keras 3 (keras3.flatten_nested); a
    # tf_keras file keeps them whole, and a model is not a layer export can convert.
    check_config(config, path, allowed=(CUSTOM_BN_NAME,), nested=False)
    return config


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
    parts = [
        np.asarray(model(x[i : i + batch_size], training=False), np.float32)
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(parts)


def classify(model, x, batch_size: int = 1024):
    """The class each row of `x` is given (the argmax of the model's outputs)."""
    return predict(model, x, batch_size).argmax(axis=1)


def _is_hdf5(path: Path) -> bool:
    """True if the file carries an HDF5 signature at any offset HDF5 allows (0, 512, 1024, …),
    which is where the legacy loader would find one even in a file that is also a zip."""
    signature = b"\x89HDF\r\n\x1a\n"
    size = path.stat().st_size
    with open(path, "rb") as f:
        offset = 0
        while offset + len(signature) <= size:
            f.seek(offset)
            if f.read(len(signature)) == signature:
                return True
            offset = 512 if offset == 0 else offset * 2
    return False


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
