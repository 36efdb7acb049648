"""Reading, checking and annotating `.tflite` files without an interpreter.

A malformed flatbuffer can crash LiteRT's C++ loader (a segfault takes the whole CLI down), so
every file is parsed here first, in Python, where a bad offset is an exception, not a crash.
The reader follows the offsets itself and checks each one before reading there (~0.2 ms for
bnpipe's models; unpacking the whole model with the flatbuffers object API, as this module did
before, took ~1.4 ms, most of it building Python objects for fields nothing here uses).

Checked here, in every subgraph:
  - the header: size, the TFL3 identifier, the root offset;
  - every table reached from the root (model, operator codes, subgraphs, tensors, quantization,
    operators, buffers, metadata, signatures and their tensor maps, variant tensors, external
    buffer entries, and the tables behind an operator's options, a tensor's sparsity and a
    quantization's details): its vtable and its inline fields lie inside the file;
  - every vector and string those tables hold (shapes, names, scales, zero points, tensor lists,
    buffer data, custom options, intermediates …) lies inside the file, its length included;
  - every index: an operator's opcode, the tensors of operators and of the subgraph's inputs and
    outputs, a tensor's buffer; a tensor's type is a known TensorType; a buffer's offset + size
    (data stored after the flatbuffer) ends inside the file;
  - a tensor's shape fits its shape signature (TFLM sizes a tensor by the one, bnpipe reads the
    other).
Not checked here, left to the interpreters, which only ever run in child processes (runtimes/):
what lies one table deeper behind an
operator's options, a tensor's sparsity or a quantization's details (their own vectors and
sub-tables, e.g. a RESHAPE's new shape; the object API read those, so an offset out of range
there was refused before and is not now), vector alignment, values in range that a kernel still
refuses (a SOFTMAX with beta 0) and operator semantics. Stricter than the object API: a string
whose length runs past the end of the file (the object API cut it short and read on), a table
whose vtable is malformed, indices in subgraphs other than the first.

bnpipe writes its own metadata entry (`bnpipe`, JSON) into each model it exports: the
preprocessing and the input/output quantization, so the file alone says how to feed it.
Imports only numpy, flatbuffers and LiteRT's generated schema (no TensorFlow).
"""

from __future__ import annotations

import functools
import json
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import ModelError

METADATA_NAME = "bnpipe"
MIN_SIZE = 32  # root offset, identifier, and the smallest model table
# A flatbuffer addresses at most 2 GiB; bnpipe's classifiers are kilobytes to megabytes. Reading
# stops past this, so a device or a huge file given as a model cannot take unbounded memory.
MAX_SIZE = 1024**3


def _schema():
    from ai_edge_litert import schema_py_generated as fb

    return fb


def _enum_names(cls) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


@dataclass
class TensorInfo:
    index: int
    name: str
    shape: list[int]
    dtype: str
    scale: list[float] = field(default_factory=list)
    zero_point: list[int] = field(default_factory=list)
    is_constant: bool = False


@dataclass
class OperatorInfo:
    index: int
    op: str
    inputs: list[int]
    outputs: list[int]


@dataclass
class TfliteInfo:
    path: str
    size_bytes: int
    version: int
    description: str
    operators: list[OperatorInfo]
    tensors: list[TensorInfo]
    inputs: list[int]
    outputs: list[int]
    metadata: dict[str, Any]  # bnpipe's own entry (decoded JSON), {} if absent
    metadata_names: list[str]
    # The first signature's tensor maps, {"inputs": {name: tensor index}, "outputs": {…}}: a
    # Keras model's output names, which pair each output with its tensor (tflite/signature.py).
    signature: dict[str, dict[str, int]] = field(default_factory=dict)

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self.operators:
            counts[o.op] = counts.get(o.op, 0) + 1
        return counts

    def input_tensor(self) -> TensorInfo:
        return self.tensors[self.inputs[0]]

    def output_tensor(self) -> TensorInfo:
        return self.tensors[self.outputs[0]]


def read_tflite(path: str | Path) -> TfliteInfo:
    """Parse and structurally check a .tflite file. ModelError for anything malformed."""
    return parse_tflite(read_model_bytes(path), str(path))


