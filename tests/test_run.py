"""bnpipe run end to end: lineage, skipping, tamper refusal, config files — through the CLI."""

import json

import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error

from pipeline.artifacts import sha256_file
from pipeline.cli import cli

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
    assert list(stages) == ["train", "fold", "export", "verify", "bench"]
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
        "stages: train skipped, fold skipped, export skipped, verify skipped, bench skipped"
        in result.output
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
    line = [l for l in result.output.splitlines() if l.startswith("stages:")][0]
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
    line = [l for l in result.output.splitlines() if l.startswith("stages:")][0]
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
