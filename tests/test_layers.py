"""`bnpipe layers` in-process (CliRunner): the culprit of the outlier case, the files it writes,
`--json`, and one-line errors (a file that aborts LiteRT included) that write nothing."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error

from pipeline.cli import cli
from pipeline.store.artifacts import ARTIFACTS_ENV

ENTRY_KEYS = {"op_index", "op", "tensor", "sqnr_db", "error_steps_rms", "error_steps_max",
              "range_used", "range_used_worst_channel", "scale", "zero_point", "alone"}  # fmt: skip
OUTPUTS = ("layers.json", "layers.md", "layers.png")


@pytest.fixture
def art(outlier_case, tmp_path):
    """A writable copy of the outlier artifacts dir."""
    return shutil.copytree(outlier_case[1], tmp_path / "art")


def invoke(monkeypatch, *args):
    monkeypatch.delenv(ARTIFACTS_ENV, raising=False)
    return CliRunner().invoke(cli, ["layers", *map(str, args)], prog_name="bnpipe")


def test_layers_names_the_first_dense_of_the_outlier_case(art, monkeypatch):
    ptq = art / "model_ptq-int8.tflite"
    result = invoke(monkeypatch, "--artifacts", art, "--tflite", ptq, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)  # stdout holds the JSON only
    assert result.stdout == (art / "layers.json").read_text()
    assert result.stderr.startswith("… ")  # progress
    worst = record["worst"]
    assert (worst["op"], worst["op_index"], worst["alone"]["rank"]) == ("FULLY_CONNECTED", 0, 1)
    assert worst == record["layers"][0]
    assert [e["op"] for e in record["layers"]] == ["FULLY_CONNECTED"] * 3 + ["SOFTMAX"]
    assert all(set(e) >= ENTRY_KEYS for e in record["layers"])
    assert record["ranking"][0] == 0 and sorted(record["ranking"]) == [0, 1, 2, 3]
    assert record["model"] == str(ptq) and record["n"] == 360
    assert all((art / name).is_file() for name in OUTPUTS)


def test_the_report_leads_with_the_culprit(art, monkeypatch):
    result = invoke(monkeypatch, "--artifacts", art, "--tflite", art / "model_ptq-int8.tflite",
                    "--max-samples", 100, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "**Culprit: FULLY_CONNECTED #0 (`dense_1`).**" in result.stdout
    assert result.stdout.rstrip().endswith("layers.png (" + result.stdout.rsplit("(", 1)[1].strip())
    assert result.stderr == ""  # -q: no progress
    assert json.loads((art / "layers.json").read_text())["n"] == 100


def test_the_default_integer_file_must_exist(art, monkeypatch):
    result = invoke(monkeypatch, "--artifacts", art)
    assert_one_line_error(
        result,
        f"integer model {art / 'model_int8.tflite'} does not exist; run `bnpipe export` first or "
        "pass --tflite",
    )


def test_a_file_that_aborts_litert_is_exit_2_and_writes_nothing(art, monkeypatch):
    """The integer file's SOFTMAX has beta 0: LiteRT's reference kernels abort on it, in the
    child process; this one answers with one line."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = fb.ModelT.InitFromPackedBuf(bytearray((art / "model_ptq-int8.tflite").read_bytes()), 0)
    for op in model.subgraphs[0].operators:
        if isinstance(op.builtinOptions, fb.SoftmaxOptionsT):
            op.builtinOptions.beta = 0.0
    bad = art / "beta0.tflite"
    bad.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    result = invoke(monkeypatch, "--artifacts", art, "--tflite", bad, "-q")
    assert_one_line_error(result, fragment=f"Error: {bad} crashes LiteRT's kernels (signal ")
    assert not any((art / name).exists() for name in OUTPUTS)


def test_a_reference_that_is_not_the_twin_is_exit_2_before_the_data_loads(art, monkeypatch):
    ptq = art / "model_ptq-int8.tflite"
    result = invoke(monkeypatch, "--artifacts", art, "--tflite", ptq, "--reference", ptq)
    assert_one_line_error(result, fragment=f"the reference {ptq} takes int8 input")
    assert not any((art / name).exists() for name in OUTPUTS)


def test_a_convolutional_pair_gets_the_data_in_its_own_layout(keras, tmp_path, monkeypatch):
    """The data set is flat (digits: 64 values a sample); a CNN's files take (8, 8, 1). The
    report lays the samples out as the files take them, as every other stage does."""
    import numpy as np

    from pipeline.core.config import ExportConfig
    from pipeline.tflite.convert import convert

    L = keras.layers
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(4, 3, activation="relu"),
            L.GlobalAveragePooling2D(),
            L.Dense(10, activation="softmax"),
        ]
    )
    x = np.random.default_rng(6).random((64, 8, 8, 1), dtype=np.float32)
    config = ExportConfig(calibration_samples=64)
    for mode in ("ptq-int8", "float32"):
        (tmp_path / f"{mode}.tflite").write_bytes(convert(model, mode, x, config))
    files = ["--tflite", tmp_path / "ptq-int8.tflite", "--reference", tmp_path / "float32.tflite"]
    result = invoke(monkeypatch, "--artifacts", tmp_path / "art", "--data", "digits", *files,
                    "--max-samples", 60, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert [e["op"] for e in record["layers"]] == ["CONV_2D", "MEAN", "FULLY_CONNECTED", "SOFTMAX"]
    assert record["layers"][0]["shape"] == [-1, 6, 6, 4] and record["n"] == 60
