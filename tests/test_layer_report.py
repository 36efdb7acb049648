"""layer_report.py on hand-made records: names, the verdict line, and a plot that is written."""

from __future__ import annotations

import pytest

from pipeline.report.layers import layers_markdown, layers_plot, short_name


@pytest.mark.parametrize(
    "tensor, op, expected",
    [
        ("bn_mlp_folded/dense_1/MatMul;bn_mlp_folded/relu_1/Relu;bn_mlp_folded/dense_1/BiasAdd",
         "FULLY_CONNECTED", "dense_1"),
        ("StatefulPartitionedCall:0", "SOFTMAX", "softmax"),
        ("model/conv", "CONV_2D", "conv"),
    ],
)  # fmt: skip
def test_short_name(tensor, op, expected):
    assert short_name(tensor, op) == expected


def _entry(op_index, agreement_cost, accuracy_cost_pp, rank, median=0.5):
    return {
        "op_index": op_index, "op": "FULLY_CONNECTED", "dtype": "int8",
        "tensor": f"m/dense_{op_index}/MatMul",
        "sqnr_db": 30.0, "sqnr_db_worst_channel": None, "error_steps_rms": 0.3,
        "error_steps_max": 0.5, "range_used": 1.0, "range_used_worst_channel": median / 2,
        "range_used_median_channel": median, "worst_channel": 3, "clipped": 0.0, "scale": 0.1,
        "zero_point": -128, "range_used_per_channel": [median] * 4,
        "alone": {"rank": rank, "agreement_cost": agreement_cost,
                  "accuracy_cost_pp": accuracy_cost_pp, "sqnr_db": 30.0, "output_sqnr_db": 40.0},
    }  # fmt: skip


def _record(layers, worst):
    return {"model": "a/model_int8.tflite", "reference": "a/model_float32.tflite", "n": 100,
            "dataset": {"name": "digits"}, "float_accuracy": 0.9, "int8_accuracy": 0.89,
            "agreement": 0.98, "simulation": {"agreement": 1.0, "steps_max": 0,
                                              "share_differ": 0.0},
            "layers": layers, "worst": worst}  # fmt: skip


def test_the_verdict_names_the_culprit_and_why(tmp_path):
    layers = [_entry(0, 0.02, 0.5, 1, median=0.01), _entry(1, 0.0, 0.0, 2)]
    text = layers_markdown(_record(layers, layers[0]), None)
    assert (
        "**Culprit: FULLY_CONNECTED #0 (`dense_0`).** Quantized alone (every other layer float) "
        "it costs 2.00 % agreement and 0.50 pp accuracy; its output channels span a median "
        "1.0 % of the int8 range (worst 0.5 %, channel 3): the per-tensor scale is set by a few "
        "wide channels and the others get about 3 levels." in text
    )
    assert text.index("| 1 | FULLY_CONNECTED #0") < text.index("| 2 | FULLY_CONNECTED #1")
    assert layers_plot(_record(layers, layers[0]), tmp_path / "layers.png").stat().st_size > 0


def test_when_no_layer_changes_a_class_the_verdict_says_so():
    layers = [_entry(0, 0.0, 0.0, 2), _entry(1, 0.0, -0.1, 1)]
    text = layers_markdown(_record(layers, layers[1]), None)
    assert (
        "**No layer alone changes a top-1 class.** The one that moves the model's output " in text
    )
    assert "Culprit" not in text
