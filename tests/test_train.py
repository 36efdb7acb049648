"""train.py: determinism, the train.json record, and both BN kinds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import keras_weights

from pipeline.core.config import TrainConfig
from pipeline.store.artifacts import TMP_PREFIX, sha256_file


@pytest.mark.parametrize("fixture", ["trained", "trained_custom"])
def test_same_seed_gives_identicalkeras_weights(request, fixture, tmp_path):
    from pipeline.stages.train import train

    config, first = request.getfixturevalue(fixture)
    second = train(config, tmp_path, quiet=True)
    a, b = keras_weights(first.model_path), keras_weights(second.model_path)
    assert [name for name, _ in a] == [name for name, _ in b]
    for (name, wa), (_, wb) in zip(a, b, strict=True):
        assert wa.dtype == wb.dtype and np.array_equal(wa, wb), name
    assert second.test_accuracy == first.test_accuracy


def test_different_seed_gives_differentkeras_weights(trained, tmp_path):
    import dataclasses

    from pipeline.stages.train import train

    config, first = trained
    other = train(dataclasses.replace(config, seed=1), tmp_path, quiet=True)
    a, b = dict(keras_weights(first.model_path)), dict(keras_weights(other.model_path))
    kernels = [name for name in a if "kernel" in name]
    assert len(kernels) == 3
    for name in kernels:  # every kernel starts from a different draw
        assert not np.array_equal(a[name], b[name]), name


def test_train_json_records_config_history_accuracy_versions_and_hash(trained, digits):
    from pipeline.models.door import load_model

    config, result = trained
    out = result.model_path.parent
    assert sorted(p.name for p in out.iterdir()) == ["model.keras", "train.json"]
    assert not any(p.name.startswith(TMP_PREFIX) for p in out.iterdir())
    assert result.record_path == out / "train.json" and result.model_path == out / "model.keras"

    rec = json.loads(result.record_path.read_text())
    assert rec["schema_version"] == 1 and rec["stage"] == "train"
    assert rec["config"] == json.loads(json.dumps(config.to_dict()))  # tuples become lists
    assert rec["config"]["hidden"] == [16, 16] and rec["config"]["bn"] == "keras"
    assert set(rec["history"]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    for key, values in rec["history"].items():
        assert len(values) == config.epochs, key
        assert all(np.isfinite(values)), key
    assert rec["val_accuracy"] == rec["history"]["val_accuracy"][-1] == result.val_accuracy
    assert rec["test_accuracy"] == result.test_accuracy
    for package in ("python", "tensorflow", "tf-keras", "numpy", "scikit-learn", "bnpipe"):
        assert rec["versions"][package], package
    assert rec["outputs"] == {"model.keras": sha256_file(result.model_path)}
    assert rec["inputs"] == {"data": digits.fingerprint()}
    assert rec["dataset"]["sizes"] == {
        "train": len(digits.y_train),
        "val": len(digits.y_val),
        "test": len(digits.y_test),
    }
    assert rec["preprocessing"] == {"divisor": 16.0, "n_features": 64}
    # 64·16+16 + 4·16 + 16·16+16 + 4·16 + 16·10+10
    assert rec["parameters"] == 1040 + 64 + 272 + 64 + 170

    # The recorded test accuracy is the saved model's, on the same test split: same count.
    model = load_model(result.model_path)
    correct = int(
        np.sum(np.asarray(model(digits.x_test, training=False)).argmax(1) == digits.y_test)
    )
    assert round(rec["test_accuracy"] * len(digits.y_test)) == correct
    assert rec["test_accuracy"] >= 0.85  # the TINY recipe measured 0.94; chance is 0.10


def test_train_with_custom_bn(trained_custom):
    from pipeline.models.article import custom_bn_class
    from pipeline.models.door import load_model

    config, result = trained_custom
    rec = json.loads(result.record_path.read_text())
    assert rec["config"]["bn"] == "custom"
    assert len(rec["history"]["loss"]) == config.epochs
    model = load_model(result.model_path)
    bns = [layer for layer in model.layers if isinstance(layer, custom_bn_class())]
    assert [layer.name for layer in bns] == ["bn_1", "bn_2"]
    for layer in bns:  # training moved the statistics away from their initial 0 and 1
        assert np.all(layer.moving_mean.numpy() != 0.0)
        assert np.all(layer.moving_variance.numpy() != 1.0)
    assert result.test_accuracy >= 0.85


def test_train_bad_data_writes_nothing(tmp_path):
    from pipeline.core.errors import DataError
    from pipeline.stages.train import train

    with pytest.raises(DataError):
        train(
            TrainConfig(data=str(tmp_path / "missing.npz"), epochs=1), tmp_path / "out", quiet=True
        )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(epochs=0), "--epochs must be an integer from 1 to 10,000, got 0"),
        (dict(hidden=(16, 0)), "--hidden needs 1 to 64 widths from 1 to 8,192, got 16,0"),
        (dict(bn="torch"), "--bn must be keras or custom, got 'torch'"),
        (dict(batch_size=0), "--batch-size must be an integer from 1 to 1,048,576, got 0"),
        (dict(val_fraction=0.0), "val_fraction must be in (0, 0.5), got 0.0"),  # data.py needs > 0
        (dict(arch="cnn", shift=9), "shift must be an integer from 0 to 8, got 9"),
        (
            dict(shift=2),
            "shift moves images for --arch cnn; --arch mlp takes flat samples, so 0, got 2",
        ),
    ],
)
def test_train_config_validates_on_construction(kwargs, message):
    from pipeline.core.errors import BnpipeError

    with pytest.raises(BnpipeError) as info:
        TrainConfig(**kwargs)
    assert str(info.value) == message


def test_recipes_shift_cnn_images_only():
    assert TrainConfig().shift == 0 and TrainConfig(arch="cnn").shift == 2
    assert TrainConfig(arch="cnn", shift=0).shift == 0


# --- shifted images -----------------------------------------------------------------------------


def _reference_shift(x: np.ndarray, moves: np.ndarray) -> np.ndarray:
    """NumPy: sample i moved down moves[i, 0] and right moves[i, 1] pixels, zeros moved in."""
    out = np.zeros_like(x)
    h, w = x.shape[1:3]
    for i, (dy, dx) in enumerate(moves):
        out[i, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
            i, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
        ]
    return out


def test_shifted_matches_a_numpy_reference(tf):
    from pipeline.stages.train import shift_draws, shifted

    x = np.random.default_rng(0).random((40, 20, 17, 2), dtype=np.float32)
    moves = shift_draws(0, 3, len(x), 2)
    assert moves.dtype == np.int32 and moves.min() == -2 and moves.max() == 2
    got = np.asarray(shifted(tf.constant(x), tf.constant(moves), 2))
    assert np.array_equal(got, _reference_shift(x, moves))
    still = np.zeros((len(x), 2), np.int32)
    assert np.array_equal(np.asarray(shifted(tf.constant(x), tf.constant(still), 2)), x)


def _batches(x, y, **options):
    from pipeline.stages.train import _epoch_batches

    config = TrainConfig(**{"epochs": 2, "batch_size": 16, "seed": 0, **options})
    return [(np.asarray(a), np.asarray(b)) for a, b in _epoch_batches(x, y, config, 0)]


def test_epoch_batches_shift_images_per_seed_and_epoch_and_leave_the_rest(tf):
    from pipeline.data.splits import epoch_order
    from pipeline.stages.train import shift_draws

    rng = np.random.default_rng(1)
    x = rng.random((40, 16, 16, 1), dtype=np.float32)
    y = rng.integers(0, 10, 40)
    first = _batches(x, y, arch="cnn")
    assert len(first) == 2 * 3  # 2 epochs of 40 samples in batches of 16, 16, 8
    for (xa, ya), (xb, yb) in zip(first, _batches(x, y, arch="cnn"), strict=True):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)  # same seed: same batches
    plain = _batches(x, y, arch="cnn", shift=0)
    for epoch in (0, 1):
        order = epoch_order(0, epoch, len(y))
        xs = np.concatenate([b[0] for b in first[3 * epoch : 3 * epoch + 3]])
        ys = np.concatenate([b[1] for b in first[3 * epoch : 3 * epoch + 3]])
        assert np.array_equal(ys, y[order])  # labels: in the epoch's order, never changed
        moved = _reference_shift(x[order], shift_draws(0, epoch, len(y), 2))
        assert np.array_equal(xs, moved) and not np.array_equal(xs, x[order])
        unshifted = np.concatenate([b[0] for b in plain[3 * epoch : 3 * epoch + 3]])
        assert np.array_equal(unshifted, x[order])  # shift 0: the images as they are
    other = _batches(x, y, arch="cnn", seed=1)
    assert not np.array_equal(other[0][0], first[0][0])
    # Too small to shift (digits' 8×8) and flat samples (the MLP's): the images as they are.
    small = rng.random((40, 8, 8, 1), dtype=np.float32)
    order = epoch_order(0, 0, len(y))
    assert np.array_equal(_batches(small, y, arch="cnn")[0][0], small[order[:16]])
    flat = x.reshape(40, -1)
    assert np.array_equal(_batches(flat, y)[0][0], flat[order[:16]])


# --- resume -------------------------------------------------------------------------------------
# A child `bnpipe train` is stopped with SIGINT once its checkpoint after epoch RESUME_AT exists;
# `train --resume` must then end with the weights of an uninterrupted run, bit for bit.
RESUME = dict(hidden=(16, 16), epochs=12, batch_size=8, learning_rate=1e-2, seed=3)
RESUME_AT = 2


def _cli_args(cfg: dict) -> list[str]:
    return [
        "--hidden",
        ",".join(map(str, cfg["hidden"])),
        "--epochs",
        str(cfg["epochs"]),
        "--batch-size",
        str(cfg["batch_size"]),
        "--learning-rate",
        str(cfg["learning_rate"]),
        "--seed",
        str(cfg["seed"]),
        "--quiet",
    ]


def _as_in_a_terminal():
    """In the child: Ctrl-C's default action. A shell starts background jobs with SIGINT ignored,
    and a child inherits that, so a test run from a script would otherwise test nothing."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_when(proc, ready, timeout=120.0):
    """Send SIGINT to `proc` as soon as `ready()` holds; return its exit code."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the child ended before the moment to interrupt it"
        assert time.monotonic() < deadline, "the moment to interrupt never came"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    return proc.wait(timeout=120)


def test_interrupted_training_resumes_to_the_uninterruptedkeras_weights(tmp_path):
    import subprocess
    import sys

    from click.testing import CliRunner

    from pipeline.cli import cli
    from pipeline.stages.train import train
    from pipeline.store.files import RESUME_DIR

    out = tmp_path / "interrupted"
    ckpts = out / RESUME_DIR
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "train",
            *_cli_args(RESUME),
            "--artifacts",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_as_in_a_terminal,
    )
    code = _interrupt_when(
        proc, lambda: any(int(p.name.split("-")[1]) >= RESUME_AT for p in ckpts.glob("epoch-*"))
    )
    stderr = proc.stderr.read().decode()
    assert code == 130, stderr
    assert "Interrupted" in stderr and "Traceback" not in stderr
    # Nothing of the stage landed: no model, no record, no manifest, no temporary file.
    assert sorted(p.name for p in out.iterdir()) == [".resume"]
    assert not [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX)]
    [ckpt] = list(ckpts.iterdir())
    stopped_after = int(ckpt.name.split("-")[1])
    assert RESUME_AT <= stopped_after < RESUME["epochs"]

    result = CliRunner().invoke(
        cli,
        ["train", *_cli_args(RESUME), "--resume", "--artifacts", str(out)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert f"resuming after epoch {stopped_after} of {RESUME['epochs']}" in result.stderr
    assert not (out / ".resume").exists()  # removed once training ended
    rec = json.loads((out / "train.json").read_text())
    assert rec["resumed_from_epoch"] == stopped_after
    assert len(rec["history"]["loss"]) == RESUME["epochs"]  # the checkpoint carried the history

    whole = train(TrainConfig(**RESUME), tmp_path / "whole", quiet=True)
    a, b = keras_weights(out / "model.keras"), keras_weights(whole.model_path)
    assert [n for n, _ in a] == [n for n, _ in b]
    for (name, wa), (_, wb) in zip(a, b, strict=True):
        assert np.array_equal(wa, wb), name
    assert rec["history"] == json.loads(whole.record_path.read_text())["history"]


def test_ctrl_c_just_after_a_checkpoint_rename_leaves_one_checkpoint(tmp_path, monkeypatch):
    """The moment the CI run caught: SIGINT right after epoch-0002 appeared, before epoch-0001
    was removed. The swap holds it back, so the newest checkpoint is the only one."""
    import os
    import signal

    from pipeline.models.article import build_mlp, compile_model
    from pipeline.training.checkpoints import latest
    from pipeline.training.checkpoints import save as save_checkpoint

    config = TrainConfig(**{**RESUME, "epochs": 2})
    model = compile_model(build_mlp(64, 10, config.hidden, "keras"), config.learning_rate)
    root = tmp_path / "ckpts"
    save_checkpoint(root, model, 1, config, "data", {})
    rename = os.replace

    def rename_then_ctrl_c(src, dst):
        rename(src, dst)
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # bytecodes for the handler to run between
            pass

    monkeypatch.setattr(os, "replace", rename_then_ctrl_c)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal
    try:
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(root, model, 2, config, "data", {})
    finally:
        signal.signal(signal.SIGINT, before)
    assert [p.name for p in root.iterdir()] == ["epoch-0002"]
    assert latest(root) == root / "epoch-0002"


def test_resume_refuses_a_checkpoint_of_other_options(tmp_path):
    import dataclasses

    from pipeline.core.errors import ArtifactError
    from pipeline.data.dataset import load_dataset
    from pipeline.models.article import build_mlp, compile_model
    from pipeline.stages.train import train
    from pipeline.store.files import RESUME_DIR
    from pipeline.training.checkpoints import save as save_checkpoint

    config = TrainConfig(**{**RESUME, "epochs": 2})
    ds = load_dataset("digits", seed=config.seed)
    model = compile_model(build_mlp(64, 10, config.hidden, "keras"), config.learning_rate)
    save_checkpoint(tmp_path / RESUME_DIR, model, 1, config, ds.fingerprint(), {})
    other = dataclasses.replace(config, learning_rate=0.05)
    with pytest.raises(ArtifactError) as info:
        train(other, tmp_path, quiet=True, resume=True)
    assert "learning_rate=0.01, now 0.05" in str(info.value)
    assert not (tmp_path / "model.keras").exists()
    # "auto" (what `bnpipe run` does) starts afresh instead, and the result is a plain run's.
    res = train(other, tmp_path, quiet=True, resume="auto")
    assert res.resumed_from == 0 and (tmp_path / "model.keras").is_file()


def test_resume_without_a_checkpoint_trains_from_the_start(tmp_path):
    from pipeline.stages.train import train

    notes = []
    res = train(
        TrainConfig(**{**RESUME, "epochs": 1}), tmp_path, quiet=True, resume=True, say=notes.append
    )
    assert res.resumed_from == 0
    assert notes == [
        f"no interrupted training to resume in {tmp_path / '.resume' / 'train'}; "
        "training from the start"
    ]


# --- importing a model trained elsewhere (bnpipe run --model) -----------------------------------


@pytest.fixture(scope="module")
def article3(k3, digits, tmp_path_factory):
    """The seed article's network trained with Keras 3 on digits and saved by Keras 3."""
    from helpers import keras3_article, train_and_save

    path = tmp_path_factory.mktemp("article3") / "article.keras"
    return train_and_save(k3, keras3_article(k3), digits.x_train, digits.y_train, path, epochs=4)


