"""The measures and gates of the tasks other than classification (tasks.py), on float outputs.

    every output    SQNR against the original's outputs, and the largest error in steps of the
                    file's output quantization
    regression      MAE, RMSE and R² against the targets, per target column, and the relative
                    increase of each column's RMSE over the original's
    reconstruction  the anomaly score (mean squared reconstruction error per sample); its AUC
                    against 0/1 anomaly labels with a 95 % DeLong interval, and its Pearson
                    correlation with the original's score

Everything here takes float arrays (dequantized outputs) and returns plain numbers: no model runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pipeline.analysis.stats import Z95


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """10·log10(Σ ref² / Σ (ref − cand)²) over every value; inf when they are equal."""
    ref = np.asarray(reference, np.float64).ravel()
    noise = float(np.sum((ref - np.asarray(candidate, np.float64).ravel()) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def recorded(v: float | None) -> float | None:
    """v for a JSON record: an infinite SQNR (outputs equal to the original's) is None there."""
    return None if v is None or math.isinf(v) else float(v)


def max_steps(reference: np.ndarray, candidate: np.ndarray, scale: float | None) -> float | None:
    """The largest |ref − cand| in output quantization steps (None for a float output)."""
    if not scale:
        return None
    diff = np.abs(np.asarray(reference, np.float64) - np.asarray(candidate, np.float64))
    return float(diff.max() / scale) if diff.size else 0.0


@dataclass
class Regression:
    mae: list[float]  # per target column
    rmse: list[float]
    r2: list[float]


def regression(pred: np.ndarray, targets: np.ndarray) -> Regression:
    """MAE, RMSE and R² of pred (n, k) against targets (n, k), column by column."""
    p = np.asarray(pred, np.float64).reshape(len(targets), -1)
    t = np.asarray(targets, np.float64).reshape(len(targets), -1)
    err = p - t
    ss_tot = np.sum((t - t.mean(axis=0)) ** 2, axis=0)
    ss_res = np.sum(err**2, axis=0)
    r2 = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.nan)
    return Regression(
        [float(v) for v in np.mean(np.abs(err), axis=0)],
        [float(v) for v in np.sqrt(np.mean(err**2, axis=0))],
        [float(v) for v in r2],
    )


