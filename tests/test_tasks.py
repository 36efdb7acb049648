"""Tasks other than classification: inference and override of each output's task, float
regression targets in a .npz, the task measures against scikit-learn, outputs paired with their
TFLite tensors by name, and a regressor and an anomaly-detecting autoencoder through
`bnpipe run --model` on host, host-ref and TFLM.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error, raises_data_error

from pipeline.analysis import taskmetrics
from pipeline.analysis.tasks import (
    CLASS_IDS,
    CLASSIFICATION,
    FLOAT_TARGETS,
    RECONSTRUCTION,
    REGRESSION,
    Labels,
    OutputInfo,
    decide,
    parse_overrides,
)
from pipeline.cli import cli
from pipeline.core.errors import ModelError

# --- which task ------------------------------------------------------------------------------


def test_tasks_are_inferred_from_the_output_and_the_data():
    softmax = OutputInfo("probs", (10,), "softmax")
    logits = OutputInfo("logits", (10,), "linear")
    recon = OutputInfo("recon", (64,), "sigmoid")
    values = OutputInfo("values", (3,), "linear")
    classes = Labels(CLASS_IDS, 10)
    assert decide([softmax], (64,), classes)[0].task == CLASSIFICATION
    assert decide([logits], (64,), classes)[0].task == CLASSIFICATION  # as before: scores
    # An autoencoder given 0/1 anomaly labels is not a 64-class classifier (the case).
    assert decide([recon], (64,), Labels(CLASS_IDS, 2))[0].task == RECONSTRUCTION
    assert decide([values], (64,), Labels(FLOAT_TARGETS, 3))[0].task == REGRESSION
    # The override wins, and says so.
    over = decide([recon], (64,), Labels(CLASS_IDS, 2), {"recon": "output"})[0]
    assert (over.task, over.why) == ("output", "set by --task / [verify] tasks")


def test_an_output_that_cannot_be_decided_names_itself_and_the_option():
    image = OutputInfo("mask", (8, 8, 2), "sigmoid")
    with pytest.raises(ModelError) as info:
        decide([image], (8, 8, 1), Labels(CLASS_IDS, 10))
    message = str(info.value)
    assert "output mask" in message and "--task mask=" in message and "[verify] tasks" in message
    with pytest.raises(ModelError, match="has shape \\(5,\\) but the data holds 3 float"):
        decide([OutputInfo("v", (5,), "linear")], (64,), Labels(FLOAT_TARGETS, 3))
    with pytest.raises(ModelError, match="does not have; its outputs are mask"):
        decide([image], (8, 8, 1), Labels(CLASS_IDS, 10), {"nosuch": "output"})
    with pytest.raises(ModelError, match="not one of classification"):
        parse_overrides(["mask=segmentation"])
    with pytest.raises(ModelError, match="is not NAME=TASK"):
        parse_overrides(["mask"])


# --- measures --------------------------------------------------------------------------------


def test_auc_and_regression_measures_match_scikit_learn():
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score, roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    score = np.round(rng.normal(size=300) + labels, 1)  # rounded: ties across the classes
    auc = taskmetrics.auc_delong(score, labels)
    assert auc.auc == pytest.approx(roc_auc_score(labels, score), abs=1e-12)
    assert auc.ci[0] < auc.auc < auc.ci[1] and auc.ci[1] - auc.ci[0] < 0.2
    targets = rng.normal(size=(200, 3))
    pred = targets + rng.normal(scale=[0.1, 0.5, 1.0], size=(200, 3))
    r = taskmetrics.regression(pred, targets)
    np.testing.assert_allclose(
        r.mae, mean_absolute_error(targets, pred, multioutput="raw_values"), rtol=1e-12
    )
    mse = mean_squared_error(targets, pred, multioutput="raw_values")
    np.testing.assert_allclose(r.rmse, np.sqrt(mse), rtol=1e-12)
    np.testing.assert_allclose(r.r2, r2_score(targets, pred, multioutput="raw_values"), rtol=1e-9)
    # SQNR: noise at a tenth of the signal's amplitude is 20 dB.
    signal = rng.normal(size=10_000)
    assert taskmetrics.sqnr_db(signal, signal * 1.1) == pytest.approx(20.0, abs=1e-9)
    assert taskmetrics.max_steps(signal, signal + 0.25, 0.1) == pytest.approx(2.5)


# --- data ------------------------------------------------------------------------------------


def _regression_npz(path, **override):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, size=(40, 16)).astype(np.uint8),
        "y_train": rng.normal(size=(40, 3)).astype(np.float32),
        "x_test": rng.integers(0, 256, size=(10, 16)).astype(np.uint8),
        "y_test": rng.normal(size=(10, 3)).astype(np.float32),
    }
    np.savez(path, **{**arrays, **override})
    return str(path)


def test_float_targets_load_as_regression_and_malformed_ones_are_one_line(tmp_path):
    from pipeline.data.dataset import load_dataset

    ds = load_dataset(_regression_npz(tmp_path / "r.npz"), seed=0)
    assert ds.num_classes == 0 and ds.y_train.shape == (36, 3) and ds.y_test.shape == (10, 3)
    assert ds.y_train.dtype == np.float32 and ds.split["val_stratified"] is False
    again = load_dataset(str(tmp_path / "r.npz"), seed=0)
    assert np.array_equal(ds.y_val, again.y_val)  # seeded: the same rows
    nan = np.zeros((10, 3), np.float32)
    nan[4, 1] = np.nan
    raises_data_error(
        "1 NaN or infinite test targets, the first at sample 4, feature 1",
        load_dataset,
        _regression_npz(tmp_path / "n.npz", y_test=nan),
    )
    raises_data_error(
        "the test targets have 2 columns but the other split's have 3",
        load_dataset,
        _regression_npz(tmp_path / "w.npz", y_test=np.zeros((10, 2), np.float32)),
    )
    raises_data_error(
        "other split holds float targets",
        load_dataset,
        _regression_npz(tmp_path / "c.npz", y_test=np.arange(10)),
    )
    raises_data_error(  # integer (n, k) labels are neither class ids nor float targets
        "labels have shape (40, 3); expected (n,)",
        load_dataset,
        _regression_npz(
            tmp_path / "i.npz", y_train=np.ones((40, 3), np.int64), y_test=np.ones((10, 3), int)
        ),
    )


# --- outputs by name -------------------------------------------------------------------------


def test_three_outputs_are_paired_with_their_tensors_by_name_not_position(keras, digits):
    """Outputs named against the alphabet: the converter's signature lists them sorted, another
    order than the Keras model's, and pairing by position reads the wrong tensor."""
    from ai_edge_litert.interpreter import Interpreter

    from pipeline.core.config import ExportConfig
    from pipeline.models.door import one_output
    from pipeline.tflite.convert import convert
    from pipeline.tflite.file import parse_tflite
    from pipeline.tflite.signature import output_positions

    k = keras
    k.utils.set_random_seed(0)
    x = k.Input((64,), name="pixels")
    h = k.layers.Dense(16, activation="relu", name="trunk")(x)
    outs = [
        k.layers.Dense(10, activation="softmax", name="zeta_class")(h),
        k.layers.Dense(3, name="alpha_value")(h),
        k.layers.Dense(64, activation="sigmoid", name="mid_signal")(h),
    ]
    model = k.Model(x, outs)
    names = ["zeta_class", "alpha_value", "mid_signal"]
    blob = convert(model, "float32", digits.x_train, ExportConfig())
    info = parse_tflite(blob, "three")
    assert list(info.signature["outputs"]) != names  # the converter's order is not Keras's
    positions = output_positions(info, names)
    interp = Interpreter(model_content=blob)
    sample = digits.x_test[:32]
    interp.resize_tensor_input(interp.get_input_details()[0]["index"], sample.shape)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], sample)
    interp.invoke()
    details = interp.get_output_details()
    expected = [np.asarray(v) for v in model(sample)]
    for name, want in zip(names, expected, strict=True):
        got = interp.get_tensor(details[positions[name]]["index"])
        np.testing.assert_allclose(got, want, atol=1e-5)
    by_signature_order = [info.signature["outputs"][n] for n in sorted(names)]
    assert by_signature_order != [info.outputs[positions[n]] for n in names]
    with pytest.raises(ModelError, match="1 input\\(s\\) and 3 output\\(s\\)"):
        one_output(model, "three.keras")  # the stages after fold take one output (for now)


