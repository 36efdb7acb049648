"""bnpipe run end to end: lineage, skipping, tamper refusal, config files — through the CLI."""

import json

import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error

from pipeline.cli import cli
from pipeline.store.artifacts import sha256_file

pytestmark = pytest.mark.slow

TINY = """
[train]
hidden = [8, 8]
epochs = {epochs}
[export]
modes = ["int8", "float32"]
qat_epochs = 1
[verify]
targets = ["host-ref"]
min_agreement = 0.0
max_drop = 100.0
[bench]
batch_sizes = [1]
threads = [1]
warmup = 1
runs = 4
rounds = 2
keras_runs = 2
"""


def _run(tmp_path, epochs=1, *extra):
    cfg = tmp_path / "bnpipe.toml"
    cfg.write_text(TINY.format(epochs=epochs))
    return CliRunner().invoke(
        cli, ["run", "--config", str(cfg), "--artifacts", str(tmp_path / "a"), "-q", *extra]
    )


def _snapshot(d):
    return {
        p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(d.iterdir()) if p.is_file()
    }


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    result = _run(tmp)
    assert result.exit_code == 0, result.output
    return tmp, result


def test_first_run_writes_every_stage_and_a_summary(first_run):
    tmp, result = first_run
    out = tmp / "a"
    for f in [
        "model.keras",
        "train.json",
        "folded.keras",
        "fold.json",
        "model_int8.tflite",
        "model_float32.tflite",
        "export.json",
        "verify.json",
        "verify.md",
        "bench.json",
        "bench.md",
        "manifest.json",
    ]:
        assert (out / f).is_file(), f
    assert "verdict: PASS" in result.output
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert list(stages) == ["train", "fold", "export", "verify", "bench", "report"]
    assert stages["fold"]["inputs"]["model.keras"] == stages["train"]["outputs"]["model.keras"]
    assert not [p for p in out.iterdir() if p.name.startswith(".bnpipe-tmp-")]


def test_unchanged_second_run_rewrites_nothing(first_run):
    tmp, _ = first_run
    out = tmp / "a"
    before = _snapshot(out)
    result = _run(tmp)
    assert result.exit_code == 0, result.output
    after = _snapshot(out)
    changed = sorted(n for n in before if before[n] != after.get(n))
    assert changed == []
    assert (
        "stages: train skipped, fold skipped, export skipped, verify skipped, bench skipped, "
        "report skipped" in result.output
    )


def test_tampered_tflite_is_refused_with_its_name(first_run, tmp_path):
    import shutil

    src, _ = first_run
    shutil.copytree(src / "a", tmp_path / "a")
    victim = tmp_path / "a" / "model_int8.tflite"
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    result = _run(tmp_path)
    assert result.exit_code == 2
    assert "model_int8.tflite is not the file `bnpipe export` wrote" in result.output


def test_changed_parameter_reruns_that_stage_and_downstream_only(first_run, tmp_path):
    import shutil

    src, _ = first_run
    shutil.copytree(src / "a", tmp_path / "a")
    cfg = tmp_path / "bnpipe.toml"
    cfg.write_text(TINY.format(epochs=1).replace("qat_epochs = 1", "qat_epochs = 2"))
    result = CliRunner().invoke(
        cli, ["run", "--config", str(cfg), "--artifacts", str(tmp_path / "a"), "-q"]
    )
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if ln.startswith("stages:"))
    assert "train skipped" in line and "fold skipped" in line
    assert "export skipped" not in line and "verify skipped" not in line


