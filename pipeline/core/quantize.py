"""Affine (de)quantization exactly as TFLite's QUANTIZE / DEQUANTIZE kernels do it.

    q = clamp(round(x / scale) + zero_point, qmin, qmax)      round half away from zero
    x ≈ (q − zero_point) · scale

TFLite rounds with std::round (half away from zero), not NumPy's half-to-even; at an exact tie the
two differ by one step, so bnpipe rounds like TFLite. tests/test_quantize.py checks this against
the QUANTIZE operator of a real float-input model, value for value.

This is verify's hot path (10,000 MNIST-sized samples are 7.8 M values, while the int8 model runs
them in ~3 ms), so it is written for speed without changing a bit of the result:
- `quantize` works through the input in slices that stay in the CPU cache, reusing the same
  scratch buffers, instead of allocating a full-size float32 array for every step;
- `quantize_codes` serves inputs that are integer pixels (0–255) scaled by the recorded divisor:
  it quantizes the 256 possible values with `quantize` once and looks every pixel up, reading one
  byte per value instead of four. Where the table is a plain shift (the common int8 input scale
  1/255 with zero point −128 on pixels ÷ 255) the lookup is a single wrapping add.
"""

from __future__ import annotations

import numpy as np

_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
# Values per slice of the float path: 2**16 float32 (256 KiB for the input slice and for each
# scratch buffer) stay in L2, so the eight passes over a slice cost about one trip to memory.
# Measured on 10,000 × 784 values (2 cores, AVX2): 2**16 took 10.7 ms, 2**14 and 2**18 about
# 14 ms, whole-array passes 30 ms (and the former full-size temporaries ~50 ms).
CHUNK = 1 << 16
N_CODES = 256  # quantize_codes takes uint8 pixel codes: one table entry per possible value


def _check_scale(scale: float) -> None:
    # NaN fails every comparison and inf would map every input to the zero point.
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale}")


def _check_dtype(dtype: str) -> None:
    if dtype not in _RANGES:
        raise ValueError(f"dtype must be one of {sorted(_RANGES)}, got {dtype!r}")


def round_half_away(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: str = "int8") -> np.ndarray:
    """float32 array → integer codes of `dtype` (a copy).

    The division is done in float32, as the kernel does."""
    _check_dtype(dtype)
    _check_scale(scale)
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.shape, dtype=dtype)
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)
    n = flat_x.size
    if n == 0:
        return out
    lo, hi = _RANGES[dtype]
    scratch = np.empty((3, min(n, CHUNK)), dtype=np.float32)  # v, r, d below: reused per slice
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        v, r, d = scratch[:, : stop - start]
        # Round half away from zero in float32 (as the kernel), without a float64 copy: rint
        # rounds ties to even; where v sits exactly halfway and rint went toward zero, step away.
        # v − r is exact in float32 (|v − r| ≤ 0.5, Sterbenz), so the tie test is exact.
        np.divide(flat_x[start:stop], np.float32(scale), out=v)
        np.rint(v, out=r)
        np.subtract(v, r, out=d)
        np.abs(d, out=d)
        if np.fmax.reduce(d) >= 0.5:  # a tie in this slice (fmax skips the NaN of ±inf − ±inf)
            toward_zero = (d == 0.5) & (np.abs(r) < np.abs(v))
            r[toward_zero] += np.sign(v[toward_zero])
        r += np.float32(zero_point)
        np.clip(r, lo, hi, out=r)
        flat_out[start:stop] = r  # integral and in range: the cast is exact
    return out


def quantize_codes(
    codes: np.ndarray, values: np.ndarray, scale: float, zero_point: int, dtype: str = "int8"
) -> np.ndarray:
    """quantize(values[codes], ...) without building values[codes]: a new array, the same bits.

    codes: uint8, any shape (integer pixels); values: float32 (256,), the preprocessed value of
    each code (values[k] is what pixel k becomes, e.g. float32(k) / float32(255)). Every code's
    value is quantized by `quantize` itself into a 256-entry table, so a pixel gets exactly the
    code its float value would get; only the lookup is new.
    """
    codes = np.asarray(codes)
    if codes.dtype != np.uint8:
        raise ValueError(f"codes must be uint8 pixel codes, got dtype {codes.dtype}")
    values = np.asarray(values)
    if values.dtype != np.float32 or values.shape != (N_CODES,):
        raise ValueError(
            f"values must be float32 of shape ({N_CODES},), got {values.dtype} {values.shape}"
        )
    table = quantize(values, scale, zero_point, dtype)
    codes = np.ascontiguousarray(codes)
    out = np.empty(codes.shape, dtype=dtype)
    shift = table.astype(np.int64) - np.arange(N_CODES)
    if np.all(shift == shift[0]):
        # table[k] = k + c for every k: add c in wrapping unsigned arithmetic of out's width. The
        # sum is right modulo 2^bits and every true sum lies in out's range, so the bits are too.
        unsigned = np.dtype(f"u{out.itemsize}")
        c = unsigned.type(int(shift[0]) % (1 << (8 * out.itemsize)))
        np.add(codes, c, out=out.view(unsigned), dtype=unsigned, casting="unsafe")
        return out
    if out.itemsize == 1:
        # One byte in, one byte out: bytes.translate is a 256-entry byte table in C, 3× faster
        # than np.take on digits (0.24 vs 0.77 ms for 10,000 × 64), which needs intp indices.
        mapped = bytearray(codes.data).translate(table.view(np.uint8).tobytes())
        return np.frombuffer(mapped, dtype=out.dtype).reshape(codes.shape)
    flat_codes, flat_out = codes.reshape(-1), out.reshape(-1)
    index = np.empty(min(flat_codes.size, CHUNK), dtype=np.intp)  # take wants intp indices
    for start in range(0, flat_codes.size, CHUNK):
        stop = min(start + CHUNK, flat_codes.size)
        i = index[: stop - start]
        np.copyto(i, flat_codes[start:stop])
        np.take(table, i, out=flat_out[start:stop], mode="clip")  # every code < 256: no clipping
    return out


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """integer codes → float32 (a copy)."""
    _check_scale(scale)
    return ((np.asarray(q, dtype=np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(
        np.float32
    )


def to_input(
    x: np.ndarray, tensor: dict, codes: np.ndarray | None = None, values: np.ndarray | None = None
) -> np.ndarray:
    """Preprocessed float inputs → what the model's input tensor takes.

    tensor: the input tensor as quant_params gives it.
    codes, values: optionally the integer pixels behind x, with x == values[codes] bit for bit
    (Dataset.x_test_codes and Preprocessing.code_values guarantee it); an integer input tensor is
    then filled by table lookup (quantize_codes), with the same result. A float tensor gets x
    itself (no copy when x already has its dtype).
    """
    dtype = tensor["dtype"]
    if dtype in ("float32", "float16"):
        return np.asarray(x, dtype=dtype)
    if codes is not None and values is not None:
        if codes.shape != np.shape(x):
            raise ValueError(f"codes have shape {codes.shape} but the inputs {np.shape(x)}")
        return quantize_codes(codes, values, tensor["scale"], tensor["zero_point"], dtype)
    return quantize(x, tensor["scale"], tensor["zero_point"], dtype)


def from_output(y: np.ndarray, tensor: dict) -> np.ndarray:
    """Raw output tensor values → float scores (dequantized where the tensor is integer)."""
    if tensor["dtype"] in ("float32", "float16"):
        return np.asarray(y, dtype=np.float32)
    return dequantize(y, tensor["scale"], tensor["zero_point"])
