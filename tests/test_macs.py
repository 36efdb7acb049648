"""macs.py: multiply-accumulates per inference of converted models, against hand counts for the
MLP and the CNN and against a count taken independently from the Keras layers' shapes."""

from __future__ import annotations

import pytest

from pipeline.core.errors import ModelError
from pipeline.tflite.file import OperatorInfo, TensorInfo, TfliteInfo, parse_tflite
from pipeline.tflite.macs import count_macs

# The default MLP on MNIST: 784 → 64 → 64 → 10.
MLP_MACS = 784 * 64 + 64 * 64 + 64 * 10  # 54,912

# build_cnn's defaults on 28×28×1, layer by layer: output positions × channels × MACs each.
CNN28_MACS = {
    "stem_conv_1": 28 * 28 * 16 * (3 * 3 * 1),
    "stem_conv_2": 14 * 14 * 32 * (3 * 3 * 16),  # stride 2: 28 → 14
    "dw_1": 14 * 14 * 32 * (3 * 3),
    "pw_1": 14 * 14 * 64 * 32,
    "dw_2": 7 * 7 * 64 * (3 * 3),  # stride 2: 14 → 7
    "pw_2": 7 * 7 * 128 * 64,
    "dw_3": 7 * 7 * 128 * (3 * 3),
    "pw_3": 7 * 7 * 128 * 128,
    "dw_4": 4 * 4 * 128 * (3 * 3),  # stride 2, "same": 7 → 4
    "pw_4": 4 * 4 * 384 * 128,
    "dw_5": 4 * 4 * 384 * (3 * 3),
    "pw_5": 4 * 4 * 768 * 384,
    "classes": 768 * 10,
}
# …and on digits' 8×8×1: the stem keeps 8×8, the two stride-2 blocks give 4×4 and 2×2.
CNN8_MACS = {
    "stem_conv_1": 8 * 8 * 16 * (3 * 3 * 1),
    "stem_conv_2": 8 * 8 * 32 * (3 * 3 * 16),
    "dw_1": 8 * 8 * 32 * (3 * 3),
    "pw_1": 8 * 8 * 64 * 32,
    "dw_2": 4 * 4 * 64 * (3 * 3),
    "pw_2": 4 * 4 * 128 * 64,
    "dw_3": 4 * 4 * 128 * (3 * 3),
    "pw_3": 4 * 4 * 128 * 128,
    "dw_4": 2 * 2 * 128 * (3 * 3),
    "pw_4": 2 * 2 * 384 * 128,
    "dw_5": 2 * 2 * 384 * (3 * 3),
    "pw_5": 2 * 2 * 768 * 384,
    "classes": 768 * 10,
}


def _convert(tf, model, int8_sample=None) -> TfliteInfo:
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8_sample is not None:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([row[None]] for row in int8_sample)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = tf.int8
    return parse_tflite(conv.convert(), "converted")


