"""What `bnpipe layers` checks of a `.tflite` file before it recomputes anything from it.

The structural check (tflite/file.py) proves every offset and index in range; verify then only
runs the file, and LiteRT sizes every tensor itself. `layers` goes further: it reads weights out
of the file and rebuilds models from them (fakequant.py), and compares tensors that LiteRT computes
with the shapes the file declares. A damaged file can be structurally sound and still lie there:
a constant's buffer shorter or longer than its shape, per-channel scales along an axis it does
not have, or an operator (a CONV_2D whose stride was changed to 3) that computes another shape
than its output tensor declares. Each is a ModelError naming the tensor, not a reshape error
deep in the recomputation.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.errors import ModelError

# Bytes per element of the tensor types a constant of bnpipe's models has.
ITEM_BYTES = {"FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "INT64": 8, "INT16": 2, "INT8": 1}
ITEM_BYTES |= {"UINT8": 1, "BOOL": 1}


def _schema():
    from ai_edge_litert import schema_py_generated as fb

    return fb


def check_constants(data: bytes, name: str) -> None:
    """ModelError unless every constant tensor of the (structurally checked) file at `name`
    holds exactly the bytes its shape and type take, and every per-channel quantization has one
    scale (and zero point) per channel of an axis the tensor has."""
    fb = _schema()
    try:
        model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    except Exception as exc:  # the flatbuffers reader raises many types on a damaged file
        raise ModelError(f"cannot read {name}: {' '.join(str(exc).split())[:200]}") from None
    types = {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    for sg in model.subgraphs or []:
        for i, t in enumerate(sg.tensors or []):
            shape = [int(d) for d in (t.shape if t.shape is not None else [])]
            label = f"{name} is damaged: tensor {i} ({_text(t.name)})"
            buffer = model.buffers[t.buffer] if t.buffer < len(model.buffers or []) else None
            size = 0 if buffer is None or buffer.data is None else len(buffer.data)
            item = ITEM_BYTES.get(types.get(t.type, ""))
            whole = not any(d < 0 for d in shape)
            expected = int(np.prod(shape, dtype=np.int64)) * (item or 0) if whole else None
            if size and item is not None and expected != size:
                raise ModelError(
                    f"{label} has shape {shape} of {types.get(t.type)} but a buffer of "
                    f"{size:,} bytes"
                )
            _check_channels(t.quantization, shape, label)


def _check_channels(q, shape: list[int], label: str) -> None:
    scales = 0 if q is None or q.scale is None else len(q.scale)
    if scales <= 1:
        return
    axis = q.quantizedDimension
    if not 0 <= axis < len(shape) or shape[axis] != scales:
        raise ModelError(
            f"{label} has {scales} scales along axis {axis} of its shape {shape}; per-channel "
            "quantization needs one per channel"
        )
    zeros = 0 if q.zeroPoint is None else len(q.zeroPoint)
    if zeros not in (1, scales):
        raise ModelError(f"{label} has {scales} scales but {zeros} zero points")


def check_computed_shapes(jobs, runs: list[dict]) -> None:
    """ModelError unless every tensor LiteRT computed for `jobs` (TensorJob: model bytes and the
    tensor indices kept) has the shape its model declares, batch axis aside: an operator whose
    options were changed computes another shape than the file says."""
    from pipeline.tflite.file import parse_tflite

    for job, run in zip(jobs, runs, strict=True):
        info = parse_tflite(job.model, job.label) if isinstance(job.model, bytes) else None
        if info is None:
            continue
        for index, values in run.items():
            declared = list(info.tensors[index].shape[1:])
            computed = list(np.shape(values)[1:])
            fits = len(declared) == len(computed) and all(
                d < 0 or d == c for d, c in zip(declared, computed, strict=True)
            )
            if not fits:
                raise ModelError(
                    f"{job.label} is inconsistent: tensor {index} "
                    f"({_text(info.tensors[index].name)}) is declared (N, "
                    f"{', '.join(map(str, declared))}) but its operator computes (N, "
                    f"{', '.join(map(str, computed))}); was an operator's option (a stride, "
                    "a padding) changed?"
                )


def _text(name) -> str:
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return repr(str(name)[:80])
