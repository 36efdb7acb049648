"""models/h5file.py: `.h5` models through the door's safe path — the config read from the file and
checked as a `.keras` file's, the model built from it by the Keras that saved it, the weights
loaded; and everything after the door (fold, import) as for a `.keras` file."""

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
from pipeline.cli import cli
from pipeline.core.errors import ModelError


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="bnpipe")


def _small_cnn(k, seed: int):
    """A seeded (8, 8, 1) → 10 classifier with a depthwise convolution and batch normalization
    whose statistics are not the defaults (so folding them is tested); digits fit it."""
    k.utils.set_random_seed(seed)
    L = k.layers
    model = k.Sequential(
        [
            k.Input((8, 8, 1)),
            L.Conv2D(4, 3, name="conv"),
            L.BatchNormalization(name="bn"),
            L.ReLU(),
            L.DepthwiseConv2D(3, name="dw"),
            L.BatchNormalization(name="bn_dw"),
            L.Flatten(),
            L.Dense(10, activation="softmax", name="dense"),
        ]
    )
    rng = np.random.default_rng(seed)
    for bn in (model.get_layer("bn"), model.get_layer("bn_dw")):
        gamma, beta, mean, var = bn.get_weights()
        bn.set_weights(
            [
                rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                rng.normal(0, 0.1, beta.shape).astype("float32"),
                rng.normal(0, 0.2, mean.shape).astype("float32"),
                rng.uniform(0.5, 2.0, var.shape).astype("float32"),
            ]
        )
    return model


