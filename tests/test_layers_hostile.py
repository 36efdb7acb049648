"""`bnpipe layers` under the rules of every other command: a damaged file is exit 2 with one line
before anything is recomputed from it (analysis/consistency.py), never exit 70 or a signal; and
it takes the artifacts dir's writer lock, waiting for it with --wait.

The twins are a tiny CNN (a CONV_2D, so that a stride can be changed) with seeded weights,
converted by bnpipe's converter (post-training int8 and float32): no training.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import CliChild, assert_one_line_error, bnpipe_process, tree

from pipeline.cli import cli
from pipeline.store.lock import writer_lock

ROOT = Path(__file__).resolve().parent.parent
FUZZED = dict(seed=24, count=16)  # a seeded set: ≈ 1 minute on 2 shared cores
LAYERS = ["--data", "digits", "--max-samples", "60", "-q"]


@pytest.fixture(scope="module")
def twins(keras, tmp_path_factory):
    """An artifacts dir holding model_int8.tflite and model_float32.tflite of one CNN."""
    from pipeline.core.config import ExportConfig
    from pipeline.data.dataset import load_dataset
    from pipeline.tflite.convert import convert

    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(4, 3, padding="same", activation="relu"),
            L.GlobalAveragePooling2D(),  # any spatial size: a changed stride still runs
            L.Dense(10, activation="softmax"),
        ]
    )
    x = load_dataset("digits", seed=0).x_train.reshape(-1, 8, 8, 1)
    out = tmp_path_factory.mktemp("twins")
    config = ExportConfig(modes=("ptq-int8", "float32"))
    (out / "model_int8.tflite").write_bytes(convert(model, "ptq-int8", x, config))
    (out / "model_float32.tflite").write_bytes(convert(model, "float32", x, config))
    return out


def _with_stride(data: bytes, stride: int) -> bytes:
    """The file with its first CONV_2D's strides set to `stride` (everything else unchanged)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    conv = next(
        op
        for op in model.subgraphs[0].operators
        if codes[op.opcodeIndex] == fb.BuiltinOperator.CONV_2D
    )
    conv.builtinOptions.strideH = conv.builtinOptions.strideW = stride
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_a_changed_stride_is_one_line_before_anything_is_written(twins, tmp_path):
    out = shutil.copytree(twins, tmp_path / "a")
    before = tree(out)
    mutant = tmp_path / "stride3.tflite"
    mutant.write_bytes(_with_stride((out / "model_int8.tflite").read_bytes(), 3))
    args = ["layers", "--tflite", str(mutant), *LAYERS, "--artifacts", str(out)]
    result = CliRunner().invoke(cli, args, prog_name="bnpipe")
    assert_one_line_error(
        result, fragment="is declared (N, 8, 8, 4) but its operator computes (N, 3, 3, 4)"
    )
    assert tree(out) == before
    # The same file with its own stride back: the analysis runs (the check is not the refusal).
    mutant.write_bytes(_with_stride((out / "model_int8.tflite").read_bytes(), 1))
    assert CliRunner().invoke(cli, args).exit_code == 0


DRIVER = """
import json, sys, tempfile, traceback
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import fuzz_tflite
from click.testing import CliRunner
from pipeline.cli import cli
out, seed, count = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
seeds = fuzz_tflite.load_seeds([out / "model_int8.tflite"])
for i in range(count):
    m = fuzz_tflite.mutant(seeds, seed, i)
    path = Path(tempfile.mkdtemp()) / "mutant.tflite"
    path.write_bytes(m.data)
    r = CliRunner().invoke(cli, ["layers", "--tflite", str(path), *sys.argv[5:],
                                 "--artifacts", str(out)])
    tb = r.exception is not None and not isinstance(r.exception, SystemExit)
    print(json.dumps({"i": i, "code": r.exit_code, "traceback": tb,
                      "stderr": r.stderr[-300:]}), flush=True)
"""


@pytest.mark.slow
def test_fuzzed_files_through_layers_are_never_a_bug_or_a_signal(twins, tmp_path):
    """A seeded set of damaged copies of the integer file (scripts/fuzz_tflite.py's mutations),
    each through `bnpipe layers` in one child process: exit 0, 1 or 2 with one line; no exit 70,
    no traceback, and the child is never killed by a signal."""
    out = shutil.copytree(twins, tmp_path / "a")
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(ROOT / "scripts"), str(out),
         str(FUZZED["seed"]), str(FUZZED["count"]), *LAYERS],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, f"the child ended with {done.returncode}: {done.stderr[-2000:]}"
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(records) == FUZZED["count"]
    bad = [r for r in records if r["code"] not in (0, 1, 2) or r["traceback"]]
    bad += [r for r in records if r["code"] and r["stderr"].count("\n") != 1]
    assert not bad, bad
    assert {r["code"] for r in records} >= {2}  # the set holds files layers must refuse


def test_layers_takes_the_lock_and_waits_for_it_with_wait(twins, tmp_path):
    out = shutil.copytree(twins, tmp_path / "a")
    with writer_lock(out):  # another writer (this test's process) holds the dir
        refused = bnpipe_process("layers", *LAYERS, "--artifacts", out, timeout=120)
        assert refused.exit_code == 2, refused.stderr
        assert "is being written by another bnpipe" in refused.stderr
        assert not (out / "layers.json").exists()
        waiter = CliChild("layers", "--data", "digits", "--max-samples", "60", "--wait",
                          "--artifacts", out)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not waiter.said("waiting for another bnpipe") and time.monotonic() < deadline:
                assert waiter.proc.poll() is None, waiter.lines
                time.sleep(0.05)
            assert waiter.said("waiting for another bnpipe"), waiter.lines
        except BaseException:
            waiter.stop()
            raise
    assert waiter.wait(timeout=300) == 0, waiter.lines
    record = json.loads((out / "layers.json").read_text())
    assert record["n"] == 60 and np.isfinite(record["agreement"])
