"""stats: the Wilson interval, the exact McNemar test and the paired comparison, each checked
against an independent reference (a published table, scipy, a hand count)."""

import math
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from pipeline.analysis.stats import Z95, compare, mcnemar_exact, wilson_interval

# Newcombe (1998), "Two-sided confidence intervals for the single proportion: comparison of seven
# methods", Statistics in Medicine 17:857–872, Table I, method 3 (Wilson score, no continuity
# correction): (successes, n) → 95 % interval, printed to 4 decimals.
NEWCOMBE_TABLE_I = [
    ((81, 263), (0.2553, 0.3662)),
    ((15, 148), (0.0624, 0.1605)),
    ((0, 20), (0.0000, 0.1611)),
    ((1, 29), (0.0061, 0.1718)),
    ((29, 29), (0.8830, 1.0000)),
]
TABLE_ROUNDING = 0.5e-4  # the table is rounded to 4 decimals
# The quadratic's roots and the closed form differ by float64 round-off only (a few ulps on
# values ≤ 1); 1e-12 is far above that and far below any formula error (≥ 1e-4).
ROUNDOFF = 1e-12
# mcnemar_exact sums binomial terms in log space through lgamma; scipy sums the pmf directly.
# Each lgamma carries ~1e-15 relative error, times log-magnitudes up to ~n·log 2 ≈ 1.4e3 for
# n = 2000: relative error up to ~1e-12 in the p-value, so 1e-9 keeps a wide margin.
PVALUE_RTOL = 1e-9


@pytest.mark.parametrize("counts, expected", NEWCOMBE_TABLE_I)
def test_wilson_interval_matches_newcombe_table(counts, expected):
    lo, hi = wilson_interval(*counts)
    assert lo == pytest.approx(expected[0], abs=TABLE_ROUNDING)
    assert hi == pytest.approx(expected[1], abs=TABLE_ROUNDING)


def _wilson_by_quadratic(k: int, n: int, z: float) -> tuple[float, float]:
    """Independent derivation: the Wilson bounds are the p with |p̂ − p| = z·√(p(1−p)/n), i.e. the
    roots of (1 + z²/n)·p² − (2p̂ + z²/n)·p + p̂² = 0. Computed without cancellation: the
    discriminant b² − 4ac simplifies to (z²/n)·(4p̂(1 − p̂) + z²/n), the larger root comes from
    the usual formula (−b > 0) and the smaller from Vieta (product of the roots = c/a)."""
    p_hat = k / n
    a, b, c = 1 + z * z / n, -(2 * p_hat + z * z / n), p_hat * p_hat
    disc = math.sqrt(z * z / n * (4 * p_hat * (1 - p_hat) + z * z / n))
    upper = (-b + disc) / (2 * a)
    return c / (a * upper), upper


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 100_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_interval_solves_the_score_equation(kn):
    k, n = kn
    lo, hi = wilson_interval(k, n)
    ref_lo, ref_hi = _wilson_by_quadratic(k, n, Z95)
    assert lo == pytest.approx(max(0.0, ref_lo), abs=ROUNDOFF)
    assert hi == pytest.approx(min(1.0, ref_hi), abs=ROUNDOFF)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_interval_edges():
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError, match="n must be ≥ 1, got 0"):
        wilson_interval(0, 0)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 1000), st.integers(0, 1000))
def test_mcnemar_exact_matches_scipy_binomtest(b, c):
    expected = 1.0 if b + c == 0 else binomtest(min(b, c), b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=PVALUE_RTOL)


@pytest.mark.parametrize(
    "b, c, expected",
    [
        (0, 0, 1.0),  # no discordant sample: no evidence of any difference
        (3, 3, 1.0),  # balanced: 2·P(X ≤ 3) > 1, capped
        (0, 5, 2 / 32),  # 2 · (1/2)^5
        (1, 9, 2 * 11 / 1024),  # 2 · (C(10,0) + C(10,1)) / 2^10
    ],
)
def test_mcnemar_exact_hand_values(b, c, expected):
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=PVALUE_RTOL)
    assert mcnemar_exact(c, b) == mcnemar_exact(b, c)  # symmetric in the two counts


def test_compare_on_hand_built_predictions():
    # 10 samples, labels 0…9. Candidate right on 0–6; reference right on 0–4 and 7.
    labels = np.arange(10)
    pred = np.array([0, 1, 2, 3, 4, 5, 6, 0, 0, 1])  # wrong on 7, 8, 9
    ref = np.array([0, 1, 2, 3, 4, 0, 0, 7, 1, 1])  # wrong on 5, 6, 8, 9 (on 9 as wrong as pred)
    c = compare(pred, ref, labels)
    assert c.n == 10
    assert c.accuracy == 0.7 and c.reference_accuracy == 0.6
    assert c.only_candidate_right == 2  # samples 5, 6
    assert c.only_reference_right == 1  # sample 7
    assert c.agreement == 0.6  # samples 0–4 and 9 (same wrong class); 5–8 differ
    assert c.diff_pp == pytest.approx(10.0, abs=ROUNDOFF)
    d = [0, 0, 0, 0, 0, 1, 1, -1, 0, 0]  # per-sample [cand right] − [ref right]
    half = Z95 * statistics.stdev(d) / math.sqrt(10)
    assert c.diff_ci_pp[0] == pytest.approx(100 * (0.1 - half), abs=ROUNDOFF)
    assert c.diff_ci_pp[1] == pytest.approx(100 * (0.1 + half), abs=ROUNDOFF)
    assert c.accuracy_ci == wilson_interval(7, 10)
    assert c.mcnemar_p == 1.0  # b=2, c=1: 2·P(X ≤ 1 | n=3) = 2·4/8


def test_compare_identical_predictions_has_a_zero_width_difference():
    labels = np.array([0, 1, 2, 3])
    pred = np.array([0, 1, 0, 3])
    c = compare(pred, pred.copy(), labels)
    assert (c.diff_pp, c.diff_ci_pp, c.agreement, c.mcnemar_p) == (0.0, (0.0, 0.0), 1.0, 1.0)
    assert (c.only_candidate_right, c.only_reference_right) == (0, 0)


def test_compare_refuses_unequal_lengths():
    with pytest.raises(ValueError, match="got 3, 2, 3"):
        compare(np.zeros(3), np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="got 0, 0, 0"):
        compare(np.zeros(0), np.zeros(0), np.zeros(0))
