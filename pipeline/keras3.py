"""Keras 3 models in: tell which Keras saved a `.keras` file, and read a Keras 3 file safely,
refusing by name, before anything is deserialized, what bnpipe cannot translate into tf_keras
(Keras 2, which tensorflow-model-optimization needs).

Nothing here imports TensorFlow or Keras at import time (`bnpipe --help` must stay fast); Keras 3
is imported inside the functions that need it, after TensorFlow (see tfenv).
"""

from __future__ import annotations

import functools
import json
import zipfile
from pathlib import Path

from .errors import ModelError

# The layer classes translated in both directions. They cover the MLPs bnpipe trains and the
# small CNNs that come next; everything else (recurrent, embedding, attention, Lambda, custom
# classes, nested models) is refused by name before anything is deserialized.
SUPPORTED_LAYERS = (
    "Activation",
    "Add",
    "AveragePooling1D",
    "AveragePooling2D",
    "BatchNormalization",
    "Concatenate",
    "Conv1D",
    "Conv2D",
    "Dense",
    "DepthwiseConv2D",
    "Dropout",
    "Flatten",
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "InputLayer",
    "LeakyReLU",
    "MaxPooling1D",
    "MaxPooling2D",
    "ReLU",
    "Reshape",
    "SeparableConv2D",
    "Softmax",
    "ZeroPadding2D",
)

# config.json of a model bnpipe can translate is a few kilobytes per layer; 32 MiB is thousands
# of layers. A larger (or lying) entry is refused before it is read into memory.
CONFIG_MAX_BYTES = 32 << 20
METADATA_MAX_BYTES = 1 << 20

KERAS3, KERAS2 = "keras3", "keras2"


# --- which Keras saved a file, and reading it safely ---------------------------------------------


def saved_by(path: str | Path) -> str:
    """ "keras3" or "keras2": which Keras wrote the `.keras` zip at `path`. Reads only the zip's
    metadata.json and config.json (no TensorFlow import).

    The evidence: metadata.json's `keras_version` major, and config.json's own form (an InputLayer
    with `batch_shape` vs `batch_input_shape`; Functional nodes as `args`/`kwargs` dicts vs lists).
    A file with no evidence, or whose metadata and config disagree, is a ModelError.
    """
    path = Path(path)
    meta = _read_json(path, "metadata.json", METADATA_MAX_BYTES, required=False)
    config = _read_json(path, "config.json", CONFIG_MAX_BYTES, required=True)
    votes = {}
    version = meta.get("keras_version") if isinstance(meta, dict) else None
    if isinstance(version, str) and version.split(".")[0] in ("2", "3"):
        votes["metadata.json (keras_version " + version + ")"] = (
            KERAS3 if version.startswith("3") else KERAS2
        )
    form = _config_form(config)
    if form:
        votes["config.json's form"] = form
    kinds = set(votes.values())
    if not kinds:
        raise ModelError(
            f"{path}: cannot tell which Keras saved it (no keras_version in metadata.json and "
            "no InputLayer or Functional nodes in config.json)"
        )
    if len(kinds) > 1:
        said = ", ".join(f"{k} says {v}" for k, v in votes.items())
        raise ModelError(f"{path} is inconsistent: {said}")
    return kinds.pop()


def _config_form(config) -> str | None:
    """KERAS3 / KERAS2 from the shape of config.json's layer entries, None if it shows neither."""
    layers = _layer_entries(config)
    for entry in layers:
        cfg = entry.get("config") if isinstance(entry, dict) else None
        if isinstance(cfg, dict) and entry.get("class_name") == "InputLayer":
            if "batch_shape" in cfg:
                return KERAS3
            if "batch_input_shape" in cfg:
                return KERAS2
    for entry in layers:
        nodes = entry.get("inbound_nodes") if isinstance(entry, dict) else None
        if isinstance(nodes, list) and nodes:
            return KERAS3 if isinstance(nodes[0], dict) else KERAS2
    return None


def _layer_entries(config) -> list:
    inner = config.get("config") if isinstance(config, dict) else None
    layers = inner.get("layers") if isinstance(inner, dict) else None
    return [e for e in layers if isinstance(e, dict)] if isinstance(layers, list) else []


def _read_json(path: Path, member: str, limit: int, required: bool):
    """The JSON in zip member `member`, read in at most `limit` bytes; {} if absent and optional."""
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist or is not a file")
    if not zipfile.is_zipfile(path):
        raise ModelError(
            f"{path} is not a Keras .keras file (expected a zip archive holding config.json and "
            "model.weights.h5)"
        )
    try:
        with zipfile.ZipFile(path) as zf:
            try:
                info = zf.getinfo(member)
            except KeyError:
                if required:
                    raise ModelError(
                        f"{path} has no {member}; it is not a Keras .keras file"
                    ) from None
                return {}
            if info.file_size > limit:
                raise ModelError(f"{path}: {member} is {info.file_size} bytes (limit {limit})")
            with zf.open(info) as f:
                data = f.read(limit + 1)  # the header's size may lie: never read past the limit
        if len(data) > limit:
            raise ModelError(f"{path}: {member} is larger than its limit of {limit} bytes")
        return json.loads(data)
    except ModelError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, RecursionError, NotImplementedError) as exc:
        what = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: cannot read {member} ({what})") from None


