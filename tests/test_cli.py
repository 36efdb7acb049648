"""cli.py in-process with CliRunner: help, exit codes, one-line errors, where artifacts go."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error

from pipeline.cli import cli
from pipeline.store.artifacts import ARTIFACTS_ENV


@pytest.fixture
def run(monkeypatch, tmp_path):
    """Invoke bnpipe in-process from an empty working directory, $BNPIPE_ARTIFACTS unset."""
    monkeypatch.delenv(ARTIFACTS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)

    def invoke(*args, env=None):
        return CliRunner().invoke(cli, [str(a) for a in args], env=env, prog_name="bnpipe")

    return invoke


# --- help -------------------------------------------------------------------------------------


def test_every_command_has_help_ending_with_an_example(run):
    assert sorted(cli.commands) and {"train", "fold"} <= set(cli.commands)
    for name, command in [("bnpipe", cli), *sorted(cli.commands.items())]:
        doc = (command.help or "").strip()
        assert doc, f"{name} has no help"
        last = doc.splitlines()[-1].strip()
        prog = "bnpipe" if name == "bnpipe" else f"bnpipe {name}"
        assert last.startswith(f"Example: {prog}"), f"{name}: last help line is {last!r}"
        args = ["--help"] if command is cli else [name, "--help"]
        result = run(*args)
        assert result.exit_code == 0, result.output
        assert "Example: " in result.output and result.stderr == ""


def test_help_does_not_import_tensorflow():
    # A fresh interpreter: in this one TensorFlow is long imported by other tests.
    script = (
        "import sys\n"
        "from pipeline.cli import cli\n"
        "for args in [['--help'], *([name, '--help'] for name in cli.commands)]:\n"
        "    try:\n"
        "        cli.main(args, prog_name='bnpipe')\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (args, exc.code)\n"
        "heavy = sorted(m for m in ('tensorflow', 'tf_keras', 'keras', 'ai_edge_litert')"
        " if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "print('OK', len(cli.commands))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != ARTIFACTS_ENV}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"OK {len(cli.commands)}"


# --- bad input: exit 2, one line, no traceback ------------------------------------------------


def test_fold_missing_model_path(run, tmp_path):
    missing = tmp_path / "nowhere" / "model.keras"
    assert_one_line_error(run("fold", "--model", missing), f"model file {missing} does not exist")


def test_fold_without_model_says_to_train_first(run, tmp_path):
    out = tmp_path / "art"
    assert_one_line_error(
        run("fold", "--artifacts", out),
        f"model {out / 'model.keras'} does not exist; run `bnpipe train` first or pass --model",
    )
    assert not out.exists()


def test_fold_on_a_file_that_is_not_a_model(run, tmp_path):
    bad = tmp_path / "model.keras"
    bad.write_text("not a model")
    assert_one_line_error(
        run("fold", "--model", bad),
        f"{bad} is not a Keras .keras file (expected a zip archive holding "
        "config.json and model.weights.h5)",
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--hidden", "a,b"], "--hidden takes comma-separated integers; got 'a,b'"),
        (["--hidden", "16,0"], "--hidden needs 1 to 64 widths from 1 to 8,192, got 16,0"),
        (["--epochs", "0"], "--epochs must be an integer from 1 to 10,000, got 0"),
        (["--batch-size", "0"], "--batch-size must be an integer from 1 to 1,048,576, got 0"),
    ],
)
def test_train_bad_values(run, tmp_path, args, message):
    assert_one_line_error(run("train", *args, "--artifacts", tmp_path / "art"), message)
    assert not (tmp_path / "art").exists()


def test_train_bad_data_path(run, tmp_path):
    missing = tmp_path / "missing.npz"
    result = run("train", "--data", missing, "--epochs", "1", "--artifacts", tmp_path / "art")
    assert_one_line_error(result)
    assert str(missing) in result.stderr
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--bn", "torch"],
        ["train", "--epochs", "many"],
        ["fold", "--no-such-option"],
        ["no-such-command"],
        ["--no-such-option"],
        ["export", "--c-array", "rust"],
        ["verify", "--tflite", "."],
    ],
)
def test_usage_errors_exit_2_in_one_line(run, args):
    """One `Error: …` line, as the README's exit-code table promises (no usage, no hint lines)."""
    result = run(*args)
    command = "bnpipe" if args[0].startswith("-") or args[0] == "no-such-command" else args[0]
    command = command if command == "bnpipe" else f"bnpipe {command}"
    assert_one_line_error(result, fragment=f"(see `{command} --help`)")


