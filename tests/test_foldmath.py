"""foldmath.py's convolution folds: against TensorFlow running the real tf_keras layers (float32),
against an independent float64 NumPy convolution (hypothesis), and where folding forward is not
exact, proof that it is not.

The Dense folds (fold_params, fold_before) are tested in test_fold.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.core.config import FOLD_RTOL
from pipeline.core.errors import ModelError
from pipeline.folding.maths import (
    after_fold_blocker,
    before_fold_blocker,
    bn_affine,
    fold_after_layer,
    fold_before_layer,
    fold_depthwise_after,
    zero_padding,
)

# The bar a folded pair must meet in bnpipe fold (config.FOLD_RTOL, 1e-5): the largest
# difference at the pair's output relative to the largest output magnitude. Both sides run in
# float32 (≈ 6e-8 per rounding) through sums of ≤ 3·3·3·6 = 162 products, so round-off stays near
# 1e-6 at worst; a wrong channel order or a missing ε moves outputs by 1e-2 or more.
TF_RTOL = FOLD_RTOL
# The float64 checks: sums of ≤ 3·3·4·3 = 108 products, each term off by at most u = 2⁻⁵³ of
# the magnitudes entering it, so |error| ≤ ~110·u·M ≈ 1.2e-14·M, M the sum of |terms|.
# 1e-12·M leaves ~80× headroom; any wrong index or formula is off by O(M).
F64_RTOL = 1e-12
# What "clearly wrong" means in the negative controls: 1000× the tolerance.
WRONG = 1000 * TF_RTOL


# --- an independent float64 convolution ---------------------------------------------------------


def same_pads(n: int, k_eff: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding of one axis: the output has ⌈n/stride⌉ positions, the odd zero
    goes after."""
    out = -(-n // stride)
    total = max((out - 1) * stride + k_eff - n, 0)
    return total // 2, total - total // 2


def conv_ref(x, kernel, strides=(1, 1), dilation=(1, 1), padding="valid", depthwise=False):
    """2-d convolution, float64, by summing shifted input slices tap by tap.

    x (n, H, W, c); kernel (kh, kw, c, out) or, depthwise, (kh, kw, c, mult) whose output
    channel c·mult + m is x[..., c] · kernel[..., c, m].
    """
    x = np.asarray(x, np.float64)
    kh, kw = kernel.shape[:2]
    k_eff = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    if padding == "same":
        pads = [same_pads(x.shape[1 + a], k_eff[a], strides[a]) for a in range(2)]
        x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    oh = (x.shape[1] - k_eff[0]) // strides[0] + 1
    ow = (x.shape[2] - k_eff[1]) // strides[1] + 1
    out = 0.0
    for i in range(kh):
        for j in range(kw):
            r, c = i * dilation[0], j * dilation[1]
            patch = x[:, r : r + (oh - 1) * strides[0] + 1 : strides[0]]
            patch = patch[:, :, c : c + (ow - 1) * strides[1] + 1 : strides[1]]
            if depthwise:
                term = (patch[..., :, None] * kernel[i, j]).reshape(*patch.shape[:3], -1)
            else:
                term = patch @ kernel[i, j]
            out = out + term
    return out


def bn_ref(z, gamma, beta, mean, variance, epsilon):
    """Inference-mode BN written out (not via foldmath.bn_affine), float64."""
    return gamma * (z - mean) / np.sqrt(variance + epsilon) + beta


# --- float64 properties (hypothesis) ------------------------------------------------------------

finite = dict(allow_nan=False, allow_infinity=False)
values = st.floats(-4, 4, **finite)


@st.composite
def conv_case(draw, kind, before):
    """(x, weights, conv options, BN parameters) for one layer `kind`: conv, depthwise, separable.

    For a BN before the layer: "valid" padding, or "same" with a 1×1 kernel (both exact).
    """
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    strides = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    if kh == kw == 1 or not before:
        padding = draw(st.sampled_from(["valid", "same"]))
    else:
        padding = "valid"
    k_eff = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    h, w = k_eff[0] + draw(st.integers(0, 3)), k_eff[1] + draw(st.integers(0, 3))
    cin, cout, mult = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    x = draw(hnp.arrays(np.float64, (draw(st.integers(1, 2)), h, w, cin), elements=values))

    def arr(shape):
        return draw(hnp.arrays(np.float64, shape, elements=values))

    if kind == "conv":
        weights, out = [arr((kh, kw, cin, cout))], cout
    elif kind == "depthwise":
        weights, out = [arr((kh, kw, cin, mult))], cin * mult
    else:
        weights, out = [arr((kh, kw, cin, mult)), arr((1, 1, cin * mult, cout))], cout
    if draw(st.booleans()):
        weights.append(arr((out,)))
    channels = cin if before else out
    gamma = draw(hnp.arrays(np.float64, channels, elements=st.floats(-3, 3, **finite)))
    beta, mean = arr((channels,)), arr((channels,))
    variance = draw(hnp.arrays(np.float64, channels, elements=st.floats(1e-6, 10, **finite)))
    epsilon = draw(st.sampled_from([1e-5, 1e-3, 0.5]))
    options = dict(strides=strides, dilation=dilation, padding=padding)
    return x, weights, options, (gamma, beta, mean, variance, epsilon)


def apply_ref(kind, x, weights, options):
    """The layer of `kind` with this weight list, in float64 (`conv_ref`); also returns the same
    sum taken over |x| and |weights|, the magnitude M that bounds round-off."""

    def run(x, ws):
        if kind == "separable":
            z = conv_ref(x, ws[0], depthwise=True, **options)
            z = conv_ref(z, ws[1])
        else:
            z = conv_ref(x, ws[0], depthwise=kind == "depthwise", **options)
        return z + (ws[-1] if len(ws) > (2 if kind == "separable" else 1) else 0.0)

    return run(x, weights), run(np.abs(x), [np.abs(w) for w in weights])


CLASS = {"conv": "Conv2D", "depthwise": "DepthwiseConv2D", "separable": "SeparableConv2D"}


@pytest.mark.parametrize("kind", list(CLASS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_fold_after_matches_float64_bn_of_conv(kind, data):
    x, weights, options, bn = data.draw(conv_case(kind, before=False))
    gamma, beta, mean, variance, epsilon = bn
    z, mag = apply_ref(kind, x, weights, options)
    expected = bn_ref(z, *bn)
    s, t = bn_affine(gamma, beta, mean, variance, epsilon, len(gamma))
    folded = fold_after_layer(CLASS[kind], weights, s, t)
    assert [w.shape for w in folded[:-1]] == [w.shape for w in weights[: len(folded) - 1]]
    got, _ = apply_ref(kind, x, folded, options)
    bound = F64_RTOL * (np.abs(s) * (mag + np.abs(mean)) + np.abs(beta)) + 1e-300
    assert np.all(np.abs(got - expected) <= bound)


@pytest.mark.parametrize("kind", list(CLASS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_fold_before_matches_float64_conv_of_bn(kind, data):
    x, weights, options, bn = data.draw(conv_case(kind, before=True))
    expected, _ = apply_ref(kind, bn_ref(x, *bn), weights, options)
    config = {"kernel_size": weights[0].shape[:2], **options}
    config["dilation_rate"] = config.pop("dilation")
    assert before_fold_blocker(CLASS[kind], config) is None
    s, t = bn_affine(*bn[:4], bn[4], len(bn[0]))
    folded = fold_before_layer(CLASS[kind], weights, s, t)
    got, _ = apply_ref(kind, x, folded, options)
    # M: the magnitudes entering the original's sum, with the BN's |s·x| + |t| as its input.
    _, mag = apply_ref(kind, np.abs(s) * np.abs(x) + np.abs(t), weights, options)
    assert np.all(np.abs(got - expected) <= F64_RTOL * mag + 1e-300)


def test_conv_ref_agrees_with_tensorflow(keras):
    """The float64 reference is itself right: TensorFlow's Conv2D / DepthwiseConv2D agree with it
    on "same" with stride 2 (uneven padding) and on dilation."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 7, 6, 3))
    for layer, depthwise in (
        (keras.layers.Conv2D(4, (3, 2), strides=2, padding="same", use_bias=False), False),
        (keras.layers.Conv2D(4, 3, dilation_rate=2, padding="same", use_bias=False), False),
        (keras.layers.DepthwiseConv2D(3, strides=2, depth_multiplier=3, use_bias=False), True),
    ):
        y = layer(x.astype(np.float32)).numpy()
        cfg = layer.get_config()
        ref = conv_ref(
            x,
            layer.get_weights()[0],
            cfg["strides"],
            cfg["dilation_rate"],
            cfg["padding"],
            depthwise,
        )
        np.testing.assert_allclose(y, ref, rtol=0, atol=TF_RTOL * np.max(np.abs(ref)))


# --- the real tf_keras layers, float32 ------------------------------------------------------------

# (layer class, its options, input shape (without batch), BN options). Strides, dilation, both
# paddings, bias or not, multiplier 1 and 3, groups, and BNs without γ or β.
AFTER_CASES = {
    "conv1d-valid": ("Conv1D", dict(filters=5, kernel_size=3), (9, 3), {}),
    "conv1d-same-s2-nobias": (
        "Conv1D",
        dict(filters=4, kernel_size=3, strides=2, padding="same", use_bias=False),
        (9, 3),
        {},
    ),
    "conv1d-causal-d2": (
        "Conv1D",
        dict(filters=4, kernel_size=3, dilation_rate=2, padding="causal"),
        (9, 2),
        dict(center=False),
    ),
    "conv2d-same": ("Conv2D", dict(filters=6, kernel_size=3, padding="same"), (7, 7, 3), {}),
    "conv2d-valid-s2-nobias": (
        "Conv2D",
        dict(filters=6, kernel_size=3, strides=2, use_bias=False),
        (8, 7, 3),
        dict(scale=False),
    ),
    "conv2d-same-d2": (
        "Conv2D",
        dict(filters=4, kernel_size=(3, 2), dilation_rate=2, padding="same"),
        (7, 6, 2),
        {},
    ),
    "conv2d-1x1": ("Conv2D", dict(filters=8, kernel_size=1, use_bias=False), (5, 5, 4), {}),
    "conv2d-groups2": ("Conv2D", dict(filters=6, kernel_size=3, groups=2), (6, 6, 4), {}),
    "conv3d": ("Conv3D", dict(filters=3, kernel_size=2, padding="same"), (4, 4, 4, 2), {}),
    "depthwise1d-m3": (
        "DepthwiseConv1D",
        dict(kernel_size=3, depth_multiplier=3, use_bias=False),
        (8, 4),
        {},
    ),
    "depthwise2d-m1-same": (
        "DepthwiseConv2D",
        dict(kernel_size=3, padding="same", use_bias=False),
        (7, 7, 5),
        {},
    ),
    "depthwise2d-m3-s2": (
        "DepthwiseConv2D",
        dict(kernel_size=3, strides=2, depth_multiplier=3),
        (8, 8, 4),
        {},
    ),
    "depthwise2d-m3-d2-same-nobias": (
        "DepthwiseConv2D",
        dict(kernel_size=3, dilation_rate=2, depth_multiplier=3, padding="same", use_bias=False),
        (7, 7, 3),
        dict(center=False, scale=False),
    ),
    "separable1d-m2": (
        "SeparableConv1D",
        dict(filters=5, kernel_size=3, depth_multiplier=2, padding="same"),
        (9, 3),
        {},
    ),
    "separable2d-m1-nobias": (
        "SeparableConv2D",
        dict(filters=6, kernel_size=3, use_bias=False),
        (7, 7, 4),
        {},
    ),
    "separable2d-m3-s2-same": (
        "SeparableConv2D",
        dict(filters=5, kernel_size=3, strides=2, depth_multiplier=3, padding="same"),
        (8, 8, 3),
        {},
    ),
}

# A BN before the layer: only where before_fold_blocker finds the fold exact.
BEFORE_CASES = {
    "conv1d-valid-d2": ("Conv1D", dict(filters=4, kernel_size=3, dilation_rate=2), (10, 3), {}),
    "conv2d-valid": ("Conv2D", dict(filters=6, kernel_size=3), (7, 7, 3), {}),
    "conv2d-valid-s2-nobias": (
        "Conv2D",
        dict(filters=5, kernel_size=(3, 2), strides=2, use_bias=False),
        (8, 7, 4),
        dict(center=False),
    ),
    "conv2d-1x1-same": ("Conv2D", dict(filters=8, kernel_size=1, padding="same"), (5, 5, 4), {}),
    # "same" that pads nothing: k = 2, stride 2 on an even size.
    "conv2d-same-k2s2-even": (
        "Conv2D",
        dict(filters=4, kernel_size=2, strides=2, padding="same"),
        (8, 8, 3),
        {},
    ),
    "depthwise2d-m1-valid": ("DepthwiseConv2D", dict(kernel_size=3), (7, 7, 4), {}),
    "depthwise2d-m3-valid-s2": (
        "DepthwiseConv2D",
        dict(kernel_size=3, strides=2, depth_multiplier=3, use_bias=False),
        (9, 9, 3),
        {},
    ),
    "separable2d-m3-valid": (
        "SeparableConv2D",
        dict(filters=5, kernel_size=3, depth_multiplier=3),
        (7, 7, 3),
        {},
    ),
}


def _randomized_bn(keras, shape, seed, **options):
    """An inference-mode BN with moving statistics far from (0, 1): γ with a zero and a negative
    entry, a σ² of 1e-6 (a channel that barely varied), means and β of order 1."""
    rng = np.random.default_rng(seed)
    bn = keras.layers.BatchNormalization(epsilon=1e-3, **options)
    bn.build((None, *shape))  # shape without the batch axis, channels last
    channels = shape[-1]
    gamma = rng.uniform(0.5, 2.0, channels) * rng.choice([-1.0, 1.0], channels)
    gamma[0] = 0.0
    variance = rng.uniform(0.05, 4.0, channels)
    variance[-1] = 1e-6
    values = {
        "gamma": gamma,
        "beta": rng.normal(size=channels),
        "moving_mean": rng.normal(size=channels),
        "moving_variance": variance,
    }
    for w in bn.weights:
        w.assign(values[w.name.split("/")[-1].split(":")[0]].astype(np.float32))
    return bn


def _affine(bn):
    return bn_affine(
        bn.gamma.numpy() if bn.scale else None,
        bn.beta.numpy() if bn.center else None,
        bn.moving_mean.numpy(),
        bn.moving_variance.numpy(),
        bn.epsilon,
        int(bn.moving_mean.shape[0]),
    )


def _random_layer(keras, cls, options, input_shape, seed):
    """The layer, built, with random weights of order 1 (a bias too, if it has one)."""
    rng = np.random.default_rng(seed)
    layer = getattr(keras.layers, cls)(**options)
    layer.build((None, *input_shape))
    layer.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in layer.weights])
    return layer


def _rebuilt(keras, layer, weights, input_shape):
    """A copy of `layer` with a bias, holding `weights` (float64, rounded once to float32)."""
    clone = type(layer).from_config({**layer.get_config(), "use_bias": True, "name": "folded"})
    clone.build((None, *input_shape))
    clone.set_weights([np.asarray(w, np.float32) for w in weights])
    return clone


def _rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


def _inputs(input_shape, seed, n=4):
    # Inputs of the BN's own scale: positive pixels for a layer first, N(0, 1) otherwise.
    return np.random.default_rng(seed).normal(size=(n, *input_shape)).astype(np.float32)


def after_case_rel_diff(keras, name: str) -> float:
    """max |BN(layer(x)) − folded(x)| / max |BN(layer(x))| for AFTER_CASES[name]."""
    cls, options, input_shape, bn_options = AFTER_CASES[name]
    layer = _random_layer(keras, cls, options, input_shape, seed=1)
    x = _inputs(input_shape, seed=2)
    z = layer(x)
    bn = _randomized_bn(keras, z.shape[1:], seed=3, **bn_options)
    expected = bn(z, training=False)
    assert after_fold_blocker(cls, layer.get_config()) is None
    folded = fold_after_layer(cls, layer.get_weights(), *_affine(bn))
    return _rel_diff(expected, _rebuilt(keras, layer, folded, input_shape)(x))


def before_case_rel_diff(keras, name: str) -> float:
    """max |layer(BN(x)) − folded(x)| / max |layer(BN(x))| for BEFORE_CASES[name]."""
    cls, options, input_shape, bn_options = BEFORE_CASES[name]
    layer = _random_layer(keras, cls, options, input_shape, seed=1)
    bn = _randomized_bn(keras, input_shape, seed=3, **bn_options)
    x = _inputs(input_shape, seed=2)
    expected = layer(bn(x, training=False))
    assert before_fold_blocker(cls, layer.get_config(), input_shape[:-1]) is None
    folded = fold_before_layer(cls, layer.get_weights(), *_affine(bn))
    return _rel_diff(expected, _rebuilt(keras, layer, folded, input_shape)(x))


@pytest.mark.parametrize("name", list(AFTER_CASES))
def test_bn_after_layer_folds_within_tolerance(keras, name):
    assert after_case_rel_diff(keras, name) <= TF_RTOL


@pytest.mark.parametrize("name", list(BEFORE_CASES))
def test_bn_before_layer_folds_within_tolerance(keras, name):
    assert before_case_rel_diff(keras, name) <= TF_RTOL


# --- negative controls: the checks above can fail ---------------------------------------------


def test_depthwise_channel_order_m_major_would_be_caught(keras):
    """With multiplier 3 the output channel of (c, m) is c·mult + m. Scaling by the other order
    (m·in + c) is clearly wrong, so the TF comparison above would catch that mistake."""
    cls, options, input_shape, _ = AFTER_CASES["depthwise2d-m3-s2"]
    layer = _random_layer(keras, cls, options, input_shape, seed=1)
    x = _inputs(input_shape, seed=2)
    z = layer(x)
    bn = _randomized_bn(keras, z.shape[1:], seed=3)
    s, t = _affine(bn)
    kernel, bias = layer.get_weights()
    channels, mult = kernel.shape[-2:]
    wrong_s = s.reshape(mult, channels).T.reshape(-1)  # s[m·in + c] where s[c·mult + m] belongs
    w, _ = fold_depthwise_after(kernel, bias, wrong_s, t)
    _, b = fold_depthwise_after(kernel, bias, s, t)
    wrong = _rebuilt(keras, layer, [w, b], input_shape)(x)
    assert _rel_diff(bn(z, training=False), wrong) > WRONG


@pytest.mark.parametrize(
    "cls,options",
    [
        ("Conv2D", dict(filters=4, kernel_size=3, padding="same")),
        ("DepthwiseConv2D", dict(kernel_size=3, depth_multiplier=2, padding="same")),
    ],
)
def test_bn_before_same_padding_is_refused_and_really_inexact(keras, cls, options):
    """ "same" with a 3×3 kernel pads one zero on each side: the fold is wrong exactly on the
    border outputs (whose window reads padding) and right everywhere else."""
    input_shape = (7, 7, 3)
    layer = _random_layer(keras, cls, options, input_shape, seed=1)
    reason = before_fold_blocker(cls, layer.get_config(), input_shape[:-1])
    assert reason is not None and "pads [2, 2] zeros" in reason
    assert "input size is unknown" in before_fold_blocker(cls, layer.get_config())
    bn = _randomized_bn(keras, input_shape, seed=3)
    x = _inputs(input_shape, seed=2)
    expected = layer(bn(x, training=False)).numpy()
    folded = fold_before_layer(cls, layer.get_weights(), *_affine(bn))
    got = _rebuilt(keras, layer, folded, input_shape)(x).numpy()
    assert _rel_diff(expected, got) > WRONG
    assert _rel_diff(expected[:, 1:-1, 1:-1], got[:, 1:-1, 1:-1]) <= TF_RTOL


# --- when a fold is exact: padding, groups, activations ---------------------------------------


@pytest.mark.parametrize(
    "config,input_spatial,pads",
    [
        (dict(kernel_size=(3, 3), padding="valid", strides=(2, 2)), None, (0, 0)),
        (dict(kernel_size=(1, 1), padding="same", strides=(2, 2)), None, (0, 0)),
        (dict(kernel_size=(3, 3), padding="same"), None, None),
        (dict(kernel_size=(3, 3), padding="same"), (8, 8), (2, 2)),
        (dict(kernel_size=(3, 3), padding="same", strides=(2, 2)), (8, 7), (1, 2)),
        (dict(kernel_size=(2, 2), padding="same", strides=(2, 2)), (8, 8), (0, 0)),
        (dict(kernel_size=(2, 2), padding="same", strides=(2, 2)), (7, 8), (1, 0)),
        (dict(kernel_size=(3,), padding="same", dilation_rate=(2,)), (9,), (4,)),
        (dict(kernel_size=(3,), padding="causal", dilation_rate=(2,)), None, (4,)),
        (dict(kernel_size=3, padding="SAME"), (5,), (2,)),
    ],
)
def test_zero_padding(config, input_spatial, pads):
    assert zero_padding(config, input_spatial) == pads


def test_zero_padding_is_zero_exactly_when_tensorflow_reads_no_padding(keras):
    """A ones kernel over a ones input counts, at each output, the taps that land on real input:
    every output equals k exactly when TensorFlow's convolution reads no padded zero, which is
    when folding a BN forward is exact. zero_padding must say 0 then, and > 0 otherwise."""
    for padding in ("same", "causal"):
        for n in range(3, 12):
            for k, stride, dilation in ((3, 1, 1), (3, 2, 1), (2, 2, 1), (3, 1, 2), (5, 3, 1)):
                if padding == "causal" and stride > 1:
                    continue  # Keras refuses causal with strides > 1
                config = dict(
                    kernel_size=(k,), padding=padding, strides=(stride,), dilation_rate=(dilation,)
                )
                layer = keras.layers.Conv1D(
                    1,
                    k,
                    stride,
                    padding,
                    dilation_rate=dilation,
                    use_bias=False,
                    kernel_initializer="ones",
                )
                taps = layer(np.ones((1, n, 1), np.float32)).numpy()
                reads_padding = bool(np.any(taps < k))
                assert (zero_padding(config, (n,))[0] > 0) == reads_padding, (padding, n, k)


def test_before_fold_blocker_reasons():
    assert before_fold_blocker("Dense", {}) is None
    grouped = before_fold_blocker("Conv2D", dict(kernel_size=(1, 1), groups=2))
    assert grouped == "feeds a Conv2D with groups=2"
    assert before_fold_blocker("Conv2DTranspose", {}) == (
        "feeds a Conv2DTranspose, whose border outputs sum fewer taps than the others"
    )
    assert "does not fold into" in before_fold_blocker("Conv3DTranspose", {})
    causal = before_fold_blocker("Conv1D", dict(kernel_size=(3,), padding="causal"))
    assert "pads [2] zeros" in causal


def test_after_fold_blocker_reasons():
    assert after_fold_blocker("SeparableConv2D", {"activation": "linear"}) is None
    assert after_fold_blocker("Conv2D", {"activation": "relu"}) == (
        "follows a Conv2D with its own activation 'relu'"
    )
    assert after_fold_blocker("Conv2DTranspose", {"activation": "linear"}) is None
    assert after_fold_blocker("Conv2DTranspose", {"activation": "relu"}) == (
        "follows a Conv2DTranspose with its own activation 'relu'"
    )
    assert "does not fold into" in after_fold_blocker("Conv3DTranspose", {})


def test_mismatched_weights_are_refused():
    s = t = np.ones(4)
    with pytest.raises(ModelError, match="3 output channels but the BN has 4"):
        fold_after_layer("Conv2D", [np.ones((3, 3, 2, 3))], s, t)
    with pytest.raises(ModelError, match="6 output channels but the BN has 4"):
        fold_after_layer("DepthwiseConv2D", [np.ones((3, 3, 2, 3))], s, t)
    with pytest.raises(ModelError, match="groups = 1"):
        fold_before_layer("Conv2D", [np.ones((3, 3, 2, 8))], s, t)
    with pytest.raises(ModelError, match="got 1 weight arrays"):
        fold_after_layer("SeparableConv2D", [np.ones((3, 3, 4, 1))], s, t)
    # Conv2DTranspose folds after, on axis 2 of its (k, k, out, in) kernel, never before.
    with pytest.raises(ModelError, match="3 output channels but the BN has 4"):
        fold_after_layer("Conv2DTranspose", [np.ones((3, 3, 3, 4))], s, t)
    with pytest.raises(ModelError, match="cannot be folded into a Conv2DTranspose"):
        fold_before_layer("Conv2DTranspose", [np.ones((3, 3, 4, 4))], s, t)
    with pytest.raises(ModelError, match="cannot be folded into a Conv3DTranspose"):
        fold_after_layer("Conv3DTranspose", [np.ones((3, 3, 3, 4, 4))], s, t)


def test_transpose_fold_scales_output_channels_on_axis_2():
    rng = np.random.default_rng(1)
    kernel, bias = rng.normal(size=(3, 3, 5, 2)), rng.normal(size=5)
    s, t = rng.normal(size=5), rng.normal(size=5)
    w, b = fold_after_layer("Conv2DTranspose", [kernel, bias], s, t)
    np.testing.assert_allclose(w, np.einsum("hwoi,o->hwoi", kernel, s), rtol=1e-15)
    np.testing.assert_allclose(b, bias * s + t, rtol=1e-15)


def test_folds_copy_and_do_not_mutate():
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(3, 3, 2, 3)), rng.normal(size=(1, 1, 6, 4)), rng.normal(size=4)]
    before = [w.copy() for w in weights]
    s, t = rng.normal(size=4), rng.normal(size=4)
    out = fold_after_layer("SeparableConv2D", weights, s, t)
    out[0][...] = 0  # the unchanged depthwise kernel is a copy, not the caller's array
    s2, t2 = rng.normal(size=2), rng.normal(size=2)
    fold_before_layer("SeparableConv2D", weights, s2, t2)[1][...] = 0
    for w, b in zip(weights, before, strict=True):
        np.testing.assert_array_equal(w, b)