def _is_keras_module(module) -> bool:
    return isinstance(module, str) and (module == "keras" or module.startswith("keras."))


def _unsupported(path: Path | None, items: list[str]) -> ModelError:
    """One line naming every unsupported layer, e.g. "layer 'lstm_1' (LSTM) cannot be exported"."""
    where = f"{path}: " if path is not None else ""
    noun = "layer" if len(items) == 1 else "layers"
    return ModelError(
        f"{where}{noun} {', '.join(items)} cannot be exported; "
        f"supported: {', '.join(SUPPORTED_LAYERS)}"
    )


def check_config(config, path: Path | None = None) -> None:
    """Refuse (ModelError, one line) a Keras 3 config.json holding anything bnpipe cannot
    translate: a model other than Sequential/Functional, a layer class not in SUPPORTED_LAYERS,
    a class from outside Keras (custom or registered), or a custom object inside a layer's config
    (initializer, activation function …). Reads the dict only; deserializes nothing."""
    cls = config.get("class_name") if isinstance(config, dict) else None
    module = config.get("module") if isinstance(config, dict) else None
    if cls not in ("Sequential", "Functional") or not _is_keras_module(module):
        where = f"{path} holds" if path is not None else "this is"
        raise ModelError(
            f"{where} a {str(cls)[:80]!r} model (module {str(module)[:80]!r}); bnpipe translates "
            "Keras Sequential and Functional models only"
        )
    unsupported, custom = [], []
    for entry in _layer_entries(config):
        cfg = entry.get("config")
        name = cfg.get("name", entry.get("name")) if isinstance(cfg, dict) else entry.get("name")
        label = f"{str(name)[:80]!r}"
        cls, module = entry.get("class_name"), entry.get("module")
        if not _is_keras_module(module) or entry.get("registered_name") is not None:
            unsupported.append(f"{label} ({_custom_label(cls, module, entry)})")
        elif cls not in SUPPORTED_LAYERS:
            unsupported.append(f"{label} ({str(cls)[:80]})")
        else:
            custom += [f"layer {label} ({cls}) holds {obj}" for obj in _custom_objects(cfg)]
    if unsupported:
        raise _unsupported(path, unsupported)
    if custom:
        where = f"{path}: " if path is not None else ""
        raise ModelError(
            f"{where}{'; '.join(custom)}; bnpipe loads only Keras's own objects (no custom code)"
        )


def _custom_label(cls, module, entry: dict) -> str:
    """e.g. "thirdparty>Scale, a custom class" or "Dense, a custom class from module 'mine'"."""
    registered = entry.get("registered_name")
    label = str(registered if registered is not None else cls)[:80] + ", a custom class"
    return label + (f" from module {module[:80]!r}" if isinstance(module, str) else "")


def _custom_objects(cfg) -> list[str]:
    """Every serialized object inside a layer config that is not one of Keras's own."""
    found, stack = [], [cfg]
    while stack:  # iterative: a crafted config may nest deeper than Python's recursion limit
        node = stack.pop()
        if isinstance(node, dict):
            cls = node.get("class_name")
            if cls is not None and cls != "__tuple__":
                module, registered = node.get("module"), node.get("registered_name")
                if not _is_keras_module(module) or registered is not None:
                    if cls == "function":  # a Python function (an activation), named in config
                        found.append(f"the custom function {str(node.get('config'))[:80]!r}")
                    else:
                        found.append(f"the custom object {_custom_label(cls, module, node)}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


@functools.cache
def keras3():
    """Keras 3 (`import keras`), imported after TensorFlow so that TensorFlow starts quietly and
    with tf_keras as its `tf.keras` (see pipeline/__init__.py)."""
    from .tfenv import tf

    tf()
    import keras

    if not keras.__version__.startswith("3."):
        raise ModelError(f"Keras 3 is needed to read this model; `keras` is {keras.__version__}")
    return keras


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def load_keras3(path: str | Path):
    """A new, uncompiled Keras 3 model from the `.keras` file at `path`, in safe mode.

    Refuses (ModelError) before deserializing anything: names not ending in `.keras` (Keras 3
    sends those to its legacy HDF5 loader, which has no safe mode), files that are not zips, and
    every layer check_config refuses (Lambda, LSTM, custom classes …).
    """
    path = Path(path)
    if not path.name.endswith(".keras"):
        raise ModelError(f"{path} does not end in .keras; bnpipe loads only .keras files")
    config = _read_json(path, "config.json", CONFIG_MAX_BYTES, required=True)
    check_config(config, path)
    keras = keras3()
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras 3 warns about compile state we do not load
            return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a malformed archive
        raise ModelError(f"cannot load {path} with Keras 3: {_one_line(exc)}") from None
