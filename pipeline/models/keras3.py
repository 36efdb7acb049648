"""Keras 3 models in and out: read a Keras 3 `.keras` file safely, translate it into tf_keras
(Keras 2, which tensorflow-model-optimization needs) with its trained weights, prove the
translation numerically, and translate a (folded) tf_keras model back into a Keras 3 file.

Approach. A Keras 3 file is loaded by Keras 3 itself, in safe mode, after its config.json has been
checked for layer classes bnpipe cannot translate (so nothing unsupported is ever deserialized).
The translation then reads the loaded model's `get_config()`, the public serialized form of its
graph (the form `.keras` files hold), in either direction:
- the graph (Sequential layer order, or Functional nodes: Keras 3's `args`/`kwargs` with
  `__keras_tensor__` histories, tf_keras's `[layer, node, tensor, kwargs]` lists) is parsed into
  one neutral form and rebuilt by calling the target Keras's layers on its own tensors, so
  Sequential stays Sequential, Functional stays Functional, shared layers stay shared and every
  layer keeps its name;
- each layer is made by the target Keras's own `from_config` from its translated config: every
  option is carried over, renamed (LeakyReLU `negative_slope` ↔ `alpha`) or, when the target has
  no equivalent and the value is not the neutral one, refused by name; nothing is dropped silently;
- weights are copied from the layer objects by variable name (not by position), as the same
  float32 arrays, so the bits are identical.
Reading the file's config.json and its weights directly was the alternative: it would mean
parsing Keras 3's HDF5 weight layout ourselves, and trusting a config that no Keras has validated.
Walking private node objects (`_inbound_nodes`) would tie the code to internals that differ between
the two Keras and between their releases.

Nothing here imports TensorFlow or Keras at import time (`bnpipe --help` must stay fast); Keras 3
is imported inside the functions that need it, after TensorFlow (see tfenv).
"""

from __future__ import annotations

import functools
import inspect
import json
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

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

# Activation names both Keras compute with the same formula (measured equal to 0.0 on [-8, 8]).
# Left out on purpose: hard_sigmoid (Keras 3: relu6(x + 3)/6, tf_keras: clip(0.2·x + 0.5)),
# relu6, leaky_relu, log_softmax, hard_silu … (Keras 3 only; use the layers ReLU(max_value=6),
# LeakyReLU, Softmax instead). Keras 3 spells swish "silu"; tf_keras knows only "swish".
ACTIVATIONS = {
    "linear": "linear",
    "relu": "relu",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "softmax": "softmax",
    "softplus": "softplus",
    "softsign": "softsign",
    "elu": "elu",
    "selu": "selu",
    "gelu": "gelu",
    "exponential": "exponential",
    "mish": "mish",
    "swish": "swish",
    "silu": "swish",
}

# The translation must compute what the original computes up to float32 round-off. Both Keras run
# the same TensorFlow kernels for Dense and the convolutions (often bit for bit), but order some
# arithmetic differently: BatchNormalization is (x − μ)·γ/√(σ² + ε) + β in one and x·s + (β − μ·s)
# (or the fused kernel) in the other, a few ulp (2⁻²⁴ ≈ 6e-8 of the value) per BN, which later
# layers can amplify by their gain. 1e-5 of the largest magnitude (≈ 170 ulp) leaves that room:
# the test models measure 0 (MLPs, 1-D: the same ops in the same order) to 5.5e-7 (the CNN, whose
# BNs tf_keras runs with the fused kernel). A real mistake is larger: a 1 % error in one of 16
# BN channels' variance measures 2.7e-4 at that BN and 9.5e-5 at the output (tests/test_keras3.py).
TRANSLATION_RTOL = 1e-5

# Random probe inputs when the caller has no data: uniform in [0, 1), the range bnpipe scales every
# data set to; 256 samples exercise every unit with varied values in a few milliseconds.
PROBE_SAMPLES = 256

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

# The zip format's earliest date, which both Keras already give metadata.json and config.json.
KERAS_ZIP_DATE = (1980, 1, 1, 0, 0, 0)

