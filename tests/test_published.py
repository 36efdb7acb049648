"""A published-looking deep Keras 3 model (tests/lookalikes.py: MobileNetV1-0.25, 27 BNs, dead
pointwise channels): it imports and folds (its float32 round-off may exceed the fixed tolerance),
a translation with one wrong weight is still refused, and equalization does not break its int8
file. One test: building and folding the model is the slow part."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests import lookalikes as la


@pytest.fixture()
def deep(k3, tmp_path_factory):
    """(.keras path, .npz path, float test inputs) of the dead-channel look-alike."""
    work = tmp_path_factory.mktemp("published")
    images = la.smooth_images(120, 32, seed=0)
    labels = np.arange(120) % 2
    model = la.vww_like(k3, 32)
    la.pretrain_like(k3, model, images[:64].astype(np.float32) / 255, dead=3)
    path, data = work / "vww.keras", work / "vww.npz"
    model.save(path)
    np.savez(data, x_train=images[:80], y_train=labels[:80], x_test=images[80:],
             y_test=labels[80:])  # fmt: skip
    return path, data, images[80:].astype(np.float32) / 255


def _int8_output(folded, x_train, x):
    from ai_edge_litert.interpreter import Interpreter

    from pipeline.core.config import ExportConfig
    from pipeline.core.quantize import dequantize
    from pipeline.tflite.convert import convert

    data = convert(folded, "ptq-int8", x_train, ExportConfig())
    it = Interpreter(model_content=data)
    it.resize_tensor_input(0, x.shape)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    s, z = inp["quantization"]
    it.set_tensor(inp["index"], np.clip(np.round(x / s) + z, -128, 127).astype(np.int8))
    it.invoke()
    return dequantize(it.get_tensor(out["index"]), *out["quantization"])


@pytest.mark.slow
def test_deep_model_folds_and_equalization_never_harms_its_int8_file(deep, tmp_path):
    from pipeline.core.errors import ModelError
    from pipeline.folding.int8sim import sqnr_db
    from pipeline.models.door import load_model
    from pipeline.models.keras3 import to_tf_keras
    from pipeline.models.keras3_file import load_keras3
    from pipeline.models.translation import translation_check
    from pipeline.stages.fold import fold_model, run_fold

    path, data, x = deep
    printed = []
    on = run_fold(path, tmp_path / "on", data=str(data), warn=printed.append)
    assert on.report.passed  # 27 BNs deep: the round-off of float32 is no error
    report = json.loads(on.record_path.read_text())["report"]
    dead = [e for e in report["equalized"] if e["negligible"]]
    assert dead and all(len(e["negligible"]) == 3 for e in dead)
    assert any("negligible channel(s) left out" in line for line in printed)
    verdict = report["equalization"]
    assert verdict["kept"] == (verdict["int8_sqnr_db_on"] >= verdict["int8_sqnr_db_off"])
    assert any(line.startswith("equalization ") and "SQNR" in line for line in printed)
    # The int8 files: not a constant, and at least as close to the float model with it as without.
    reference = np.asarray(load_keras3(path)(x, training=False))
    x_train = la.smooth_images(120, 32, seed=0)[:80].astype(np.float32) / 255
    y_on = _int8_output(load_model(on.folded_path), x_train, x)
    y_off = _int8_output(fold_model(load_model(path))[0], x_train, x)  # equalize = false
    assert np.ptp(y_on[:, 0]) > 0
    assert sqnr_db([reference], [y_on]) >= sqnr_db([reference], [y_off])

    # A translation with one wrong weight deep in the net is still refused, by name.
    model3 = load_keras3(path)
    model2 = to_tf_keras(model3)
    layer = model2.get_layer("pw12")
    kernel = layer.get_weights()
    kernel[0][0, 0, 5, 7] *= 1.01  # one weight of 32,768, 1 % off
    layer.set_weights(kernel)
    with pytest.raises(ModelError, match="layer 'pw12': relative difference"):
        translation_check(model3, model2, x)
