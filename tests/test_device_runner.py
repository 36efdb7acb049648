"""The standalone device runner, in-process and through its command line, on tiny real models."""
import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)

import ast
import json
import subprocess
import sys

import numpy as np
import pytest

from pipeline.runtimes import device_runner as dr

N_FEATURES, N_CLASSES = 16, 4
SEED = 0
INT8_LSB_TOLERANCE = 1  # XNNPACK and the reference kernels may round a requantization differently


def build_tiny_models(directory):
    """A 16→12→4 Dense model (fixed seed) saved as float32 and as full-int8 .tflite files.

    Returns {"float32": path, "int8": path}. The int8 model has int8 input and output tensors,
    calibrated on uniform [0, 1) inputs like bnpipe's scaled pixels.
    """
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(SEED)
    model = keras.Sequential([
        keras.layers.Input((N_FEATURES,)),
        keras.layers.Dense(12, activation="relu"),
        keras.layers.Dense(N_CLASSES),
    ])
    calibration = np.random.default_rng(SEED).random((200, N_FEATURES), dtype=np.float32)
    paths = {}
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    paths["float32"] = directory / "tiny_float32.tflite"
    paths["float32"].write_bytes(converter.convert())

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([row[None]] for row in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    paths["int8"] = directory / "tiny_int8.tflite"
    paths["int8"].write_bytes(converter.convert())
    return paths


def quantized_inputs(model_path, n, seed=1):
    """n rows of uniform [0, 1) features in the model's input dtype, quantized as bnpipe does."""
    x = np.random.default_rng(seed).random((n, N_FEATURES), dtype=np.float32)
    detail = dr.load_interpreter(model_path).get_input_details()[0]
    if detail["dtype"] == np.float32:
        return x
    scale, zero_point = detail["quantization"]
    return np.clip(np.round(x / scale) + zero_point, -128, 127).astype(detail["dtype"])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("models"))


def per_sample(model_path, x, reference):
    """The independent check: one invoke per row on a batch-1 interpreter."""
    interp = dr.load_interpreter(model_path, reference=reference)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], [1, N_FEATURES])
    interp.allocate_tensors()
    rows = []
    for row in x:
        interp.set_tensor(inp["index"], row[None])
        interp.invoke()
        rows.append(interp.get_tensor(out["index"])[0])
    return np.stack(rows)


@pytest.mark.parametrize("mode", ["int8", "float32"])
@pytest.mark.parametrize("reference", [False, True])
def test_run_batched_equals_per_sample_invoke(models, mode, reference):
    x = quantized_inputs(models[mode], 100)
    # batch 32 → chunks of 32, 32, 32, 4: exercises the re-allocation for the short last chunk
    outputs, seconds = dr.run_batched(dr.load_interpreter(models[mode], reference=reference), x,
                                      batch=32)
    expected = per_sample(models[mode], x, reference)
    assert outputs.dtype == expected.dtype == (np.int8 if mode == "int8" else np.float32)
    assert outputs.shape == (100, N_CLASSES)
    np.testing.assert_array_equal(outputs, expected)
    assert seconds > 0


def test_batch_size_does_not_change_outputs(models):
    x = quantized_inputs(models["int8"], 300)
    interp = dr.load_interpreter(models["int8"])
    whole, _ = dr.run_batched(interp, x, batch=1024)
    chunked, _ = dr.run_batched(interp, x, batch=7)  # same interpreter, resized again
    np.testing.assert_array_equal(whole, chunked)


def test_reference_and_default_kernels_agree_within_one_lsb_on_int8(models):
    x = quantized_inputs(models["int8"], 2000)
    default, _ = dr.run_batched(dr.load_interpreter(models["int8"]), x)
    reference, _ = dr.run_batched(dr.load_interpreter(models["int8"], reference=True), x)
    diff = np.abs(default.astype(np.int16) - reference.astype(np.int16))
    assert diff.max() <= INT8_LSB_TOLERANCE, f"{(diff > 1).sum()} outputs differ by more than 1 LSB"


def test_wrong_dtype_names_both_dtypes(models):
    x = quantized_inputs(models["int8"], 4).astype(np.float32)
    with pytest.raises(ValueError, match=r"inputs have dtype float32 but .* is int8"):
        dr.run_batched(dr.load_interpreter(models["int8"]), x)


