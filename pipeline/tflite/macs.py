"""Multiply-accumulates (MACs) per inference of a `.tflite` model, from its operators and shapes.

A MAC is one weight multiplied into one input and added to a sum, the unit in which edge model
cost is usually quoted (MobileNet's "569M mult-adds"). Counted, per output element:

    FULLY_CONNECTED     weights (units, in)          in MACs         out (…, units)
    CONV_2D             filter (out, kh, kw, in/g)   kh·kw·in/g      out (n, oh, ow, out)
    DEPTHWISE_CONV_2D   filter (1, kh, kw, c·mult)   kh·kw           out (n, oh, ow, c·mult)

so each is (output elements) × (MACs per output element). Biases, activations, requantization
and every other operator (pooling, MEAN, SOFTMAX, RESHAPE, elementwise MUL/ADD …) are not
counted; they are listed as uncounted so a report can say so. Reads only the parsed file
(tflite_file.TfliteInfo): no interpreter, no TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.core.errors import ModelError
from pipeline.tflite.file import TfliteInfo

COUNTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


@dataclass
class OpMacs:
    index: int  # the operator's position in the subgraph
    op: str
    macs: int
    outputs: int  # output elements
    per_output: int  # MACs per output element


@dataclass(kw_only=True)
class MacCount:
    total: int
    batch: int
    per_op: list[OpMacs]
    by_op: dict[str, int]  # op name → MACs of all its operators
    uncounted: dict[str, int] = field(default_factory=dict)  # op name → how many operators


def _shape(info: TfliteInfo, index: int, batch: int, where: str) -> list[int]:
    """A tensor's shape with a dynamic batch (-1 on axis 0) set to `batch`; ModelError for any
    other unknown dimension."""
    if index < 0 or index >= len(info.tensors):
        raise ModelError(f"{info.path}: {where} has no tensor {index}")
    shape = list(info.tensors[index].shape)
    if shape and shape[0] == -1:
        shape[0] = batch
    if not shape or any(d < 0 for d in shape):
        raise ModelError(
            f"{info.path}: {where} has shape {info.tensors[index].shape}; MACs need static "
            "shapes (only the batch axis may be dynamic)"
        )
    return shape


def _op_macs(info: TfliteInfo, op, batch: int) -> OpMacs:
    where = f"operator {op.op} #{op.index}"
    if len(op.inputs) < 2 or not op.outputs:
        raise ModelError(f"{info.path}: {where} has no weights input or no output")
    weights = _shape(info, op.inputs[1], batch, where)
    out = _shape(info, op.outputs[0], batch, where)
    # The channel axis of the weights that must equal the output's channels, and the weights'
    # rank: FULLY_CONNECTED (units, in); CONV_2D (out, kh, kw, in/g); DEPTHWISE (1, kh, kw, c·m).
    channel_axis, rank = {"FULLY_CONNECTED": (0, 2), "CONV_2D": (0, 4)}.get(op.op, (3, 4))
    if len(weights) != rank or out[-1] != weights[channel_axis]:
        raise ModelError(
            f"{info.path}: {where} has weights {weights} and output {out}, which do not fit "
            "together"
        )
    if op.op == "FULLY_CONNECTED":
        per_output = weights[1]
    elif op.op == "CONV_2D":
        per_output = weights[1] * weights[2] * weights[3]
    else:
        per_output = weights[1] * weights[2]
    outputs = math.prod(out)
    if op.op == "FULLY_CONNECTED":
        # Its output may flatten the leading axes (keep_num_dims false): (-1, units) then means
        # batch × positions, so the rows are read from the input, whose batch axis is known.
        inputs = math.prod(_shape(info, op.inputs[0], batch, where))
        if inputs % per_output:
            raise ModelError(
                f"{info.path}: {where} reads {inputs} values, not rows of {per_output}"
            )
        outputs = inputs // per_output * weights[0]
    return OpMacs(op.index, op.op, outputs * per_output, outputs, per_output)


def count_macs(info: TfliteInfo, batch: int = 1) -> MacCount:
    """MACs of one inference of `batch` samples (a dynamic batch axis is set to it; a model
    with a fixed batch keeps its own), per counted operator and in total. Reads `info` only."""
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int ≥ 1, got {batch!r}")
    per_op: list = []
    by_op: dict[str, int] = {}
    uncounted: dict[str, int] = {}
    for op in info.operators:
        if op.op in COUNTED_OPS:
            counted = _op_macs(info, op, batch)
            per_op.append(counted)
            by_op[op.op] = by_op.get(op.op, 0) + counted.macs
        else:
            uncounted[op.op] = uncounted.get(op.op, 0) + 1
    return MacCount(
        total=sum(o.macs for o in per_op),
        batch=batch,
        per_op=per_op,
        by_op=by_op,
        uncounted=uncounted,
    )
