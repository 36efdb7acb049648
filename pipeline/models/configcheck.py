"""A `.keras` file's config, read safely and checked, for files of either Keras: which Keras saved
it, and whether every layer is one bnpipe can take — before anything is deserialized.

Nothing here imports TensorFlow or Keras: the checks read config.json as JSON.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from pipeline.core.errors import ModelError
from pipeline.core.safeio import zip_json

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
NESTED_MODELS = ("Sequential", "Functional")  # a model used as a layer of another
MAX_NESTING = 8  # models within models; deeper is refused as an unsupported layer
# Declared sizes bnpipe's small classifiers stay far below; a config beyond them would make Keras
# allocate gigabytes for a file of kilobytes before its weights are even read (4,000,000 Dense
# units took 3.8 GB). Checked in config.json before anything is built.
MAX_WIDTH = 1 << 16  # units, filters
MAX_DIM = 1 << 20  # any dimension of a declared shape (as data.MAX_FEATURES)
MAX_LAYER_WEIGHTS = 1 << 26  # inputs × units (× kernel taps): 256 MiB of float32
MAX_KERNEL_AREA = 1 << 12  # taps of one convolution kernel (64 × 64)
METADATA_MAX_BYTES = 1 << 20

KERAS3, KERAS2 = "keras3", "keras2"


# --- which Keras saved a file, and reading it safely ---------------------------------------------


def saved_by(path: str | Path, data: bytes | None = None) -> str:
    """ "keras3" or "keras2": which Keras wrote the `.keras` zip at `path`. Reads only the zip's
    metadata.json and config.json (no TensorFlow import); from `data` when the bytes are read.

    The evidence: metadata.json's `keras_version` major, and config.json's own form (an InputLayer
    with `batch_shape` vs `batch_input_shape`; Functional nodes as `args`/`kwargs` dicts vs lists).
    A file with no evidence, or whose metadata and config disagree, is a ModelError.
    """
    path = Path(path)
    meta = read_config_member(path, "metadata.json", METADATA_MAX_BYTES, False, data)
    config = read_config_member(path, "config.json", CONFIG_MAX_BYTES, True, data)
    return kind_of(path, meta, config)


def kind_of(path: Path, meta, config) -> str:
    """saved_by's verdict from metadata.json's and config.json's values."""
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


def read_config_member(
    path: Path, member: str, limit: int, required: bool, data: bytes | None = None
):
    """The JSON in zip member `member`, read in at most `limit` bytes and nested at most
    safeio.MAX_JSON_DEPTH levels; {} if absent and optional. Either Keras's files
    (metadata.json, config.json); ModelError for anything malformed. `data`: the file's bytes,
    already read (the file is not opened again)."""
    if data is None and not path.is_file():
        raise ModelError(f"model file {path} does not exist or is not a file")
    if not zipfile.is_zipfile(io.BytesIO(data) if data is not None else path):
        raise ModelError(
            f"{path} is not a Keras .keras file (expected a zip archive holding config.json and "
            "model.weights.h5)"
        )
    value = zip_json(path, member, limit, ModelError, data)
    if value is None:
        if required:
            raise ModelError(f"{path} has no {member}; it is not a Keras .keras file")
        return {}
    return value


def _is_keras_module(module) -> bool:
    """Keras's own classes: module keras… (Keras 3, and tf_keras's layers) or tf_keras…."""
    return isinstance(module, str) and (
        module in ("keras", "tf_keras") or module.startswith(("keras.", "tf_keras."))
    )


def unsupported_layers(path: Path | None, items: list[str]) -> ModelError:
    """One line naming every unsupported layer, e.g. "layer 'lstm_1' (LSTM) cannot be exported"."""
    where = f"{path}: " if path is not None else ""
    noun = "layer" if len(items) == 1 else "layers"
    return ModelError(
        f"{where}{noun} {', '.join(items)} cannot be exported; "
        f"supported: {', '.join(SUPPORTED_LAYERS)}"
    )


