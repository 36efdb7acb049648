"""The ssh target, against a throw-away sshd on 127.0.0.1 (scripts/start_test_sshd.sh).

The "board" is this machine: the remote python is this test's own interpreter, so the outputs
must equal an in-process run of the same runner exactly.
"""

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_device_runner import N_CLASSES, N_FEATURES, build_tiny_models, quantized_inputs

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
from pipeline.core.errors import BnpipeError, ModelError, TargetUnavailable
from pipeline.runtimes import device_runner as dr
from pipeline.runtimes.ssh import SshRuntime, parse_spec

pytestmark = pytest.mark.device

START_SSHD = Path(__file__).resolve().parents[1] / "scripts" / "start_test_sshd.sh"


def unusable(why):
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """{"target", "ssh_opts", "dir"} of a running loopback sshd; stopped at the end."""
    if shutil.which("ssh") is None or shutil.which("scp") is None:
        unusable("the ssh client (openssh-client) is not installed")
    directory = tmp_path_factory.mktemp("sshd")
    proc = subprocess.run(
        ["bash", str(START_SSHD), str(directory)], capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        unusable(f"the test sshd did not start: {proc.stderr.strip()[-300:]}")
    try:
        yield {
            "target": (directory / "target").read_text().strip(),
            "ssh_opts": (directory / "ssh_opts").read_text().strip(),
            "dir": directory,
        }
    finally:
        subprocess.run(
            ["bash", str(START_SSHD), "stop", str(directory)], capture_output=True, timeout=60
        )


@pytest.fixture
def board(sshd, monkeypatch):
    monkeypatch.setenv("BNPIPE_SSH_PYTHON", sys.executable)
    monkeypatch.setenv("BNPIPE_SSH_OPTS", sshd["ssh_opts"])
    return SshRuntime(sshd["target"])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("models"))


def free_port():
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_available(board):
    assert board.available() == (True, "")


def test_run_round_trip_equals_in_process_run(board, models):
    x = quantized_inputs(models["int8"], 2000)
    result = board.run(str(models["int8"]), x)
    expected, _ = dr.run_batched(dr.load_interpreter(models["int8"]), x)
    assert result.target == board.name == f"ssh:{board.spec}"
    assert result.outputs.dtype == np.int8 and result.outputs.shape == (2000, N_CLASSES)
    np.testing.assert_array_equal(result.outputs, expected)
    assert result.info["n"] == 2000 and result.info["emulated"] is False
    assert result.info["host"] == "127.0.0.1" and result.invoke_seconds > 0


def test_run_removes_its_remote_dir(board, models, sshd):
    # The "remote" temp root is this machine's; find it as the remote shell sees it.
    probe = subprocess.run(
        [
            "ssh",
            *shlex.split(sshd["ssh_opts"]),
            "-p",
            str(board.port),
            f"{board.user}@{board.host}",
            "mktemp -u -d -t bnpipe.XXXXXX",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    temp_root = Path(probe.stdout.strip()).parent
    before = set(temp_root.glob("bnpipe.*"))
    board.run(str(models["int8"]), quantized_inputs(models["int8"], 5))
    assert set(temp_root.glob("bnpipe.*")) == before


def test_bench_over_ssh(board, models):
    report = board.bench(
        str(models["int8"]),
        quantized_inputs(models["int8"], 4),
        batch_sizes=(1, 8),
        threads=(1,),
        warmup=1,
        runs=3,
    )
    json.dumps(report)
    assert report["emulated"] is False and report["host"] == "127.0.0.1"
    assert [(r["threads"], r["batch"]) for r in report["results"]] == [(1, 1), (1, 8)]


def test_wrong_dtype_is_a_model_error_with_the_runner_message(board, models):
    with pytest.raises(ModelError, match=r"^ssh:.*: inputs have dtype float32 but .* is int8"):
        board.run(str(models["int8"]), np.zeros((2, N_FEATURES), np.float32))


def test_missing_remote_python_is_reported(sshd, monkeypatch):
    monkeypatch.setenv("BNPIPE_SSH_OPTS", sshd["ssh_opts"])
    ok, why = SshRuntime(sshd["target"], remote_python="no-such-python3").available()
    assert not ok and "remote python 'no-such-python3' not found" in why


def test_unreachable_host_gives_a_clear_error(models, sshd, monkeypatch):
    monkeypatch.setenv("BNPIPE_SSH_OPTS", sshd["ssh_opts"])
    runtime = SshRuntime(f"nobody@127.0.0.1:{free_port()}", connect_timeout=5)
    ok, why = runtime.available()
    assert not ok and why.startswith(f"cannot reach {runtime.name}: ") and "refused" in why
    with pytest.raises(TargetUnavailable, match=r"Connection refused"):
        runtime.run(str(models["int8"]), np.zeros((1, N_FEATURES), np.int8))


@pytest.mark.parametrize(
    "spec, parsed",
    [
        ("pi@raspberrypi.local", ("pi", "raspberrypi.local", 22)),
        ("root@192.0.2.7:2222", ("root", "192.0.2.7", 2222)),
        ("me@[::1]:22", ("me", "::1", 22)),
    ],
)
def test_parse_spec(spec, parsed):
    assert parse_spec(spec) == parsed


@pytest.mark.parametrize(
    "spec",
    [
        "raspberrypi",
        "pi@",
        "@host",
        "pi@host:0",
        "pi@host:70000",
        "pi@host:ssh",
        "-oProxyCommand=x@h",
        "pi@-oProxyCommand=x",
        "pi@host name",
        "",
    ],
)
def test_bad_spec_names_the_value_and_the_form(spec):
    with pytest.raises(BnpipeError) as err:
        SshRuntime(spec)
    expected = f"bad ssh target {spec!r}: expected USER@HOST or USER@HOST:PORT"
    assert str(err.value).startswith(expected)
