"""An integer .tflite file and its float twin, operator by operator; float models with chosen layers
quantized exactly as the integer file quantizes them.

Matching. `bnpipe export` converts one folded Keras model twice (float32, and an integer mode),
so both graphs hold the same operators in the same order: FULLY_CONNECTED, …, SOFTMAX for the
MLP, CONV_2D … later. `match_operators` pairs them by graph order, checking each pair's operator
type, output shape (batch axis aside) and input count; the integer file's QUANTIZE / DEQUANTIZE
at float inputs and outputs (`--float-io`) have no float counterpart and are left out. Anything
else that differs is a ModelError listing every mismatch: such files do not come from one model.

Fake quantization. `FakeQuant.model(positions)` is the float twin with the operators at
`positions` quantized as in the integer file and every other operator left float:
  - each constant integer input of the integer operator (weights int8, per channel; bias int32)
    is dequantized with the file's scales and zero points and replaces the float twin's constant
    (same shape, checked), so the float kernel computes with exactly the integer file's weights;
  - the operator's output goes through QUANTIZE → DEQUANTIZE with the integer file's scale and
    zero point of that output (its fused ReLU clamps first, as the integer kernel's clamp does),
    so the next operator sees the file's grid of values, clipping included.
An operator's input is not quantized at that operator: a tensor's quantization is charged to the
operator that produces it (the model's input to `quantize_input=True`). So a layer whose output
range wastes the int8 grid is blamed, not the next layer that merely receives the damage. (LiteRT's
QuantizationDebugger, which keeps denylisted nodes float, quantizes the one quantized operator's
input as well: a coarse grid then counts against the producer and the consumer alike.) These
models also use the integer file's own scales, learnt by QAT or calibrated, where the debugger
calibrates anew, so they diagnose the file at hand; and they need no TensorFlow: the debugger
converts the Keras model once per layer (TensorFlow's import alone takes ~6 s here), these are
rewritten from the two files' flatbuffers in milliseconds.

With every operator and the input quantized, the float model computes what the integer file
computes up to the kernels' rounding (int8: a step at most, on a few values; int16 SOFTMAX,
a lookup table, differs by more of its much finer steps);
`bnpipe layers` reports how closely the two agree. The models are built here in Python from
bytes that tflite_file.py has checked; LiteRT runs them in a child process (runtimes/tensors.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pipeline.core.errors import ModelError
from pipeline.tflite.file import TfliteInfo

EDGE_OPS = ("QUANTIZE", "DEQUANTIZE")  # the integer file's float-I/O edges: no float twin op
_INTEGER_NUMPY = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "int32": np.int32,
                  "int64": np.int64}  # fmt: skip
# (builtin code, version) of the two operators inserted for the fake quantization. Version 2 of
# each is the first to take int8 (LiteRT's op versioning); int16 needs version 4 of QUANTIZE and
# version 3 of DEQUANTIZE.
_QDQ_VERSION = {"int8": (2, 2), "uint8": (1, 1), "int16": (4, 3)}


@dataclass(frozen=True)
class OpPair:
    """One operator of the integer file and its float twin's counterpart."""

    position: int  # in the matched sequence (0 = the first operator both files share)
    op: str  # FULLY_CONNECTED, SOFTMAX, …
    int8_op: int  # operator index in the integer file
    float_op: int  # operator index in the float twin
    int8_output: int  # tensor index of the operator's output in the integer file
    float_output: int  # … and in the float twin


@dataclass(frozen=True)
class Built:
    """A model FakeQuant built."""

    data: bytes  # the .tflite
    quantized: dict[int, int]  # position → the tensor that now holds its dequantized output
    output: int  # the model's output tensor


def _compute_ops(info: TfliteInfo) -> list:
    return [o for o in info.operators if o.op not in EDGE_OPS]


