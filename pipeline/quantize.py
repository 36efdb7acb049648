"""Affine (de)quantization exactly as TFLite's QUANTIZE / DEQUANTIZE kernels do it.

    q = clamp(round(x / scale) + zero_point, qmin, qmax)      round half away from zero
    x ≈ (q − zero_point) · scale

TFLite rounds with std::round (half away from zero), not NumPy's half-to-even; at an exact tie the
two differ by one step, so bnpipe rounds like TFLite. tests/test_quantize.py checks this against
the QUANTIZE operator of a real float-input model, value for value.
"""
from __future__ import annotations

import numpy as np

_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


def _check_scale(scale: float) -> None:
    # NaN fails every comparison and inf would map every input to the zero point.
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale}")


def round_half_away(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: str = "int8") -> np.ndarray:
    """float32 array → integer codes of `dtype` (a copy). The division is done in float32, as the kernel does."""
    if dtype not in _RANGES:
        raise ValueError(f"dtype must be one of {sorted(_RANGES)}, got {dtype!r}")
    _check_scale(scale)
    lo, hi = _RANGES[dtype]
    v = np.asarray(x, dtype=np.float32) / np.float32(scale)
    # Round half away from zero in float32, without a float64 copy (this is verify's hot path):
    # rint rounds ties to even; where v sits exactly halfway and rint went toward zero, step away.
    # v − r is exact in float32 (|v − r| ≤ 0.5, Sterbenz), so the tie test is exact.
    r = np.rint(v)
    tie = np.abs(v - r) == 0.5
    if tie.any():
        toward_zero = tie & (np.abs(r) < np.abs(v))
        r[toward_zero] += np.sign(v[toward_zero])
    r += np.float32(zero_point)
    np.clip(r, lo, hi, out=r)
    return r.astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """integer codes → float32 (a copy)."""
    _check_scale(scale)
    return ((np.asarray(q, dtype=np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


def to_input(x: np.ndarray, tensor: dict) -> np.ndarray:
    """Preprocessed float inputs → what the model's input tensor takes (`tensor` as quant_params gives)."""
    dtype = tensor["dtype"]
    if dtype in ("float32", "float16"):
        return np.asarray(x, dtype=dtype)
    return quantize(x, tensor["scale"], tensor["zero_point"], dtype)


def from_output(y: np.ndarray, tensor: dict) -> np.ndarray:
    """Raw output tensor values → float scores (dequantized where the tensor is integer)."""
    if tensor["dtype"] in ("float32", "float16"):
        return np.asarray(y, dtype=np.float32)
    return dequantize(y, tensor["scale"], tensor["zero_point"])
