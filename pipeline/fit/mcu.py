"""What a microcontroller running TFLite Micro needs for a model: its bytes in flash, a tensor
arena TFLM can build it in, and the operators to register.

The arena is measured, not estimated: TFLM runs one sample in a child (runtimes/tflm.py) and
reports the bytes that stay allocated; set-up briefly needs a little more, so sizes from there up
(in steps of ARENA_STEP) are tried each in a fresh child until TFLM builds the model. The figure
reported is one TFLM has been seen to build the model in, on this host (64-bit, reference
kernels); a 32-bit build's bookkeeping is smaller, optimized kernels may want scratch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.tflite.file import TfliteInfo

ARENA_STEP = 1 / 16  # each try is 1/16 larger: a handful of tries, a figure within 6 %
ARENA_ALIGN = 16  # bytes: TFLM aligns its allocations to 16
MAX_TRIES = 12  # 1.0625¹² ≈ 2.07: beyond twice the bytes used, take the size that built
_DTYPES = {"int8": np.int8, "int16": np.int16, "uint8": np.uint8, "float32": np.float32}


@dataclass(frozen=True, kw_only=True)
class Arena:
    bytes: int  # the smallest size tried in which TFLM built the model
    used: int  # what TFLM reports stays allocated after set-up
    tries: int


def is_integer(info: TfliteInfo) -> bool:
    """Whether the model computes in integers (what an MCU or an NPU runs): some convolution or
    fully connected operator gives int8 or int16 outputs (dynamic-range and float16 files do
    not)."""
    from pipeline.tflite.macs import COUNTED_OPS

    return any(
        info.tensors[op.outputs[0]].dtype in ("int8", "int16")
        for op in info.operators
        if op.op in COUNTED_OPS and op.outputs and op.outputs[0] >= 0
    )


def measure_arena(path: Path, info: TfliteInfo) -> Arena:
    """The arena TFLM needs for the model at `path` (ModelError, ModelCrashed and
    TargetUnavailable as the TFLM runtime raises them)."""
    from pipeline.runtimes.tflm import TflmRuntime, try_arena

    tensor = info.input_tensor()
    x = np.zeros((1, *[max(1, d) for d in tensor.shape[1:]]), _DTYPES.get(tensor.dtype, np.int8))
    with TflmRuntime() as rt:
        result = rt.run(str(path), x)
    used, given = int(result.info["arena_bytes_used"]), int(result.info["arena_bytes_given"])
    size = _aligned(used)
    for tries in range(1, MAX_TRIES + 1):
        if size >= given:
            break
        if try_arena(path, size)[0]:
            return Arena(bytes=size, used=used, tries=tries)
        size = _aligned(size * (1 + ARENA_STEP))
    return Arena(bytes=given, used=used, tries=MAX_TRIES)


def _aligned(n: float) -> int:
    return int(math.ceil(n / ARENA_ALIGN) * ARENA_ALIGN)
