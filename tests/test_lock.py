"""One writer per artifacts dir (lock.py), with real concurrent processes.

Two `bnpipe` children on one artifacts dir: the second is refused with exit 2 naming the first
(pid, command, since), or with --wait waits and then reads what the first wrote; a holder killed
with SIGKILL leaves its lock file behind, and the next writer takes the lock over and sweeps the
temporary files the killed one left (only then: a refused writer touches nothing). `inspect`, a
reader, needs no lock. The moments are found by watching the lock file and the children's
output, not by sleeping.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import CliChild as Child
from helpers import assert_one_line_error, bnpipe_process, tiny_cli

from pipeline.cli import cli
from pipeline.store.artifacts import TMP_PREFIX, sha256_file
from pipeline.store.lock import writer_lock

pytestmark = pytest.mark.slow

LOCK = ".bnpipe.lock"
TINY_TRAIN = [*tiny_cli(epochs=None), "-q"]
RUN_CONFIG = """
[train]
hidden = [8, 8]
epochs = {epochs}
[export]
modes = ["int8"]
qat_epochs = 1
[verify]
targets = ["host-ref"]
min_agreement = 0.0
max_drop = 100.0
[bench]
batch_sizes = [1]
threads = [1]
warmup = 1
runs = 5
"""
REFUSED = (
    r"Error: the artifacts directory {out} is being written by another bnpipe \(pid {pid}, "
    r"`{command}`, since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\); rerun when it has ended, or with "
    r"--wait \(or BNPIPE_WAIT=1\) to wait for it"
)


def until(condition, child: Child | None = None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if child is not None:
            assert child.proc.poll() is None, f"the child ended first: {child.lines}"
        assert time.monotonic() < deadline, "the moment never came"
        time.sleep(0.02)


def holder_pid(out: Path) -> int | None:
    try:
        return json.loads((out / LOCK).read_text()).get("pid")
    except (OSError, ValueError):
        return None


def temporaries(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX))


@pytest.fixture(scope="module")
def trained_and_folded(tmp_path_factory):
    """An artifacts dir after `bnpipe train` and `bnpipe fold` (read-only: tests copy it)."""
    out = tmp_path_factory.mktemp("lock") / "a"
    for args in (["train", *TINY_TRAIN, "--epochs", "2"], ["fold"]):
        result = CliRunner().invoke(cli, [*args, "--artifacts", str(out)])
        assert result.exit_code == 0, result.output
    return out


def test_a_second_run_with_other_options_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "a"
    configs = []
    # The first trains long enough (minutes) that the test's SIGTERM, not its own end, stops it:
    # with 2 epochs a loaded machine saw it finish between the poll and the signal (exit 0).
    for epochs in (500, 3):
        configs.append(tmp_path / f"c{epochs}.toml")
        configs[-1].write_text(RUN_CONFIG.format(epochs=epochs))
    first = Child("run", "--config", configs[0], "--artifacts", out, "-q")
    try:
        until(lambda: holder_pid(out) == first.pid, first)
        second = bnpipe_process("run", "--config", configs[1], "--artifacts", out, timeout=60)
        line = assert_one_line_error(second)
        command = f"bnpipe run --config {configs[0]} --artifacts {out} -q"
        assert re.fullmatch(REFUSED.format(out=out, pid=first.pid, command=command), line), line
        assert second.seconds < 20  # at once, without TensorFlow
        assert first.proc.poll() is None  # the first goes on, undisturbed
        first.proc.send_signal(signal.SIGTERM)
        assert first.wait() == 143, first.lines
    finally:
        first.stop()
    assert not (out / LOCK).exists() and temporaries(out) == []


def test_wait_waits_for_the_writer_then_reads_what_it_wrote(trained_and_folded, tmp_path):
    out = tmp_path / "a"
    shutil.copytree(trained_and_folded, out)
    writer = Child("train", *TINY_TRAIN, "--epochs", "3", "--seed", "1", "--artifacts", out)
    try:
        until(lambda: holder_pid(out) == writer.pid, writer)
        waiter = Child("fold", "--wait", "--artifacts", out)
        until(lambda: waiter.said("waiting for another bnpipe to finish writing"), waiter)
        assert waiter.lines[0] == (
            f"waiting for another bnpipe to finish writing {out} (pid {writer.pid}, `bnpipe "
            f"train {' '.join(writer.args[1:])}`, since {waiter.lines[0].split('since ')[1]}"
        )
        assert writer.wait() == 0, writer.lines
        assert waiter.wait() == 0, waiter.lines
    finally:
        writer.stop()
    manifest = json.loads((out / "manifest.json").read_text())["stages"]
    assert manifest["train"]["params"]["seed"] == 1  # the writer's training …
    fold_inputs = json.loads((out / "fold.json").read_text())["inputs"]
    assert fold_inputs["model"] == sha256_file(out / "model.keras")  # … is what fold read
    assert manifest["fold"]["inputs"] == {"model.keras": sha256_file(out / "model.keras")}
    assert not (out / LOCK).exists()


def test_a_killed_writer_is_taken_over_and_its_temporaries_swept(trained_and_folded, tmp_path):
    out = tmp_path / "a"
    shutil.copytree(trained_and_folded, out)
    writer = Child("train", *TINY_TRAIN, "--epochs", "500", "--seed", "2", "--artifacts", out)
    try:
        # Mid-training, with a checkpoint on disk: then stand in for what a SIGKILL strands.
        until(lambda: list((out / ".resume" / "train").glob("epoch-*")), writer)
        stranded = [out / f"{TMP_PREFIX}x.keras", out / ".resume" / "train" / f"{TMP_PREFIX}ckpt"]
        stranded[0].write_bytes(b"half a model")
        stranded[1].mkdir()
        (stranded[1] / "ckpt.index").write_bytes(b"half a checkpoint")

        refused = bnpipe_process("fold", "--artifacts", out, timeout=60)
        assert_one_line_error(refused, fragment=f"(pid {writer.pid}, `bnpipe train")
        assert all(p.exists() for p in stranded)  # swept only under the lock

        writer.proc.send_signal(signal.SIGKILL)
        assert writer.wait() == -signal.SIGKILL
    finally:
        writer.stop()
    assert holder_pid(out) == writer.pid  # the dead holder's lock file is still there
    taker = bnpipe_process("fold", "--artifacts", out, timeout=120)
    assert taker.exit_code == 0, taker.output
    assert re.search(
        rf"removed \d+ temporary file\(s\) left in {re.escape(str(out))} by a writer that was "
        "killed",
        taker.stderr,
    ), taker.stderr
    assert temporaries(out) == [] and not (out / LOCK).exists()
    assert list((out / ".resume" / "train").glob("epoch-*"))  # a whole checkpoint stays
    assert json.loads((out / "manifest.json").read_text())["stages"]["fold"]


def test_readers_need_no_lock_and_the_wait_env_waits(exported, tmp_path):
    """This test's own process holds the lock (a real flock, as a bnpipe would): inspect still
    reads; BNPIPE_WAIT=1 waits and, once the lock is free, sweeps what was stranded."""
    out = tmp_path / "a"
    shutil.copytree(exported, out)
    stranded = out / f"{TMP_PREFIX}stranded.json"
    with writer_lock(out):
        stranded.write_text("{")
        reader = bnpipe_process("inspect", out / "model_int8.tflite", timeout=60)
        assert reader.exit_code == 0 and "FULLY_CONNECTED" in reader.stdout, reader.output
        waiter = Child("fold", "--artifacts", out, env={"BNPIPE_WAIT": "1"})
        try:
            until(lambda: waiter.said("waiting for another bnpipe"), waiter)
            assert waiter.said(f"(pid {os.getpid()}, `bnpipe")  # its argv: pytest's, or a worker's
            assert stranded.exists()
        except BaseException:
            waiter.stop()
            raise
    assert waiter.wait() == 0, waiter.lines
    assert not stranded.exists() and not (out / LOCK).exists()
    assert (out / "fold.json").is_file()


def test_a_waiter_whose_holder_removed_the_new_directory_keeps_its_own_lock(tmp_path):
    """The holder created the artifacts dir, wrote nothing and removed it on release; the
    waiting `run` creates it again and, holding the lock, runs its stages under it (each stage
    re-enters the run's lock): here the first stage's bad input is the answer, not a refusal."""
    out = tmp_path / "new"
    config = tmp_path / "bnpipe.toml"
    config.write_text(f'[train]\ndata = "{tmp_path / "missing.npz"}"\n')
    with writer_lock(out):
        waiter = Child("run", "--config", config, "--artifacts", out, "--wait")
        try:
            until(lambda: waiter.said("waiting for another bnpipe"), waiter)
        except BaseException:
            waiter.stop()
            raise
    assert waiter.wait(timeout=60) == 2, waiter.lines
    assert waiter.lines[-1] == f"Error: data path {tmp_path / 'missing.npz'} does not exist"
    assert not out.exists()