def read_model_bytes(path: str | Path) -> bytes:
    """The bytes of a model file: a regular file of at most MAX_SIZE bytes, else ModelError
    saying what it is. A FIFO or a device is refused before it is opened (it could block or never
    end), and no more than MAX_SIZE + 1 bytes are ever read."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise ModelError(f"{path} is a directory, not a .tflite file")
        if not stat.S_ISREG(mode):
            raise ModelError(f"{path} is not a regular file (a device, a FIFO or a socket)")
        with path.open("rb") as f:
            data = f.read(MAX_SIZE + 1)
    except FileNotFoundError:
        raise ModelError(f"model file {path} does not exist") from None
    except OSError as err:
        raise ModelError(f"cannot read {path}: {err.strerror or err}") from None
    if len(data) > MAX_SIZE:
        raise ModelError(f"{path} is larger than {MAX_SIZE} bytes: not a model bnpipe can check")
    return data


def parse_tflite(data: bytes, name: str = "<bytes>") -> TfliteInfo:
    """Parse and structurally check a model's bytes (see the module docstring). ModelError for
    anything malformed, naming `name`. Copies what it returns; the bytes are only read."""
    if len(data) < MIN_SIZE:
        raise ModelError(f"{name} is not a TFLite model: {len(data)} bytes is too short")
    if data[4:8] != b"TFL3":
        raise ModelError(f"{name} is not a TFLite model: no TFL3 identifier (found {data[4:8]!r})")
    root = int.from_bytes(data[0:4], "little")
    if not 8 <= root < len(data):
        raise ModelError(
            f"{name} is damaged: root offset {root} is outside the {len(data)}-byte file"
        )
    return _describe(_Reader(bytes(data), name), root)


# Field slots of the tables read here, in the order of LiteRT's schema.fbs: the generated accessors
# read slot s at vtable entry 4 + 2·s, and flatbuffers never renumbers a field (new ones are
# appended). tests/test_tflite_file.py checks each against ai_edge_litert's generated schema.
class _Model:
    (
        VERSION,
        OPERATOR_CODES,
        SUBGRAPHS,
        DESCRIPTION,
        BUFFERS,
        METADATA_BUFFER,
        METADATA,
        SIGNATURE_DEFS,
        EXTERNAL_BUFFER_GROUPS,
        EXTERNAL_BUFFERS,
    ) = range(10)


class _OperatorCode:
    DEPRECATED_BUILTIN_CODE, CUSTOM_CODE, VERSION, BUILTIN_CODE = range(4)


class _SubGraph:
    TENSORS, INPUTS, OUTPUTS, OPERATORS, NAME = range(5)


class _Tensor:
    (
        SHAPE,
        TYPE,
        BUFFER,
        NAME,
        QUANTIZATION,
        IS_VARIABLE,
        SPARSITY,
        SHAPE_SIGNATURE,
        HAS_RANK,
        VARIANT_TENSORS,
    ) = range(10)


class _Quantization:
    MIN, MAX, SCALE, ZERO_POINT, DETAILS_TYPE, DETAILS = range(6)


class _Operator:
    (
        OPCODE_INDEX,
        INPUTS,
        OUTPUTS,
        BUILTIN_OPTIONS_TYPE,
        BUILTIN_OPTIONS,
        CUSTOM_OPTIONS,
        CUSTOM_OPTIONS_FORMAT,
        MUTATING_VARIABLE_INPUTS,
        INTERMEDIATES,
        LARGE_CUSTOM_OPTIONS_OFFSET,
        LARGE_CUSTOM_OPTIONS_SIZE,
        BUILTIN_OPTIONS_2_TYPE,
        BUILTIN_OPTIONS_2,
    ) = range(13)


class _Buffer:
    DATA, OFFSET, SIZE = range(3)


class _Metadata:
    NAME, BUFFER = range(2)


class _SignatureDef:
    INPUTS, OUTPUTS, SIGNATURE_KEY = range(3)


class _TensorMap:
    NAME, TENSOR_INDEX = range(2)


class _VariantSubType:
    SHAPE = 0


_I8 = struct.Struct("<b")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_VTABLE_HEADER = struct.Struct("<HH")  # the vtable's own length, the table's inline length
_ITEM_SIZE = {"i": 4, "f": 4, "q": 8}


class _Reader:
    """Reads a flatbuffer and checks, before each read, that what it reads lies inside the bytes.

    A table is (its position, its vtable entries); a field that is absent reads as its default.
    Positions reached by following offsets are sums of unsigned numbers, so never negative; a
    vtable is found by subtracting a signed one, so it is checked on both sides. Every failure is
    one ModelError naming the file and what reached outside it.
    """

    def __init__(self, data: bytes, name: str):
        self.data, self.size, self.name = data, len(data), name

    def outside(self, pos: int, length: int, what: str) -> ModelError:
        return ModelError(
            f"{self.name} is damaged or truncated: {what} at bytes {pos}–{pos + length} "
            f"lies outside the {self.size}-byte file"
        )

    def table(self, pos: int, what: str) -> tuple[int, tuple[int, ...]]:
        """The table at `pos`: its vtable and its inline fields must lie inside the file."""
        data, size = self.data, self.size
        if pos + 4 > size:
            raise self.outside(pos, 4, what)
        vtable = pos - _I32.unpack_from(data, pos)[0]
        if vtable < 0 or vtable + 4 > size:
            raise self.outside(vtable, 4, "the vtable of " + what)
        vt_len, inline_len = _VTABLE_HEADER.unpack_from(data, vtable)
        if vt_len < 4 or vt_len % 2 or inline_len < 4:
            raise ModelError(
                f"{self.name} is damaged: {what} has a vtable of {vt_len} bytes and "
                f"{inline_len} inline bytes"
            )
        if vtable + vt_len > size:
            raise self.outside(vtable, vt_len, "the vtable of " + what)
        if pos + inline_len > size:
            raise self.outside(pos, inline_len, what)
        entries = struct.unpack_from(f"<{(vt_len - 4) // 2}H", data, vtable + 4)
        if entries and max(entries) >= inline_len:
            raise ModelError(
                f"{self.name} is damaged: {what} has a field at byte {max(entries)} of its "
                f"{inline_len}"
            )
        return pos, entries

    # A field's position: its vtable entry added to the table's (an entry of 0, or none, means the
    # field is absent: no field sits at offset 0, where the vtable offset is). Written out in each
    # reader below: parsing is on verify's path, and a call per field was a fifth of its time.

    def scalar(self, t, slot: int, kind: struct.Struct, default: int = 0) -> int:
        entries = t[1]
        off = entries[slot] if slot < len(entries) else 0
        if not off:
            return default
        pos = t[0] + off
        # The field starts inside the table's inline bytes (table() checked them), but one of
        # several bytes at their very end could still reach past the end of the file.
        if pos + kind.size > self.size:
            raise self.outside(pos, kind.size, "a scalar field")
        return kind.unpack_from(self.data, pos)[0]

    def _target(self, t, slot: int, what: str) -> int:
        """Where the offset field points, 0 when the field is absent."""
        entries = t[1]
        off = entries[slot] if slot < len(entries) else 0
        if not off:
            return 0
        pos = t[0] + off
        if pos + 4 > self.size:
            raise self.outside(pos, 4, what)
        return pos + _U32.unpack_from(self.data, pos)[0]

    def vector(self, t, slot: int, item_size: int, what: str) -> tuple[int, int] | None:
        """(position of the first item, item count), None when absent."""
        at = self._target(t, slot, what)
        if not at:
            return None
        if at + 4 > self.size:
            raise self.outside(at, 4, what)
        n = _U32.unpack_from(self.data, at)[0]
        if at + 4 + n * item_size > self.size:
            raise self.outside(at + 4, n * item_size, what)
        return at + 4, n

    def numbers(self, t, slot: int, code: str, what: str) -> list | None:
        """A vector of scalars (struct code: i int32, f float32, q int64) as a list, or None."""
        v = self.vector(t, slot, _ITEM_SIZE[code], what)
        return None if v is None else list(struct.unpack_from(f"<{v[1]}{code}", self.data, v[0]))

    def text(self, t, slot: int, what: str) -> str:
        v = self.vector(t, slot, 1, what)
        return "" if v is None else self.data[v[0] : v[0] + v[1]].decode("utf-8", "replace")

    def sub_table(self, t, slot: int, what: str):
        at = self._target(t, slot, what)
        return self.table(at, what) if at else None

    def tables(self, t, slot: int, what: str) -> list:
        v = self.vector(t, slot, 4, what)
        if v is None:
            return []
        start, n = v
        offsets = struct.unpack_from(f"<{n}I", self.data, start)
        return [self.table(start + 4 * i + off, what) for i, off in enumerate(offsets)]


@functools.cache
def _names() -> tuple[dict[int, str], dict[int, str]]:
    fb = _schema()
    return _enum_names(fb.BuiltinOperator), _enum_names(fb.TensorType)


def _describe(r: _Reader, root: int) -> TfliteInfo:
    ops_names, type_names = _names()
    name, size = r.name, r.size
    model = r.table(root, "the model table")
    subgraphs = r.tables(model, _Model.SUBGRAPHS, "a subgraph")
    if not subgraphs:
        raise ModelError(f"{name} is damaged: it has no subgraph")
    codes = []
    for oc in r.tables(model, _Model.OPERATOR_CODES, "an operator code"):
        code = max(
            r.scalar(oc, _OperatorCode.BUILTIN_CODE, _I32),
            r.scalar(oc, _OperatorCode.DEPRECATED_BUILTIN_CODE, _I8),
        )
        op = ops_names.get(code, f"UNKNOWN_{code}")
        custom = r.text(oc, _OperatorCode.CUSTOM_CODE, "a custom operator's name")
        codes.append(f"CUSTOM:{custom}" if op == "CUSTOM" else op)
    # Per buffer: (data position, data length) or None, and whether it holds anything.
    buffers = []
    for i, b in enumerate(r.tables(model, _Model.BUFFERS, "a buffer")):
        data = r.vector(b, _Buffer.DATA, 1, "a buffer's data")
        offset, length = r.scalar(b, _Buffer.OFFSET, _U64), r.scalar(b, _Buffer.SIZE, _U64)
        if offset + length > size:
            raise ModelError(f"{name} is truncated: buffer {i} ends past the end of the file")
        buffers.append((data, bool(data and data[1]) or length > 0))
    r.numbers(model, _Model.METADATA_BUFFER, "i", "the metadata buffer list")
    signature = _signature(r, model)
    r.tables(model, _Model.EXTERNAL_BUFFER_GROUPS, "an external buffer group")
    r.tables(model, _Model.EXTERNAL_BUFFERS, "an external buffer")

    described = [_subgraph(r, sg, k, codes, buffers, type_names) for k, sg in enumerate(subgraphs)]
    tensors, operators, inputs, outputs = described[0]
    if not inputs or not outputs:
        raise ModelError(f"{name} has no inputs or no outputs")
    meta, meta_names = {}, []
    for m in r.tables(model, _Model.METADATA, "a metadata entry"):
        meta_names.append(mname := r.text(m, _Metadata.NAME, "a metadata entry's name"))
        index = r.scalar(m, _Metadata.BUFFER, _U32)
        span = buffers[index][0] if index < len(buffers) else None  # (start, length) or None
        if mname == METADATA_NAME and span:
            start, n = span
            try:
                meta = json.loads(r.data[start : start + n].decode("utf-8"))
            except ValueError:  # not UTF-8, or not JSON
                meta = {}
    return TfliteInfo(
        name,
        size,
        r.scalar(model, _Model.VERSION, _U32),
        r.text(model, _Model.DESCRIPTION, "the description"),
        operators,
        tensors,
        inputs,
        outputs,
        meta,
        meta_names,
        signature,
    )


def _signature(r: _Reader, model) -> dict[str, dict[str, int]]:
    """The first signature's {"inputs": {name: tensor index}, "outputs": {…}} (the converter
    writes serving_default alone); every signature is read, so a damaged one is refused."""
    signature: dict[str, dict[str, int]] = {"inputs": {}, "outputs": {}}
    for k, sig in enumerate(r.tables(model, _Model.SIGNATURE_DEFS, "a signature")):
        r.text(sig, _SignatureDef.SIGNATURE_KEY, "a signature's key")
        for role, slot in (("inputs", _SignatureDef.INPUTS), ("outputs", _SignatureDef.OUTPUTS)):
            for tmap in r.tables(sig, slot, "a signature's tensor"):
                key = r.text(tmap, _TensorMap.NAME, "a signature tensor's name")
                if k == 0:
                    signature[role][key] = r.scalar(tmap, _TensorMap.TENSOR_INDEX, _U32)
    return signature


def _fits(shape: list[int], signature: list[int]) -> bool:
    """Whether a shape is an instance of a shape signature: the same rank, and each dimension as
    the signature has it where the signature does not leave it open (-1)."""
    return len(shape) == len(signature) and all(
        s in (-1, d) for d, s in zip(shape, signature, strict=True)
    )


def _subgraph(r: _Reader, sg, k: int, codes: list[str], buffers: list, type_names: dict):
    """Subgraph k: (tensors, operators, inputs, outputs), every index checked to be in range."""
    name = r.name if k == 0 else f"{r.name} subgraph {k}"  # messages name subgraph 0 the file
    tensors = [
        _tensor(r, t, i, name, buffers, type_names)
        for i, t in enumerate(r.tables(sg, _SubGraph.TENSORS, "a tensor"))
    ]
    n = len(tensors)

    def check_idx(t, slot, what):
        idx = r.numbers(t, slot, "i", f"the tensor list of {what}") or []
        bad = [x for x in idx if not -1 <= x < n]
        if bad:
            raise ModelError(f"{name} is damaged: {what} refers to tensor {bad[0]} of {n}")
        return idx

    operators = []
    for i, op in enumerate(r.tables(sg, _SubGraph.OPERATORS, "an operator")):
        code = r.scalar(op, _Operator.OPCODE_INDEX, _U32)
        if not code < len(codes):
            raise ModelError(f"{name} is damaged: operator {i} has opcode {code} of {len(codes)}")
        ins = check_idx(op, _Operator.INPUTS, f"operator {i}")
        operators.append(
            OperatorInfo(i, codes[code], ins, check_idx(op, _Operator.OUTPUTS, f"operator {i}"))
        )
        r.sub_table(op, _Operator.BUILTIN_OPTIONS, "an operator's options")
        r.sub_table(op, _Operator.BUILTIN_OPTIONS_2, "an operator's options")
        r.vector(op, _Operator.CUSTOM_OPTIONS, 1, "an operator's custom options")
        r.vector(op, _Operator.MUTATING_VARIABLE_INPUTS, 1, "an operator's variable inputs")
        r.numbers(op, _Operator.INTERMEDIATES, "i", "an operator's intermediates")
    inputs = check_idx(sg, _SubGraph.INPUTS, "the inputs")
    outputs = check_idx(sg, _SubGraph.OUTPUTS, "the outputs")
    r.text(sg, _SubGraph.NAME, "a subgraph's name")
    return tensors, operators, inputs, outputs


def _tensor(r: _Reader, t, i: int, name: str, buffers: list, type_names: dict) -> TensorInfo:
    """Tensor i of subgraph `name`, its buffer, type, quantization and shape checked."""
    buffer = r.scalar(t, _Tensor.BUFFER, _U32)
    if not buffer < max(len(buffers), 1):
        raise ModelError(
            f"{name} is damaged: tensor {i} points at buffer {buffer} of {len(buffers)}"
        )
    ttype = r.scalar(t, _Tensor.TYPE, _I8)
    if ttype not in type_names:
        raise ModelError(f"{name} is damaged: tensor {i} has unknown type {ttype}")
    scale, zero_point = [], []
    q = r.sub_table(t, _Tensor.QUANTIZATION, "a tensor's quantization")
    if q is not None:
        scale = r.numbers(q, _Quantization.SCALE, "f", "a quantization scale") or []
        zero_point = r.numbers(q, _Quantization.ZERO_POINT, "q", "a quantization zero point") or []
        r.numbers(q, _Quantization.MIN, "f", "a quantization minimum")
        r.numbers(q, _Quantization.MAX, "f", "a quantization maximum")
        r.sub_table(q, _Quantization.DETAILS, "a tensor's quantization details")
    r.sub_table(t, _Tensor.SPARSITY, "a tensor's sparsity")
    for variant in r.tables(t, _Tensor.VARIANT_TENSORS, "a variant tensor"):
        r.numbers(variant, _VariantSubType.SHAPE, "i", "a variant tensor's shape")
    shape = r.numbers(t, _Tensor.SHAPE, "i", "a tensor's shape")
    signature = r.numbers(t, _Tensor.SHAPE_SIGNATURE, "i", "a tensor's shape signature")
    if signature is not None and not _fits(shape or [], signature):
        # TFLM sizes the tensor by its shape, LiteRT and bnpipe by its signature
        raise ModelError(
            f"{name} is damaged: tensor {i} has shape {shape} but shape signature {signature}"
        )
    tname = r.text(t, _Tensor.NAME, "a tensor's name")
    const = bool(buffers) and buffers[buffer][1]
    dims = signature if signature is not None else (shape or [])
    return TensorInfo(i, tname, dims, type_names[ttype].lower(), scale, zero_point, const)


def buffer_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, length) of every non-empty buffer's bytes inside the flatbuffer, in buffer order:
    where a model keeps its weights, as opposed to its structure (tables, shapes, indices). For
    tools that treat the two apart, such as scripts/fuzz_tflite.py. ModelError as parse_tflite."""
    parse_tflite(data)
    r = _Reader(bytes(data), "<bytes>")
    model = r.table(int.from_bytes(data[0:4], "little"), "the model table")
    spans = []
    for b in r.tables(model, _Model.BUFFERS, "a buffer"):
        v = r.vector(b, _Buffer.DATA, 1, "a buffer's data")
        if v is not None and v[1]:
            spans.append(v)
    return spans


