"""fold.py: the folding formula against an independent reference, fold_model on every layout it
accepts and every one it must refuse, and run_fold end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.core.config import FOLD_RTOL, FoldConfig
from pipeline.core.errors import ModelError
from pipeline.folding.maths import fold_params
from pipeline.stages.fold import FoldedPair, SkippedBN
from pipeline.store.artifacts import sha256_file

# --- fold_params against a direct float64 evaluation of BN(x·W + b) ----------------------------

# Both sides are evaluated in float64, so they may differ only by round-off. A dot product of n
# terms is off by at most n·u·Σ|x_i·W_ij| (u = 2⁻⁵³), and each further multiply or add costs one u
# of its operands' magnitudes, so the bound below is ROUNDING_FACTOR·u times the magnitudes that
# enter the computation. ROUNDING_FACTOR = 2·(n_in + 8) covers both sides' operations with 2×
# headroom; a wrong formula (ε left out, a transposed scale) is off by far more than 1e-12.
U64 = np.finfo(np.float64).eps / 2
# Products of subnormal inputs underflow to zero on one side and not the other; their size is
# below 2⁻¹⁰⁷⁴·|s| ≤ 1e-316 for the scales drawn here, far under this floor.
UNDERFLOW_FLOOR = 1e-290


def reference_bn_of_dense(x, kernel, bias, gamma, beta, mean, variance, epsilon):
    """BN(x·W + b) in inference mode, computed directly, float64. None means absent (0 or 1)."""
    units = kernel.shape[1]
    z = x @ kernel + (0.0 if bias is None else bias)
    y = (z - mean) / np.sqrt(variance + epsilon)
    y = y * (np.ones(units) if gamma is None else gamma)
    return y + (0.0 if beta is None else beta)


def error_bound(x, kernel, bias, gamma, beta, mean, variance, epsilon):
    n_in = kernel.shape[0]
    s = np.abs(1.0 if gamma is None else gamma) / np.sqrt(variance + epsilon)
    mags = np.abs(x) @ np.abs(kernel) + np.abs(0.0 if bias is None else bias) + np.abs(mean)
    return (
        2 * (n_in + 8) * U64 * (s * mags + np.abs(0.0 if beta is None else beta)) + UNDERFLOW_FLOOR
    )


finite = dict(allow_nan=False, allow_infinity=False)
values = st.floats(-10, 10, **finite)


@st.composite
def dense_bn_case(draw):
    n_in, n_out, n = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 4))

    def vec(elements, optional=False):
        arr = hnp.arrays(np.float64, n_out, elements=elements)
        return draw(st.none() | arr) if optional else draw(arr)

    x = draw(hnp.arrays(np.float64, (n, n_in), elements=values))
    kernel = draw(hnp.arrays(np.float64, (n_in, n_out), elements=values))
    bias = vec(values, optional=True)  # None: Dense(use_bias=False)
    # γ: negative and exactly zero included; None: BN(scale=False)
    gamma = vec(st.sampled_from([0.0, -1.0, 1.0]) | st.floats(-5, 5, **finite), optional=True)
    beta = vec(values, optional=True)  # None: BN(center=False)
    mean = vec(values)
    # σ²: tiny (1e-12) and zero included: a unit that never varied in training
    variance = vec(st.sampled_from([0.0, 1e-12]) | st.floats(1e-12, 1e3, **finite))
    epsilon = draw(st.sampled_from([1e-12, 1e-5, 1e-3, 10.0]) | st.floats(1e-6, 100.0, **finite))
    return x, kernel, bias, gamma, beta, mean, variance, epsilon


@settings(max_examples=300, deadline=None)
@given(dense_bn_case())
def test_fold_params_matches_direct_bn_of_dense(case):
    x, kernel, bias, gamma, beta, mean, variance, epsilon = case
    w, b = fold_params(kernel, bias, gamma, beta, mean, variance, epsilon)
    assert w.dtype == np.float64 and b.dtype == np.float64
    assert w.shape == kernel.shape and b.shape == (kernel.shape[1],)
    expected = reference_bn_of_dense(*case)
    got = x @ w + b
    bound = error_bound(*case)
    assert np.all(np.abs(got - expected) <= bound), (got, expected, bound)


def test_fold_params_exact_when_scale_is_a_power_of_two():
    # σ² + ε = 3.25 + 0.75 = 4 exactly, so s = γ/2 and every product is exact in float64.
    rng = np.random.default_rng(1)
    kernel, bias = rng.normal(size=(3, 2)), rng.normal(size=2)
    gamma, beta, mean = np.array([1.0, -3.0]), np.array([0.25, 0.0]), np.array([0.5, -2.0])
    w, b = fold_params(kernel, bias, gamma, beta, mean, np.full(2, 3.25), 0.75)
    np.testing.assert_array_equal(w, kernel * (gamma / 2))
    np.testing.assert_array_equal(b, (bias - mean) * (gamma / 2) + beta)


def test_fold_params_zero_gamma_gives_beta():
    kernel = np.arange(6.0).reshape(3, 2)
    w, b = fold_params(
        kernel, np.ones(2), np.zeros(2), np.array([0.5, -1.5]), np.ones(2), np.full(2, 1e-12), 1e-3
    )
    np.testing.assert_array_equal(w, np.zeros((3, 2)))
    np.testing.assert_array_equal(b, [0.5, -1.5])


def test_fold_params_absent_bias_gamma_beta_default_to_0_1_0():
    kernel = np.array([[2.0, -1.0]])
    w, b = fold_params(kernel, None, None, None, np.array([1.0, 3.0]), np.array([3.0, 0.0]), 1.0)
    np.testing.assert_array_equal(w, [[1.0, -1.0]])  # s = 1/√4, 1/√1
    np.testing.assert_array_equal(b, [-0.5, -3.0])


def test_fold_params_zero_variance_without_epsilon_is_refused():
    with pytest.raises(ModelError, match="ε ≤ 0 and a zero variance"):
        fold_params(np.ones((2, 2)), None, None, None, np.zeros(2), np.array([1.0, 0.0]), 0.0)


# --- fold_model on models it must fold --------------------------------------------------------


def _bn(keras, kind, **kwargs):
    if kind == "keras":
        return keras.layers.BatchNormalization(**kwargs)
    from pipeline.models.article import custom_bn_class

    return custom_bn_class()(**kwargs)


def _randomize(model, seed=0):
    """Non-trivial BN statistics and Dense biases: γ with a zero and a negative entry, a tiny σ²."""
    from pipeline.models.article import is_batch_norm

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if is_batch_norm(layer):
            n = int(layer.moving_mean.shape[0])
            if layer.gamma is not None:
                g = rng.uniform(0.5, 2.0, n) * rng.choice([-1.0, 1.0], n)
                g[0] = 0.0
                g[-1] = -abs(g[-1])
                layer.gamma.assign(g.astype(np.float32))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(size=n).astype(np.float32))
            layer.moving_mean.assign(rng.normal(size=n).astype(np.float32))
            v = rng.uniform(0.05, 4.0, n)
            v[0] = 1e-12
            layer.moving_variance.assign(v.astype(np.float32))
        elif type(layer).__name__ == "Dense" and layer.use_bias:
            layer.bias.assign(rng.normal(size=layer.bias.shape).astype(np.float32))
    return model


def _rel_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


def _snapshot(model):
    return json.dumps(model.get_config(), sort_keys=True, default=str), [
        w.copy() for w in model.get_weights()
    ]


def _assert_unchanged(model, snapshot):
    config, weights = snapshot
    assert json.dumps(model.get_config(), sort_keys=True, default=str) == config
    now = model.get_weights()
    assert len(now) == len(weights)
    assert all(np.array_equal(a, b) for a, b in zip(now, weights, strict=True))


def _assert_no_bn(model):
    from pipeline.models.article import is_batch_norm

    assert [layer.name for layer in model.layers if is_batch_norm(layer)] == []


VARIANTS = [  # (BN kwargs, Dense use_bias)
    (dict(), True),
    (dict(center=False), True),
    (dict(scale=False), True),
    (dict(center=False, scale=False), False),
    (dict(epsilon=10.0), False),
    (dict(epsilon=1e-5, momentum=0.9), True),
]


@pytest.mark.parametrize("kind", ["keras", "custom"])
@pytest.mark.parametrize("bn_kwargs,use_bias", VARIANTS)
def test_fold_model_sequential(keras, kind, bn_kwargs, use_bias):
    k = keras
    model = k.Sequential(
        [
            k.Input((7,), name="x"),
            k.layers.Dense(6, use_bias=use_bias, name="d1"),
            _bn(k, kind, name="bn1", **bn_kwargs),
            k.layers.ReLU(name="r1"),
            k.layers.Dense(5, name="d2"),
            _bn(k, kind, name="bn2"),
            k.layers.Dense(3, name="out"),
        ]
    )
    _randomize(model, seed=len(bn_kwargs) + use_bias)
    before = _snapshot(model)
    x = np.random.default_rng(2).normal(size=(64, 7)).astype(np.float32)

    from pipeline.stages.fold import fold_model

    folded, pairs, skipped = fold_model(model)
    assert skipped == []
    assert type(folded) is k.Sequential
    assert [layer.name for layer in folded.layers] == ["d1", "r1", "d2", "out"]
    _assert_no_bn(folded)
    bn_class = "BatchNormalization" if kind == "keras" else "CustomBatchNorm"
    eps = bn_kwargs.get("epsilon", 1e-3)
    assert pairs == [
        FoldedPair(
            layer="d1",
            bn="bn1",
            bn_class=bn_class,
            epsilon=eps,
            center=bn_kwargs.get("center", True),
            scale=bn_kwargs.get("scale", True),
            layer_had_bias=use_bias,
            units=6,
        ),
        FoldedPair(
            layer="d2",
            bn="bn2",
            bn_class=bn_class,
            epsilon=1e-3,
            center=True,
            scale=True,
            layer_had_bias=True,
            units=5,
        ),
    ]
    # The folded Dense holds exactly fold_params(...) rounded once to float32.
    for dense, bn in (("d1", "bn1"), ("d2", "bn2")):
        d, n = model.get_layer(dense), model.get_layer(bn)
        w, b = fold_params(
            d.kernel.numpy(),
            d.bias.numpy() if d.use_bias else None,
            n.gamma.numpy() if n.scale else None,
            n.beta.numpy() if n.center else None,
            n.moving_mean.numpy(),
            n.moving_variance.numpy(),
            n.epsilon,
        )
        fw, fb = folded.get_layer(dense).get_weights()
        np.testing.assert_array_equal(fw, w.astype(np.float32))
        np.testing.assert_array_equal(fb, b.astype(np.float32))
    assert _rel_diff(model(x, training=False), folded(x, training=False)) <= FOLD_RTOL
    _assert_unchanged(model, before)


@pytest.mark.parametrize("kind", ["keras", "custom"])
def test_fold_model_functional_branches_and_bn_as_output(keras, kind):
    k = keras
    x = k.Input((7,), name="x")
    a = k.layers.Dense(6, name="da")(x)
    a = _bn(k, kind, scale=False, name="bna")(a)
    a = k.layers.ReLU(name="ra")(a)
    b = k.layers.Dense(6, use_bias=False, name="db")(x)
    b = _bn(k, kind, center=False, epsilon=10.0, name="bnb")(b)
    c = k.layers.Add(name="add")([a, b])
    d = k.layers.Dense(4, name="dc")(c)
    d = _bn(k, kind, epsilon=1e-5, name="bnc")(d)  # also a model output: rewired to "dc"
    out = k.layers.Dense(2, name="out")(k.layers.Concatenate(name="cat")([d, c]))
    model = _randomize(k.Model(x, [out, d], name="fn"), seed=3)
    before = _snapshot(model)
    xs = np.random.default_rng(4).normal(size=(64, 7)).astype(np.float32)

    from pipeline.stages.fold import fold_model

    folded, pairs, skipped = fold_model(model)
    assert skipped == []
    assert isinstance(folded, k.Model) and not isinstance(folded, k.Sequential)
    assert {(p.layer, p.bn) for p in pairs} == {("da", "bna"), ("db", "bnb"), ("dc", "bnc")}
    _assert_no_bn(folded)
    assert [t.name.split("/")[0] for t in folded.outputs] == ["out", "dc"]
    for orig, new in zip(model(xs, training=False), folded(xs, training=False), strict=True):
        assert _rel_diff(orig, new) <= FOLD_RTOL
    _assert_unchanged(model, before)


def test_fold_model_dense_on_rank3_input_bn_last_axis_is_folded(keras):
    k = keras
    x = k.Input((3, 4), name="x")
    d = k.layers.Dense(5, name="d")(x)  # (batch, 3, 5): the kernel acts on the last axis
    y = k.layers.BatchNormalization(axis=-1, name="bn")(d)
    model = _randomize(k.Model(x, y))
    from pipeline.stages.fold import fold_model

    folded, pairs, skipped = fold_model(model)
    assert [(p.layer, p.bn) for p in pairs] == [("d", "bn")] and skipped == []
    xs = np.random.default_rng(5).normal(size=(8, 3, 4)).astype(np.float32)
    assert _rel_diff(model(xs, training=False), folded(xs, training=False)) <= FOLD_RTOL


def test_fold_model_bn_axis_1_on_rank2_is_the_units_axis_and_folds(keras):
    k = keras
    model = _randomize(
        k.Sequential(
            [
                k.Input((4,)),
                k.layers.Dense(3, name="d"),
                k.layers.BatchNormalization(axis=1, name="bn"),
            ]
        )
    )
    from pipeline.stages.fold import fold_model

    _, pairs, skipped = fold_model(model)
    assert [(p.layer, p.bn) for p in pairs] == [("d", "bn")] and skipped == []


# --- fold_model on models it must refuse ------------------------------------------------------


def _dense_relu_then_bn(k, kind):
    return k.Sequential(
        [
            k.Input((4,)),
            k.layers.Dense(3, activation="relu", name="d"),
            _bn(k, kind, name="bn"),
            k.layers.Dense(2, name="out"),
        ]
    )


def _bn_after_relu(k, kind):
    return k.Sequential(
        [
            k.Input((4,)),
            k.layers.Dense(3, name="d"),
            k.layers.ReLU(name="relu"),
            _bn(k, kind, name="bn"),
            k.layers.Dense(2, name="out"),
        ]
    )


def _dense_feeds_bn_and_add(k, kind):
    x = k.Input((4,))
    d = k.layers.Dense(3, name="d")(x)
    y = k.layers.Add(name="add")([_bn(k, kind, name="bn")(d), d])
    return k.Model(x, k.layers.Dense(2, name="out")(y))


def _dense_feeds_bn_and_concat(k, kind):
    x = k.Input((4,))
    d = k.layers.Dense(3, name="d")(x)
    y = k.layers.Concatenate(name="concat")([d, _bn(k, kind, name="bn")(d)])
    return k.Model(x, k.layers.Dense(2, name="out")(y))


def _dense_is_also_output(k, kind):
    x = k.Input((4,))
    d = k.layers.Dense(3, name="d")(x)
    return k.Model(x, [_bn(k, kind, name="bn")(d), d])


def _shared_dense(k, kind):
    x1, x2 = k.Input((4,), name="x1"), k.Input((4,), name="x2")
    dense = k.layers.Dense(3, name="d")
    y = k.layers.Add(name="add")([_bn(k, kind, name="bn")(dense(x1)), dense(x2)])
    return k.Model([x1, x2], y)


def _shared_bn(k, kind):
    x1, x2 = k.Input((4,), name="x1"), k.Input((4,), name="x2")
    bn = _bn(k, kind, name="bn")
    y = k.layers.Add(name="add")(
        [bn(k.layers.Dense(3, name="d1")(x1)), bn(k.layers.Dense(3, name="d2")(x2))]
    )
    return k.Model([x1, x2], y)


def _reshape_then_bn_axis1(k, kind):
    return k.Sequential(
        [
            k.Input((12,)),
            k.layers.Reshape((3, 4), name="reshape"),
            k.layers.BatchNormalization(axis=1, name="bn"),
        ]
    )


def _reshape_dense_bn_axis1(k, kind):
    return k.Sequential(
        [
            k.Input((12,)),
            k.layers.Reshape((3, 4), name="reshape"),
            k.layers.Dense(5, name="d"),
            k.layers.BatchNormalization(axis=1, name="bn"),
        ]
    )


def _rank3_dense_bn_axis1(k, kind):
    x = k.Input((3, 4))
    return k.Model(
        x, k.layers.BatchNormalization(axis=1, name="bn")(k.layers.Dense(5, name="d")(x))
    )


AXIS_REASON = "normalizes axis [1], not the last (channels) axis"
REFUSED = [
    (
        _dense_feeds_bn_and_add,
        "follows Dense 'd' whose output also feeds add, and feeds Add 'add', not a Dense or a "
        "convolution",
    ),
    (
        _dense_feeds_bn_and_concat,
        "follows Dense 'd' whose output also feeds concat, and feeds Concatenate 'concat', not a "
        "Dense or a convolution",
    ),
    (
        _dense_is_also_output,
        "follows Dense 'd' whose output also feeds the model output, and feeds the model output",
    ),
    (
        _shared_dense,
        "follows Dense 'd' which is shared by several inputs, and feeds Add 'add', not a Dense "
        "or a convolution",
    ),
    (_shared_bn, "is applied to more than one input (shared layer)"),
    (_reshape_then_bn_axis1, AXIS_REASON),
    (_reshape_dense_bn_axis1, AXIS_REASON),
    (_rank3_dense_bn_axis1, AXIS_REASON),
]
KEEPS_KIND = {
    _dense_feeds_bn_and_add,
    _dense_feeds_bn_and_concat,
    _dense_is_also_output,
    _shared_dense,
    _shared_bn,
}


# --- BN before a Dense: folded forward into it ---------------------------------------------------


def _bn_first(k, kind):
    """Input standardization: BN on the raw features, then the network (a bias-free Dense)."""
    return k.Sequential(
        [
            k.Input((6,)),
            _bn(k, kind, name="bn"),
            k.layers.Dense(5, use_bias=False, name="d"),
            k.layers.ReLU(name="r"),
            k.layers.Dense(3, name="out"),
        ]
    )


def _bn_through_dropout(k, kind):
    x = k.Input((6,))
    h = k.layers.Dense(5, activation="relu", name="h")(x)
    y = k.layers.Dropout(0.3, name="drop")(_bn(k, kind, center=False, name="bn")(h))
    return k.Model(x, k.layers.Dense(3, name="d")(y))


def _image_bn_flatten(k, kind):
    """BN over the channels of an image, then Flatten: input i of the Dense is channel i mod 2."""
    return k.Sequential(
        [
            k.Input((3, 4, 2)),
            _bn(k, kind, name="bn"),
            k.layers.Flatten(name="flat"),
            k.layers.Dense(5, name="d"),
        ]
    )


def _bn_on_both_sides(k, kind):
    """BN → Dense → BN: one Dense takes a BN from each side."""
    return k.Sequential(
        [
            k.Input((6,)),
            _bn(k, kind, name="bn"),
            k.layers.Dense(4, name="d"),
            _bn(k, kind, name="bn2"),
            k.layers.ReLU(name="r"),
            k.layers.Dense(2, name="out"),
        ]
    )


FORWARD = [  # (build, [(layer, bn, direction, via)])
    (_dense_relu_then_bn, [("out", "bn", "before", [])]),
    (_bn_after_relu, [("out", "bn", "before", [])]),
    (_bn_first, [("d", "bn", "before", [])]),
    (_bn_through_dropout, [("d", "bn", "before", ["drop"])]),
    (_image_bn_flatten, [("d", "bn", "before", ["flat"])]),
    (_bn_on_both_sides, [("d", "bn", "before", []), ("d", "bn2", "after", [])]),
]


@pytest.mark.parametrize("kind", ["keras", "custom"])
@pytest.mark.parametrize("build,expected", FORWARD, ids=[b.__name__[1:] for b, _ in FORWARD])
def test_fold_model_folds_a_bn_forward_into_the_dense_it_feeds(keras, kind, build, expected):
    from pipeline.stages.fold import check_fold, fold_model

    model = _randomize(build(keras, kind), seed=7)
    before = _snapshot(model)
    folded, pairs, skipped = fold_model(model)
    assert skipped == []
    assert [(p.layer, p.bn, p.direction, p.via) for p in pairs] == expected
    _assert_no_bn(folded)
    xs = _inputs_for(model, n=64)
    _, rel, failures = check_fold(model, folded, pairs, xs, FOLD_RTOL)
    assert failures == [] and rel <= FOLD_RTOL
    assert all(p.max_rel_diff <= FOLD_RTOL for p in pairs)
    _assert_unchanged(model, before)


def test_forward_fold_is_diag_s_times_w_and_b_plus_t_w(keras):
    """The folded Dense holds diag(s)·W and b + t·W in float64 rounded once, s and t tiled over
    the flattened image (channels last)."""
    from pipeline.stages.fold import fold_model

    model = _randomize(_image_bn_flatten(keras, "keras"), seed=8)
    folded, _, _ = fold_model(model)
    bn, d = model.get_layer("bn"), model.get_layer("d")
    s = bn.gamma.numpy().astype(np.float64) / np.sqrt(
        bn.moving_variance.numpy().astype(np.float64) + bn.epsilon
    )
    t = bn.beta.numpy() - bn.moving_mean.numpy() * s
    s_rows, t_rows = np.tile(s, 12), np.tile(t, 12)  # 3 × 4 pixels × 2 channels = 24 inputs
    w = d.kernel.numpy().astype(np.float64)
    fw, fb = folded.get_layer("d").get_weights()
    np.testing.assert_array_equal(fw, (w * s_rows[:, None]).astype(np.float32))
    np.testing.assert_allclose(fb, d.bias.numpy() + t_rows @ w, rtol=1e-6, atol=1e-6)
    x = _inputs_for(model, n=32)
    assert _rel_diff(model(x, training=False), folded(x, training=False)) <= FOLD_RTOL


def test_a_wrong_forward_fold_fails_the_check(keras):
    """Negative control: scaling the Dense's output columns instead of its input rows (the
    "after" formula used the wrong way round) is caught by the layer-by-layer check."""
    from pipeline.stages.fold import check_fold, fold_model

    model = _randomize(_bn_after_relu(keras, "keras"), seed=9)
    folded, pairs, _ = fold_model(model)
    kernel, bias = folded.get_layer("out").get_weights()
    folded.get_layer("out").set_weights([kernel * 1.01, bias])
    _, _, failures = check_fold(model, folded, pairs, _inputs_for(model, n=64), FOLD_RTOL)
    assert [f.split(":")[0] for f in failures] == ["out+bn", "model output"]


def _refused_cases():
    for build, reason in REFUSED:
        kinds = (
            ["keras", "custom"] if build in KEEPS_KIND else ["keras"]
        )  # custom BN: last axis only
        for kind in kinds:
            yield pytest.param(build, kind, reason, id=f"{build.__name__[1:]}-{kind}")


def _as_list(outputs):
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _inputs_for(model, n=16):
    rng = np.random.default_rng(6)
    xs = [rng.normal(size=(n, *t.shape[1:])).astype(np.float32) for t in model.inputs]
    return xs if len(xs) > 1 else xs[0]


@pytest.mark.parametrize("build,kind,reason", list(_refused_cases()))
def test_fold_model_keeps_bn_it_cannot_fold_exactly(keras, build, kind, reason):
    from pipeline.models.article import is_batch_norm
    from pipeline.stages.fold import fold_model

    model = _randomize(build(keras, kind))
    before = _snapshot(model)
    folded, pairs, skipped = fold_model(model)
    assert pairs == []
    assert skipped == [SkippedBN(bn="bn", reason=reason)]
    assert [layer.name for layer in folded.layers if is_batch_norm(layer)] == ["bn"]
    # Nothing was folded, so the copy computes exactly what the original does.
    xs = _inputs_for(model)
    expected, got = _as_list(model(xs, training=False)), _as_list(folded(xs, training=False))
    assert len(expected) == len(got)
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _assert_unchanged(model, before)

    with pytest.raises(ModelError) as info:
        fold_model(model, strict=True)
    assert str(info.value) == f"cannot fold exactly: bn {reason}"


def test_fold_model_folds_what_it_can_and_names_what_it_keeps(keras):
    k = keras
    model = _randomize(
        k.Sequential(
            [
                k.Input((5,)),
                k.layers.Dense(4, name="d1"),
                k.layers.BatchNormalization(name="bn1"),
                k.layers.ReLU(name="r1"),
                k.layers.BatchNormalization(name="bn_after_relu"),
                k.layers.Dense(3, activation="relu", name="d2"),
                _bn(k, "custom", name="bn_after_act"),
            ]
        )
    )
    from pipeline.stages.fold import fold_model

    folded, pairs, skipped = fold_model(model)
    assert [(p.layer, p.bn, p.direction) for p in pairs] == [
        ("d1", "bn1", "after"),
        ("d2", "bn_after_relu", "before"),
    ]
    reason = "follows Dense 'd2' which has its own activation 'relu', and feeds the model output"
    assert skipped == [SkippedBN(bn="bn_after_act", reason=reason)]
    xs = _inputs_for(model)
    assert _rel_diff(model(xs, training=False), folded(xs, training=False)) <= FOLD_RTOL
    with pytest.raises(ModelError) as info:
        fold_model(model, strict=True)
    assert str(info.value) == f"cannot fold exactly: bn_after_act {reason}"


@pytest.mark.parametrize("outer", ["sequential", "functional"])
def test_fold_model_names_bn_inside_a_nested_model(keras, outer):
    # Regression: a BN inside a nested model was neither folded nor reported, even under strict.
    from pipeline.stages.fold import fold_model

    k = keras
    block = k.Sequential(
        [k.Input((4,)), k.layers.Dense(3, name="d"), k.layers.BatchNormalization(name="bn")],
        name="block",
    )
    if outer == "sequential":
        model = k.Sequential([k.Input((4,)), block, k.layers.Dense(2, name="out")])
    else:
        x = k.Input((4,))
        model = k.Model(x, k.layers.Dense(2, name="out")(block(x)))
    _randomize(block)
    folded, pairs, skipped = fold_model(model)
    reason = "is inside the nested model 'block'; bnpipe folds only the outer model's own layers"
    assert pairs == [] and skipped == [SkippedBN(bn="bn", reason=reason)]
    xs = _inputs_for(model)
    np.testing.assert_array_equal(
        np.asarray(model(xs, training=False)), np.asarray(folded(xs, training=False))
    )
    with pytest.raises(ModelError) as info:
        fold_model(model, strict=True)
    assert str(info.value) == f"cannot fold exactly: bn {reason}"


def test_fold_model_names_a_batch_normalization_subclass(keras):
    # A subclass may change what BN computes, so it is reported, not folded on trust.
    from pipeline.stages.fold import fold_model

    @keras.saving.register_keras_serializable(package="test_fold")  # as a loadable model's would be
    class ShiftedBN(keras.layers.BatchNormalization):
        def call(self, inputs, training=None):
            return super().call(inputs, training=training) + 1.0

    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, name="d"), ShiftedBN(name="bn")]
    )
    _, pairs, skipped = fold_model(model)
    assert pairs == [] and skipped == [
        SkippedBN(bn="bn", reason="is a ShiftedBN, which bnpipe does not fold")
    ]


def test_fold_model_leaves_a_foreign_layer_named_custombatchnorm_alone(keras, tf):
    # Regression: the plan went by class name only, so the article's own "CustomBatchNorm" (no
    # moving statistics) was taken for bnpipe's and fold_model crashed reading its moving_mean.
    from pipeline.stages.fold import fold_model

    @keras.saving.register_keras_serializable(package="article")
    class CustomBatchNorm(keras.layers.Layer):
        def call(self, inputs):
            mean, variance = tf.nn.moments(inputs, axes=[0])
            return (inputs - mean) / tf.sqrt(variance + 1e-3)

    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, name="d"), CustomBatchNorm(name="bn")]
    )
    folded, pairs, skipped = fold_model(model)
    assert pairs == [] and skipped == []
    assert type(folded.get_layer("bn")) is CustomBatchNorm  # the foreign class, not bnpipe's


# --- run_fold end to end ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fixture,bn_class", [("trained", "BatchNormalization"), ("trained_custom", "CustomBatchNorm")]
)
def test_run_fold_on_trained_model_writes_folded_model_and_record(
    request, fixture, bn_class, digits, tmp_path
):
    from pipeline.models.door import load_model
    from pipeline.stages.fold import run_fold

    _, result = request.getfixturevalue(fixture)
    model_sha = sha256_file(result.model_path)
    warnings = []
    out = run_fold(result.model_path, tmp_path, warn=warnings.append)
    assert warnings == []
    assert (
        out.folded_path == tmp_path / "folded.keras" and out.record_path == tmp_path / "fold.json"
    )
    assert sha256_file(result.model_path) == model_sha  # the original is not touched

    rec = json.loads(out.record_path.read_text())
    assert rec["schema_version"] == 1 and rec["stage"] == "fold"
    assert rec["inputs"] == {"model": model_sha}
    assert rec["outputs"] == {"folded.keras": sha256_file(out.folded_path)}
    report = rec["report"]
    assert [(p["layer"], p["bn"], p["bn_class"], p["units"]) for p in report["pairs"]] == [
        ("dense_1", "bn_1", bn_class, 16),
        ("dense_2", "bn_2", bn_class, 16),
    ]
    for p in report["pairs"]:
        assert 0 <= p["max_rel_diff"] <= FOLD_RTOL and p["max_abs_diff"] >= 0
    assert report["skipped"] == [] and report["failures"] == [] and report["passed"] is True
    assert report["rtol"] == FOLD_RTOL and 0 <= report["output_max_rel_diff"] <= FOLD_RTOL
    n_test = len(digits.y_test)
    assert (
        report["samples"] == n_test
        and report["sample_source"] == f"{n_test} test samples of digits"
    )

    original, folded = load_model(result.model_path), load_model(out.folded_path)
    _assert_no_bn(folded)
    assert [layer.name for layer in folded.layers] == [
        "dense_1",
        "relu_1",
        "dense_2",
        "relu_2",
        "classes",
    ]
    a = original(digits.x_test, training=False)
    assert _rel_diff(a, folded(digits.x_test, training=False)) <= FOLD_RTOL


def test_run_fold_warns_and_strict_refuses_and_writes_nothing(keras, tmp_path):
    from pipeline.models.door import save_model
    from pipeline.stages.fold import run_fold

    src = save_model(
        _randomize(_dense_feeds_bn_and_add(keras, "keras")), tmp_path / "src" / "m.keras"
    )
    reason = (
        "follows Dense 'd' whose output also feeds add, and feeds Add 'add', not a Dense or a "
        "convolution"
    )

    strict_out = tmp_path / "strict"
    with pytest.raises(ModelError, match=f"cannot fold exactly: bn {reason}"):
        run_fold(src, strict_out, config=FoldConfig(strict=True))
    assert not strict_out.exists()

    warnings = []
    out = run_fold(src, tmp_path / "out", warn=warnings.append)
    assert warnings == [f"Warning: BatchNormalization 'bn' stays in the model: it {reason}"]
    report = json.loads(out.record_path.read_text())["report"]
    assert report["pairs"] == [] and report["skipped"] == [{"bn": "bn", "reason": reason}]
    assert report["sample_source"] == "512 uniform random inputs (no data known)"
    assert report["passed"] is True and report["output_max_rel_diff"] == 0.0


def test_run_fold_fails_beyond_tolerance_and_writes_nothing(trained, tmp_path):
    from pipeline.stages.fold import run_fold

    _, result = trained
    # Float32 round-off between the two models is ≈ 1e-7 relative, so 1e-12 must fail.
    with pytest.raises(
        ModelError,
        match=r"^folded model differs from the original: dense_1\+bn_1: "
        r"relative difference .* > 1e-12",
    ):
        run_fold(result.model_path, tmp_path, config=FoldConfig(rtol=1e-12))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("layout", ["two_outputs", "rank3_input"])
def test_run_fold_on_functional_layouts(keras, tmp_path, layout):
    # Regressions: the output check once assumed one output, and random check inputs once
    # assumed a flat (batch, features) input.
    from pipeline.models.door import save_model
    from pipeline.stages.fold import run_fold

    k = keras
    x = k.Input((3, 4) if layout == "rank3_input" else (4,), name="x")
    y = k.layers.BatchNormalization(name="bn")(k.layers.Dense(5, name="d")(x))
    out = k.layers.Dense(2, name="out")(y)
    model = _randomize(k.Model(x, [out, y] if layout == "two_outputs" else out))
    src = save_model(model, tmp_path / "src" / "m.keras")
    result = run_fold(src, tmp_path / "out", warn=pytest.fail)
    report = result.report
    assert [(p.layer, p.bn) for p in report.pairs] == [("d", "bn")]
    assert report.passed and 0 <= report.output_max_rel_diff <= FOLD_RTOL
    assert report.pairs[0].max_rel_diff <= FOLD_RTOL


# --- convolutions: the plan and the fold on whole models ---------------------------------------


def _mobilenet_block(k, kind):
    """Conv2D → BN → ReLU, DepthwiseConv2D (multiplier 2) → BN → ReLU6, pointwise Conv2D → BN,
    a residual Add of two branches, global pooling, Dense."""
    x = k.Input((8, 8, 3))
    h = k.layers.Conv2D(4, 3, padding="same", use_bias=False, name="stem")(x)
    h = k.layers.ReLU(name="r0")(_bn(k, kind, name="bn_stem")(h))
    h = k.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(h)
    h = k.layers.ReLU(max_value=6.0, name="r1")(_bn(k, kind, name="bn_dw")(h))
    a = _bn(k, kind, name="bn_pw")(k.layers.Conv2D(8, 1, name="pw")(h))
    b = _bn(k, kind, name="bn_sep")(k.layers.SeparableConv2D(8, 3, padding="same", name="sep")(h))
    h = k.layers.Add(name="add")([a, b])
    h = k.layers.GlobalAveragePooling2D(name="gap")(h)
    return k.Model(x, k.layers.Dense(5, name="out")(h))


def _bn_before_valid_conv(k, kind):
    return k.Sequential(
        [
            k.Input((6, 6, 2)),
            _bn(k, kind, name="bn"),
            k.layers.Conv2D(3, 3, padding="valid", name="conv"),
            k.layers.Flatten(name="flat"),
            k.layers.Dense(2, name="out"),
        ]
    )


def _bn_before_same_conv(k, kind):
    return k.Sequential(
        [
            k.Input((6, 6, 2)),
            _bn(k, kind, name="bn"),
            k.layers.Conv2D(3, 3, padding="same", name="conv"),
            k.layers.Flatten(name="flat"),
            k.layers.Dense(2, name="out"),
        ]
    )


def _conv1d_then_bn(k, kind):
    return k.Sequential(
        [
            k.Input((10, 2)),
            k.layers.Conv1D(4, 3, strides=2, dilation_rate=1, name="conv"),
            _bn(k, kind, name="bn"),
            k.layers.ReLU(),
            k.layers.GlobalAveragePooling1D(name="gap"),
            _bn(k, kind, name="bn_pooled"),  # through the average into the Dense
            k.layers.Dense(2, name="out"),
        ]
    )


CONV_CASES = [
    (
        _mobilenet_block,
        [
            ("stem", "bn_stem", "after"),
            ("dw", "bn_dw", "after"),
            ("pw", "bn_pw", "after"),
            ("sep", "bn_sep", "after"),
        ],
        [],
    ),
    (_bn_before_valid_conv, [("conv", "bn", "before")], []),
    (
        _bn_before_same_conv,
        [],
        ["feeds Conv2D 'conv' with padding 'same' that pads [2, 2] zeros"],
    ),
    (_conv1d_then_bn, [("conv", "bn", "after"), ("out", "bn_pooled", "before")], []),
]


def _randomize_convs(model, seed):
    """Non-trivial biases on every convolution (so a forgotten bias term shows)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if hasattr(layer, "bias") and layer.bias is not None and "Conv" in type(layer).__name__:
            layer.bias.assign(rng.normal(size=layer.bias.shape).astype(np.float32))
    return model