def match_operators(int8: TfliteInfo, float_: TfliteInfo) -> list[OpPair]:
    """The operators of the two files paired in graph order (see the module docstring).

    ModelError listing every mismatch when the files do not hold the same operators."""
    q_ops, f_ops = _compute_ops(int8), _compute_ops(float_)
    problems = []
    if len(q_ops) != len(f_ops):
        problems.append(
            f"{int8.path} has {len(q_ops)} operators ({', '.join(o.op for o in q_ops)}) and "
            f"{float_.path} has {len(f_ops)} ({', '.join(o.op for o in f_ops)})"
        )
    pairs = []
    for position, (q, f) in enumerate(zip(q_ops, f_ops, strict=False)):
        qt, ft = int8.tensors[q.outputs[0]], float_.tensors[f.outputs[0]]
        if q.op != f.op:
            problems.append(f"operator {position} is {q.op} in one and {f.op} in the other")
        elif qt.shape[1:] != ft.shape[1:] or len(q.inputs) != len(f.inputs):
            problems.append(
                f"{q.op} {position} outputs {qt.shape} from {len(q.inputs)} inputs in one and "
                f"{ft.shape} from {len(f.inputs)} inputs in the other"
            )
        pairs.append(OpPair(position, q.op, q.index, f.index, q.outputs[0], f.outputs[0]))
    if problems:
        raise ModelError(
            f"cannot match the operators of {int8.path} with its float twin {float_.path}: "
            + "; ".join(problems)
            + " (both must be exported from one folded model: `bnpipe export --mode float32`)"
        )
    return pairs


def _schema():
    from ai_edge_litert import schema_py_generated as fb

    return fb


def _unpack(data: bytes, name: str):
    """The object-API model (ModelT) of bytes tflite_file.py has checked; ModelError otherwise."""
    try:
        return _schema().ModelT.InitFromPackedBuf(bytearray(data), 0)
    except Exception as exc:  # the flatbuffers reader raises many types on a damaged file
        raise ModelError(f"cannot read {name}: {' '.join(str(exc).split())[:200]}") from None


def _tensor_values(model, tensor) -> np.ndarray:
    """A constant integer tensor's values, in its shape."""
    data = model.buffers[tensor.buffer].data
    kind = _enum_name(_schema().TensorType, tensor.type).lower()
    values = np.frombuffer(np.asarray(data, np.uint8).tobytes(), _INTEGER_NUMPY[kind])
    return values.reshape([int(d) for d in tensor.shape])


def _enum_name(enum, value: int) -> str:
    return next(k for k, v in vars(enum).items() if v == value and not k.startswith("_"))


def dequantized(model, tensor) -> np.ndarray:
    """float32 values of a constant integer tensor: (q − zero point) · scale, per channel along
    its quantized dimension where it has several scales."""
    q = tensor.quantization
    values = _tensor_values(model, tensor).astype(np.float64)
    scale = np.asarray(q.scale, np.float64)
    zero = np.asarray(q.zeroPoint if q.zeroPoint is not None else [0], np.float64)
    if scale.size > 1:
        shape = [1] * values.ndim
        shape[q.quantizedDimension] = scale.size
        scale = scale.reshape(shape)
        zero = zero.reshape(shape) if zero.size == scale.size else zero
    return ((values - zero) * scale).astype(np.float32)


def _is_constant(model, tensor) -> bool:
    data = model.buffers[tensor.buffer].data
    return data is not None and len(data) > 0


def _is_quantized(tensor) -> bool:
    q = tensor.quantization
    return q is not None and q.scale is not None and len(q.scale) > 0


class FakeQuant:
    """Builds float twins with chosen layers quantized as in the integer file (module docstring).

    int8_bytes, float_bytes: the two files' bytes, already checked by tflite_file.parse_tflite.
    pairs: match_operators' answer for them. Every model built is a new .tflite (bytes).
    """

    def __init__(self, int8_bytes: bytes, float_bytes: bytes, pairs: list[OpPair],
                 names: tuple[str, str] = ("the integer model", "the float twin")):  # fmt: skip
        self.int8 = _unpack(int8_bytes, names[0])
        self.float_bytes = float_bytes
        self.pairs, self.names = pairs, names
        _unpack(float_bytes, names[1])  # fails here, once, if the float file cannot be read

    def model(self, positions: Iterable[int], quantize_input: bool = False) -> Built:
        """The float twin with the operators at `positions` fake-quantized (module docstring).

        quantize_input: the model's input goes through the integer file's input quantization too.
        ModelError when a weight cannot be carried over (another shape: not twins)."""
        fm = _unpack(self.float_bytes, self.names[1])
        sg, qsg = fm.subgraphs[0], self.int8.subgraphs[0]
        seen = {}
        # Last operator first: inserting after an operator leaves the indices before it valid.
        for position in sorted(set(positions), reverse=True):
            pair = self.pairs[position]
            self._carry_weights(fm, pair)
            out = qsg.tensors[pair.int8_output]
            if _is_quantized(out):
                seen[position] = _fake_quantize(fm, pair.float_output, out, after=pair.float_op)
            else:
                seen[position] = pair.float_output
        if quantize_input:
            q_in = qsg.tensors[qsg.inputs[0]]
            if _is_quantized(q_in):
                _fake_quantize(fm, sg.inputs[0], q_in, after=-1)
        from ai_edge_litert.tools import flatbuffer_utils

        data = bytes(flatbuffer_utils.convert_object_to_bytearray(fm))
        return Built(data, seen, int(sg.outputs[0]))

    def _carry_weights(self, fm, pair: OpPair) -> None:
        """Replace the float operator's constant inputs by the integer file's, dequantized."""
        sg, qsg = fm.subgraphs[0], self.int8.subgraphs[0]
        q_op, f_op = qsg.operators[pair.int8_op], sg.operators[pair.float_op]
        for qi, fi in zip(q_op.inputs, f_op.inputs, strict=True):
            if qi < 0 or fi < 0:
                continue
            qt, ft = qsg.tensors[qi], sg.tensors[fi]
            if not (_is_constant(self.int8, qt) and _is_quantized(qt) and _is_constant(fm, ft)):
                continue
            values = dequantized(self.int8, qt)
            if list(values.shape) != [int(d) for d in ft.shape]:
                raise ModelError(
                    f"{pair.op} {pair.position}: weight {ft.name.decode()!r} is "
                    f"{list(ft.shape)} in {self.names[1]} but {list(values.shape)} in "
                    f"{self.names[0]}; they are not twins"
                )
            buf = _schema().BufferT()  # a new buffer: the old one may be shared with others
            buf.data = np.frombuffer(values.tobytes(), np.uint8)
            fm.buffers.append(buf)
            ft.buffer = len(fm.buffers) - 1