def with_metadata(data: bytes, payload: dict[str, Any]) -> bytes:
    """A copy of the model bytes with bnpipe's JSON metadata entry set (replaced if present)."""
    fb = _schema()
    from ai_edge_litert.tools import flatbuffer_utils

    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    blob = np.frombuffer(json.dumps(payload, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    model.metadata = [
        m
        for m in (model.metadata or [])
        if (m.name.decode() if isinstance(m.name, bytes) else m.name) != METADATA_NAME
    ]
    buf = fb.BufferT()
    buf.data = blob
    model.buffers.append(buf)
    entry = fb.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


_RUNNABLE_IO = ("float32", "float16", "int8", "uint8", "int16")


def check_io(info: TfliteInfo) -> TfliteInfo:
    """`info` if its input and output tensors are ones bnpipe can feed and read, else ModelError.

    A batch axis and a feature axis; a dtype bnpipe quantizes to or reads; an integer tensor with
    exactly one finite scale > 0 and one zero point (per-tensor, as the converter writes I/O).
    """
    import math

    for role, t in (("input", info.input_tensor()), ("output", info.output_tensor())):
        where = f"{info.path}: its {role} tensor {t.name!r}"
        if len(t.shape) < 2:
            raise ModelError(f"{where} has shape {t.shape}; bnpipe needs (batch, features)")
        if t.dtype not in _RUNNABLE_IO:
            raise ModelError(
                f"{where} is {t.dtype}; bnpipe feeds and reads only {', '.join(_RUNNABLE_IO)}"
            )
        if t.dtype in ("int8", "uint8", "int16") and not (
            len(t.scale) == 1
            and len(t.zero_point) == 1
            and math.isfinite(t.scale[0])
            and t.scale[0] > 0
        ):
            raise ModelError(
                f"{where} is {t.dtype} with scale {t.scale} and zero point "
                f"{t.zero_point}; bnpipe needs one finite scale > 0 and one zero point"
            )
    return info


def quant_params(t: TensorInfo) -> dict[str, Any]:
    """scale / zero point of a per-tensor quantized tensor, or None for a float tensor."""
    if not t.scale:
        return {"dtype": t.dtype, "scale": None, "zero_point": None}
    return {
        "dtype": t.dtype,
        "scale": t.scale[0] if len(t.scale) == 1 else t.scale,
        "zero_point": t.zero_point[0] if len(t.zero_point) == 1 else t.zero_point,
    }