# --- commands that work, and where their outputs go -------------------------------------------


def test_train_command_writes_into_artifacts_dir(run, tmp_path):
    out = tmp_path / "art"
    result = run(
        "train",
        "--epochs",
        "1",
        "--hidden",
        "4",
        "--batch-size",
        "64",
        "--quiet",
        "--artifacts",
        out,
    )
    assert result.exit_code == 0, result.output
    assert re.fullmatch(
        rf"test accuracy 0\.\d{{4}} on 360 samples; wrote {re.escape(str(out))}/model\.keras "
        r"and train\.json \(\d+\.\d s\)\n",
        result.stdout,
    ), result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.keras", "train.json"]
    rec = json.loads((out / "train.json").read_text())
    assert rec["config"]["hidden"] == [4] and rec["config"]["epochs"] == 1


def _fold_lines_ok(result, out):
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines[:2]] == [
        "folded bn_1 into dense_1",
        "folded bn_2 into dense_2",
    ]
    assert lines[-1].endswith(f"on 360 test samples of digits; wrote {out / 'folded.keras'}")
    assert result.stderr == ""


def test_fold_respects_artifacts_flag(run, trained, tmp_path):
    _, result_train = trained
    out = tmp_path / "flag"
    _fold_lines_ok(run("fold", "--model", result_train.model_path, "--artifacts", out), out)
    assert sorted(p.name for p in out.iterdir()) == ["fold.json", "folded.keras"]


def test_fold_quiet_prints_the_summary_line_alone(run, trained, tmp_path):
    _, result_train = trained
    out = tmp_path / "q"
    result = run("fold", "--model", result_train.model_path, "--artifacts", out, "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1 and result.stderr == ""
    assert result.stdout.startswith("output max relative difference ")
    assert result.stdout.rstrip().endswith(f"wrote {out / 'folded.keras'}")
    assert (out / "folded.keras").is_file()


def test_fold_respects_env_and_flag_beats_env(run, trained, tmp_path):
    _, result_train = trained
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    for name in ("model.keras", "train.json"):
        shutil.copy(result_train.model_path.parent / name, env_dir / name)

    _fold_lines_ok(run("fold", env={ARTIFACTS_ENV: str(env_dir)}), env_dir)
    assert sorted(p.name for p in env_dir.iterdir()) == [
        "fold.json",
        "folded.keras",
        "manifest.json",
        "model.keras",
        "train.json",
    ]

    flag_dir = tmp_path / "flag"
    before = {p.name: p.stat().st_mtime_ns for p in env_dir.iterdir()}
    result = run(
        "fold",
        "--model",
        env_dir / "model.keras",
        "--artifacts",
        flag_dir,
        env={ARTIFACTS_ENV: str(env_dir)},
    )
    _fold_lines_ok(result, flag_dir)
    assert {p.name: p.stat().st_mtime_ns for p in env_dir.iterdir()} == before
    assert not (tmp_path / "artifacts").exists()  # the default ./artifacts was never used


def test_fold_strict_refuses_with_one_line_and_warns_otherwise(run, keras, tmp_path):
    from pipeline.models.door import save_model

    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, activation="relu", name="d"),
            keras.layers.BatchNormalization(name="bn"),
        ]
    )
    src = save_model(model, tmp_path / "m.keras")
    reason = "follows Dense 'd' which has its own activation 'relu', and feeds the model output"
    assert_one_line_error(
        run("fold", "--model", src, "--strict", "--artifacts", tmp_path / "s"),
        f"cannot fold exactly: bn {reason}",
    )
    assert not (tmp_path / "s").exists()

    result = run("fold", "--model", src, "--artifacts", tmp_path / "w")
    assert result.exit_code == 0, result.output
    assert result.stderr == f"Warning: BatchNormalization 'bn' stays in the model: it {reason}\n"
    assert (tmp_path / "w" / "folded.keras").is_file()


