"""How far one quantized tensor is from its float reference, and how well it uses its int8 grid.

For a tensor with scale s, zero point z and integer codes q in [qmin, qmax], against the float
twin's values r of the same tensor (same samples), with q̂ = (q − z)·s and e = q̂ − r:

    sqnr_db            10·log10(Σ r² / Σ e²) over every value (None when e is 0 everywhere)
    error_steps_rms    √mean((e/s)²): the error in quantization steps (uniform rounding alone
                       gives 1/√12 ≈ 0.29; more means clipping or error from earlier layers)
    error_steps_max    max |e|/s
    range_used         the share of the grid [lo, hi] = [(qmin − z)·s, (qmax − z)·s] that the
                       real values span: (min(max r, hi) − max(min r, lo)) / (hi − lo). A tensor
                       whose values span 1 % of it gets ~3 of the 256 levels.
    clipped            the share of values r beyond half a step outside [lo, hi] (saturated)

and per channel (the last axis: the units of a Dense, the filters of a convolution), over the
channels whose real values are not all equal ("live": a ReLU unit that never fires loses
nothing, 0 being on every grid): the lowest SQNR, the lowest and the median range used, and the
channel with the lowest range used. A per-tensor SQNR is ruled by the largest channels; a tensor
with two 100× channels has a fine SQNR overall while its other channels keep two or three
levels: the per-channel figures show that.

Only numpy; the sums are in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


@dataclass
class TensorStats:
    sqnr_db: float | None
    sqnr_db_worst_channel: float | None
    error_steps_rms: float
    error_steps_max: float
    range_used: float
    range_used_worst_channel: float | None  # None when no channel is live
    range_used_median_channel: float | None
    worst_channel: int | None
    channels: int
    live_channels: int
    clipped: float
    range_used_per_channel: list[float] = field(default_factory=list)  # every channel, dead = 0


def sqnr_db(reference: np.ndarray, approx: np.ndarray, axis=None):
    """10·log10(Σ reference² / Σ (approx − reference)²) over `axis` (None: every value).

    A float, or an array over the axes kept; None (or NaN in an array) where the error is 0."""
    r = np.asarray(reference, np.float64)
    e = np.asarray(approx, np.float64) - r
    signal, noise = np.sum(r * r, axis=axis), np.sum(e * e, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        db = 10 * np.log10(signal / noise)
    if axis is None:
        return float(db) if noise > 0 and signal > 0 else None
    return np.where((noise > 0) & (signal > 0), db, np.nan)


def dequantize_codes(codes: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """(q − z)·s in float64 (exact for int8/int16 codes and a float32 scale)."""
    return (np.asarray(codes, np.float64) - zero_point) * np.float64(scale)


def tensor_stats(
    real: np.ndarray, codes: np.ndarray, scale: float, zero_point: int, dtype: str
) -> TensorStats:
    """The statistics of the module docstring. real: float (N, …, C), the float twin's tensor;
    codes: the integer file's (N, …, C) codes of the same tensor; per-tensor scale and zero
    point. Reads both arrays, copies nothing back."""
    if dtype not in _RANGES:
        raise ValueError(f"dtype must be one of {sorted(_RANGES)}, got {dtype!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale}")
    if np.shape(real) != np.shape(codes) or np.ndim(real) < 1 or np.size(real) == 0:
        raise ValueError(f"need equal non-empty shapes, got {np.shape(real)} and {np.shape(codes)}")
    qmin, qmax = _RANGES[dtype]
    r = np.asarray(real, np.float64)
    deq = dequantize_codes(codes, scale, zero_point)
    steps = (deq - r) / scale  # e/s
    lo, hi = (qmin - zero_point) * scale, (qmax - zero_point) * scale
    flat_r = r.reshape(-1, r.shape[-1])  # (values per channel, C)
    ch_max, ch_min = flat_r.max(axis=0), flat_r.min(axis=0)
    live = ch_max > ch_min
    ch_used = (np.minimum(ch_max, hi) - np.maximum(ch_min, lo)).clip(0) / (hi - lo)
    ch_used = np.where(live, ch_used, 0.0)
    ch_sqnr = sqnr_db(flat_r, deq.reshape(flat_r.shape), axis=0)
    worst = int(np.argmin(np.where(live, ch_used, np.inf))) if live.any() else None
    live_sqnr = ch_sqnr[live & ~np.isnan(ch_sqnr)]
    used = (min(float(ch_max.max()), hi) - max(float(ch_min.min()), lo)) / (hi - lo)
    return TensorStats(
        sqnr_db=sqnr_db(r, deq),
        sqnr_db_worst_channel=float(live_sqnr.min()) if live_sqnr.size else None,
        error_steps_rms=float(np.sqrt(np.mean(steps * steps))),
        error_steps_max=float(np.max(np.abs(steps))),
        range_used=max(0.0, used),
        range_used_worst_channel=float(ch_used[worst]) if worst is not None else None,
        range_used_median_channel=float(np.median(ch_used[live])) if live.any() else None,
        worst_channel=worst,
        channels=int(r.shape[-1]),
        live_channels=int(live.sum()),
        clipped=float(np.mean((r < lo - scale / 2) | (r > hi + scale / 2))),
        range_used_per_channel=[float(v) for v in ch_used],
    )
