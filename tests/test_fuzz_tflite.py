"""scripts/fuzz_tflite.py: damaged .tflite files never take bnpipe's process down.

A seeded subset of the fuzzer runs here, through real `bnpipe verify` commands in child processes
(a segfault cannot be caught in-process: it would take pytest down), and the issue's original
reproducer is kept as a regression test: a 3-byte mutation of an exported int8 model that passes
the structural check and TFLM's arena probe, and killed bnpipe when TFLM ran it.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
from pipeline.runtimes.host import HostRuntime
from pipeline.tflite.file import buffer_spans, read_tflite

ROOT = Path(__file__).resolve().parent.parent
SUBSET = dict(seed=1, count=40)  # ≈ 1–2 minutes on 2 shared cores
# The first mutant the fuzzer found, with the `exported` fixture's model_int8.tflite as its only
# seed, that passed everything the code before this test checked and then killed verify.
REPRODUCER = dict(seed=0, index=1450)
# Where the first buffer after bnpipe's metadata began in that model_int8.tflite when both mutants
# were recorded. Positions are absolute bytes, and bnpipe's metadata (written before the weights)
# grows with export's fields ("task" made it 24 bytes longer), moving every byte after it: the
# recorded flips then land elsewhere (239 in a tensor's name, 1450 nowhere harmful) and the tests
# would pass or fail for nothing. _recorded_layout moves them back onto the bytes they hit.
RECORDED_AFTER_METADATA = 664


def _load_fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_tflite", ROOT / "scripts/fuzz_tflite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_tflite"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fuzz():
    return _load_fuzz()


@pytest.fixture(scope="module")
def seeds(fuzz, exported):
    return fuzz.load_seeds(fuzz.seed_files(exported))


def _recorded_layout(original: bytes, mutated: bytes) -> bytes:
    """`original` with `mutated`'s XORed bytes applied where they fell when the mutants were
    recorded: positions past bnpipe's metadata buffer move by its growth since then."""
    text = original.find(b'{"bnpipe_version"')
    spans = buffer_spans(original)
    (meta,) = [s for s, n in spans if s <= text < s + n]
    shift = min(s for s, _ in spans if s > meta) - RECORDED_AFTER_METADATA
    out = bytearray(original)
    for i, (a, b) in enumerate(zip(original, mutated, strict=True)):
        if a != b:
            out[i + shift if i >= meta else i] ^= a ^ b
    return bytes(out)


def _env():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("BNPIPE_ARTIFACTS", None)
    return env


def test_each_mutant_is_made_again_from_its_seed_and_index_alone(fuzz, seeds):
    forward = [fuzz.mutant(seeds, 7, i) for i in range(300)]
    backward = [fuzz.mutant(seeds, 7, i) for i in reversed(range(300))][::-1]
    assert forward == backward
    assert [m.data for m in forward] != [fuzz.mutant(seeds, 8, i).data for i in range(300)]
    originals = {name: data for name, data, _ in seeds}
    kinds = {"flip": 0, "truncate": 0}
    structure_hits = 0
    for m in forward:
        kinds[m.kind] += 1
        data = originals[m.seed_file]
        if m.kind == "truncate":
            assert m.data == data[: m.positions[0]] and len(m.data) < len(data)
            continue
        assert 1 <= len(m.positions) <= fuzz.MAX_FLIPS and len(m.data) == len(data)
        changed = {i for i in range(len(data)) if m.data[i] != data[i]}
        assert changed <= set(m.positions)  # the same byte flipped twice may come back
        weights = {i for s, n in buffer_spans(data) for i in range(s, s + n)}
        structure_hits += sum(p not in weights for p in m.positions)
    assert 0.7 < kinds["flip"] / len(forward) < 0.9  # FLIP_SHARE 0.8
    # half of the flips aim at the structure, the other half land there in proportion to its size
    flips = sum(len(m.positions) for m in forward if m.kind == "flip")
    assert structure_hits / flips > 0.5


@pytest.mark.parametrize(
    "code, stderr, uncaught, outcome",
    [
        (0, "", False, "exit 0"),
        (2, "… noise\nError: m.tflite is damaged\n", False, "exit 2"),
        (1, "Error: 1 gate(s) failed: …\n", False, "exit 1"),
        (1, "Traceback (most recent call last):\n  …\nValueError: x\n", False, "traceback"),
        (1, "Error: looks fine\n", True, "traceback"),
        (2, "Error: one\nError: two\n", False, "no error line"),
        (2, "Error: first\nthen more\n", False, "no error line"),
        (1, "", False, "no error line"),
        (-11, "", False, "signal"),
        (None, "", False, "timeout"),
        (3, "error: no LiteRT\n", False, "other"),
    ],
)
def test_classify(fuzz, code, stderr, uncaught, outcome):
    assert fuzz.classify(code, stderr, uncaught)[0] == outcome