def test_wrong_feature_shape_names_both_shapes(models):
    x = np.zeros((4, N_FEATURES + 1), dtype=np.int8)
    with pytest.raises(ValueError, match=r"inputs have shape \(4, 17\) but .* wants \(N, 16\)"):
        dr.run_batched(dr.load_interpreter(models["int8"]), x)


def test_empty_inputs_give_empty_outputs(models):
    outputs, seconds = dr.run_batched(dr.load_interpreter(models["int8"]),
                                      np.zeros((0, N_FEATURES), dtype=np.int8))
    assert outputs.shape == (0, N_CLASSES) and outputs.dtype == np.int8 and seconds == 0.0


def test_load_interpreter_rejects_missing_and_invalid_files(tmp_path):
    with pytest.raises(ValueError, match="model file not found"):
        dr.load_interpreter(tmp_path / "nope.tflite")
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer")
    with pytest.raises(ValueError, match="cannot load .* as a TFLite model"):
        dr.load_interpreter(junk)


def test_bench_reports_every_pair_and_is_json_serialisable(models):
    sample = quantized_inputs(models["int8"], 10)
    report = dr.bench(models["int8"], sample, batch_sizes=(1, 32), threads=(1, None), warmup=2,
                      runs=5)
    json.dumps(report)  # must not raise
    assert [(r["threads"], r["batch"]) for r in report["results"]] == [
        (1, 1), (1, 32), (None, 1), (None, 32)]
    for r in report["results"]:
        lat = r["latency_us"]
        assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"]
        assert r["init_seconds"] > 0 and r["first_invoke_seconds"] > 0
        assert r["throughput_per_s"] == pytest.approx(r["batch"] * 5 / (lat["mean"] * 5e-6))
    assert report["peak_rss_kb_after"] >= report["peak_rss_kb_before"] > 0
    assert report["runs"] == 5 and report["warmup"] == 2 and report["reference"] is False


def run_cli(*args):
    return subprocess.run([sys.executable, str(dr.__file__), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_run_round_trips(models, tmp_path):
    x = quantized_inputs(models["int8"], 500)
    np.save(tmp_path / "x.npy", x)
    proc = run_cli("run", "--model", models["int8"], "--inputs", tmp_path / "x.npy",
                   "--outputs", tmp_path / "y.npy", "--reference", "--batch", "128")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    info = json.loads(lines[0])
    assert info["n"] == 500 and info["invoke_seconds"] > 0 and info["reference"] is True
    assert info["litert_version"].startswith("ai-edge-litert ")
    assert {"machine", "python", "numpy_version"} <= info.keys()
    expected, _ = dr.run_batched(dr.load_interpreter(models["int8"], reference=True), x)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy", allow_pickle=False), expected)


def test_cli_bench_prints_one_json_line(models, tmp_path):
    np.save(tmp_path / "x.npy", quantized_inputs(models["int8"], 3))
    proc = run_cli("bench", "--model", models["int8"], "--inputs", tmp_path / "x.npy",
                   "--batch-sizes", "1,4", "--threads", "1", "--warmup", "1", "--runs", "3")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [(r["threads"], r["batch"]) for r in report["results"]] == [(1, 1), (1, 4)]


@pytest.mark.parametrize("case, message", [
    ("missing model", "error: model file not found"),
    ("missing inputs", "error: inputs file not found"),
    ("pickled inputs", "error: cannot read inputs"),
    ("float inputs", "error: inputs have dtype float64 but"),
])
def test_cli_errors_exit_2_with_one_line(models, tmp_path, case, message):
    model, inputs = models["int8"], tmp_path / "x.npy"
    if case == "missing model":
        model = tmp_path / "nope.tflite"
        np.save(inputs, np.zeros((1, N_FEATURES), np.int8))
    elif case == "pickled inputs":
        np.save(inputs, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif case == "float inputs":
        np.save(inputs, np.zeros((1, N_FEATURES)))
    proc = run_cli("run", "--model", model, "--inputs", inputs, "--outputs", tmp_path / "y.npy")
    assert proc.returncode == dr.EXIT_BAD_INPUT
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr
    assert proc.stdout == ""


def test_runner_imports_only_stdlib_numpy_and_litert():
    # It is copied alone onto boards: no `pipeline`, and syntax that old board Pythons parse.
    tree = ast.parse(open(dr.__file__).read(), feature_version=(3, 7))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    third_party = roots - set(sys.stdlib_module_names)
    assert third_party == {"numpy", "ai_edge_litert", "tflite_runtime"}