# Options one Keras has and the other lacks, and the value meaning "not used": such a key is left
# out when it holds that value (or None) and refused otherwise.
_NEUTRAL = {
    "renorm": False,  # Keras 3 BN; renorm has extra weights and is refused when on
    "synchronized": False,  # Keras 3 BN (cross-replica statistics, training only)
    "groups": 1,  # tf_keras DepthwiseConv2D / SeparableConv2D serialize groups=1
}
# Keys a class serializes that have no effect on it (so they are dropped whatever their value).
_INERT = {
    # Used only with renorm, which is refused when on.
    "BatchNormalization": {"renorm_momentum"},
    # tf_keras's SeparableConv2D inherits kernel_* options from Conv and never uses them
    # (its kernels are depthwise_kernel and pointwise_kernel).
    "SeparableConv2D": {"kernel_initializer", "kernel_regularizer", "kernel_constraint"},
}
# Keys every layer takes through the base Layer's **kwargs in both Keras.
_BASE_KEYS = {"name", "trainable", "dtype", "activity_regularizer"}
# Names that differ, as {class: {Keras 3 name: tf_keras name}}; the reverse is the inverse.
_KEY_RENAMES = {"LeakyReLU": {"negative_slope": "alpha"}}
_WEIGHT_RENAMES = {"DepthwiseConv2D": {"kernel": "depthwise_kernel"}}

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
    meta = read_config_member(path, "metadata.json", METADATA_MAX_BYTES, required=False)
    config = read_config_member(path, "config.json", CONFIG_MAX_BYTES, required=True)
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


def read_config_member(path: Path, member: str, limit: int, required: bool):
    """The JSON in zip member `member`, read in at most `limit` bytes and nested at most
    safeio.MAX_JSON_DEPTH levels; {} if absent and optional. Either Keras's files
    (metadata.json, config.json); ModelError for anything malformed."""
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist or is not a file")
    if not zipfile.is_zipfile(path):
        raise ModelError(
            f"{path} is not a Keras .keras file (expected a zip archive holding config.json and "
            "model.weights.h5)"
        )
    value = zip_json(path, member, limit, ModelError)
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


def _unsupported(path: Path | None, items: list[str]) -> ModelError:
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
        raise _unsupported(path, unsupported)
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
    config = read_config_member(path, "config.json", CONFIG_MAX_BYTES, required=True)
    check_config(config, path)
    keras = keras3()
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras 3 warns about compile state we do not load
            return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a malformed archive
        raise ModelError(f"cannot load {path} with Keras 3: {_one_line(exc)}") from None


# --- the graph in a neutral form -----------------------------------------------------------------


class _Ref(NamedTuple):
    """Output `tensor` of call number `node` of layer `layer` (Keras's keras_history)."""

    layer: str
    node: int
    tensor: int


@dataclass
class _Layer:
    name: str
    class_name: str
    config: dict
    calls: list[tuple[list, dict]]  # (positional args, keyword args) per node, tensors as _Ref


@dataclass
class _Graph:
    sequential: bool
    name: str
    inputs: list[dict]  # InputLayer configs, in the source's form
    layers: list[_Layer]  # every other layer, in the source's order
    input_refs: Any = None  # Functional: the model's inputs/outputs as (nested) _Ref structures
    output_refs: Any = None


def _is_ref(obj) -> bool:
    return (
        isinstance(obj, (list, tuple))
        and len(obj) == 3
        and isinstance(obj[0], str)
        and isinstance(obj[1], int)
        and isinstance(obj[2], int)
    )