def anomaly_score(outputs: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """float64 (n,): each sample's mean squared reconstruction error."""
    out = np.asarray(outputs, np.float64).reshape(len(inputs), -1)
    return np.mean((out - np.asarray(inputs, np.float64).reshape(len(inputs), -1)) ** 2, axis=1)


def _midranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks of v, ties given their mean rank."""
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    ranks = np.empty(len(v), np.float64)
    # Runs of equal values share the mean of the ranks they span.
    edges = np.flatnonzero(np.diff(sorted_v)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [len(v)]])
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return ranks


@dataclass
class Auc:
    auc: float
    ci: tuple[float, float]  # 95 %, DeLong's variance (normal approximation, clipped to [0, 1])
    positives: int
    negatives: int


def auc_delong(score: np.ndarray, labels: np.ndarray) -> Auc:
    """AUC of `score` for labels 1 (anomaly) against 0, with DeLong's 95 % interval.

    AUC = P(score of an anomaly > score of a normal sample) + ½ P(tie) (the Mann–Whitney form,
    what scikit-learn's roc_auc_score gives). DeLong (1988): the structural components
    V10_i = (rank of x_i among all − its rank among the anomalies) / n,
    V01_j = 1 − (rank of y_j among all − its rank among the normal) / m,
    var = var(V10)/m + var(V01)/n."""
    score = np.asarray(score, np.float64)
    labels = np.asarray(labels).astype(bool)
    x, y = score[labels], score[~labels]
    m, n = len(x), len(y)
    if m == 0 or n == 0:
        raise ValueError("AUC needs both anomalies (1) and normal samples (0)")
    all_ranks = _midranks(np.concatenate([x, y]))
    rx, ry = all_ranks[:m], all_ranks[m:]
    v10 = (rx - _midranks(x)) / n
    v01 = 1.0 - (ry - _midranks(y)) / m
    auc = float(v10.mean())
    var = (np.var(v10, ddof=1) / m if m > 1 else 0.0) + (np.var(v01, ddof=1) / n if n > 1 else 0.0)
    half = Z95 * math.sqrt(max(var, 0.0))
    return Auc(auc, (max(0.0, auc - half), min(1.0, auc + half)), m, n)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two score vectors (1.0 when both are constant and equal)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sa, sb = a.std(), b.std()
    if sa == 0 or sb == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.mean((a - a.mean()) * (b - b.mean())) / (sa * sb))


@dataclass
class TaskGates:
    """The gates of the tasks other than classification (VerifyConfig carries their values)."""

    max_rmse_increase: float  # regression: RMSE / the original's − 1, every target column
    max_auc_drop: float  # reconstruction: the original's AUC − the file's
    min_sqnr_db: float  # reconstruction and output: SQNR against the original's outputs


@dataclass
class Measures:
    """One candidate's measures against the original on one task (None where not defined)."""

    sqnr_db: float
    max_steps: float | None = None
    regression: Regression | None = None
    rmse_increase: list[float] = field(default_factory=list)  # per column, relative
    auc: Auc | None = None
    score_correlation: float | None = None


def measure(task: str, out, ref_out, x, targets, anomaly, scale, ref_measures=None) -> Measures:
    """The measures of one candidate's float outputs `out` for `task`: against the original's
    outputs `ref_out`, the inputs `x` (reconstruction), the float `targets` (regression) or the
    0/1 `anomaly` labels (reconstruction; None when the data marks none). `ref_measures` are the
    original's own (for the relative increase); None when measuring the original."""
    from pipeline.analysis.tasks import RECONSTRUCTION, REGRESSION

    m = Measures(sqnr_db(ref_out, out), max_steps(ref_out, out, scale))
    if task == REGRESSION:
        m.regression = regression(out, targets)
        if ref_measures is not None and ref_measures.regression is not None:
            m.rmse_increase = [
                (c / r - 1.0) if r > 0 else (0.0 if c == 0 else math.inf)
                for c, r in zip(m.regression.rmse, ref_measures.regression.rmse, strict=True)
            ]
    elif task == RECONSTRUCTION:
        score = anomaly_score(out, x)
        if anomaly is not None:
            m.auc = auc_delong(score, anomaly)
        m.score_correlation = correlation(score, anomaly_score(ref_out, x))
    return m


def failures(task: str, m: Measures, ref: Measures, gates: TaskGates) -> list[str]:
    """Every gate `m` fails for `task`, each as (gate name, one readable clause)."""
    from pipeline.analysis.tasks import OUTPUT, RECONSTRUCTION, REGRESSION

    failed = []
    if task == REGRESSION:
        for col, inc in enumerate(m.rmse_increase):
            if inc > gates.max_rmse_increase:
                failed.append(
                    (
                        "max-rmse-increase",
                        f"RMSE of target {col} up {inc:.2%} on the original's "
                        f"(allowed {gates.max_rmse_increase:.2%})",
                    )
                )
    if task == RECONSTRUCTION and m.auc is not None and ref.auc is not None:
        drop = ref.auc.auc - m.auc.auc
        if drop > gates.max_auc_drop:
            failed.append(
                (
                    "max-auc-drop",
                    f"AUC {m.auc.auc:.4f}, {drop:.4f} below the original's {ref.auc.auc:.4f} "
                    f"(allowed {gates.max_auc_drop:g})",
                )
            )
    if task in (RECONSTRUCTION, OUTPUT) and m.sqnr_db < gates.min_sqnr_db:
        failed.append(
            (
                "min-sqnr",
                f"output SQNR {m.sqnr_db:.1f} dB against the original "
                f"(required {gates.min_sqnr_db:g} dB)",
            )
        )
    return failed