def _opcode(fm, name: str, version: int) -> int:
    """Index of the operator code `name` in fm (added if missing, its version raised if lower)."""
    fb = _schema()
    code = getattr(fb.BuiltinOperator, name)
    for i, oc in enumerate(fm.operatorCodes):
        if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code and not oc.customCode:
            oc.version = max(oc.version, version)
            return i
    oc = fb.OperatorCodeT()
    oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), version
    fm.operatorCodes.append(oc)
    return len(fm.operatorCodes) - 1


def _new_tensor(sg, like, name: bytes, ttype: int, quantization=None) -> int:
    fb = _schema()
    t = fb.TensorT()
    t.shape = None if like.shape is None else np.array(like.shape, np.int32)
    t.shapeSignature = None if like.shapeSignature is None else np.array(like.shapeSignature)
    t.type, t.buffer, t.name, t.quantization = ttype, 0, name, quantization
    sg.tensors.append(t)
    return len(sg.tensors) - 1


def _fake_quantize(fm, tensor: int, quantized_like, after: int) -> int:
    """Insert QUANTIZE → DEQUANTIZE on float tensor `tensor` right after operator `after` (−1:
    first), with `quantized_like`'s type, scale and zero point; every later reader of `tensor`
    (operators and the subgraph's outputs) reads the result instead. Returns its index."""
    fb = _schema()
    sg = fm.subgraphs[0]
    src = sg.tensors[tensor]
    kind = _enum_name(fb.TensorType, quantized_like.type).lower()
    if kind not in _QDQ_VERSION:
        raise ModelError(f"cannot fake-quantize to {kind} (tensor {src.name.decode()!r})")
    q = fb.QuantizationParametersT()
    q.scale = np.array(quantized_like.quantization.scale, np.float32)
    q.zeroPoint = np.array(quantized_like.quantization.zeroPoint, np.int64)
    q.quantizedDimension = 0
    name = src.name + b"/fake_quant"
    q_index = _new_tensor(sg, src, name, quantized_like.type, q)
    dq_index = _new_tensor(sg, src, name + b"/dequantized", src.type)
    for op in sg.operators[after + 1 :]:
        op.inputs = np.array([dq_index if i == tensor else i for i in op.inputs], np.int32)
    sg.outputs = np.array([dq_index if i == tensor else i for i in sg.outputs], np.int32)
    v_quantize, v_dequantize = _QDQ_VERSION[kind]
    ops = []
    for opname, version, inputs, outputs in (
        ("QUANTIZE", v_quantize, [tensor], [q_index]),
        ("DEQUANTIZE", v_dequantize, [q_index], [dq_index]),
    ):
        op = fb.OperatorT()
        op.opcodeIndex = _opcode(fm, opname, version)
        op.inputs, op.outputs = np.array(inputs, np.int32), np.array(outputs, np.int32)
        ops.append(op)
    sg.operators[after + 1 : after + 1] = ops
    return dq_index
