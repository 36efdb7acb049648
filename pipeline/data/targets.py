"""Float targets: the labels of a regressor, as a `.npz`'s `y_train` / `y_test` may hold them.

Class ids are (n,) whole numbers (dataset.py checks them); regression targets are float arrays
of shape (n, k), k ≥ 1 (one target is (n, 1)): the data's labels are taken as targets when they
are floats of two axes with more than one column or with a value that is not a whole number.
Both splits must agree (same k), every value must be finite. The seeded splits of dataset.py
are made on the rows (never stratified: there are no classes), so the same seed gives the same
rows on every machine.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.errors import DataError
from pipeline.data.readers import RawPart
from pipeline.data.splits import seeded_split


def float_targets(parts: list[RawPart]) -> bool:
    """True when the parts' labels are regression targets rather than class ids."""
    ys = [np.asarray(p.y) for p in parts]
    if not any(y.dtype.kind == "f" and y.ndim == 2 for y in ys):
        return False
    return any(
        y.ndim == 2 and (y.shape[1] > 1 or not np.all(np.isfinite(y) & (y == np.round(y))))
        for y in ys
        if y.dtype.kind == "f"
    )


def check_targets(p: RawPart, width: int | None) -> np.ndarray:
    """float32 (n, k) targets of one part, or DataError in one line saying what is wrong.
    `width`: the k the other part has (None for the first)."""
    y = np.asarray(p.y)
    if y.dtype.kind != "f" or y.ndim != 2:
        raise DataError(
            f"{p.origin}: the {p.split} labels have dtype {y.dtype} and shape {y.shape}, but the "
            "other split holds float targets; expected float (n, k) regression targets in both"
        )
    if y.shape[1] < 1:
        raise DataError(f"{p.origin}: the {p.split} targets have shape {y.shape}, no columns")
    if width is not None and y.shape[1] != width:
        raise DataError(
            f"{p.origin}: the {p.split} targets have {y.shape[1]} columns but the other split's "
            f"have {width}; expected the same targets in both"
        )
    bad = ~np.isfinite(y)
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(
            f"{p.origin}: {int(bad.sum())} NaN or infinite {p.split} targets, the first at "
            f"{p.where(i, j)}; expected finite numbers"
        )
    big = np.abs(y) > np.finfo(np.float32).max
    if big.any():
        raise DataError(f"{p.origin}: {p.split} targets beyond float32's range")
    return y.astype(np.float32)


def split_targets(x: np.ndarray, y: np.ndarray, fraction: float, seed: int, what: str, held: str):
    """seeded_split for float targets: (x_keep, x_out, y_keep, y_out, False), unstratified (the
    row numbers are the split's labels, each its own class, so no class has two members)."""
    rows = np.arange(len(y))
    x_keep, x_out, keep, out, _ = seeded_split(x, rows, fraction, seed, what, held)
    return x_keep, x_out, y[keep], y[out], False