def keras_macs(model) -> dict[str, int]:
    """MACs per layer from the Keras model's own shapes (batch 1), independent of the file."""
    out = {}
    for layer in model.layers:
        cls, cfg = type(layer).__name__, layer.get_config()
        positions = 1
        for d in layer.output_shape[1:-1]:
            positions *= d
        channels = layer.output_shape[-1]
        if cls == "Dense":
            out[layer.name] = positions * layer.input_shape[-1] * channels
        elif cls in ("Conv2D", "DepthwiseConv2D"):
            kh, kw = cfg["kernel_size"]
            per = (
                kh * kw * (layer.input_shape[-1] // cfg.get("groups", 1) if cls == "Conv2D" else 1)
            )
            out[layer.name] = positions * channels * per
    return out


@pytest.fixture(scope="module")
def mlp_info(keras, tf) -> TfliteInfo:
    from pipeline.models.article import build_mlp

    return _convert(tf, build_mlp(784, 10))


def test_mlp_matches_the_hand_count(mlp_info):
    count = count_macs(mlp_info)
    assert count.total == MLP_MACS == 54_912
    assert [o.macs for o in count.per_op] == [784 * 64, 64 * 64, 64 * 10]
    assert count.by_op == {"FULLY_CONNECTED": MLP_MACS}
    assert count.uncounted == {"SOFTMAX": 1}


@pytest.mark.parametrize("shape,hand", [((28, 28, 1), CNN28_MACS), ((8, 8, 1), CNN8_MACS)])
def test_cnn_matches_the_hand_count_and_the_keras_shapes(keras, tf, shape, hand):
    from pipeline.models.article import build_cnn

    model = build_cnn(shape)
    assert keras_macs(model) == hand
    count = count_macs(_convert(tf, model))
    # The converter keeps the layer order: one operator per counted layer.
    assert [o.macs for o in count.per_op] == list(hand.values())
    assert count.total == sum(hand.values())
    assert count.by_op["DEPTHWISE_CONV_2D"] == sum(v for k, v in hand.items() if "dw" in k)
    assert count.uncounted == {"MEAN": 1, "SOFTMAX": 1}


def test_totals_quoted_in_the_report():
    assert sum(CNN28_MACS.values()) == 8_349_248
    assert sum(CNN8_MACS.values()) == 2_276_864


@pytest.mark.slow
def test_int8_file_counts_the_same_as_float(keras, tf):
    import numpy as np

    from pipeline.models.article import build_cnn

    model = build_cnn((8, 8, 1))
    sample = np.random.default_rng(0).random((8, 8, 8, 1), dtype=np.float32)
    assert count_macs(_convert(tf, model, sample)).total == sum(CNN8_MACS.values())


def _unusual_model(keras, batch_size):
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((9, 9, 4), batch_size=batch_size),
            layers.Conv2D(6, 3, strides=2, groups=2),  # 4×4×6, 3·3·2 MACs each
            layers.DepthwiseConv2D((3, 2), depth_multiplier=3, padding="same"),  # 4×4×18
            layers.Reshape((16, 18)),
            layers.Dense(5),  # per position: 16 × 18·5
        ]
    )


def test_strides_groups_multiplier_and_dense_per_position(keras, tf):
    """Shapes the default models do not have: groups 2, stride 2 "valid", multiplier 3, a
    Dense applied at each position of a rank-3 tensor (its rows come from its input)."""
    model = _unusual_model(keras, batch_size=1)
    hand = [4 * 4 * 6 * (3 * 3 * 2), 4 * 4 * 18 * (3 * 2), 16 * 18 * 5]
    assert list(keras_macs(model).values()) == hand
    count = count_macs(_convert(tf, model))
    assert [o.macs for o in count.per_op] == hand


def test_a_dense_on_a_dynamic_reshape_is_refused_not_guessed(keras, tf):
    """With a dynamic batch the converter reshapes the Dense's input to (-1, -1): how many rows
    it has is unknown until run time, so no count is better than a wrong one."""
    info = _convert(tf, _unusual_model(keras, batch_size=None))
    with pytest.raises(ModelError, match=r"FULLY_CONNECTED .* MACs need static shapes"):
        count_macs(info)


def test_dynamic_batch_scales_and_batch_is_checked(mlp_info):
    info = mlp_info
    assert info.input_tensor().shape[0] == -1  # the converter leaves the batch dynamic
    assert count_macs(info, batch=4).total == 4 * MLP_MACS
    with pytest.raises(ValueError, match="batch must be an int ≥ 1, got 0"):
        count_macs(info, batch=0)


def _info(weights_shape, out_shape, op="CONV_2D") -> TfliteInfo:
    tensors = [
        TensorInfo(0, "in", [1, 8, 8, 3], "float32"),
        TensorInfo(1, "w", weights_shape, "float32", is_constant=True),
        TensorInfo(2, "out", out_shape, "float32"),
    ]
    return TfliteInfo(
        "m.tflite", 0, 3, "", [OperatorInfo(0, op, [0, 1], [2])], tensors, [0], [2], {}, []
    )


def test_unknown_or_inconsistent_shapes_are_refused():
    assert count_macs(_info([4, 3, 3, 3], [1, 6, 6, 4])).total == 6 * 6 * 4 * 27
    with pytest.raises(ModelError, match=r"shape \[1, -1, 6, 4\]; MACs need static shapes"):
        count_macs(_info([4, 3, 3, 3], [1, -1, 6, 4]))
    with pytest.raises(ModelError, match="which do not fit together"):
        count_macs(_info([4, 3, 3, 3], [1, 6, 6, 5]))
    with pytest.raises(ModelError, match="which do not fit together"):
        count_macs(_info([4, 3], [1, 6, 6, 4]))