def _io_refs(obj):
    """input_layers / output_layers (a [layer, node, tensor] triple, a list or a dict of them)."""
    if _is_ref(obj):
        return _Ref(*obj)
    if isinstance(obj, dict):
        return {k: _io_refs(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_io_refs(v) for v in obj]
    raise ModelError(f"unexpected model input or output reference {obj!r}")


def _keras3_call_refs(obj):
    """A Keras 3 node's args/kwargs with each serialized `__keras_tensor__` turned into a _Ref."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            return _Ref(*obj["config"]["keras_history"])
        if obj.get("class_name") == "__tuple__":
            return [_keras3_call_refs(v) for v in obj["config"]["value"]]
        return {k: _keras3_call_refs(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_keras3_call_refs(v) for v in obj]
    return obj


def _keras2_call(node) -> tuple[list, dict]:
    """A tf_keras node, [[layer, node, tensor, kwargs], …], as (args, kwargs): one entry is a call
    on that tensor, several a call on the list of them (Add, Concatenate)."""
    refs = [_Ref(e[0], e[1], e[2]) for e in node]
    kwargs = dict(node[0][3]) if len(node[0]) > 3 else {}
    return ([refs[0]] if len(refs) == 1 else [refs]), kwargs


def _graph(config: dict, source: str) -> _Graph:
    """The model config of either Keras (`get_config()`) in the neutral form."""
    entries = config["layers"]
    inputs = [e["config"] for e in entries if e["class_name"] == "InputLayer"]
    if "input_layers" not in config:  # Sequential: each layer consumes the previous one's output
        one_call = [([None], {})]  # (the argument is implicit: the previous layer's output)
        layers = [
            _Layer(e["config"]["name"], e["class_name"], e["config"], one_call)
            for e in entries
            if e["class_name"] != "InputLayer"
        ]
        return _Graph(True, config["name"], inputs, layers)
    layers = []
    for e in entries:
        if e["class_name"] == "InputLayer":
            continue
        if source == KERAS3:
            calls = [
                (_keras3_call_refs(n["args"]), _keras3_call_refs(n["kwargs"]))
                for n in e["inbound_nodes"]
            ]
        else:
            calls = [_keras2_call(n) for n in e["inbound_nodes"]]
        layers.append(_Layer(e["config"]["name"], e["class_name"], e["config"], calls))
    ins, outs = _io_refs(config["input_layers"]), _io_refs(config["output_layers"])
    if source == KERAS2:
        # tf_keras lists a single input or output as a list of one; Keras 3 keeps the structure
        # it was given, and a single-input model called on a bare tensor expects a bare tensor.
        ins = ins[0] if isinstance(ins, list) and len(ins) == 1 else ins
        outs = outs[0] if isinstance(outs, list) and len(outs) == 1 else outs
    return _Graph(False, config["name"], inputs, layers, ins, outs)


# --- layer configs across the two Keras ---------------------------------------------------------


def _accepted_keys(cls, lib) -> set[str]:
    """The options `cls` takes: the named parameters of its __init__ and of each base class's that
    its **kwargs reach, down to the base Layer (GlobalAveragePooling1D takes keepdims that way)."""
    keys = set(_BASE_KEYS)
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        keys |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if klass is lib.layers.Layer or not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return keys - {"self"}


def _dtype(layer: str, cls: str, value) -> str:
    """A dtype or dtype policy in either Keras's form → "float32", the one bnpipe translates."""
    name = value
    if isinstance(value, dict):
        name = value.get("config", {}).get("name")
    if name != "float32":
        shown = name if isinstance(name, str) else value
        raise ModelError(
            f"layer {layer!r} ({cls}) has dtype policy {shown!r}; bnpipe translates float32 "
            "models only"
        )
    return "float32"


def _activation(layer: str, cls: str, value) -> str:
    if isinstance(value, str) and value in ACTIVATIONS:
        return ACTIVATIONS[value]
    raise ModelError(
        f"layer {layer!r} ({cls}) has activation {value!r}, which bnpipe does not translate; "
        f"supported: {', '.join(sorted(ACTIVATIONS))} (or the layers ReLU, LeakyReLU, Softmax)"
    )


def _sub_object(layer: str, cls: str, key: str, value, lib):
    """An initializer, regularizer or constraint in the target Keras's serialized form. Options the
    target class does not take are dropped when None (unused) and refused otherwise."""
    if value is None or isinstance(value, str):
        return value
    kind = key.rsplit("_", 1)[-1] + "s"  # kernel_initializer → initializers
    module = getattr(lib, kind)
    obj_cls = getattr(module, str(value.get("class_name")), None)
    if not isinstance(obj_cls, type):
        raise ModelError(
            f"layer {layer!r} ({cls}) has {key} {value.get('class_name')!r}, which "
            f"{lib.__name__} does not have"
        )
    accepted = set(inspect.signature(obj_cls.__init__).parameters)
    out = {}
    for k, v in (value.get("config") or {}).items():
        if k in accepted:
            out[k] = v
        elif v is not None:
            raise ModelError(
                f"layer {layer!r} ({cls}) has {key} {obj_cls.__name__}({k}={v!r}), which "
                f"{lib.__name__} has no equivalent for"
            )
    return {"class_name": obj_cls.__name__, "config": out}


def _layer_config(layer: _Layer, target_cls, lib, to_keras3: bool) -> dict:
    """The config `target_cls.from_config` takes for `layer` (a new dict; `layer` is unchanged)."""
    name, cls, cfg = layer.name, layer.class_name, layer.config
    renames = _KEY_RENAMES.get(cls, {})
    if to_keras3:
        renames = {v: k for k, v in renames.items()}
    if cls == "BatchNormalization" and cfg.get("renorm"):
        raise ModelError(f"layer {name!r} ({cls}) uses batch renormalization; bnpipe does not")
    accepted = _accepted_keys(target_cls, lib)
    out = {}
    for key, value in cfg.items():
        key = renames.get(key, key)
        if key in _INERT.get(cls, ()) or key in ("batch_input_shape", "batch_shape"):
            continue  # inputs are the InputLayer's business
        if key == "dtype":
            value = _dtype(name, cls, value)
        elif key == "activation":
            value = _activation(name, cls, value)
        elif key.endswith(("_initializer", "_regularizer", "_constraint")):
            value = _sub_object(name, cls, key, value, lib)
        elif key == "axis" and isinstance(value, (list, tuple)) and len(value) == 1:
            value = value[0]  # tf_keras BN serializes axis=-1 as [rank - 1]: the same axis
        if key in accepted:
            out[key] = value
        elif value is not None and _NEUTRAL.get(key, object()) != value:
            raise ModelError(
                f"layer {name!r} ({cls}) sets {key}={value!r}, which {lib.__name__} has no "
                "equivalent for"
            )
    return out


def _input(lib, cfg: dict):
    """The target Keras's Input for an InputLayer config of either Keras."""
    name = cfg.get("name")
    shape = cfg.get("batch_shape", cfg.get("batch_input_shape"))
    for key in ("sparse", "ragged", "optional"):
        if cfg.get(key):
            raise ModelError(f"input {name!r} is {key}; bnpipe translates dense inputs only")
    dtype = _dtype(name, "InputLayer", cfg.get("dtype", "float32"))
    if shape is None:
        raise ModelError(f"input {name!r} has no shape")
    return lib.Input(shape=tuple(shape[1:]), batch_size=shape[0], dtype=dtype, name=name)


# --- building the translated model --------------------------------------------------------------


def _check_layer_classes(model, graph: _Graph, lib) -> None:
    """Every layer must be exactly one of `lib`'s own SUPPORTED_LAYERS classes: a subclass, or a
    class of another package, may compute anything whatever its config says."""
    bad = []
    for layer in graph.layers:
        kind = type(model.get_layer(layer.name))
        if kind is not getattr(lib.layers, kind.__name__, None):
            bad.append(
                f"{layer.name!r} ({kind.__name__}, a custom class from module {kind.__module__!r})"
            )
        elif kind.__name__ not in SUPPORTED_LAYERS:
            bad.append(f"{layer.name!r} ({kind.__name__})")
    if bad:
        raise _unsupported(None, bad)


def _model_kind(model, lib) -> bool:
    """True for Sequential, False for Functional; ModelError for anything else (subclassed)."""
    if type(model) is lib.Sequential:  # a subclass may override call()
        return True
    kind = type(model)
    if kind.__name__ == "Functional" and kind.__module__.startswith(lib.__name__ + "."):
        return False
    raise ModelError(
        f"model {getattr(model, 'name', '?')!r} is a {kind.__name__}; bnpipe translates "
        f"{lib.__name__} Sequential and Functional models only"
    )


def _resolve(obj, produced: dict):
    """`obj` with each _Ref replaced by the tensor it names; KeyError if one is not made yet."""
    if isinstance(obj, _Ref):
        return produced[obj]
    if isinstance(obj, dict):
        return {k: _resolve(v, produced) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v, produced) for v in obj]
    return obj


