"""equalize.py: cross-layer equalization finds the ReLU-joined Dense pairs, meets their ranges,
and leaves the function unchanged."""

import numpy as np
import pytest

from pipeline.core.config import FOLD_RTOL
from pipeline.folding.equalize import equalize, find_pairs


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

    from pipeline.core.config import FoldConfig
    from pipeline.stages.fold import run_fold

    _, result = trained
    every = run_fold(result.model_path, tmp_path / "on", config=FoldConfig(equalize_from=1.0))
    off = run_fold(result.model_path, tmp_path / "off", config=FoldConfig(equalize=False))
    report = json.loads(every.record_path.read_text())["report"]
    assert [(e["first"], e["second"]) for e in report["equalized"]] == [
        ("dense_1", "dense_2"),
        ("dense_2", "classes"),
    ]
    for e in report["equalized"]:
        assert len(e["r1_before"]) == len(e["r2_after"]) == 16
    assert report["output_max_rel_diff"] <= FOLD_RTOL and report["passed"]
    assert json.loads(off.record_path.read_text())["report"]["equalized"] == []
    # By default only pairs whose channel ranges span ≥ equalize_from (8) are touched.
    default = run_fold(result.model_path, tmp_path / "default")
    wide = [
        (e["first"], e["second"])
        for e in report["equalized"]
        if e["range_ratio_before"] >= FoldConfig().equalize_from
    ]
    got = json.loads(default.record_path.read_text())["report"]["equalized"]
    assert [(e["first"], e["second"]) for e in got] == wide


def test_default_fold_leaves_balanced_pairs_and_equalizes_an_outlier_pair(keras, tmp_path):
    """A pair whose channel ranges span 1.5 is left as trained (the folded weights unchanged);
    the same model with one channel ×60 has that pair equalized (its ratio to about √60)."""
    import json

    from pipeline.models.door import save_model
    from pipeline.stages.fold import run_fold

    k = keras
    rng = np.random.default_rng(0)
    model = _chain(k, "relu", [])
    for name, shape in (("b", (5, 4)), ("c", (4, 3))):  # balanced too: ranges within 1.5×
        w = rng.choice([-1.0, 1.0], size=shape) * rng.uniform(1.0, 1.5, size=shape[1])
        model.get_layer(name).set_weights([w.astype(np.float32), np.zeros(shape[1], np.float32)])
    kernel = rng.choice([-1.0, 1.0], size=(6, 5)) * rng.uniform(1.0, 1.5, size=5)
    model.get_layer("a").set_weights([kernel.astype(np.float32), np.zeros(5, np.float32)])
    for name, factor in (("balanced", 1.0), ("outlier", 60.0)):
        scaled = kernel.copy()
        scaled[:, 0] *= factor
        model.get_layer("a").set_weights([scaled.astype(np.float32), np.zeros(5, np.float32)])
        path = tmp_path / f"{name}.keras"
        save_model(model, path)
        result = run_fold(path, tmp_path / name)
        equalized = json.loads(result.record_path.read_text())["report"]["equalized"]
        if name == "balanced":
            assert equalized == []
            np.testing.assert_array_equal(
                keras.models.load_model(tmp_path / name / "folded.keras")
                .get_layer("a")
                .get_weights()[0],
                scaled.astype(np.float32),
            )
        else:
            assert [(e["first"], e["second"]) for e in equalized] == [("a", "b")]
            before, after = equalized[0]["range_ratio_before"], equalized[0]["range_ratio_after"]
            assert before >= 40 and after < before / 4, equalized[0]  # √60: about 8 after


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


# --- convolutions ------------------------------------------------------------------------------