def _save_h5(model, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "You are saving your model as an HDF5 file"
        model.save(path)
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{"keras2": (model, path), "keras3": (model, path)}: the same network saved as `.h5` by
    tf_keras and by Keras 3 (whose model.save('m.h5') writes legacy HDF5 too)."""
    from pipeline.core.tfenv import keras
    from pipeline.models.keras3_file import keras3

    d = tmp_path_factory.mktemp("h5")
    return {
        "keras2": (m2 := _small_cnn(keras(), 0), _save_h5(m2, d / "tf_keras.h5")),
        "keras3": (m3 := _small_cnn(keras3(), 1), _save_h5(m3, d / "keras3.h5")),
    }


@pytest.mark.parametrize("kind", ["keras2", "keras3"])
def test_an_h5_model_loads_in_its_own_keras_and_folds(saved, tmp_path, kind):
    from pipeline.models.configcheck import saved_by
    from pipeline.models.door import ModelFile, predict

    original, path = saved[kind]
    mf = ModelFile.open(path)
    assert mf.kind == kind
    x = np.random.default_rng(2).uniform(0, 1, (16, 8, 8, 1)).astype("float32")
    # The weights loaded are the ones saved: the same outputs, bit for bit.
    assert np.array_equal(predict(mf.reference(), x), predict(original, x))
    out = tmp_path / "art"
    result = invoke("fold", "--model", path, "--artifacts", out)
    assert result.exit_code == 0, result.output
    assert saved_by(out / "folded.keras") == kind  # written in the Keras that saved the .h5
    record = json.loads((out / "fold.json").read_text())
    assert record["report"]["passed"] and record["saved_by"] == kind
    assert sorted(p["bn"] for p in record["report"]["pairs"]) == ["bn", "bn_dw"]  # both folded
    assert record["inputs"]["model"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_model_h5_imports_it_as_model_keras_with_the_h5_as_source(saved, tmp_path):
    from pipeline.core.config import TrainConfig
    from pipeline.models.configcheck import saved_by
    from pipeline.models.door import ModelFile, predict
    from pipeline.stages.train import train
    from pipeline.store.artifacts import sha256_file

    original, path = saved["keras3"]
    result = train(TrainConfig(model=str(path)), tmp_path / "a", quiet=True)
    record = json.loads(result.record_path.read_text())
    assert record["imported"] == {
        "path": str(path),
        "sha256": sha256_file(path),
        "saved_by": "keras3",
    }
    model_keras = tmp_path / "a" / "model.keras"
    assert saved_by(model_keras) == "keras3"
    x = np.random.default_rng(3).uniform(0, 1, (8, 8, 8, 1)).astype("float32")
    assert np.array_equal(predict(ModelFile.open(model_keras).reference(), x), predict(original, x))
    # Deterministic: importing again writes the same bytes.
    again = train(TrainConfig(model=str(path)), tmp_path / "b", quiet=True)
    assert (tmp_path / "b" / "model.keras").read_bytes() == model_keras.read_bytes()
    assert again.test_accuracy == result.test_accuracy


def test_an_h5_with_a_lambda_is_refused_by_name_and_no_code_runs(tmp_path):
    from pipeline.core.tfenv import keras

    k, marker = keras(), str(tmp_path / "ran")  # a str: the Lambda's closure is saved as JSON
    model = k.Sequential(
        [
            k.Input((64,)),
            k.layers.Lambda(lambda t: (open(marker, "w").close(), t)[1], name="mark"),
            k.layers.Dense(10, activation="softmax"),
        ]
    )
    path = _save_h5(model, tmp_path / "lambda.h5")
    Path(marker).unlink()  # building the model called the Lambda: the marker works
    assert_one_line_error(
        invoke("fold", "--model", path, "--artifacts", tmp_path / "art"),
        f"{path} holds Lambda layer(s) mark, which carry Python code; bnpipe refuses them "
        "(replace them with built-in layers)",
    )
    assert not Path(marker).exists()
    assert not (tmp_path / "art" / "folded.keras").exists()


def test_a_weights_only_h5_is_refused_in_one_line(saved, tmp_path):
    original, _ = saved["keras2"]
    path = tmp_path / "weights.h5"
    original.save_weights(path)
    assert_one_line_error(
        invoke("fold", "--model", path, "--artifacts", tmp_path / "art"),
        f"{path} holds weights only (no model_config); bnpipe needs the whole model "
        "(model.save, not model.save_weights)",
    )


def test_a_groups_key_keras3_rejects_is_dropped_with_a_warning(saved, tmp_path, capsys):
    import shutil

    import h5py

    from pipeline.models.door import ModelFile, predict

    original, src = saved["keras3"]
    path = tmp_path / "old_depthwise.h5"
    shutil.copy(src, path)
    with h5py.File(path, "r+") as h5:  # as older Keras wrote it
        config = json.loads(h5.attrs["model_config"])
        dw = [e for e in config["config"]["layers"] if e["class_name"] == "DepthwiseConv2D"]
        dw[0]["config"]["groups"] = 1
        h5.attrs["model_config"] = json.dumps(config)
    capsys.readouterr()
    model = ModelFile.open(path).reference()
    err = capsys.readouterr().err
    assert err == (
        f"Warning: {path}: dropped keys Keras 3 rejects (training only): groups of 'dw'\n"
    )
    x = np.random.default_rng(4).uniform(0, 1, (4, 8, 8, 1)).astype("float32")
    assert np.array_equal(predict(model, x), predict(original, x))


def test_bytes_that_are_not_hdf5_under_an_h5_name_are_refused(tmp_path):
    from pipeline.models.door import ModelFile

    path = tmp_path / "model.h5"
    path.write_bytes(b"PK\x03\x04 not hdf5")
    with pytest.raises(ModelError) as info:
        ModelFile.open(path)
    assert str(info.value) == f"{path} is not an HDF5 file; bnpipe loads .keras and .h5 models"


def test_serialized_code_in_a_legacy_config_is_refused(saved, tmp_path):
    import shutil

    import h5py

    from pipeline.models.door import ModelFile

    path = tmp_path / "code.h5"
    shutil.copy(saved["keras3"][1], path)
    with h5py.File(path, "r+") as h5:  # an activation that is code, in the legacy form (no module)
        config = json.loads(h5.attrs["model_config"])
        dense = next(e for e in config["config"]["layers"] if e["class_name"] == "Dense")
        dense["config"]["activation"] = {"class_name": "__lambda__", "config": {"code": "x"}}
        h5.attrs["model_config"] = json.dumps(config)
    with pytest.raises(ModelError) as info:
        ModelFile.open(path)
    assert str(info.value) == (
        f"{path}: layer 'dense' (Dense) holds the custom object __lambda__, a custom class; "
        "bnpipe loads only Keras's own objects (no custom code)"
    )