def _call_kwargs(layer: _Layer, kwargs: dict) -> dict:
    """The keyword arguments a node may carry: training (None/False) and an absent mask."""
    out = {}
    for key, value in kwargs.items():
        if key == "mask" and value is None:
            continue
        if key == "training" and value in (None, False):
            out[key] = value
            continue
        raise ModelError(
            f"layer {layer.name!r} ({layer.class_name}) is called with {key}={value!r}; bnpipe "
            "translates inference-mode calls only"
        )
    return out


def _build(graph: _Graph, source, lib, to_keras3: bool):
    """The model `graph` describes, made of `lib`'s layers, with `source`'s weights (copied)."""
    layers = {}
    for layer in graph.layers:
        target_cls = getattr(lib.layers, layer.class_name)
        try:
            layers[layer.name] = target_cls.from_config(
                _layer_config(layer, target_cls, lib, to_keras3)
            )
        except ModelError:
            raise
        except Exception as exc:  # the target refuses a value: name the layer
            raise ModelError(
                f"layer {layer.name!r} ({layer.class_name}) cannot be made in {lib.__name__}: "
                f"{_one_line(exc)}"
            ) from None
    if graph.sequential:
        if len(graph.inputs) != 1:
            raise ModelError(
                f"Sequential model {graph.name!r} has no input shape (never built); "
                "give it a keras.Input"
            )
        model = lib.Sequential(
            [_input(lib, graph.inputs[0])] + [layers[layer.name] for layer in graph.layers],
            name=graph.name,
        )
    else:
        produced = {_Ref(c["name"], 0, 0): _input(lib, c) for c in graph.inputs}
        pending = [(layer, i, call) for layer in graph.layers for i, call in enumerate(layer.calls)]
        while pending:
            # A shared layer's later node may consume a layer listed after it: call each node once
            # its inputs exist, and stop if a pass makes no progress (a broken graph).
            waiting = []
            for layer, i, (args, kwargs) in pending:
                try:
                    args = _resolve(args, produced)
                except KeyError:
                    waiting.append((layer, i, (args, kwargs)))
                    continue
                out = layers[layer.name](*args, **_call_kwargs(layer, kwargs))
                outs = out if isinstance(out, (list, tuple)) else [out]
                for j, tensor in enumerate(outs):
                    produced[_Ref(layer.name, i, j)] = tensor
            if len(waiting) == len(pending):
                names = ", ".join(sorted({layer.name for layer, _, _ in waiting}))
                raise ModelError(f"model {graph.name!r}: inputs of layer(s) {names} never appear")
            pending = waiting
        try:
            model = lib.Model(
                _resolve(graph.input_refs, produced),
                _resolve(graph.output_refs, produced),
                name=graph.name,
            )
        except KeyError as exc:
            raise ModelError(f"model {graph.name!r}: output {exc} is never computed") from None
    for layer in graph.layers:
        _copy_weights(source.get_layer(layer.name), model.get_layer(layer.name), layer, to_keras3)
    model.trainable = source.trainable
    return model