def _conv_net(k, first_act="relu", between="relu", tail="gap"):
    """Conv2D → ReLU → DepthwiseConv2D (multiplier 2) → `between` → pointwise Conv2D → ReLU →
    (MaxPooling →) `tail` → Dense: channels last, no groups."""
    L = k.layers
    layers = [
        k.Input((9, 9, 3)),
        L.Conv2D(4, 3, padding="same", activation=first_act, name="stem"),
        L.DepthwiseConv2D(3, depth_multiplier=2, name="dw"),
    ]
    layers += {
        "relu": [L.ReLU(name="r1")],
        "relu6": [L.ReLU(6.0, name="r1")],
        "pool_relu": [L.MaxPooling2D(name="mp"), L.ReLU(name="r1")],
    }[between]
    layers += [L.Conv2D(5, 1, name="pw"), L.ReLU(name="r2"), L.ZeroPadding2D(1, name="pad")]
    layers += [L.GlobalAveragePooling2D(name="gap")] if tail == "gap" else [L.Flatten(name="flat")]
    layers += [L.Dense(3, name="out")]
    return k.Sequential(layers)


@pytest.mark.parametrize(
    "first_act, between, tail, expected",
    [
        (
            "relu",
            "relu",
            "gap",
            [("stem", "dw", []), ("dw", "pw", ["r1"]), ("pw", "out", ["r2", "pad", "gap"])],
        ),
        (
            "linear",
            "pool_relu",
            "gap",
            [("dw", "pw", ["mp", "r1"]), ("pw", "out", ["r2", "pad", "gap"])],
        ),
        ("relu", "relu6", "flat", [("stem", "dw", [])]),  # ReLU6 and Flatten stop a pair
    ],
)
def test_find_pairs_in_convolutions(keras, first_act, between, tail, expected):
    assert find_pairs(_conv_net(keras, first_act, between, tail)) == expected


def test_a_grouped_convolution_is_not_paired(keras):
    k = keras
    model = k.Sequential(
        [
            k.Input((6, 6, 4)),
            k.layers.Conv2D(4, 1, activation="relu", name="a"),
            k.layers.Conv2D(4, 1, groups=2, name="b"),
        ]
    )
    assert find_pairs(model) == []


def test_conv_pairs_equalize_exactly_depthwise_multiplier_included(keras):
    """Outlier channels in every layer of a conv chain (stem → depthwise ×2 → pointwise →
    global pooling → Dense): after equalization the model computes the same (the weights
    written back as float32: within FOLD_RTOL), each pair's ranges meet channel by channel, and
    the widest spread of output ranges in the chain narrows."""
    from pipeline.folding.equalize import output_channels

    k = keras
    model = _conv_net(k)
    rng = np.random.default_rng(5)
    for layer in model.layers:
        ws = layer.get_weights()
        if ws:
            ws[0] = ws[0] * np.where(rng.random(ws[0].shape[-1]) < 0.25, 60.0, 1.0)
            layer.set_weights([w.astype(np.float32) for w in ws])
    x = rng.random((64, 9, 9, 3)).astype(np.float32)
    before = np.asarray(model(x), np.float64)
    pairs = find_pairs(model)
    classes = {n: type(model.get_layer(n)).__name__ for a, b, _ in pairs for n in (a, b)}
    weights = {}
    for n in classes:
        ws = [w.astype(np.float64) for w in model.get_layer(n).get_weights()]
        assert len(ws) == 2 and ws[1].shape == (output_channels(ws[0], classes[n]),)
        weights[n] = ws
    records = equalize(weights, pairs, classes)
    for n, ws in weights.items():
        model.get_layer(n).set_weights([w.astype(np.float32) for w in ws])
    after = np.asarray(model(x), np.float64)
    assert np.max(np.abs(after - before)) / np.max(np.abs(before)) <= FOLD_RTOL
    assert [len(r.r1_after) for r in records] == [4, 8, 5]  # dw: 4 channels × multiplier 2
    for r in records:
        np.testing.assert_allclose(r.r1_after, r.r2_after, rtol=1e-4)
    worst_before = max(r.range_ratio_before for r in records)
    assert max(r.range_ratio_after for r in records) < worst_before / 3, records