def test_import_copies_the_model_and_scores_it_in_its_own_keras(article3, k3, digits, tmp_path):
    import json

    from pipeline.models.keras3_file import load_keras3
    from pipeline.stages.train import train
    from pipeline.store.artifacts import sha256_file

    config = TrainConfig(model=str(article3))
    result = train(config, tmp_path, quiet=True)
    assert (tmp_path / "model.keras").read_bytes() == article3.read_bytes()
    record = json.loads(result.record_path.read_text())
    assert record["imported"] == {
        "path": str(article3),
        "sha256": sha256_file(article3),
        "saved_by": "keras3",
    }
    reference = load_keras3(article3)
    pred = np.argmax(reference.predict(digits.x_test, verbose=0), axis=1)
    assert result.test_accuracy == float(np.mean(pred == digits.y_test))
    assert record["dataset"]["fingerprint"] == digits.fingerprint()


@pytest.mark.parametrize(
    "layer, shown",
    [("lstm", "'lstm' (LSTM)"), ("embedding", "'embedding' (Embedding)")],
)
def test_import_refuses_a_layer_it_cannot_export_before_writing(k3, tmp_path, layer, shown):
    from pipeline.core.errors import ModelError
    from pipeline.stages.train import train

    L = k3.layers
    if layer == "lstm":
        body = [k3.Input((8, 8)), L.LSTM(4, name="lstm"), L.Dense(10, activation="softmax")]
    else:
        body = [
            k3.Input((64,)),
            L.Embedding(17, 2, name="embedding"),
            L.Flatten(),
            L.Dense(10, activation="softmax"),
        ]
    path = tmp_path / "m.keras"
    k3.Sequential(body).save(path)
    out = tmp_path / "out"
    with pytest.raises(ModelError) as info:
        train(TrainConfig(model=str(path)), out, quiet=True)
    assert f"layer {shown} cannot be exported; supported: " in str(info.value)
    assert not out.exists()


def test_import_reshapes_data_to_the_model_and_names_both_shapes_when_it_cannot(k3, tmp_path):
    from pipeline.core.errors import DataError
    from pipeline.stages.train import train

    L = k3.layers
    image = tmp_path / "image.keras"
    k3.Sequential([k3.Input((8, 8, 1)), L.Flatten(), L.Dense(10, activation="softmax")]).save(image)
    result = train(TrainConfig(model=str(image)), tmp_path / "a", quiet=True)
    assert 0.0 <= result.test_accuracy <= 1.0  # digits (64 values) reshaped to (8, 8, 1)
    wide = tmp_path / "wide.keras"
    k3.Sequential([k3.Input((28, 28)), L.Flatten(), L.Dense(10, activation="softmax")]).save(wide)
    with pytest.raises(DataError) as info:
        train(TrainConfig(model=str(wide)), tmp_path / "b", quiet=True)
    assert str(info.value) == (
        "the data has 64 features per sample (shape (64,)) but the model takes input shape "
        "(28, 28) (784 values)"
    )
    assert not (tmp_path / "b").exists()
