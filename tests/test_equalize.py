"""equalize.py: cross-layer equalization finds the ReLU-joined Dense pairs, meets their ranges,
and leaves the function unchanged."""

import numpy as np
import pytest

from pipeline.config import FOLD_RTOL
from pipeline.equalize import equalize, find_pairs


def _chain(k, act="relu", between=None):
    layers = [k.Input((6,)), k.layers.Dense(5, activation=act, name="a")]
    layers += between or []
    layers += [k.layers.Dense(4, name="b"), k.layers.ReLU(name="r"), k.layers.Dense(3, name="c")]
    return k.Sequential(layers)


@pytest.mark.parametrize(
    "act, between, expected",
    [
        ("relu", None, [("a", "b", []), ("b", "c", ["r"])]),
        ("linear", "relu_layer", [("a", "b", ["relu0"]), ("b", "c", ["r"])]),
        ("linear", "leaky", [("a", "b", ["leaky"]), ("b", "c", ["r"])]),
        ("relu", "dropout", [("a", "b", ["drop"]), ("b", "c", ["r"])]),
        ("linear", "relu6", [("b", "c", ["r"])]),  # ReLU6 is not positively homogeneous
        ("tanh", None, [("b", "c", ["r"])]),
        ("linear", None, [("b", "c", ["r"])]),  # no activation between: not a ReLU pair
    ],
)
def test_find_pairs(keras, act, between, expected):
    k = keras
    extra = {
        None: [],
        "relu_layer": [k.layers.ReLU(name="relu0")],
        "leaky": [k.layers.LeakyReLU(name="leaky")],
        "dropout": [k.layers.Dropout(0.5, name="drop")],
        "relu6": [k.layers.ReLU(max_value=6.0, name="relu6")],
    }[between]
    assert find_pairs(_chain(k, act, extra)) == expected


def test_a_dense_read_by_two_layers_is_not_paired(keras):
    k = keras
    x = k.Input((6,))
    a = k.layers.Dense(5, activation="relu", name="a")(x)
    y = k.layers.Add()([k.layers.Dense(5, name="b")(a), a])
    assert find_pairs(k.Model(x, y)) == []


def _outlier_weights(rng, channels=8, factor=100.0):
    w1 = rng.normal(size=(6, channels))
    b1 = rng.normal(size=channels)
    w2 = rng.normal(size=(channels, 3))
    w1[:, :2] *= factor  # two channels carry 100× the range of the others
    b1[:2] *= factor
    w2[:2] /= factor  # and the next layer divides it back: the function is unchanged
    return {"a": [w1, b1], "b": [w2, rng.normal(size=3)]}


def test_one_pair_meets_at_the_geometric_mean_and_computes_the_same():
    rng = np.random.default_rng(0)
    weights = _outlier_weights(rng)
    x = rng.normal(size=(256, 6))

    def run(w):
        h = np.maximum(x @ w["a"][0] + w["a"][1], 0.0)
        return h @ w["b"][0] + w["b"][1]

    before = run(weights)
    r1 = np.max(np.abs(weights["a"][0]), axis=0)
    r2 = np.max(np.abs(weights["b"][0]), axis=1)
    (record,) = equalize(weights, [("a", "b", [])])
    np.testing.assert_allclose(record.r1_after, np.sqrt(r1 * r2), rtol=1e-12)
    np.testing.assert_allclose(record.r2_after, np.sqrt(r1 * r2), rtol=1e-12)
    assert record.range_ratio_before > 50 and record.range_ratio_after < 10
    after = run(weights)
    assert np.max(np.abs(after - before)) / np.max(np.abs(before)) < 1e-12


def test_run_fold_equalizes_and_records_the_ranges(keras, trained, tmp_path):
    import json

    from pipeline.config import FoldConfig
    from pipeline.fold import run_fold

    _, result = trained
    on = run_fold(result.model_path, tmp_path / "on")
    off = run_fold(result.model_path, tmp_path / "off", config=FoldConfig(equalize=False))
    report = json.loads(on.record_path.read_text())["report"]
    assert [(e["first"], e["second"]) for e in report["equalized"]] == [
        ("dense_1", "dense_2"),
        ("dense_2", "classes"),
    ]
    for e in report["equalized"]:
        assert len(e["r1_before"]) == len(e["r2_after"]) == 16
    assert report["output_max_rel_diff"] <= FOLD_RTOL and report["passed"]
    assert json.loads(off.record_path.read_text())["report"]["equalized"] == []


def test_equalizing_across_relu6_would_change_the_function(keras):
    """Negative control for find_pairs' exclusion: forced across a ReLU6 (not positively
    homogeneous), the same scales move the outputs far beyond the fold tolerance."""
    k = keras
    model = _chain(k, "linear", [k.layers.ReLU(max_value=6.0, name="relu6")])
    rng = np.random.default_rng(3)
    model.get_layer("a").set_weights(
        [rng.normal(size=(6, 5)).astype(np.float32) * 4, rng.normal(size=5).astype(np.float32)]
    )
    x = rng.normal(size=(128, 6)).astype(np.float32) * 3
    before = np.asarray(model(x))
    weights = {n: [w.astype(np.float64) for w in model.get_layer(n).get_weights()] for n in "ab"}
    weights["a"][0][:, 0] *= 50  # an outlier channel, so the scales are far from 1
    model.get_layer("a").set_weights([w.astype(np.float32) for w in weights["a"]])
    before = np.asarray(model(x))
    equalize(weights, [("a", "b", ["relu6"])])
    for n in "ab":
        model.get_layer(n).set_weights([w.astype(np.float32) for w in weights[n]])
    after = np.asarray(model(x))
    assert np.max(np.abs(after - before)) / np.max(np.abs(before)) > 100 * FOLD_RTOL