@pytest.mark.parametrize(
    "text, message",
    [
        ("[trian]\nepochs = 1\n", "unknown table(s) trian"),
        ("[train]\nepoch = 1\n", "[train] has unknown key(s) epoch"),
        ("[train\n", "is not valid TOML"),
        ("[train]\nepochs = 0\n", "[train] epochs must be an integer from 1 to 10,000, got 0"),
    ],
)
def test_bad_config_file_is_one_line_exit_2(tmp_path, text, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    result = CliRunner().invoke(
        cli, ["run", "--config", str(cfg), "--artifacts", str(tmp_path / "a")]
    )
    assert_one_line_error(result, fragment=message)
    assert not (tmp_path / "a" / "model.keras").exists()


def test_single_stage_commands_keep_the_manifest(first_run, tmp_path):
    """`bnpipe train` alone records its stage, so a later `run` reruns what follows and refuses
    nothing; a stage command reading a tampered default input is refused, an explicit one is not."""
    import shutil

    src, _ = first_run
    out = tmp_path / "a"
    shutil.copytree(src / "a", out)
    result = CliRunner().invoke(
        cli,
        ["train", "--hidden", "8,8", "--epochs", "1", "--seed", "4", "-q", "--artifacts", str(out)],
    )
    assert result.exit_code == 0, result.output
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["train"]["params"]["seed"] == 4
    assert stages["train"]["outputs"]["model.keras"] == sha256_file(out / "model.keras")

    victim = out / "model.keras"
    victim.write_bytes(victim.read_bytes() + b"\0")
    fold_before = (out / "fold.json").read_bytes()
    refused = CliRunner().invoke(cli, ["fold", "--artifacts", str(out)])
    assert refused.exit_code == 2
    assert f"{victim} is not the file `bnpipe train` wrote" in refused.output
    assert (out / "fold.json").read_bytes() == fold_before  # refused before writing anything
    asked = CliRunner().invoke(cli, ["fold", "--model", str(victim), "--artifacts", str(out)])
    assert asked.exit_code == 0, asked.output
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert "fold" not in stages  # outputs of an explicitly chosen input carry no lineage


def test_train_alone_then_run_reruns_downstream_without_refusing(first_run, tmp_path):
    import shutil

    src, _ = first_run
    shutil.copytree(src / "a", tmp_path / "a")
    cfg = tmp_path / "bnpipe.toml"
    cfg.write_text(TINY.format(epochs=1).replace("epochs = 1", "epochs = 1\nseed = 2", 1))
    trained = CliRunner().invoke(
        cli,
        [
            "train",
            "--hidden",
            "8,8",
            "--epochs",
            "1",
            "--seed",
            "2",
            "-q",
            "--artifacts",
            str(tmp_path / "a"),
        ],
    )
    assert trained.exit_code == 0, trained.output
    result = CliRunner().invoke(
        cli, ["run", "--config", str(cfg), "--artifacts", str(tmp_path / "a"), "-q"]
    )
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if ln.startswith("stages:"))
    assert "train skipped" in line and "fold skipped" not in line


def test_run_with_multi_worker_training_needs_the_workers_first(tmp_path):
    cfg = tmp_path / "bnpipe.toml"
    cfg.write_text(
        TINY.format(epochs=1).replace("epochs = 1", 'epochs = 1\nstrategy = "multi-worker"', 1)
    )
    result = CliRunner().invoke(
        cli, ["run", "--config", str(cfg), "--artifacts", str(tmp_path / "a"), "-q"]
    )
    assert result.exit_code == 2, result.output
    assert (
        "run `bnpipe train --strategy multi-worker` (same options) on every worker first"
        in result.output
    )
    assert not (tmp_path / "a" / "model.keras").exists()


# --- bnpipe run --model: a model trained elsewhere, either Keras ---------------------------------

MODEL_RUN = """
[export]
modes = ["int8", "float32"]
qat_epochs = 3
[verify]
targets = ["host-ref", "tflm"]
# 360 test samples, one of them 0.28 pp: the drop gate allows three, agreement stays at its
# default. The figures of record (drop, agreement) are measured on 2,000 MNIST digits by
# scripts/measure_byom.py.
max_drop = 1.0
[bench]
batch_sizes = [1]
threads = [1]
warmup = 1
runs = 4
rounds = 2
keras_runs = 2
"""


def _run_model(tmp_path, model, *extra, quiet=True):
    cfg = tmp_path / "model_run.toml"
    cfg.write_text(MODEL_RUN)
    return CliRunner().invoke(
        cli,
        [
            "run",
            "--model",
            str(model),
            "--config",
            str(cfg),
            "--artifacts",
            str(tmp_path / "a"),
            *(["-q"] if quiet else []),
            *extra,
        ],
    )


@pytest.mark.parametrize("build", ["keras3_article", "keras3_functional"])
def test_run_model_takes_a_keras3_model_to_verified_int8(k3, digits, tmp_path, build):
    import zipfile

    import helpers

    from pipeline.models.configcheck import saved_by
    from pipeline.store.files import tflite_name
    from pipeline.tflite.file import read_tflite
    from pipeline.tflite.opset import graph_check

    src = helpers.train_and_save(
        k3, getattr(helpers, build)(k3), digits.x_train, digits.y_train, tmp_path / "mine.keras"
    )
    result = _run_model(tmp_path, src, quiet=False)  # progress lines on stderr: in output
    assert result.exit_code == 0, result.output
    assert "verdict: PASS" in result.output
    assert "import: running" in result.output and "train: running" not in result.output
    out = tmp_path / "a"
    assert (out / "model.keras").read_bytes() == src.read_bytes()
    # folded.keras: a Keras 3 file with no BN left, proved against the original in Keras 3.
    assert saved_by(out / "folded.keras") == "keras3"
    config = json.loads(zipfile.ZipFile(out / "folded.keras").read("config.json"))
    assert "BatchNormalization" not in {e["class_name"] for e in config["config"]["layers"]}
    report = json.loads((out / "fold.json").read_text())["report"]
    assert report["skipped"] == [] and report["output_max_rel_diff"] <= 1e-5
    assert all(p["max_rel_diff"] <= 1e-5 for p in report["pairs"])
    info = read_tflite(out / tflite_name("int8"))
    assert set(info.op_counts()) == {"FULLY_CONNECTED", "SOFTMAX"}
    assert graph_check(info, "int8", float_io=False) == []
    # The lineage starts at the user's file: an unchanged second run skips everything …
    again = _run_model(tmp_path, src)
    assert "stages: train skipped, fold skipped, export skipped" in again.output
    # … and another model is imported afresh.
    other = helpers.train_and_save(
        k3,
        getattr(helpers, build)(k3),
        digits.x_train,
        digits.y_train,
        tmp_path / "other.keras",
        epochs=2,
    )
    changed = _run_model(tmp_path, other)
    assert changed.exit_code == 0, changed.output
    assert "train skipped" not in changed.output and "fold skipped" not in changed.output