def check_config(
    config, path: Path | None = None, allowed: tuple[str, ...] = (), nested: bool = True
) -> None:
    """Refuse (ModelError, one line) a config.json (either Keras) holding anything bnpipe cannot
    take: a Lambda (Python code), a model other than Sequential/Functional, a layer class not in
    SUPPORTED_LAYERS, a class from outside Keras (custom or registered; `allowed` lists the
    registered names that are bnpipe's own), or a custom object inside a layer's config
    (initializer, activation function …). `nested`: a Keras model used as a layer is checked
    layer by layer (False: it is itself an unsupported layer). Reads the dict only; deserializes
    nothing."""
    _refuse_lambda(config, path)
    cls = config.get("class_name") if isinstance(config, dict) else None
    module = config.get("module") if isinstance(config, dict) else None
    if cls not in ("Sequential", "Functional") or not _is_keras_module(module):
        where = f"{path} holds" if path is not None else "this is"
        raise ModelError(
            f"{where} a {str(cls)[:80]!r} model (module {str(module)[:80]!r}); bnpipe translates "
            "Keras Sequential and Functional models only"
        )
    unsupported, custom = [], []
    entries = _nested_entries(config) if nested else _layer_entries(config)
    for entry in entries:
        cfg = entry.get("config")
        name = cfg.get("name", entry.get("name")) if isinstance(cfg, dict) else entry.get("name")
        label = f"{str(name)[:80]!r}"
        cls, module = entry.get("class_name"), entry.get("module")
        registered = entry.get("registered_name")
        if registered is not None and registered in allowed:
            continue
        if not _is_keras_module(module) or registered is not None:
            unsupported.append(f"{label} ({_custom_label(cls, module, entry)})")
        elif cls not in SUPPORTED_LAYERS:
            unsupported.append(f"{label} ({str(cls)[:80]})")
        else:
            custom += [f"layer {label} ({cls}) holds {obj}" for obj in _custom_objects(cfg)]
    if unsupported:
        raise unsupported_layers(path, unsupported)
    oversized = [why for entry in entries for why in _oversized(entry)]
    if oversized:
        where = f"{path}: " if path is not None else ""
        raise ModelError(f"{where}{oversized[0]}; bnpipe takes small classifiers")
    if not [e for e in entries if e.get("class_name") != "InputLayer"]:
        where = f"{path} holds" if path is not None else "this is"
        raise ModelError(f"{where} a model without layers (an input alone); nothing to fold")
    if custom:
        where = f"{path}: " if path is not None else ""
        raise ModelError(
            f"{where}{'; '.join(custom)}; bnpipe loads only Keras's own objects (no custom code)"
        )


def _nested_entries(config, depth: int = 0) -> list:
    """The layer entries of a model config, those of a Keras Sequential or Functional model used
    as a layer (a pretrained base inside a classifier) in its place, at any depth."""
    entries = []
    for entry in _layer_entries(config):
        nested = entry.get("class_name") in NESTED_MODELS and _is_keras_module(entry.get("module"))
        if nested and depth < MAX_NESTING:
            entries += _nested_entries(entry, depth + 1)
        else:
            entries.append(entry)
    return entries


def _oversized(entry: dict) -> list[str]:
    """Why one layer entry declares more than MAX_WIDTH / MAX_DIM / MAX_LAYER_WEIGHTS allow."""
    cfg = entry.get("config") if isinstance(entry.get("config"), dict) else {}
    build = entry.get("build_config") if isinstance(entry.get("build_config"), dict) else {}
    label = f"layer {str(cfg.get('name', entry.get('name')))[:80]!r}"
    found = []
    for key in ("units", "filters"):
        value = cfg.get(key)
        if isinstance(value, int) and value > MAX_WIDTH:
            found.append(f"{label} declares {key} = {value:,} (at most {MAX_WIDTH:,})")
    shapes = [cfg.get(k) for k in ("batch_shape", "batch_input_shape", "target_shape")]
    shapes.append(build.get("input_shape"))
    dims = [d for s in shapes if isinstance(s, list) for d in s if isinstance(d, int)]
    if any(d > MAX_DIM for d in dims):
        found.append(
            f"{label} declares a shape with {max(dims):,} in one axis (at most {MAX_DIM:,})"
        )
    kernel = cfg.get("kernel_size")
    area = 1
    for side in kernel if isinstance(kernel, list) else [kernel] if kernel is not None else []:
        area *= side if isinstance(side, int) and side > 0 else 1
    if area > MAX_KERNEL_AREA:
        found.append(f"{label} declares a kernel of {area:,} taps (at most {MAX_KERNEL_AREA:,})")
    width, source = cfg.get("units", cfg.get("filters")), build.get("input_shape")
    if isinstance(width, int) and isinstance(source, list) and source:
        inputs = source[-1]  # features, or input channels (channels last)
        if isinstance(inputs, int) and inputs * width * area > MAX_LAYER_WEIGHTS:
            found.append(
                f"{label} declares {inputs:,} inputs × {width:,} outputs × {area:,} taps "
                f"(at most {MAX_LAYER_WEIGHTS:,} weights a layer)"
            )
    return found


def _refuse_lambda(config, path: Path | None) -> None:
    """Lambda layers carry Python bytecode: named and refused, wherever in the config they sit."""
    names, stack = [], [config]
    while stack:  # iterative: a crafted config may nest deeper than Python's recursion limit
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda":
                cfg = node.get("config")
                names.append(str(cfg.get("name", "?") if isinstance(cfg, dict) else "?")[:80])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    if names:
        where = f"{path} holds" if path is not None else "the model holds"
        raise ModelError(
            f"{where} Lambda layer(s) {', '.join(sorted(names))}, which carry Python code; "
            "bnpipe refuses them (replace them with built-in layers)"
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
