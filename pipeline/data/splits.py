"""Seeded splits of a data set (stratified by class where every class can be), and each epoch's
seeded order: the same seed gives the same rows on every machine.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.core.errors import DataError


def seeded_split(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int, what: str, held_out: str
):
    """Seeded split of `fraction` off (x, y) -> (x_keep, x_out, y_keep, y_out, stratified).

    Stratified when every class has at least two members and both sides can hold one sample
    of every class; unstratified (still seeded) if not. The rows are the ones scikit-learn's
    `train_test_split(x, y, test_size=fraction, random_state=seed, stratify=y or None)` picks,
    in its order (see _split_rows), without importing it; the arrays are new.
    """
    n = len(y)
    n_out = math.ceil(fraction * n)  # scikit-learn's rounding of a float test_size
    if n_out < 1 or n - n_out < 1:
        raise DataError(
            f"{what} holds {n} samples, too few to split off a {held_out} set of "
            f"{fraction:g} and keep one to train on; expected at least 2"
        )
    counts = np.unique(y, return_counts=True)[1]
    present = len(counts)
    stratified = bool(counts.min() >= 2 and n_out >= present and n - n_out >= present)
    keep, out = _split_rows(y, n_out, seed, stratified)
    return x[keep], x[out], y[keep], y[out], stratified


def _split_rows(y: np.ndarray, n_out: int, seed: int, stratified: bool):
    """(rows kept, rows held out), int64, drawn as scikit-learn's ShuffleSplit and
    StratifiedShuffleSplit draw them with `random_state=seed` (the same calls on a
    np.random.RandomState, in the same order), so a split made before bnpipe stopped importing
    scikit-learn for it is made again. tests/test_data.py checks equality against scikit-learn.
    Importing scikit-learn (and with it scipy.stats) costs about 1.5 s and 60 MiB, more than
    the rest of loading MNIST.

    Unstratified: one permutation of the n rows; the first n_out are held out.
    Stratified: each class's share of the kept and of the held-out rows is its share of the
    data, floored, plus one for the classes with the largest remainders (ties broken at random)
    until the sizes add up (_class_sizes); then each class's rows are permuted and cut, and
    both sides are permuted once more.
    """
    rng = np.random.RandomState(seed)
    n = len(y)
    if not stratified:
        order = rng.permutation(n)
        return order[n_out:], order[:n_out]
    _, label, counts = np.unique(y, return_inverse=True, return_counts=True)
    # Each class's rows, ascending: a stable sort of the rows by class.
    members = np.split(np.argsort(label.reshape(-1), kind="stable"), np.cumsum(counts)[:-1])
    n_keep = _class_sizes(counts, n - n_out, rng)
    n_held = _class_sizes(counts - n_keep, n_out, rng)
    keep, out = [], []
    for rows, k, h in zip(members, n_keep, n_held, strict=True):
        rows = rows[rng.permutation(len(rows))]
        keep.append(rows[:k])
        out.append(rows[k : k + h])
    return rng.permutation(np.concatenate(keep)), rng.permutation(np.concatenate(out))


def _class_sizes(counts: np.ndarray, total: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of `total` draws each class gets: its share counts / Σ counts · total, floored;
    the draws left over go one each to the classes with the largest fractional parts, a tie
    that cannot all be served broken by rng.choice."""
    share = counts / counts.sum() * total  # float64, in this order of operations
    sizes = np.floor(share)
    left = int(total - sizes.sum())
    fractional = share - sizes
    for value in np.unique(fractional)[::-1]:
        if left <= 0:
            break
        (tied,) = np.nonzero(fractional == value)
        take = min(len(tied), left)
        sizes[rng.choice(tied, size=take, replace=False)] += 1
        left -= take
    return sizes.astype(int)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the n training samples in `epoch`: a function of (seed, epoch) only, so a
    resumed run draws exactly the orders the uninterrupted one would have. int64 (n,)."""
    return np.random.default_rng([seed, epoch]).permutation(n)
