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

import inspect
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from pipeline.core.errors import ModelError
from pipeline.models.configcheck import (
    KERAS2,
    KERAS3,
    SUPPORTED_LAYERS,
    unsupported_layers,
)
from pipeline.models.keras3_file import flatten_nested, keras3, one_line

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


def parse_graph(config: dict, source: str) -> _Graph:
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
        raise unsupported_layers(None, bad)


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
                f"{one_line(exc)}"
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


def to_tf_keras(model3):
    """A new tf_keras model computing what the Keras 3 `model3` computes: the same architecture
    (Sequential stays Sequential, Functional stays Functional, layer names kept) with copies of
    its weights, bit for bit. `model3` is not modified. ModelError names anything untranslatable.
    """
    from pipeline.core.tfenv import keras

    src, dst = keras3(), keras()
    model3 = flatten_nested(model3)
    sequential = _model_kind(model3, src)
    graph = parse_graph(model3.get_config(), KERAS3)
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
    graph = parse_graph(model2.get_config(), KERAS2)
    if graph.sequential != sequential:
        raise ModelError(f"model {model2.name!r}: its config does not match its class")
    _check_layer_classes(model2, graph, src)
    return _build(graph, model2, dst, to_keras3=True)