@pytest.mark.parametrize("kind", ["keras", "custom"])
@pytest.mark.parametrize(
    "build,expected,kept", CONV_CASES, ids=[c[0].__name__[1:] for c in CONV_CASES]
)
def test_fold_model_folds_convolutions(keras, kind, build, expected, kept):
    from pipeline.stages.fold import check_fold, fold_model

    model = _randomize_convs(_randomize(build(keras, kind), seed=11), seed=12)
    folded, pairs, skipped = fold_model(model)
    assert [(p.layer, p.bn, p.direction) for p in pairs] == expected
    reasons = [s.reason.split(", and ")[-1] for s in skipped]
    assert len(reasons) == len(kept) and all(
        r.startswith(k) for r, k in zip(reasons, kept, strict=True)
    ), reasons
    xs = _inputs_for(model, n=32)
    _, rel, failures = check_fold(model, folded, pairs, xs, FOLD_RTOL)
    assert failures == [] and rel <= FOLD_RTOL
    assert all(p.max_rel_diff <= FOLD_RTOL for p in pairs)


def test_a_depthwise_fold_in_the_wrong_channel_order_fails_the_check(keras):
    """Negative control: with multiplier 2, output channel c·2 + m; folding the BN's scales in
    the other order (m·C + c) moves the outputs far beyond the tolerance."""
    from pipeline.stages.fold import check_fold, fold_model

    model = _randomize(_mobilenet_block(keras, "keras"), seed=13)
    folded, pairs, _ = fold_model(model)
    layer = folded.get_layer("dw")
    kernel, bias = layer.get_weights()
    kh, kw, c, m = kernel.shape
    swapped = kernel.reshape(kh, kw, c * m)[..., np.arange(c * m).reshape(c, m).T.ravel()]
    layer.set_weights([swapped.reshape(kh, kw, c, m), bias])
    _, _, failures = check_fold(model, folded, pairs, _inputs_for(model, n=32), FOLD_RTOL)
    assert any(f.startswith("dw+bn_dw:") for f in failures)