def test_run_model_takes_a_tf_keras_image_model_and_keeps_its_keras(keras, digits, tmp_path):
    """A tf_keras model taking 8×8×1 images: digits are fed as images on every target, and
    folded.keras stays a tf_keras file."""
    from pipeline.models.configcheck import saved_by
    from pipeline.models.door import save_model

    k = keras
    k.utils.set_random_seed(0)
    model = k.Sequential(
        [
            k.Input((8, 8, 1)),
            k.layers.BatchNormalization(name="bn_in"),
            k.layers.Flatten(name="flat"),
            k.layers.Dense(32, name="d"),
            k.layers.BatchNormalization(name="bn"),
            k.layers.ReLU(),
            k.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(digits.x_train.reshape(-1, 8, 8, 1), digits.y_train, epochs=6, verbose=0)
    src = save_model(model, tmp_path / "image.keras")
    result = _run_model(tmp_path, src)
    assert result.exit_code == 0, result.output
    assert saved_by(tmp_path / "a" / "folded.keras") == "keras2"
    verify = json.loads((tmp_path / "a" / "verify.json").read_text())
    assert {r["target"] for r in verify["rows"]} == {"tensorflow", "host-ref", "tflm"}
    assert verify["passed"] is True


def test_run_model_refuses_an_unsupported_layer_before_anything_runs(k3, tmp_path):
    path = tmp_path / "rnn.keras"
    k3.Sequential([k3.Input((8, 8)), k3.layers.LSTM(4, name="rnn"), k3.layers.Dense(10)]).save(path)
    result = _run_model(tmp_path, path)
    assert_one_line_error(result, fragment="layer 'rnn' (LSTM) cannot be exported")
    assert not (tmp_path / "a" / "model.keras").exists()


AUTO_RUN = """
[verify]
targets = ["host-ref", "tflm"]
[bench]
batch_sizes = [1]
threads = [1]
warmup = 1
runs = 4
rounds = 2
keras_runs = 2
"""


def test_run_model_with_defaults_ships_int8_for_the_outlier_case(outlier_case, tmp_path):
    """The issue's outlier case (two channels of the first Dense ×100, undone by the next):
    `bnpipe run --model` with the default fold and export (equalization on, --mode auto) ends
    with an integer model that passes verify's default gates and stays within two of the 360
    test samples (0.56 pp) of the original, because equalization brings the first pair's channel
    ranges back together. (The issue's 0.3 pp / 99.5 % are measured on 2,000 MNIST digits by
    scripts/measure_cle.py; here one sample is 0.28 pp.)"""
    _, outlier = outlier_case
    cfg = tmp_path / "auto.toml"
    cfg.write_text(AUTO_RUN)
    out = tmp_path / "a"
    args = ["run", "--model", str(outlier / "folded.keras"), "--config", str(cfg)]
    result = CliRunner().invoke(cli, [*args, "--data", "digits", "--artifacts", str(out), "-q"])
    assert result.exit_code == 0, result.output
    first = json.loads((out / "fold.json").read_text())["report"]["equalized"][0]
    assert first["range_ratio_before"] > 50 and first["range_ratio_after"] < 10, first
    export = json.loads((out / "export.json").read_text())
    chosen = export["auto"]["chosen"]
    assert chosen in ("int8", "ptq-int8"), export["auto"]
    rows = json.loads((out / "verify.json").read_text())["rows"]
    int8 = [r for r in rows if r["candidate"] == f"model_{chosen}.tflite"]
    assert {r["target"] for r in int8} == {"host-ref", "tflm"}
    for r in int8:
        assert r["diff_pp"] >= -0.6 and r["agreement"] >= 0.99, r
