"""Shared fixtures: one tiny model per BN kind, trained once per test session on `digits`.

Training is the slow part of these tests (≈ 2 s per model on 2 cores), so the models every test
file needs are trained once here and reused; a test that must train (determinism, the article's
flawed layer) trains the same tiny configuration.
"""

from __future__ import annotations

import pytest
from helpers import TINY

# The fast tier (`bash scripts/test.sh --fast`, i.e. `pytest -m fast`): the test files that need
# no trained model, no conversion, no runtime child and no emulator — pure Python over bnpipe's
# own records, readers, configs, statistics and layout. Each took a few seconds or less in a full
# run (pytest --durations=0); a file that starts to train or convert leaves this list.
FAST_FILES = {
    "test_artifacts.py",
    "test_cluster.py",
    "test_config.py",
    "test_interrupts.py",
    "test_layer_report.py",
    "test_layerstats.py",
    "test_layout.py",
    "test_lineage.py",
    "test_manifest.py",
    "test_readers.py",
    "test_readme.py",
    "test_safeio.py",
    "test_stats.py",
}
# Fixtures that train, convert or start processes: a test that uses one, directly or through
# another fixture, is marked slow (the end-to-end part of the full suite).
HEAVY_FIXTURES = {"trained", "trained_custom", "exported", "outlier_case"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        heavy = HEAVY_FIXTURES & set(getattr(item, "fixturenames", ()))
        if heavy:
            item.add_marker(pytest.mark.slow)
        marked = {m.name for m in item.iter_markers()}
        if item.path.name in FAST_FILES and not heavy and not marked & {"slow", "device"}:
            item.add_marker(pytest.mark.fast)


@pytest.fixture(scope="session")
def tiny():
    """TINY as a dict of TrainConfig fields (a copy: tests may not change the shared one)."""
    return dict(TINY)


@pytest.fixture(scope="session")
def keras():
    from pipeline.core.tfenv import keras as get_keras

    return get_keras()


@pytest.fixture(scope="session")
def tf(keras):
    from pipeline.core.tfenv import tf as get_tf

    return get_tf()


@pytest.fixture(scope="session")
def k3(keras):
    """Keras 3 (`import keras`), imported after TensorFlow as bnpipe does it."""
    from pipeline.models.keras3_file import keras3

    return keras3()


@pytest.fixture(scope="session")
def digits():
    """The digits split every stage uses with the default fractions and seed 0."""
    from pipeline.data.dataset import load_dataset

    return load_dataset("digits", seed=0, val_fraction=0.1, test_fraction=0.2)


def _train(tmp_path_factory, name: str, **overrides):
    from pipeline.core.config import TrainConfig
    from pipeline.stages.train import train

    config = TrainConfig(**{**TINY, **overrides})
    return config, train(config, tmp_path_factory.mktemp(name), quiet=True)


@pytest.fixture(scope="session")
def trained(keras, tmp_path_factory):
    """(TrainConfig, TrainResult) of the tiny model with keras BatchNormalization, seed 0.

    Its artifacts dir holds model.keras and train.json. Tests must not write into it: copy the
    files they need elsewhere.
    """
    return _train(tmp_path_factory, "trained_keras", bn="keras")


@pytest.fixture(scope="session")
def trained_custom(keras, tmp_path_factory):
    """(TrainConfig, TrainResult) of the tiny model with bnpipe's CustomBatchNorm, seed 0."""
    return _train(tmp_path_factory, "trained_custom", bn="custom")


# --- exported pipeline (tests/test_export, test_verify, test_bench, test_inspect, test_tflite_file)
# One model taken through train → fold → export (every mode) once per session; ≈ 25 s on 2 cores.
# The recipe is TINY's (learning rate 1e-2, batch 16: BN moving statistics close to the data's)
# with 3 epochs. The default learning rate 1e-3 / batch 32 leaves this net at ≈ 0.52 test accuracy
# after 3 epochs, where so many samples sit near a decision boundary that int8 and float disagree
# on ≈ 4 % of them: the export and verify tests would then measure underfitting, not bnpipe.
EXPORTED_TRAIN = {**TINY, "epochs": 3}
EXPORTED_QAT_EPOCHS = 1  # one distillation epoch: enough to calibrate the fake-quant ranges


@pytest.fixture(scope="session")
def exported(keras, tmp_path_factory):
    """The artifacts dir holding model.keras, train.json, folded.keras, fold.json, export.json and
    model_<mode>.tflite for every export mode. Read-only: copy it (shutil.copytree) to modify it."""
    from pipeline.core.config import ExportConfig, TrainConfig
    from pipeline.stages.export import run_export
    from pipeline.stages.fold import run_fold
    from pipeline.stages.train import train

    out = tmp_path_factory.mktemp("exported")
    train(TrainConfig(**EXPORTED_TRAIN), out, quiet=True)
    run_fold(out / "model.keras", out, warn=lambda message: None)
    run_export(
        out / "folded.keras",
        out,
        config=ExportConfig(modes=("all",), qat_epochs=EXPORTED_QAT_EPOCHS),
    )
    return out


# --- the outlier case of scripts/make_outlier_model.py (tests/test_layers*, test_fakequant) ------
@pytest.fixture(scope="session")
def outlier_case(trained, tmp_path_factory):
    """(plain, outlier): two artifacts dirs made from the tiny trained model, folded. `plain` holds
    model_float32.tflite and model_ptq-int8.tflite of the folded model itself; `outlier` those of
    its re-parametrization by scripts/make_outlier_model.py (two channels of the first Dense ×100,
    undone by the next Dense: the same float function, a hard per-tensor int8 grid). Both hold
    model.keras and train.json. Read-only. ≈ 5 s: one fold and four conversions."""
    import importlib.util
    import shutil
    from pathlib import Path

    from pipeline.core.config import ExportConfig
    from pipeline.stages.export import run_export
    from pipeline.stages.fold import run_fold

    script = Path(__file__).resolve().parent.parent / "scripts" / "make_outlier_model.py"
    spec = importlib.util.spec_from_file_location("make_outlier_model", script)
    make_outlier = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_outlier)
    plain = tmp_path_factory.mktemp("plain")
    _, result = trained
    for name in ("model.keras", "train.json"):
        shutil.copyfile(result.model_path.parent / name, plain / name)
    run_fold(plain / "model.keras", plain, warn=lambda message: None)
    run_export(plain / "folded.keras", plain, config=ExportConfig(modes=("float32", "ptq-int8")))
    outlier = tmp_path_factory.mktemp("outlier")
    make_outlier.make_outlier_artifacts(plain, outlier)
    return plain, outlier