def _weight_name(variable) -> str:
    # Keras 3: "kernel" (path "dense/kernel"); tf_keras: "dense/kernel:0".
    return variable.name.split("/")[-1].split(":")[0]


def _copy_weights(src, dst, layer: _Layer, to_keras3: bool) -> None:
    """dst's variables ← src's, matched by name; the same float32 arrays (bits identical)."""
    renames = _WEIGHT_RENAMES.get(layer.class_name, {})
    if to_keras3:
        renames = {v: k for k, v in renames.items()}
    values = {
        renames.get(_weight_name(v), _weight_name(v)): w
        for v, w in zip(src.weights, src.get_weights(), strict=True)
    }
    wanted = [_weight_name(v) for v in dst.weights]
    if sorted(values) != sorted(wanted):
        raise ModelError(
            f"layer {layer.name!r} ({layer.class_name}): weights {sorted(values)} do not map onto "
            f"{sorted(wanted)}"
        )
    for v, name in zip(dst.weights, wanted, strict=True):
        if tuple(v.shape) != values[name].shape or values[name].dtype != np.float32:
            raise ModelError(
                f"layer {layer.name!r} ({layer.class_name}): weight {name} is "
                f"{values[name].dtype}{values[name].shape}, expected float32{tuple(v.shape)}"
            )
    dst.set_weights([values[name] for name in wanted])


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
        raise ModelError(f"model {model3.name!r} cannot be flattened: {_one_line(exc)}") from None


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


def to_tf_keras(model3):
    """A new tf_keras model computing what the Keras 3 `model3` computes: the same architecture
    (Sequential stays Sequential, Functional stays Functional, layer names kept) with copies of
    its weights, bit for bit. `model3` is not modified. ModelError names anything untranslatable.
    """
    from pipeline.core.tfenv import keras

    src, dst = keras3(), keras()
    model3 = flatten_nested(model3)
    sequential = _model_kind(model3, src)
    graph = _graph(model3.get_config(), KERAS3)
    if graph.sequential != sequential:
        raise ModelError(f"model {model3.name!r}: its config does not match its class")
    _check_layer_classes(model3, graph, src)
    return _build(graph, model3, dst, to_keras3=False)


