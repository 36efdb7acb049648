"""bench: one row per model × threads × batch plus the Keras baseline rows, ratios to float32
measured in the same run, plots written; bad options are exit 2. Tiny settings: this checks the
bookkeeping, not the speed."""

import json
import shutil
import struct

import pytest
from click.testing import CliRunner

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
from pipeline.cli import cli
from pipeline.core.config import EXPORT_MODES, BenchConfig
from pipeline.stages.bench import BASELINE, run_bench
from pipeline.store.files import tflite_name

TINY_BENCH = BenchConfig(
    runs=10, rounds=2, warmup=2, batch_sizes=(1, 8), threads=(1,), keras_runs=2
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def benched(exported, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "art"
    shutil.copytree(exported, out)
    return out, run_bench(out, config=TINY_BENCH)


def test_a_row_per_model_thread_and_batch_plus_keras(benched):
    out, _result = benched
    record = json.loads((out / "bench.json").read_text())
    assert record["schema_version"] == 1 and record["stage"] == "bench"
    tflite_rows = [
        (r["model"], r["threads"], r["batch"])
        for r in record["rows"]
        if r["model"] != "model.keras"
    ]
    assert sorted(tflite_rows) == sorted(
        (tflite_name(m), 1, b) for m in EXPORT_MODES for b in (1, 8)
    )
    keras_rows = [(r["runtime"], r["batch"]) for r in record["rows"] if r["model"] == "model.keras"]
    assert sorted(keras_rows) == [
        ("keras model(x)", 1),
        ("keras model(x)", 8),
        ("keras predict", 1),
    ]
    per_round = TINY_BENCH.runs // TINY_BENCH.rounds
    for r in record["rows"]:
        lat = r["latency_us"]
        expected_n = (
            TINY_BENCH.rounds * per_round
            if r["model"] != "model.keras"
            else TINY_BENCH.rounds * (TINY_BENCH.keras_runs // TINY_BENCH.rounds)
        )
        assert lat["n"] == expected_n, r
        assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"]
        assert r["throughput_per_s"] > 0
    assert record["threads_used"] == [1]
    assert record["sample"] == "360 test samples of digits"
    assert set(record["inputs"]) == {tflite_name(m) for m in EXPORT_MODES}


def test_ratios_to_float32_in_the_same_run(benched):
    out, _ = benched
    record = json.loads((out / "bench.json").read_text())
    for r in record["rows"]:
        assert "latency_ratio" in r and "throughput_ratio" in r, r
        if r["model"] == BASELINE:
            assert r["latency_ratio"] == 1.0 and r["throughput_ratio"] == 1.0
        else:
            base = next(
                b for b in record["rows"] if b["model"] == BASELINE and b["batch"] == r["batch"]
            )
            assert r["latency_ratio"] == r["latency_us"]["median"] / base["latency_us"]["median"]
    models = record["models"]
    assert models[BASELINE]["size_ratio"] == 1.0
    for m in EXPORT_MODES:
        info = models[tflite_name(m)]
        assert info["bytes"] == (out / tflite_name(m)).stat().st_size
        assert info["size_ratio"] == info["bytes"] / models[BASELINE]["bytes"]
        assert info["init_ms"] > 0 and info["first_invoke_us"] > 0


def test_tflm_arena_or_its_reason_per_model(benched):
    out, _ = benched
    models = json.loads((out / "bench.json").read_text())["models"]
    for m in ("int8", "float32", "ptq-int8", "ptq-int16x8"):
        arena = models[tflite_name(m)]["tflm_arena"]
        assert 0 < arena["arena_bytes_used"] <= arena["arena_bytes_given"], (m, arena)
    for m in ("ptq-dynamic", "ptq-float16"):  # kernels TFLM does not have
        assert models[tflite_name(m)]["tflm_arena"]["error"].startswith("tflm: "), m


def test_macs_and_the_mcu_view_of_every_integer_model(benched):
    """MACs per model are macs.count_macs of the file (TINY's MLP: 64·16 + 16·16 + 16·10, every
    mode alike); the MCU view lists the integer models only, with their bytes and TFLM arena."""
    out, _ = benched
    models = json.loads((out / "bench.json").read_text())["models"]
    integer = {tflite_name(m) for m in ("int8", "ptq-int8", "ptq-int16x8")}
    for m in EXPORT_MODES:
        info = models[tflite_name(m)]
        assert info["macs"] == 64 * 16 + 16 * 16 + 16 * 10, m
        assert info["integer"] is (tflite_name(m) in integer), m
    md = (out / "bench.md").read_text()
    view = md.split("## MCU view\n", 1)[1].strip().split("\n\n")[0]
    rows = [line.split(" | ") for line in view.splitlines()[2:]]
    assert sorted(r[0].strip("| `") for r in rows) == sorted(integer)
    for r in rows:
        info = models[r[0].strip("| `")]
        assert r[1] == f"{info['bytes']:,} B"
        assert r[2] == f"{info['tflm_arena']['arena_bytes_used']:,} B"
        assert r[3].strip(" |") == f"{info['macs']:,}"


def test_report_and_plots(benched):
    out, result = benched
    assert result.plots == [out / "bench_latency.png", out / "bench_throughput.png"]
    for p in result.plots:
        data = p.read_bytes()
        assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
        width, height = struct.unpack(">II", data[16:24])
        assert width > 100 and height > 100
    md = (out / "bench.md").read_text()
    assert md.startswith("# bnpipe bench\n")
    assert "## Every configuration" in md and "![bench_latency](bench_latency.png)" in md


def test_a_time_budget_cuts_a_large_configuration_short(exported, tmp_path):
    """max_seconds bounds each configuration's timed invokes (all rounds together, after one
    per round at least): at 1 ms nearly every configuration stops far below its 100,000 runs,
    and the report says how many were timed."""
    out = tmp_path / "art"
    shutil.copytree(exported, out)
    config = BenchConfig(
        runs=100_000,
        rounds=2,
        warmup=2,
        batch_sizes=(1024,),
        threads=(1,),
        keras_runs=4,
        max_seconds=0.001,
    )
    tflite = [out / tflite_name("int8"), out / tflite_name("float32")]
    record = run_bench(out, config=config, tflite=tflite).record
    for r in record["rows"]:
        if r["model"] != "model.keras":
            assert config.rounds <= r["latency_us"]["n"] < 1_000, r
    keras_1024 = next(r for r in record["rows"] if r["runtime"] == "keras model(x)")
    assert keras_1024["latency_us"]["n"] == config.rounds  # a Keras call takes > 0.5 ms
    md = (out / "bench.md").read_text()
    assert "timed invokes" in md


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-sizes", "a"], "Error: --batch-sizes takes comma-separated integers; got 'a'"),
        (["--threads", "1,x"], "Error: --threads takes comma-separated integers; got '1,x'"),
        (
            ["--batch-sizes", "0"],
            "Error: --batch-sizes must be integers from 1 to 65,536, got (0,)",
        ),
        (
            ["--max-seconds", "0"],
            "Error: --max-seconds must be a number of seconds above 0 and at most a day, got 0.0",
        ),
    ],
)
def test_bad_options_exit_2(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["bench", "-q", "--artifacts", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert result.stderr == message + "\n"
    assert not (tmp_path / "bench.json").exists()
