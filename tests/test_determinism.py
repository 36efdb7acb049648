"""Determinism end to end through the CLI: the same seed and data give the same weights, the same
model.keras and folded.keras bytes and the same .tflite bytes, whether the second run is in the
same process or in another one; another seed gives other weights and other files. The records
say what a rerun needs to match: the seed, the tool versions and the CPU.

Run `b` is a separate process with its own PYTHONHASHSEED, so nothing that hangs on Python's
per-process hashing (set or dict-of-str order) or on state left in one process (Keras's layer-name
counters, TensorFlow's graph caches) can hide behind a shared interpreter.
"""

import json
import os
import platform
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import keras_weights

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
from pipeline.cli import cli

pytestmark = pytest.mark.slow

# The tests/conftest.py TINY recipe (≈ 0.94 test accuracy on digits): 2 epochs of ≈ 80 steps, so
# an order-dependent reduction would have many chances to round differently.
TRAIN = [
    "--hidden",
    "16,16",
    "--epochs",
    "2",
    "--batch-size",
    "16",
    "--learning-rate",
    "0.01",
    "-q",
]
MODES = ("int8", "float32", "ptq-int8")  # QAT; plain conversion; calibration on sampled data
EXPORT = ["--qat-epochs", "1", "-q", *[arg for m in MODES for arg in ("--mode", m)]]
KERAS_FILES = ("model.keras", "folded.keras")
TFLITE_FILES = tuple(f"model_{m}.tflite" for m in MODES)
VERSIONED = (
    "python",
    "tensorflow",
    "tf-keras",
    "tensorflow-model-optimization",
    "ai-edge-litert",
    "numpy",
)


def _commands(seed: int):
    return [
        ["train", *TRAIN, "--seed", str(seed)],
        ["fold"],
        ["export", *EXPORT, "--seed", str(seed)],
    ]


def _in_process(out: Path, seed: int) -> None:
    for args in _commands(seed):
        result = CliRunner().invoke(cli, [*args, "--artifacts", str(out)], prog_name="bnpipe")
        assert result.exit_code == 0, (args, result.output)


# The same three commands in one fresh interpreter (one TensorFlow import instead of three).
_CHILD = """
import json, sys
from click.testing import CliRunner
from pipeline.cli import cli
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(cli, args, prog_name="bnpipe")
    if result.exit_code:
        sys.exit(f"{args[0]}: exit {result.exit_code}: {result.output}")
"""


def _in_subprocess(out: Path, seed: int) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BNPIPE_ARTIFACTS"}
    env["PYTHONHASHSEED"] = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    commands = [[*args, "--artifacts", str(out)] for args in _commands(seed)]
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(commands)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: artifacts dir}: a and b with seed 0 (b in another process), c with seed 1."""
    base = tmp_path_factory.mktemp("determinism")
    dirs = {name: base / name for name in "abc"}
    _in_process(dirs["a"], 0)
    _in_subprocess(dirs["b"], 0)
    _in_process(dirs["c"], 1)
    return dirs


@pytest.mark.parametrize("name", KERAS_FILES)
def test_same_seed_gives_identicalkeras_weights(runs, name):
    a, b = keras_weights(runs["a"] / name), keras_weights(runs["b"] / name)
    assert [n for n, _ in a] == [n for n, _ in b] and len(a) >= 6
    for (n, wa), (_, wb) in zip(a, b, strict=True):
        assert wa.dtype == wb.dtype and wa.shape == wb.shape, n
        assert np.array_equal(wa, wb), (
            f"{name}: {n} differs in {np.sum(wa != wb)} of {wa.size} values"
        )


@pytest.mark.parametrize("name", KERAS_FILES + TFLITE_FILES)
def test_same_seed_gives_identical_bytes(runs, name):
    a, b = (runs["a"] / name).read_bytes(), (runs["b"] / name).read_bytes()
    assert len(a) == len(b), f"{name}: {len(a)} vs {len(b)} bytes"
    assert a == b, f"{name}: {sum(x != y for x, y in zip(a, b, strict=True))} bytes differ"


@pytest.mark.parametrize("name", KERAS_FILES)
def test_keras_archives_hold_no_time_of_saving(runs, name):
    """What made two saves of one model differ (tf_keras stamps them): now absent."""
    with zipfile.ZipFile(runs["a"] / name) as zf:
        assert [i.filename for i in zf.infolist()] == [
            "metadata.json",
            "config.json",
            "model.weights.h5",
        ]
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert set(json.loads(zf.read("metadata.json"))) == {"keras_version"}


def test_other_seed_gives_other_weights_and_files(runs):
    a, c = (
        dict(keras_weights(runs["a"] / "model.keras")),
        dict(keras_weights(runs["c"] / "model.keras")),
    )
    kernels = [n for n in a if "kernel" in n]
    assert len(kernels) == 3
    for n in kernels:  # every layer starts from another draw
        assert not np.array_equal(a[n], c[n]), n
    for name in KERAS_FILES + TFLITE_FILES:
        assert (runs["a"] / name).read_bytes() != (runs["c"] / name).read_bytes(), name


def _cpu_model() -> str:
    """The CPU's model name as the kernel reports it, read independently of bnpipe."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _check_versions_and_machine(where: str, record: dict) -> None:
    for package in VERSIONED:
        expected = platform.python_version() if package == "python" else metadata.version(package)
        assert record["versions"][package] == expected, (where, package)
    assert record["machine"]["cpu"] == _cpu_model(), where
    assert record["machine"]["cores"] == os.cpu_count(), where


@pytest.mark.parametrize("run, seed", [("a", 0), ("b", 0), ("c", 1)])
def test_records_and_manifest_hold_seed_versions_and_cpu(runs, run, seed):
    out = runs[run]
    train = json.loads((out / "train.json").read_text())
    export = json.loads((out / "export.json").read_text())
    assert train["config"]["seed"] == seed and export["config"]["seed"] == seed
    _check_versions_and_machine(f"{run}/train.json", train)
    _check_versions_and_machine(f"{run}/export.json", export)
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert list(stages) == ["train", "fold", "export"]
    assert stages["train"]["params"]["seed"] == seed and stages["export"]["params"]["seed"] == seed
    for name, entry in stages.items():
        _check_versions_and_machine(f"{run}/manifest.json {name}", entry)


def test_same_seed_records_the_same_hashes(runs):
    """Identical bytes show in the lineage too: both runs' records name the same sha256."""
    for record, key in [("train.json", "outputs"), ("export.json", "outputs")]:
        a = json.loads((runs["a"] / record).read_text())[key]
        b = json.loads((runs["b"] / record).read_text())[key]
        assert a == b and a, record
    man_a = json.loads((runs["a"] / "manifest.json").read_text())["stages"]
    man_b = json.loads((runs["b"] / "manifest.json").read_text())["stages"]
    for stage in man_a:
        outputs_a = {f: s for f, s in man_a[stage]["outputs"].items() if not f.endswith(".json")}
        outputs_b = {f: s for f, s in man_b[stage]["outputs"].items() if not f.endswith(".json")}
        assert outputs_a == outputs_b and outputs_a, stage
