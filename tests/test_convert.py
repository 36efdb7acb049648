"""convert.py: QAT's fake-quant ranges settled on the calibration sample before fine-tuning."""

import numpy as np

from pipeline.core.config import ExportConfig
from pipeline.tflite.convert import EMA_RANGES, settle_ranges


def _ranges(qat, layer: str):
    values = {
        v.name.split("/")[-1].split(":")[0]: float(v.numpy())
        for v in qat.non_trainable_variables
        if v.name.startswith(f"quant_{layer}/")
    }
    return {k: v for k, v in values.items() if k in EMA_RANGES}


def test_settled_ranges_are_the_calibration_samples_own(keras):
    """A Dense whose outputs run from about −56 to 24 (far beyond tfmot's initial ±6): after
    settling, its range variables hold the sample's own min and max; without it they stay near
    ±6."""
    import tensorflow_model_optimization as tfmot

    k = keras
    rng = np.random.default_rng(0)
    model = k.Sequential([k.Input((5,)), k.layers.Dense(3, name="d")])
    model.get_layer("d").set_weights(
        [rng.normal(size=(5, 3)).astype(np.float32) * 20, np.array([10.0, -5.0, 0.0], np.float32)]
    )
    x = rng.random((200, 5), dtype=np.float32)
    z = np.asarray(model(x))
    lo, hi = min(float(z.min()), 0.0), max(float(z.max()), 0.0)
    assert lo < -6 or hi > 6  # the case the settling exists for

    untouched = tfmot.quantization.keras.quantize_model(model)
    untouched(x, training=True)
    before = _ranges(untouched, "d")
    assert abs(before["post_activation_max"] - 6.0) < 0.1  # one EMA step from +6

    qat = tfmot.quantization.keras.quantize_model(model)
    settle_ranges(qat, x, ExportConfig(calibration_samples=200))
    after = _ranges(qat, "d")
    # The pass that settles them runs the Dense with its weights fake-quantized to int8 (one
    # step is 1/127 of a column's largest weight), so its outputs, and their extremes, differ
    # from the float model's by a fraction of a percent of the range (0.11 % measured here).
    tolerance = 0.01 * (hi - lo)
    assert abs(after["post_activation_min"] - lo) <= tolerance
    assert abs(after["post_activation_max"] - hi) <= tolerance


def test_qat_wraps_a_separable_conv_model_whose_names_keras_would_give_again(keras):
    """tfmot splits a SeparableConv2D into layers it names as Keras names new ones
    ("depthwise_conv2d", "conv2d" in a fresh process). A model trained in another process holds
    exactly those names; QAT used to refuse it (duplicate layer names) and now wraps and trains
    it, the halves named apart from every layer of the model."""
    from types import SimpleNamespace

    from pipeline.tflite.convert import qat_fine_tune

    k = keras
    L = k.layers
    model = k.Sequential(
        [
            k.Input((8, 8, 1)),
            L.Conv2D(4, 3, padding="same", name="conv2d"),
            L.DepthwiseConv2D(3, padding="same", name="depthwise_conv2d"),
            L.DepthwiseConv2D(3, padding="same", name="depthwise_conv2d_3"),
            L.SeparableConv2D(6, 3, padding="same", name="separable_conv2d"),
            L.ReLU(name="re_lu"),
            L.GlobalAveragePooling2D(name="global_average_pooling2d"),
            L.Dense(3, activation="softmax", name="dense"),
        ]
    )
    rng = np.random.default_rng(0)
    ds = SimpleNamespace(
        x_train=rng.random((32, 8, 8, 1), dtype=np.float32), y_train=rng.integers(0, 3, 32)
    )
    qat, history = qat_fine_tune(model, ds, ExportConfig(qat_epochs=1, calibration_samples=32))
    names = [layer.name for layer in qat.layers]
    assert len(names) == len(set(names))
    made = [
        n
        for n in names
        if "separable" not in n
        and n.removeprefix("quant_") not in {layer.name for layer in model.layers}
    ]
    assert made, names  # the two halves, under names of their own
    assert len(history["loss"]) == 1
