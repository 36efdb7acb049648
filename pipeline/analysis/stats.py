"""Statistics behind every accuracy claim: intervals for one accuracy and for a paired difference.

All candidates are evaluated on the same test samples as the reference, so differences are paired:
what matters is the samples on which the two disagree about correctness (the discordant pairs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion; well-behaved near 0 and 1 (unlike Wald)."""
    if n <= 0:
        raise ValueError(f"n must be ≥ 1, got {n}")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At p̂ = 0 or 1 the bound is exactly 0 or 1 (a root of the score equation); the closed form
    # gives 5.6e-17 or 1 − 1.1e-16 there, an interval that would exclude the observed proportion.
    lo = 0.0 if correct == 0 else max(0.0, centre - half)
    hi = 1.0 if correct == n else min(1.0, centre + half)
    return lo, hi


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value.

    b, c: the discordant counts (b: only the candidate right, c: only the reference right).

    Under H0 (same accuracy) each discordant sample is equally likely to go either way, so
    min(b, c) ~ Binomial(b + c, 1/2); p = 2·P(X ≤ min(b, c)), capped at 1. No discordance: p = 1.
    """
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    # Sum in log space: exact for any n this tool meets (test sets up to millions of samples).
    logs = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
        for i in range(k + 1)
    ]
    m = max(logs)
    tail = math.exp(m) * sum(math.exp(v - m) for v in logs)
    return min(1.0, 2.0 * tail)


@dataclass(kw_only=True)
class PairedComparison:
    n: int
    accuracy: float
    accuracy_ci: tuple[float, float]
    reference_accuracy: float
    diff_pp: float  # candidate − reference, percentage points
    diff_ci_pp: tuple[float, float]
    only_candidate_right: int  # b
    only_reference_right: int  # c
    mcnemar_p: float
    agreement: float  # share of samples with the same top-1 class as the reference


def compare(pred: np.ndarray, ref_pred: np.ndarray, labels: np.ndarray) -> PairedComparison:
    """Accuracy of `pred`, and its paired difference from `ref_pred`, on the same labelled samples.

    The difference's 95 % interval is the Wald interval of the mean per-sample difference
    d_i = [pred_i correct] − [ref_i correct] ∈ {−1, 0, 1} (a paired interval: samples on which
    both are right or both wrong contribute zero). With no discordant sample it is [0, 0].
    """
    pred, ref_pred, labels = (np.asarray(a).ravel() for a in (pred, ref_pred, labels))
    if not (len(pred) == len(ref_pred) == len(labels)) or len(labels) == 0:
        raise ValueError(
            f"need equally many predictions and labels, got {len(pred)}, "
            f"{len(ref_pred)}, {len(labels)}"
        )
    n = len(labels)
    ok, ref_ok = pred == labels, ref_pred == labels
    d = ok.astype(np.float64) - ref_ok
    mean = float(d.mean())
    half = Z95 * float(d.std(ddof=1)) / math.sqrt(n) if n > 1 else 0.0
    b, c = int(np.sum(ok & ~ref_ok)), int(np.sum(~ok & ref_ok))
    return PairedComparison(
        n=n,
        accuracy=float(ok.mean()),
        accuracy_ci=wilson_interval(int(ok.sum()), n),
        reference_accuracy=float(ref_ok.mean()),
        diff_pp=100 * mean,
        diff_ci_pp=(100 * (mean - half), 100 * (mean + half)),
        only_candidate_right=b,
        only_reference_right=c,
        mcnemar_p=mcnemar_exact(b, c),
        agreement=float(np.mean(pred == ref_pred)),
    )