def to_keras3(model2):
    """A new Keras 3 model computing what the tf_keras `model2` computes (the reverse of
    to_tf_keras: same architecture, names and weight bits). `model2` is not modified.

    Everything needed is in `model2`: a folded model has no BN layers and Dense layers with a new
    bias, so the Keras 3 model it came from would be a second, partly wrong source of truth.
    """
    from pipeline.core.tfenv import keras

    src, dst = keras(), keras3()
    sequential = _model_kind(model2, src)
    graph = _graph(model2.get_config(), KERAS2)
    if graph.sequential != sequential:
        raise ModelError(f"model {model2.name!r}: its config does not match its class")
    _check_layer_classes(model2, graph, src)
    return _build(graph, model2, dst, to_keras3=True)


# --- the numerical proof ------------------------------------------------------------------------


@dataclass
class TranslationCheck:
    """How far a translation's outputs are from the original's, over `samples` inputs (all within
    `rtol`: translation_check raises otherwise).

    A relative difference is max|original − translation| / max|original| (float64), per model
    output and per layer (each single-call layer both models name)."""

    samples: int
    rtol: float
    max_rel_diff: float  # over the model outputs
    output_rel_diffs: list[float]
    layer_rel_diffs: dict[str, float] = field(default_factory=dict)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):  # weights near float32's limit
        return 0.0 if np.array_equal(a, b, equal_nan=True) else float("inf")
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    if diff == 0.0:
        return 0.0
    ref = float(np.max(np.abs(a)))
    return diff / ref if ref > 0 else float("inf")


def _run(model, x, batch: int = 1024) -> list[np.ndarray]:
    """Every output of `model` (either Keras) on x, in inference mode, as NumPy arrays."""
    xs = x if isinstance(x, (list, tuple)) else [x]
    chunks = []
    for i in range(0, len(xs[0]), batch):
        part = [a[i : i + batch] for a in xs]
        out = model(part if len(part) > 1 else part[0], training=False)
        out = list(out.values()) if isinstance(out, dict) else out
        chunks.append([np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])])
    return [np.concatenate([c[j] for c in chunks]) for j in range(len(chunks[0]))]


def _single_call_layers(model) -> list[str]:
    graph = _graph(model.get_config(), KERAS3 if _is_keras3(model) else KERAS2)
    return [layer.name for layer in graph.layers if len(layer.calls) == 1]


def _is_keras3(model) -> bool:
    return type(model).__module__.startswith("keras.")


def _probe(model, names: list[str]):
    """A model of the same Keras whose outputs are the outputs of layers `names`."""
    lib = keras3() if _is_keras3(model) else _tf_keras()
    inputs = model.inputs if len(model.inputs) > 1 else model.inputs[0]
    return lib.Model(inputs, [model.get_layer(n).output for n in names])


def _tf_keras():
    from pipeline.core.tfenv import keras

    return keras()


def translation_check(original, translation, x, rtol: float = TRANSLATION_RTOL):
    """Run both models (each in its own Keras) on x and compare every output and every layer.

    `original` and `translation` may be either Keras (to_tf_keras's or to_keras3's result);
    x is (batch, *input_shape) float32, or a list of such per input. Returns a TranslationCheck;
    raises ModelError naming every output and layer off by more than `rtol` (relative).
    Neither model is modified.
    """
    if not rtol > 0:
        raise ValueError(f"rtol must be > 0, got {rtol}")
    a, b = _run(original, x), _run(translation, x)
    failures = []
    if len(a) != len(b) or any(p.shape != q.shape for p, q in zip(a, b, strict=True)):
        raise ModelError(
            f"translation has outputs {[q.shape for q in b]}, the original {[p.shape for p in a]}"
        )
    outputs = [_rel(p, q) for p, q in zip(a, b, strict=True)]
    for i, rel in enumerate(outputs):
        if not rel <= rtol:
            where = "model output" if len(outputs) == 1 else f"model output {i}"
            failures.append(f"{where}: relative difference {rel:.3g} > {rtol:g}")
    # A model inside the original is one layer there: its own layers are probed in the
    # flattened copy (the same layers, called alike), checked above by the outputs themselves.
    probed = flatten_nested(original) if _is_keras3(original) else original
    names = [n for n in _single_call_layers(probed) if n in set(_single_call_layers(translation))]
    layers = {}
    if names:
        for name, p, q in zip(
            names,
            _run(_probe(probed, names), x),
            _run(_probe(translation, names), x),
            strict=True,
        ):
            layers[name] = _rel(p, q) if p.shape == q.shape else float("inf")
            if not layers[name] <= rtol:
                failures.append(
                    f"layer {name!r}: relative difference {layers[name]:.3g} > {rtol:g}"
                )
    n = len(x[0]) if isinstance(x, (list, tuple)) else len(x)
    if failures:
        raise ModelError("translation differs from the original: " + "; ".join(failures))
    return TranslationCheck(n, rtol, max(outputs, default=0.0), outputs, layers)


