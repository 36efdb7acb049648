"""Which TFLite operators a Keras model's layers may become, and the graph check built on it.

A converted model is deployable when every operator is one its layers imply (a Dense becomes
FULLY_CONNECTED, a Flatten RESHAPE, a softmax SOFTMAX …) and, for the integer modes, every
tensor of every operator is an integer one. Anything else — a MUL/ADD pair left by a BN that
should have been folded, a float DEQUANTIZE in the middle of an int8 graph — is named. A BN that
fold had to keep may become MUL and ADD; those are allowed, and named, for that model only.
"""

from __future__ import annotations

from pipeline.tflite.file import TfliteInfo

INTEGER_ONLY_MODES = ("int8", "ptq-int8", "ptq-int16x8")
# What the converter makes of each layer (activations fused into the layer before them where it
# can, so a ReLU may also leave no operator at all). Layers absent here are not exported.
_SPATIAL_1D = {"RESHAPE", "EXPAND_DIMS", "SQUEEZE"}  # a 1-D layer runs as its 2-D kernel
LAYER_OPS = {
    "InputLayer": set(),
    "Dropout": set(),  # the identity at inference: removed
    "Dense": {"FULLY_CONNECTED"},
    "Flatten": {"RESHAPE"},
    "Reshape": {"RESHAPE"},  # with a constant shape (convert.tflite_friendly_layers)
    "ReLU": {"RELU", "RELU6", "RELU_0_TO_1", "RELU_N1_TO_1", "LEAKY_RELU"},
    "LeakyReLU": {"LEAKY_RELU"},
    "Softmax": {"SOFTMAX"},
    "Activation": set(),  # by its activation, below
    # A BN fold could not remove: x·s + t with constants (between two TRANSPOSEs when it
    # normalizes an axis other than the last).
    "BatchNormalization": {"MUL", "ADD", "TRANSPOSE"},
    "CustomBatchNorm": {"MUL", "ADD", "TRANSPOSE"},
    "Conv1D": {"CONV_2D"} | _SPATIAL_1D,
    "Conv2D": {"CONV_2D"},
    "DepthwiseConv2D": {"DEPTHWISE_CONV_2D"},
    "SeparableConv2D": {"DEPTHWISE_CONV_2D", "CONV_2D"},
    "MaxPooling1D": {"MAX_POOL_2D"} | _SPATIAL_1D,
    "MaxPooling2D": {"MAX_POOL_2D"},
    "AveragePooling1D": {"AVERAGE_POOL_2D"} | _SPATIAL_1D,
    "AveragePooling2D": {"AVERAGE_POOL_2D"},
    "GlobalAveragePooling1D": {"MEAN"},
    "GlobalAveragePooling2D": {"MEAN", "AVERAGE_POOL_2D"},
    "GlobalMaxPooling2D": {"REDUCE_MAX", "MAX_POOL_2D"},
    "ZeroPadding2D": {"PAD"},
    # Decoders: a transposed convolution, whose output shape tf_keras computes from the batch
    # size at run time (SHAPE → STRIDED_SLICE → PACK, int32) and whose bias (which a BN fold
    # creates) may be an ADD of its own; nearest or bilinear upsampling; cropping as a slice.
    "Conv2DTranspose": {"TRANSPOSE_CONV", "ADD", "SHAPE", "STRIDED_SLICE", "PACK"},
    "UpSampling2D": {"RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR"},
    "Cropping2D": {"STRIDED_SLICE"},
    "Add": {"ADD"},
    "Concatenate": {"CONCATENATION"},
}
# What the converter makes of each activation of a Dense or convolution (or an Activation layer),
# as converted here from tf_keras (float32 and post-training int8 give the same operators; a
# constant scale and shift may fold into the layer before, so some listed ops can be absent).
ACTIVATION_OPS = {
    "linear": set(),
    "relu": {"RELU"},
    "relu6": {"RELU6"},
    "softmax": {"SOFTMAX"},
    "sigmoid": {"LOGISTIC"},
    "tanh": {"TANH"},
    "elu": {"ELU"},
    "gelu": {"GELU"},
    "exponential": {"EXP"},
    "swish": {"LOGISTIC", "MUL"},  # x·σ(x); Keras 3's "silu" is translated to it
    "softplus": {"EXP", "ADD", "LOG"},
    "softsign": {"ABS", "ADD", "DIV"},
    "mish": {"EXP", "ADD", "LOG", "TANH", "MUL"},
    "selu": {"GREATER", "MUL", "EXP", "SUB", "SELECT_V2"},
    "hard_sigmoid": {"MUL", "ADD", "MINIMUM", "RELU"},
}
# A dilated convolution that convert.tflite_friendly_layers cannot make one op (a 1-D one, a grouped
# one) runs as SPACE_TO_BATCH_ND → the convolution → BATCH_TO_SPACE_ND, its bias (which the fold
# of a BN creates) then added on its own.
DILATED_OPS = {"SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND", "ADD"}
# A Dense on more than (batch, features) is a tensordot: its shapes are computed at run time and
# the values reshaped to (rows, features) around FULLY_CONNECTED.
DENSE_ND_OPS = {
    "SHAPE",
    "GATHER",
    "REDUCE_PROD",
    "PACK",
    "STRIDED_SLICE",
    "CONCATENATION",
    "RESHAPE",
}
# Layers the converter exports (everything model loading accepts): a model holding anything
# else is refused before any conversion.
EXPORTABLE_LAYERS = set(LAYER_OPS)
# Layers tfmot's default 8-bit scheme quantizes (or passes through) in quantization-aware
# training (it turns SeparableConv2D into depthwise + pointwise itself); with anything else
# QAT int8 is refused and the post-training modes remain.
QAT_LAYERS = EXPORTABLE_LAYERS - {"Conv1D"}


