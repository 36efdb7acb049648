"""Crash safety: Ctrl-C (SIGINT) at several moments of a real `bnpipe` child process.

Each test starts from a finished `bnpipe run` (manifest and all), starts a stage that would
rewrite the artifacts, interrupts it at a chosen moment and checks the contract: exit 130, one
line on stderr and no traceback, every artifact and the manifest byte for byte as before, and no
temporary file left. The moments are found by watching what the child writes (its progress lines,
its per-epoch checkpoint), not by sleeping, so the signal lands where each test says it does.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import CliChild

from pipeline.cli import cli
from pipeline.store.artifacts import TMP_PREFIX, sha256_file

pytestmark = pytest.mark.slow

CONFIG = """
[train]
hidden = [8, 8]
epochs = 2
[export]
modes = ["int8", "float32", "ptq-int8"]
qat_epochs = 1
[verify]
targets = ["host", "host-ref"]
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


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An artifacts dir after a complete `bnpipe run` of CONFIG (read-only: tests copy it)."""
    tmp = tmp_path_factory.mktemp("finished")
    (tmp / "bnpipe.toml").write_text(CONFIG)
    result = CliRunner().invoke(
        cli, ["run", "--config", str(tmp / "bnpipe.toml"), "--artifacts", str(tmp / "a"), "-q"]
    )
    assert result.exit_code == 0, result.output
    return tmp / "a"


def _state(d: Path) -> dict[str, str]:
    """sha256 of every file under `d` but the resume checkpoints (kept on purpose, see train.py)."""
    return {
        str(p.relative_to(d)): sha256_file(p)
        for p in sorted(d.rglob("*"))
        if p.is_file() and ".resume" not in p.relative_to(d).parts
    }


def _temporaries(d: Path) -> list[Path]:
    return [p for p in d.rglob("*") if p.name.startswith(TMP_PREFIX)]


def _as_in_a_terminal():
    # A shell starts background jobs with SIGINT ignored and children inherit it: restore Ctrl-C's
    # default action so the child turns SIGINT into KeyboardInterrupt, as under a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Child(CliChild):
    """A CLI child with Ctrl-C's default action restored, as under a terminal."""

    def __init__(self, *args: str):
        super().__init__(*args, preexec_fn=_as_in_a_terminal)

    def interrupt_when(self, ready, timeout: float = 240.0, signum=signal.SIGINT) -> int:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"the child ended first: {self.lines}"
            assert time.monotonic() < deadline, f"the moment never came: {self.lines}"
            time.sleep(0.02)
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout=120)
        self.reader.join(timeout=10)
        return code


def _assert_untouched(out: Path, before: dict[str, str], child: Child, code: int) -> None:
    assert code == 130, child.lines
    assert child.lines[-1] == "Interrupted: artifacts are as they were before this stage."
    assert not any("Traceback" in line for line in child.lines)
    assert _state(out) == before
    assert _temporaries(out) == []


def _copy(finished: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    out = tmp_path / "a"
    shutil.copytree(finished, out)
    return out, _state(out)


def test_interrupt_during_training(finished, tmp_path):
    out, before = _copy(finished, tmp_path)
    ckpts = out / ".resume" / "train"
    child = Child(
        "train",
        "--hidden",
        "8,8",
        "--epochs",
        "40",
        "--seed",
        "7",
        "--quiet",
        "--artifacts",
        str(out),
    )
    code = child.interrupt_when(lambda: any(ckpts.glob("epoch-*")))
    _assert_untouched(out, before, child, code)
    assert len(list(ckpts.glob("epoch-*"))) == 1  # the resume point is kept, and only one


@pytest.mark.parametrize("moment", ["export int8", "export ptq-int8"])
def test_interrupt_during_export(finished, tmp_path, moment):
    # "export int8": inside quantization-aware training, before any file is written.
    # "export ptq-int8": int8 and float32 are done and held in memory, the last mode is converting.
    out, before = _copy(finished, tmp_path)
    child = Child(
        "export",
        "--mode",
        "int8",
        "--mode",
        "float32",
        "--mode",
        "ptq-int8",
        "--qat-epochs",
        "30",
        "--seed",
        "5",
        "--artifacts",
        str(out),
    )
    code = child.interrupt_when(lambda: child.said(moment))
    _assert_untouched(out, before, child, code)


def test_interrupt_during_verify(finished, tmp_path):
    out, before = _copy(finished, tmp_path)
    child = Child(
        "verify",
        "--targets",
        "host,host-ref,tflm",
        "--max-drop",
        "100",
        "--min-agreement",
        "0",
        "--artifacts",
        str(out),
    )
    code = child.interrupt_when(lambda: child.said("on tflm"))
    _assert_untouched(out, before, child, code)


def test_interrupted_run_keeps_finished_stages_and_continues(finished, tmp_path):
    """Ctrl-C in `run`'s export: train and fold of the new seed are committed with their manifest
    entries, export is as before; the next `run` trusts them (no tamper refusal) and goes on."""
    out, before = _copy(finished, tmp_path)
    cfg = tmp_path / "seed1.toml"
    cfg.write_text(CONFIG.replace("epochs = 2", "epochs = 2\nseed = 1"))
    child = Child("run", "--config", str(cfg), "--artifacts", str(out))
    code = child.interrupt_when(lambda: child.said("export: running"))
    assert code == 130, child.lines
    assert _temporaries(out) == []
    after = _state(out)
    changed = sorted(f for f in before if after[f] != before[f])
    assert changed == ["fold.json", "folded.keras", "manifest.json", "model.keras", "train.json"]

    result = CliRunner().invoke(cli, ["run", "--config", str(cfg), "--artifacts", str(out)])
    assert result.exit_code == 0, result.output
    assert "train: up to date, skipped" in result.stderr
    assert "fold: up to date, skipped" in result.stderr
    assert "export: running" in result.stderr


def test_sigterm_discards_the_stage_like_ctrl_c(finished, tmp_path):
    """SIGTERM (a CI timeout, `kill`, a container stop) is handled like Ctrl-C: exit 143, the
    artifacts as before and no temporary file, where the default action would leave them."""
    out, before = _copy(finished, tmp_path)
    child = Child(
        "export",
        "--mode",
        "int8",
        "--mode",
        "float32",
        "--mode",
        "ptq-int8",
        "--qat-epochs",
        "30",
        "--seed",
        "5",
        "--artifacts",
        str(out),
    )
    code = child.interrupt_when(lambda: child.said("export ptq-int8"), signum=signal.SIGTERM)
    assert code == 143, child.lines
    assert child.lines[-1] == "Terminated: artifacts are as they were before this stage."
    assert _state(out) == before
    assert _temporaries(out) == []