def probe_inputs(model, n: int = PROBE_SAMPLES, seed: int = 0):
    """n random inputs for `model` (either Keras), uniform in [0, 1) like bnpipe's scaled data:
    one float32 array (n, *input_shape), or a list of them for a model with several inputs."""
    rng = np.random.default_rng(seed)
    xs = []
    for tensor in model.inputs:
        shape = tuple(tensor.shape)
        if any(d is None for d in shape[1:]):
            raise ModelError(f"input {tensor.name!r} has an undefined dimension: {shape}")
        batch = shape[0] if shape[0] is not None else n
        xs.append(rng.random((batch, *shape[1:]), dtype=np.float32))
    return xs[0] if len(xs) == 1 else xs


@dataclass
class Translation:
    model3: Any  # the Keras 3 model as loaded (safe mode)
    model2: Any  # its tf_keras translation
    check: TranslationCheck
    seconds: float  # load + translate + check


def translate_file(path: str | Path, x=None, rtol: float = TRANSLATION_RTOL) -> Translation:
    """Load the Keras 3 file at `path` (load_keras3), translate it (to_tf_keras) and prove the
    translation on x (default: probe_inputs). ModelError for anything refused or a failed proof."""
    t0 = time.perf_counter()
    model3 = load_keras3(path)
    model2 = to_tf_keras(model3)
    check = translation_check(model3, model2, probe_inputs(model3) if x is None else x, rtol)
    return Translation(model3, model2, check, time.perf_counter() - t0)


# --- writing Keras 3 files ----------------------------------------------------------------------


def save_keras3(model3, dest: str | Path) -> Path:
    """Save the Keras 3 `model3` atomically as a `.keras` file a Keras 3 user loads with plain
    `keras.models.load_model` (safe mode). The same model gives the same bytes: the time of saving
    and Python object ids are taken out (see _deterministic). `model3` is not modified."""
    from pipeline.store.artifacts import atomic_path

    if not _is_keras3(model3):
        raise TypeError(f"save_keras3 needs a Keras 3 model, got {type(model3).__module__}")
    if not str(dest).endswith(".keras"):
        raise ValueError(f"dest must end in .keras, got {dest}")
    with atomic_path(dest, suffix=".keras") as tmp:
        model3.save(tmp, overwrite=True)
        _deterministic(tmp)
    return Path(dest)


def _deterministic(path: Path) -> None:
    """Rewrite a Keras 3 .keras archive in place without what varies from one save to the next.

    Keras 3 puts three such things in: metadata.json's "date_saved"; model.weights.h5's zip
    entry date (the time of saving); and config.json's "shared_object_id"s, which are Python
    id()s (memory addresses) of objects several layers share, e.g. the dtype policy. The ids are
    renumbered 1, 2, … in order of first appearance: Keras only matches equal ids to share one
    object, so the loaded model is the same. Entries keep their names, order, compression and
    attributes; Keras 3's loader reads neither metadata.json's date nor the entry dates.
    """
    with zipfile.ZipFile(path) as zf:
        entries = [(info, zf.read(info)) for info in zf.infolist()]
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in entries:
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta.pop("date_saved", None)
                data = json.dumps(meta).encode("utf-8")
            elif info.filename == "config.json":
                data = json.dumps(_renumbered(json.loads(data), {})).encode("utf-8")
            fixed = zipfile.ZipInfo(info.filename, date_time=KERAS_ZIP_DATE)
            fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
            zf.writestr(fixed, data)


def _renumbered(node, ids: dict):
    """A copy of `node` with every shared_object_id replaced by its rank of first appearance."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "shared_object_id":
                out[k] = ids.setdefault(v, len(ids) + 1)
            else:
                out[k] = _renumbered(v, ids)
        return out
    if isinstance(node, list):
        return [_renumbered(v, ids) for v in node]
    return node