def unsupported_layers(model, allowed: set[str]) -> list[str]:
    """ "'name' (Class)" of every layer of `model` whose class is not in `allowed`, batch
    normalization of either kind excepted (fold keeps a BN it cannot remove; export names what
    it became)."""
    from pipeline.models.article import is_batch_norm

    return [
        f"{layer.name!r} ({type(layer).__name__})"
        for layer in model.layers
        if type(layer).__name__ not in allowed and not is_batch_norm(layer)
    ]


def implied_ops(model) -> set[str]:
    """Every TFLite operator the layers of `model` may become."""
    ops: set[str] = set()
    for layer in model.layers:
        cls = type(layer).__name__
        ops |= LAYER_OPS.get(cls, set())
        activation = getattr(layer, "activation", None)
        name = getattr(activation, "__name__", None)
        if name:
            ops |= ACTIVATION_OPS.get(name, {name.upper()})
        if any(d > 1 for d in getattr(layer, "dilation_rate", None) or ()):
            ops |= DILATED_OPS
        if cls == "Dense" and _input_rank(layer) > 2:
            ops |= DENSE_ND_OPS
    return ops


def _input_rank(layer) -> int:
    """The largest rank of the tensor a one-input `layer` is called on (a shared layer is called
    more than once); 2 when unknown."""
    ranks = []
    for node in getattr(layer, "inbound_nodes", []):
        try:
            ranks.append(len(node.input_shapes))
        except (TypeError, ValueError):  # no shape, or one of unknown rank
            continue
    return max(ranks, default=2)


def graph_check(
    info: TfliteInfo, mode: str, float_io: bool, allowed: set[str] | None = None
) -> list[str]:
    """Every violation of what a deployable `mode` model may hold (empty list: fine).

    `allowed`: the operators the model's layers imply (implied_ops); default: an MLP's
    FULLY_CONNECTED and SOFTMAX. Operators outside it are named; an integer mode also needs
    integer tensors everywhere, QUANTIZE/DEQUANTIZE only at the edges with `float_io`.
    """
    allowed = {"FULLY_CONNECTED", "SOFTMAX"} if allowed is None else allowed
    problems = []
    strangers = sorted({op.op for op in info.operators} - allowed - {"QUANTIZE", "DEQUANTIZE"})
    if strangers:
        problems.append(
            f"operators {', '.join(strangers)} that no layer of the model implies "
            "(a BatchNormalization left unfolded?)"
        )
    if mode not in INTEGER_ONLY_MODES:
        return problems
    return problems + _integer_problems(info, mode, float_io, allowed)


def _integer_problems(info: TfliteInfo, mode: str, float_io: bool, allowed: set[str]) -> list:
    act = "int8" if mode in ("int8", "ptq-int8") else "int16"
    # int32: biases and shapes; bool: a comparison's result (selu's GREATER → SELECT_V2).
    allowed_types = {act, "int32", "int8", "int64"} if act == "int16" else {"int8", "int32"}
    allowed_types.add("bool")
    inp, out = set(info.inputs), set(info.outputs)
    problems = []
    for op in info.operators:
        if op.op == "QUANTIZE" and _dtypes(info, op) <= allowed_types - {"bool"}:
            continue  # integer to integer: a requantization to another scale, not a float edge
        if op.op in allowed:
            for t in op.inputs + op.outputs:
                dt = info.tensors[t].dtype if t >= 0 else None
                if dt is not None and dt not in allowed_types:
                    name = info.tensors[t].name
                    problems.append(f"{op.op} #{op.index} has a {dt} tensor {name!r}")
        elif (op.op == "QUANTIZE" and float_io and set(op.inputs) <= inp) or (
            op.op == "DEQUANTIZE" and float_io and set(op.outputs) <= out
        ):
            continue
        else:
            problems.append(
                f"operator {op.op} #{op.index} does not belong in an integer-only model"
            )
    io_dtype = "float32" if float_io else act
    for t in info.inputs + info.outputs:
        if info.tensors[t].dtype != io_dtype:
            problems.append(
                f"input/output tensor {info.tensors[t].name!r} is {info.tensors[t].dtype}, "
                f"expected {io_dtype}"
            )
    return problems


def _dtypes(info: TfliteInfo, op) -> set[str]:
    return {info.tensors[t].dtype for t in op.inputs + op.outputs if t >= 0}


def operators_of(info: TfliteInfo, layer_name: str) -> list[str]:
    """The operators whose output tensor's name mentions `layer_name` (the converter names
    tensors after the Keras layers they come from), in graph order."""
    found = []
    for op in info.operators:
        names = [info.tensors[t].name for t in op.outputs if t >= 0]
        if any(f"/{layer_name}/" in n or n.endswith(f"/{layer_name}") for n in names):
            found.append(op.op)
    return found