def test_interrupt_exits_130_and_says_artifacts_are_unchanged(run, monkeypatch, tmp_path):
    # Fault injection into bnpipe's own stage function (not TensorFlow): Ctrl-C mid-stage.
    import pipeline.stages.fold

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.stages.fold, "run_fold", interrupted)
    model = tmp_path / "model.keras"
    model.write_bytes(b"x")
    result = run("fold", "--model", model, "--artifacts", tmp_path / "art")
    assert result.exit_code == 130
    assert result.stderr == "Interrupted: artifacts are as they were before this stage.\n"


# --- a bug is not a failed gate: its own exit code, one line, the traceback on request ---------

BUG_LINE = (
    "Internal error: ZeroDivisionError: division by zero (a bug in bnpipe: rerun as "
    "`bnpipe --debug …` or with BNPIPE_DEBUG=1 for the traceback)\n"
)


def _buggy_fold(*args, **kwargs):
    return 1 / 0  # fault injection: an unexpected exception inside a stage


@pytest.fixture
def buggy_fold(monkeypatch, tmp_path):
    """`bnpipe fold --model M` arguments whose stage raises ZeroDivisionError."""
    import pipeline.stages.fold

    monkeypatch.setattr(pipeline.stages.fold, "run_fold", _buggy_fold)
    monkeypatch.delenv("BNPIPE_DEBUG", raising=False)
    model = tmp_path / "model.keras"
    model.write_bytes(b"x")
    return ["fold", "--model", model, "--artifacts", tmp_path / "art"]


def test_a_bug_exits_70_with_one_line_and_no_traceback(run, buggy_fold, tmp_path):
    result = run(*buggy_fold)
    assert result.exit_code == 70, (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit)
    assert result.stderr == BUG_LINE
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize("how", ["--debug", "BNPIPE_DEBUG=1"])
def test_debug_shows_the_traceback_of_a_bug(run, buggy_fold, how):
    if how == "--debug":
        result = run("--debug", *buggy_fold)
    else:
        result = run(*buggy_fold, env={"BNPIPE_DEBUG": "1"})
    assert result.exit_code == 70, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert any("in _buggy_fold" in line for line in lines)
    assert lines[-2:] == [
        "ZeroDivisionError: division by zero",
        "Internal error: ZeroDivisionError: division by zero (a bug in bnpipe: the traceback "
        "is above)",
    ]


@pytest.mark.parametrize(
    "exc, code, line",
    [
        ("gate", 1, "Error: verification failed: one gate"),
        ("interrupt", 130, "Interrupted: artifacts are as they were before this stage."),
        ("terminate", 143, "Terminated: artifacts are as they were before this stage."),
    ],
)
def test_gates_and_signals_keep_their_codes_beside_the_bug_code(
    run, monkeypatch, tmp_path, exc, code, line
):
    import pipeline.stages.fold
    from pipeline.core.errors import GateFailed, Terminated

    def raising(*args, **kwargs):
        raise {
            "gate": GateFailed("verification failed: one gate"),
            "interrupt": KeyboardInterrupt(),
            "terminate": Terminated(),
        }[exc]

    monkeypatch.setattr(pipeline.stages.fold, "run_fold", raising)
    model = tmp_path / "model.keras"
    model.write_bytes(b"x")
    result = run("fold", "--model", model, "--artifacts", tmp_path / "art")
    assert result.exit_code == code, result.output
    assert result.stderr == line + "\n"
