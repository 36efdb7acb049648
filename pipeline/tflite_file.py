"""Reading, checking and annotating `.tflite` files without an interpreter.

A malformed flatbuffer can crash LiteRT's C++ loader (a segfault takes the whole CLI down), so
every file is parsed here first, in Python, where a bad offset is an exception, not a crash:
the identifier, every table reachable from the root, and every index (operator codes, tensors,
buffers) is checked to be in range before an interpreter is allowed to touch the file.

bnpipe writes its own metadata entry (`bnpipe`, JSON) into each model it exports: the
preprocessing and the input/output quantization, so the file alone says how to feed it.
Imports only numpy, flatbuffers and LiteRT's generated schema (no TensorFlow).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelError

METADATA_NAME = "bnpipe"
MIN_SIZE = 32  # root offset, identifier, and the smallest model table


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
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"model file {path} does not exist") from None
    except IsADirectoryError:
        raise ModelError(f"{path} is a directory, not a .tflite file") from None
    return parse_tflite(data, str(path))


def parse_tflite(data: bytes, name: str = "<bytes>") -> TfliteInfo:
    fb = _schema()
    if len(data) < MIN_SIZE:
        raise ModelError(f"{name} is not a TFLite model: {len(data)} bytes is too short")
    if data[4:8] != b"TFL3":
        raise ModelError(f"{name} is not a TFLite model: no TFL3 identifier (found {data[4:8]!r})")
    root = int.from_bytes(data[0:4], "little")
    if not 8 <= root < len(data):
        raise ModelError(f"{name} is damaged: root offset {root} is outside the {len(data)}-byte file")
    try:
        model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
        info = _describe(model, fb, name, len(data))
    except ModelError:
        raise
    except Exception as exc:  # struct.error, IndexError, ValueError, UnicodeDecodeError …
        raise ModelError(f"{name} is damaged or truncated: {type(exc).__name__}: {exc}"[:300]) from None
    return info


def _describe(model, fb, name: str, size: int) -> TfliteInfo:
    ops_names = _enum_names(fb.BuiltinOperator)
    type_names = _enum_names(fb.TensorType)
    if not model.subgraphs:
        raise ModelError(f"{name} is damaged: it has no subgraph")
    codes = []
    for oc in model.operatorCodes or []:
        code = max(int(oc.builtinCode or 0), int(oc.deprecatedBuiltinCode or 0))
        op = ops_names.get(code, f"UNKNOWN_{code}")
        if op == "CUSTOM":
            op = f"CUSTOM:{(oc.customCode or b'').decode('utf-8', 'replace') if isinstance(oc.customCode, bytes) else oc.customCode}"
        codes.append(op)
    buffers = model.buffers or []
    sg = model.subgraphs[0]
    tensors_t = sg.tensors or []
    tensors = []
    for i, t in enumerate(tensors_t):
        if t.buffer is not None and not 0 <= t.buffer < max(len(buffers), 1):
            raise ModelError(f"{name} is damaged: tensor {i} points at buffer {t.buffer} of {len(buffers)}")
        if t.type not in type_names:
            raise ModelError(f"{name} is damaged: tensor {i} has unknown type {t.type}")
        q = t.quantization
        scale = [float(s) for s in (q.scale if q is not None and q.scale is not None else [])]
        zp = [int(z) for z in (q.zeroPoint if q is not None and q.zeroPoint is not None else [])]
        buf = buffers[t.buffer] if buffers and t.buffer is not None else None
        const = buf is not None and ((buf.data is not None and len(buf.data) > 0) or (buf.size or 0) > 0)
        if buf is not None and (buf.offset or 0) + (buf.size or 0) > size:
            raise ModelError(f"{name} is truncated: buffer {t.buffer} ends past the end of the file")
        tname = t.name.decode("utf-8", "replace") if isinstance(t.name, bytes) else (t.name or "")
        shape = [int(d) for d in (t.shapeSignature if t.shapeSignature is not None else
                                  (t.shape if t.shape is not None else []))]
        tensors.append(TensorInfo(i, tname, shape, type_names[t.type].lower(), scale, zp, const))
    n = len(tensors)

    def check_idx(idx_list, what):
        idx = [int(x) for x in (idx_list if idx_list is not None else [])]
        bad = [x for x in idx if not -1 <= x < n]
        if bad:
            raise ModelError(f"{name} is damaged: {what} refers to tensor {bad[0]} of {n}")
        return idx

    operators = []
    for i, op in enumerate(sg.operators or []):
        if not 0 <= op.opcodeIndex < len(codes):
            raise ModelError(f"{name} is damaged: operator {i} has opcode {op.opcodeIndex} of {len(codes)}")
        operators.append(OperatorInfo(i, codes[op.opcodeIndex], check_idx(op.inputs, f"operator {i}"),
                                      check_idx(op.outputs, f"operator {i}")))
    inputs, outputs = check_idx(sg.inputs, "the inputs"), check_idx(sg.outputs, "the outputs")
    if not inputs or not outputs:
        raise ModelError(f"{name} has no inputs or no outputs")
    meta, meta_names = {}, []
    for m in model.metadata or []:
        mname = m.name.decode("utf-8", "replace") if isinstance(m.name, bytes) else (m.name or "")
        meta_names.append(mname)
        if mname == METADATA_NAME and m.buffer is not None and 0 <= m.buffer < len(buffers):
            raw = buffers[m.buffer].data
            try:
                meta = json.loads(bytes(np.asarray(raw, dtype=np.uint8)).decode("utf-8"))
            except (ValueError, TypeError):
                meta = {}
    desc = model.description.decode("utf-8", "replace") if isinstance(model.description, bytes) else (model.description or "")
    return TfliteInfo(name, size, int(model.version or 0), desc, operators, tensors, inputs,
                      outputs, meta, meta_names)


def with_metadata(data: bytes, payload: dict[str, Any]) -> bytes:
    """A copy of the model bytes with bnpipe's JSON metadata entry set (replaced if present)."""
    fb = _schema()
    from ai_edge_litert.tools import flatbuffer_utils

    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    blob = np.frombuffer(json.dumps(payload, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    model.metadata = [m for m in (model.metadata or [])
                      if (m.name.decode() if isinstance(m.name, bytes) else m.name) != METADATA_NAME]
    buf = fb.BufferT()
    buf.data = blob
    model.buffers.append(buf)
    entry = fb.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def quant_params(t: TensorInfo) -> dict[str, Any]:
    """scale / zero point of a per-tensor quantized tensor, or None for a float tensor."""
    if not t.scale:
        return {"dtype": t.dtype, "scale": None, "zero_point": None}
    return {"dtype": t.dtype, "scale": t.scale[0] if len(t.scale) == 1 else t.scale,
            "zero_point": t.zero_point[0] if len(t.zero_point) == 1 else t.zero_point}