# --- end to end ------------------------------------------------------------------------------

RUN = """
[export]
qat_epochs = 1
[verify]
targets = ["host", "host-ref", "tflm"]
[bench]
batch_sizes = [1]
threads = [1]
warmup = 1
runs = 4
rounds = 2
keras_runs = 2
"""


def _run(tmp_path, model_path, data):
    cfg = tmp_path / "run.toml"
    cfg.write_text(RUN)
    out = tmp_path / "a"
    args = ["run", "--model", str(model_path), "--data", data, "--config", str(cfg)]
    result = CliRunner().invoke(cli, [*args, "--artifacts", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "verify.json").read_text())


def _int8_rows(record):
    rows = [r for r in record["rows"] if r["candidate"] == "model_int8.tflite"]
    assert {r["target"] for r in rows} == {"host", "host-ref", "tflm"}
    return rows


@pytest.mark.slow
def test_anomaly_autoencoder_runs_end_to_end_within_the_auc_and_sqnr_goals(k3, digits, tmp_path):
    """A Dense → BN → ReLU autoencoder (64 → 32 → 16 → 8 → 16 → 32 → 64) trained on digits
    without the 0s, tested with the 0s marked as anomalies (label 1): reconstruction is inferred,
    QAT distils by mean squared error, and int8 keeps the original's AUC within 0.005 with an
    output SQNR ≥ 30 dB on every target. Then --task overrides the task, and an output the model
    does not have is exit 2."""
    x = np.concatenate([digits.x_train, digits.x_val, digits.x_test])
    y = np.concatenate([digits.y_train, digits.y_val, digits.y_test])
    normal, anomalous = x[y != 0], x[y == 0]
    x_test = np.concatenate([normal[1200:], anomalous])
    marks = np.r_[np.zeros(len(normal) - 1200), np.ones(len(anomalous))].astype(np.int64)
    data = tmp_path / "ae.npz"
    train_marks = np.zeros(1200, np.int64)
    np.savez(data, x_train=normal[:1200], y_train=train_marks, x_test=x_test, y_test=marks)
    L = k3.layers
    k3.utils.set_random_seed(0)
    inp = k3.Input((64,))
    h = inp
    for width in (32, 16, 8, 16, 32):
        h = L.ReLU()(L.BatchNormalization()(L.Dense(width)(h)))
    model = k3.Model(inp, L.Dense(64, name="recon")(h))
    model.compile(optimizer=k3.optimizers.Adam(3e-3), loss="mse")
    model.fit(normal[:1200], normal[:1200], epochs=20, batch_size=32, verbose=0)
    model.save(tmp_path / "ae.keras")
    out, record = _run(tmp_path, tmp_path / "ae.keras", str(data))
    assert record["tasks"][0]["task"] == "reconstruction"
    original = record["reference"]["auc"]
    assert original > 0.8 and record["reference"]["anomalies"] == len(anomalous)
    for r in _int8_rows(record):
        assert abs(r["auc"] - original) <= 0.005 and r["sqnr_db"] >= 30.0, r
        assert r["score_correlation"] > 0.99 and r["failures"] == [], r
    export = json.loads((out / "export.json").read_text())
    assert export["modes"]["int8"]["task"] == "reconstruction"
    assert "Output `recon`: task **reconstruction**" in (out / "verify.md").read_text()
    over = ["verify", "--task", "recon=output", "--targets", "host-ref", "--artifacts", str(out)]
    result = CliRunner().invoke(cli, [*over, "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "verify.json").read_text())["tasks"][0]["task"] == "output"
    result = CliRunner().invoke(
        cli, ["verify", "--task", "nosuch=output", "--artifacts", str(out), "-q"]
    )
    assert_one_line_error(result, fragment="--task names output(s) nosuch")


@pytest.mark.slow
def test_regressor_with_three_float_targets_keeps_rmse_within_two_percent(k3, digits, tmp_path):
    """Dense → BN → ReLU → Dense(3) fitted to three smooth functions of the pixels: regression
    is inferred from the float targets, and int8 RMSE stays within 2 % of the original's on
    every target and every target runtime (verify's default gate)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 3)).astype(np.float32)
    data = tmp_path / "reg.npz"
    targets = {s: np.tanh(getattr(digits, f"x_{s}") @ w / 4) for s in ("train", "test")}
    np.savez(
        data,
        x_train=digits.x_train,
        y_train=targets["train"],
        x_test=digits.x_test,
        y_test=targets["test"],
    )
    L = k3.layers
    k3.utils.set_random_seed(0)
    model = k3.Sequential(
        [k3.Input((64,)), L.Dense(32), L.BatchNormalization(), L.ReLU(), L.Dense(3, name="values")]
    )
    model.compile(optimizer=k3.optimizers.Adam(3e-3), loss="mse")
    model.fit(digits.x_train, targets["train"], epochs=30, batch_size=32, verbose=0)
    model.save(tmp_path / "reg.keras")
    _, record = _run(tmp_path, tmp_path / "reg.keras", str(data))
    assert record["tasks"][0]["task"] == "regression"
    assert min(record["reference"]["r2"]) > 0.5
    for r in _int8_rows(record):
        assert len(r["rmse_increase"]) == 3 and max(r["rmse_increase"]) <= 0.02, r


# --- decoder layers --------------------------------------------------------------------------


def test_a_bn_folds_into_a_transposed_convolutions_output_channels_exactly(keras, digits):
    """Conv2D → BN → ReLU → Conv2DTranspose → BN → ReLU → UpSampling2D → Cropping2D → Conv2D,
    BN statistics seeded far from the identity: the BN after the transposed convolution scales
    axis 2 of its kernel (its output channels), the folded model computes the original within
    1e-5, and a BN before a transposed convolution is kept, with the reason."""
    from pipeline.folding.maths import bn_affine
    from pipeline.stages.fold import fold_model

    k, L = keras, keras.layers
    k.utils.set_random_seed(0)
    x = k.Input((8, 8, 1))
    h = L.ReLU()(L.BatchNormalization(name="bn1")(L.Conv2D(6, 3, padding="same")(x)))
    h = L.Conv2DTranspose(5, 3, strides=2, padding="same", name="up")(h)
    h = L.ReLU()(L.BatchNormalization(name="bn2")(h))
    h = L.Cropping2D(4)(L.UpSampling2D()(h))
    kept = L.BatchNormalization(name="bn3")(h)
    out = L.Conv2DTranspose(1, 3, padding="same", name="out")(kept)
    model = k.Model(x, out)
    rng = np.random.default_rng(0)
    for bn in ("bn1", "bn2", "bn3"):
        layer = model.get_layer(bn)
        c = layer.gamma.shape[0]
        layer.set_weights(
            [
                rng.uniform(0.5, 2.0, c),
                rng.normal(size=c),
                rng.normal(size=c),
                rng.uniform(0.1, 3.0, c),
            ]
        )
    folded, pairs, skipped = fold_model(model)
    assert {p.bn for p in pairs} == {"bn1", "bn2"}
    assert [s.bn for s in skipped] == ["bn3"] and "Conv2DTranspose" in skipped[0].reason
    images = digits.x_test.reshape(-1, 8, 8, 1)
    want, got = np.asarray(model(images)), np.asarray(folded(images))
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
    gamma, beta, mean, var = model.get_layer("bn2").get_weights()
    s, _ = bn_affine(gamma, beta, mean, var, model.get_layer("bn2").epsilon, 5)
    kernel = model.get_layer("up").get_weights()[0]  # (3, 3, out 5, in 6)
    np.testing.assert_allclose(
        folded.get_layer("up").get_weights()[0], kernel * s[None, None, :, None], rtol=1e-6
    )