@pytest.mark.slow
def test_a_seeded_subset_never_takes_bnpipe_down(exported, tmp_path):
    """SUBSET mutants of every exported model through `bnpipe verify --targets host,host-ref,tflm`
    in the fuzzer's worker processes: no signal, no timeout, no traceback, and every non-zero exit
    exactly one `Error: …` line. (On the code before runtimes ran in children, such a subset
    killed the worker with SIGSEGV.)"""
    report = tmp_path / "fuzz.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/fuzz_tflite.py"),
            "--artifacts",
            str(exported),
            "--seed",
            str(SUBSET["seed"]),
            "--count",
            str(SUBSET["count"]),
            "--jobs",
            "2",
            "--max-samples",
            "50",
            "--timeout",
            "900",
            "--json",
            str(report),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    result = json.loads(report.read_text())
    assert sum(result["counts"].values()) == SUBSET["count"]
    assert set(result["counts"]) <= {"exit 0", "exit 1", "exit 2"}, result["counts"]
    assert result["counts"].get("exit 2", 0) > 0  # the subset does reach the refusals
    for m in result["mutants"]:
        assert m["outcome"] == "exit 0" or m["line"].startswith("Error: "), m


def test_a_shape_that_does_not_fit_its_signature_is_exit_2_not_a_traceback(
    seeds, fuzz, exported, tmp_path
):
    """Mutant 239 of seed 1 (one byte of model_int8.tflite: the output's shape 10 → 27, its
    signature still 10) made TFLM's outputs 27 wide where host-ref's are 10, and verify's LSB
    distance raised a NumPy broadcast error: a traceback, exit 1. Now the structural check refuses
    the file: exit 2, one line."""
    from click.testing import CliRunner

    from pipeline.cli import cli

    m = fuzz.mutant(seeds, 1, 239)
    assert (m.seed_file, m.kind, m.positions) == ("model_int8.tflite", "flip", [3048])
    out = shutil.copytree(exported, tmp_path / "artifacts")
    path = tmp_path / "mutant239.tflite"
    path.write_bytes(_recorded_layout((exported / m.seed_file).read_bytes(), m.data))
    result = CliRunner().invoke(
        cli, ["verify", "--tflite", str(path), "--targets", "host,host-ref,tflm", "-q",
              "--artifacts", str(out)],
    )  # fmt: skip
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert result.stderr == (
        f"Error: {path} is damaged: tensor 10 has shape [1, 27] but shape signature [-1, 10]\n"
    )


def test_the_original_reproducer_is_exit_2_not_a_segfault(fuzz, exported, tmp_path):
    """The issue's file: three bytes of model_int8.tflite changed (REPRODUCER), one of them in a
    tensor's shape. It passes the structural check and TFLM builds it in a child (the checks that
    ran before TFLM ran it in bnpipe's own process), and LiteRT refuses it cleanly (a ValueError,
    which the probe left to the real run); then TFLM, trusting the shape, segfaulted:
    `bnpipe verify --targets tflm` died with SIGSEGV (exit 139, no output). Now: exit 2, one line
    naming the file."""
    from pipeline.core.errors import ModelCrashed, ModelError
    from pipeline.runtimes.tflm import try_arena

    original = (exported / "model_int8.tflite").read_bytes()
    m = fuzz.mutant(fuzz.load_seeds([exported / "model_int8.tflite"]), **REPRODUCER)
    assert m.kind == "flip" and sum(a != b for a, b in zip(m.data, original, strict=True)) == 3
    path = tmp_path / "reproducer.tflite"
    path.write_bytes(_recorded_layout(original, m.data))
    read_tflite(path)  # the structural check passes
    assert try_arena(path, 16 * 1024) == (True, "")  # TFLM builds it (in a child)
    for reference in (False, True):
        with HostRuntime(reference=reference) as runtime, pytest.raises(ModelError) as info:
            runtime.run(path, np.zeros((1, 64), np.int8))
        assert not isinstance(info.value, ModelCrashed)
        assert "number of elements overflowed" in str(info.value)

    out = tmp_path / "artifacts"
    shutil.copytree(exported, out)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "verify", "--tflite", str(path),
         "--targets", "tflm", "-q", "--artifacts", str(out)],
        capture_output=True, text=True, env=_env(), timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-1000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1] == (
        f"Error: tflm: the TFLM runner crashed on {path} (signal 11 (SIGSEGV): no message on "
        "stderr); the file is malformed or uses an operator in a way the kernels do not accept"
    ), proc.stderr[-1000:]
    assert sum(line.startswith("Error: ") for line in lines) == 1
    assert "Traceback" not in proc.stderr
    assert not (out / "verify.json").exists()
