"""layerwise.py on the outlier case: the culprit is the first Dense (where the error is made), not
the second (where it shows); without the outliers the first Dense costs little."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.analysis.layerwise import LayerCost, analyse_layers, rank, rank_layers
from pipeline.core.errors import DataError, ModelError

# Measured on the tiny outlier model (digits, 360 test samples): the first Dense alone flips
# 8.9 % of the top-1 classes, the second 3.3 %; without the outliers, each layer flips at most one
# sample (0.3 %). The bounds leave room on both sides and still fail if the culprit changes.
OUTLIER_MIN_COST = 0.03
PLAIN_MAX_COST = 0.01
# With everything fake-quantized, the float twin must compute what the file computes
# (test_fakequant.py: at most one step on ≤ 1 % of the last codes).
SIM_MIN_AGREEMENT = 0.99
SIM_MAX_STEPS = 1


@pytest.fixture(scope="module")
def analyses(outlier_case, digits):
    plain, outlier = outlier_case
    kw = dict(codes=digits.x_test_codes, values=digits.preprocessing.code_values())
    return {
        name: analyse_layers(d / "model_ptq-int8.tflite", d / "model_float32.tflite",
                             digits.x_test, digits.y_test, **kw)
        for name, d in (("plain", plain), ("outlier", outlier))
    }  # fmt: skip


def test_the_culprit_of_the_outlier_case_is_the_first_dense(analyses):
    a = analyses["outlier"]
    first, second = a.ranking.costs[0], a.ranking.costs[1]
    assert a.ranking.culprit is first and (first.op, first.op_index) == ("FULLY_CONNECTED", 0)
    assert first.agreement_cost >= OUTLIER_MIN_COST > PLAIN_MAX_COST
    assert first.agreement_cost > second.agreement_cost
    # Where the error shows: the second Dense's output in the integer model is worse than the
    # first's, although it makes less of the error itself.
    assert a.layers[1].stats.sqnr_db < a.layers[0].stats.sqnr_db
    # Why: the first Dense's narrow channels span a few percent of a grid set by the two wide ones.
    assert a.layers[0].stats.range_used_median_channel < 0.05
    assert a.agreement <= 1 - first.agreement_cost / 2  # the file as a whole suffers too


def test_without_the_outliers_the_first_dense_costs_little(analyses):
    assert analyses["plain"].ranking.costs[0].agreement_cost <= PLAIN_MAX_COST
    assert analyses["plain"].layers[0].stats.range_used_median_channel > 0.2


@pytest.mark.parametrize("case", ["plain", "outlier"])
def test_the_method_reproduces_the_file(analyses, case):
    sim = analyses[case].simulation
    assert sim.agreement >= SIM_MIN_AGREEMENT and sim.steps_max <= SIM_MAX_STEPS


@pytest.mark.parametrize("case", ["plain", "outlier"])
def test_the_files_accuracy_is_exports(analyses, outlier_case, case):
    """export scored the same file on the same split with the same reference kernels."""
    d = outlier_case[0 if case == "plain" else 1]
    record = json.loads((d / "export.json").read_text())
    assert analyses[case].int8_accuracy == record["modes"]["ptq-int8"]["tflite_accuracy"]
    assert analyses[case].ranking.float_accuracy == record["modes"]["float32"]["tflite_accuracy"]


def test_the_ranking_alone_is_the_analysis_ranking_from_bytes_too(analyses, outlier_case, digits):
    """rank_layers, as cross-layer equalization or --mode auto would call it on the converter's
    bytes, ranks as the full analysis of the files does."""
    d = outlier_case[1]
    int8, float_ = (d / "model_ptq-int8.tflite").read_bytes(), d / "model_float32.tflite"
    ranking = rank_layers(int8, float_.read_bytes(), digits.x_test, digits.y_test)
    assert ranking.costs == analyses["outlier"].ranking.costs
    assert ranking.culprit.op_index == 0


def _cost(position, agreement_cost, accuracy_cost_pp, output_sqnr_db):
    return LayerCost(position, position, "FULLY_CONNECTED", f"t{position}", 0.9, 1 - agreement_cost,
                     accuracy_cost_pp, agreement_cost, 30.0, output_sqnr_db)  # fmt: skip


def test_rank_orders_by_agreement_then_accuracy_then_output_sqnr():
    costs = [
        _cost(0, 0.01, 0.0, 20.0),
        _cost(1, 0.02, -0.5, 40.0),  # most agreement lost: first, whatever its accuracy
        _cost(2, 0.01, 0.3, 30.0),  # ties with 0 and 3 on agreement, loses more accuracy
        _cost(3, 0.01, 0.0, None),  # an exact output: after 0's 20 dB
        _cost(4, 0.01, float("nan"), 10.0),  # no labels: accuracy counts as 0
    ]
    rank(costs)
    assert [c.position for c in sorted(costs, key=lambda c: c.rank)] == [1, 2, 4, 0, 3]


def test_files_that_cannot_be_compared_say_why(outlier_case, digits):
    d = outlier_case[1]
    q, f = d / "model_ptq-int8.tflite", d / "model_float32.tflite"
    x, y = digits.x_test, digits.y_test
    with pytest.raises(ModelError, match=f"{f} is not an integer model: FULLY_CONNECTED #0 "):
        analyse_layers(f, f, x, y)
    with pytest.raises(ModelError, match=f"the reference {q} takes int8 input"):
        analyse_layers(q, q, x, y)
    with pytest.raises(DataError, match=r"takes inputs of shape \(N, 64\) but the data has"):
        analyse_layers(q, f, np.zeros((4, 10), np.float32), None)
