"""`bnpipe inspect`: every exported file described in text and JSON; malformed files refused
with exit 2 and one line, never a crash (the file is parsed in Python, no interpreter loads it)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error

from pipeline.cli import cli
from pipeline.core.config import EXPORT_MODES
from pipeline.store.files import tflite_name


@pytest.fixture(scope="module")
def record(exported):
    return json.loads((exported / "export.json").read_text())


@pytest.mark.parametrize("mode", EXPORT_MODES)
def test_inspect_text(exported, record, mode):
    path = exported / tflite_name(mode)
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    ops = record["modes"][mode]["operators"]
    n_ops = sum(ops.values())
    assert lines[0].startswith(
        f"{path}: {path.stat().st_size} bytes, schema v3, {n_ops} operators, "
    )
    assert lines[1] == f"bnpipe metadata: mode {mode}, inputs divided by 16.0, 10 classes"
    listed = lines[2].removeprefix("operators: ").split(", ")
    assert sorted(op.split(":", 1)[1] for op in listed) == sorted(
        k for k, v in ops.items() for _ in range(v)
    )
    assert sum(" (input)" in line for line in lines) == 1
    assert sum(" (output)" in line for line in lines) == 1
    in_dtype = record["modes"][mode]["input"]["dtype"]
    assert in_dtype in next(line for line in lines if " (input)" in line)


@pytest.mark.parametrize("mode", EXPORT_MODES)
def test_inspect_json(exported, record, mode):
    path = exported / tflite_name(mode)
    result = CliRunner().invoke(cli, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    expected = record["modes"][mode]
    assert info["size_bytes"] == path.stat().st_size == expected["size_bytes"]
    assert info["op_counts"] == expected["operators"]
    assert info["metadata"]["mode"] == mode
    assert info["metadata"]["input"] == expected["input"]
    inp = info["tensors"][info["inputs"][0]]
    assert inp["dtype"] == expected["input"]["dtype"] and inp["shape"] == [-1, 64]


def _bad_files(tmp_path, exported):
    rng = np.random.default_rng(0)
    good = (exported / tflite_name("int8")).read_bytes()
    files = {
        "random.tflite": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "truncated.tflite": good[: len(good) // 2],
        "header-only.tflite": good[:8] + rng.integers(0, 256, 64, dtype=np.uint8).tobytes(),
        "empty.tflite": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return files


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_inspect_refuses_malformed_files_in_one_line(tmp_path, exported, as_json):
    for name in _bad_files(tmp_path, exported):
        path = tmp_path / name
        result = CliRunner().invoke(cli, ["inspect", str(path)] + (["--json"] if as_json else []))
        assert result.stdout == ""
        assert assert_one_line_error(result).startswith(f"Error: {path} "), (name, result.stderr)


def test_inspect_missing_file(tmp_path):
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "none.tflite")])
    assert result.exit_code == 2
    assert result.stderr == f"Error: model file {tmp_path / 'none.tflite'} does not exist\n"
