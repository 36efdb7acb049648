"""The standalone device runner, in-process and through its command line, on tiny real models."""

import ast
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
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
    model = keras.Sequential(
        [
            keras.layers.Input((N_FEATURES,)),
            keras.layers.Dense(12, activation="relu"),
            keras.layers.Dense(N_CLASSES),
        ]
    )
    calibration = np.random.default_rng(SEED).random((200, N_FEATURES), dtype=np.float32)
    paths = {}
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    paths["float32"] = directory / "tiny_float32.tflite"
    paths["float32"].write_bytes(converter.convert())

    paths["int8"] = directory / "tiny_int8.tflite"
    paths["int8"].write_bytes(full_int8(model, calibration))
    return paths


def full_int8(model, calibration) -> bytes:
    """`model` converted to .tflite with int8 weights, activations, input and output."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([row[None]] for row in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def build_crashing_model(directory):
    """An int8 16→4 Dense + SOFTMAX model whose softmax has beta 0: a well-formed file that LiteRT's
    reference SOFTMAX kernel aborts the process on (XNNPACK's accepts it). Returns its path."""
    import tf_keras as keras
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [keras.layers.Input((N_FEATURES,)), keras.layers.Dense(N_CLASSES, activation="softmax")]
    )
    calibration = np.random.default_rng(SEED).random((50, N_FEATURES), dtype=np.float32)
    flat = fb.ModelT.InitFromPackedBuf(bytearray(full_int8(model, calibration)), 0)
    softmaxes = [
        op
        for op in flat.subgraphs[0].operators
        if isinstance(op.builtinOptions, fb.SoftmaxOptionsT)
    ]
    assert len(softmaxes) == 1
    softmaxes[0].builtinOptions.beta = 0.0
    path = directory / "beta0_softmax.tflite"
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(flat)))
    return path


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
    outputs, seconds = dr.run_batched(
        dr.load_interpreter(models[mode], reference=reference), x, batch=32
    )
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
    outputs, seconds = dr.run_batched(
        dr.load_interpreter(models["int8"]), np.zeros((0, N_FEATURES), dtype=np.int8)
    )
    assert outputs.shape == (0, N_CLASSES) and outputs.dtype == np.int8 and seconds == 0.0


def test_load_interpreter_rejects_missing_and_invalid_files(tmp_path):
    with pytest.raises(ValueError, match="model file not found"):
        dr.load_interpreter(tmp_path / "nope.tflite")
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer")
    with pytest.raises(ValueError, match=r"cannot load .* as a TFLite model"):
        dr.load_interpreter(junk)


def test_bench_reports_every_pair_and_is_json_serialisable(models):
    sample = quantized_inputs(models["int8"], 10)
    report = dr.bench(
        models["int8"], sample, batch_sizes=(1, 32), threads=(1, None), warmup=2, runs=5
    )
    json.dumps(report)  # must not raise
    assert [(r["threads"], r["batch"]) for r in report["results"]] == [
        (1, 1),
        (1, 32),
        (None, 1),
        (None, 32),
    ]
    for r in report["results"]:
        lat = r["latency_us"]
        assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"]
        assert r["init_seconds"] > 0 and r["first_invoke_seconds"] > 0
        assert r["throughput_per_s"] == pytest.approx(r["batch"] * 5 / (lat["mean"] * 5e-6))
    assert report["peak_rss_kb_after"] >= report["peak_rss_kb_before"] > 0
    assert report["runs"] == 5 and report["warmup"] == 2 and report["reference"] is False


def test_fill_repeats_the_rows_in_order():
    sample = np.arange(6, dtype=np.int8).reshape(3, 2)
    filled = dr.fill(sample, 7)
    assert filled.flags.c_contiguous and filled.dtype == np.int8
    np.testing.assert_array_equal(filled, sample[[0, 1, 2, 0, 1, 2, 0]])
    np.testing.assert_array_equal(dr.fill(sample, 2), sample[:2])


def counting_invokes(interp, log, name):
    """interp with its invoke() wrapped to append `name` to `log` (LiteRT's Interpreter is a Python
    class, so one instance's method can be replaced)."""
    real = interp.invoke
    interp.invoke = lambda: (log.append(name), real())[1]
    return interp


def test_rounds_time_every_configuration_in_turn(models, monkeypatch):
    """Set-up: a first invoke and `warmup` more per configuration, in order; run(): `runs` timed
    invokes of each, taking turns from configuration `first`, after `warmup` untimed ones."""
    sample, other = quantized_inputs(models["int8"], 3), quantized_inputs(models["float32"], 2)
    log, built = [], []
    real = dr.load_interpreter

    def logging_load(*args, **kwargs):
        built.append(len(built))
        return counting_invokes(real(*args, **kwargs), log, f"c{built[-1]}")

    monkeypatch.setattr(dr, "load_interpreter", logging_load)
    rounds = dr.Rounds([(models["int8"], sample, 1, 4), (models["float32"], other, 1, 2)], warmup=2)
    assert log == ["c0"] * 3 + ["c1"] * 3
    assert [sorted(s) for s in rounds.setup] == [["first_invoke_seconds", "init_seconds"]] * 2
    log.clear()
    seconds = rounds.run(4, first=1, warmup=1)
    assert log == ["c1"] * 5 + ["c0"] * 5
    assert [len(s) for s in seconds] == [4, 4] and min(min(s) for s in seconds) > 0
    # the first configuration's interpreter holds its batch: the sample repeated to 4 rows
    interp = rounds.interpreters[0]
    np.testing.assert_array_equal(
        interp.get_tensor(interp.get_input_details()[0]["index"]), sample[[0, 1, 2, 0]]
    )


def test_rounds_stop_a_turn_once_its_time_budget_is_spent(models, monkeypatch):
    """With a budget, a turn ends after the invoke that took it over (one at least), and so does
    the warm-up: each invoke here takes ≥ 20 ms, so a 50 ms budget allows three at most, not 50."""
    sample = quantized_inputs(models["int8"], 3)
    log = []
    real = dr.load_interpreter

    def slow_load(*args, **kwargs):
        interp = counting_invokes(real(*args, **kwargs), log, "c")
        invoke = interp.invoke

        def slow_invoke():
            time.sleep(0.02)
            invoke()

        interp.invoke = slow_invoke
        return interp

    monkeypatch.setattr(dr, "load_interpreter", slow_load)
    rounds = dr.Rounds([(models["int8"], sample, 1, 2)], warmup=50, budget=0.05)
    assert 2 <= len(log) <= 4  # the first invoke, then the warm-up's until 50 ms passed
    seconds = rounds.run(50, budget=0.05)[0]
    assert 2 <= len(seconds) <= 3 and sum(seconds[:-1]) < 0.05 <= sum(seconds)
    assert len(rounds.run(2, budget=10.0)[0]) == 2  # runs still caps a generous budget
    assert len(rounds.run(5, budget=1e-9)[0]) == 1  # one timed invoke at least
    for bad in (0, -1.0, True, "1"):
        with pytest.raises(ValueError, match="a time budget must be a positive number"):
            rounds.run(5, budget=bad)


def build_refused_model(directory):
    """The tiny int8 model with a fused activation (5) that LiteRT's FULLY_CONNECTED refuses in
    Prepare: it loads, and allocate_tensors raises RuntimeError. Returns its path."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = fb.ModelT.InitFromPackedBuf(bytearray((directory / "tiny_int8.tflite").read_bytes()), 0)
    model.subgraphs[0].operators[0].builtinOptions.fusedActivationFunction = 5
    path = directory / "refused_int8.tflite"
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    return path


@pytest.mark.parametrize("reference", [False, True])
def test_a_model_litert_cannot_prepare_is_a_value_error(models, reference):
    """LiteRT refuses such a model in allocate_tensors with RuntimeError; the runner's callers see
    its one kind of refusal, ValueError (exit 2 on the command line, a ModelError on the host)."""
    path = build_refused_model(models["int8"].parent)
    interp = dr.load_interpreter(path, reference=reference)
    with pytest.raises(ValueError, match=r"^LiteRT cannot run the model: .*fully_connected"):
        dr.run_batched(interp, np.zeros((3, N_FEATURES), np.int8))
    with pytest.raises(ValueError, match=r"^LiteRT cannot run .*refused_int8.tflite: "):
        dr.Rounds([(path, np.zeros((3, N_FEATURES), np.int8), 1, 4)], reference=reference)


def test_a_tensor_name_that_is_not_utf8_is_a_value_error(models, tmp_path):
    """LiteRT's Python layer decodes tensor names and raises UnicodeDecodeError on others: the
    runner says what it is, as its one kind of refusal."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = fb.ModelT.InitFromPackedBuf(bytearray(models["int8"].read_bytes()), 0)
    graph = model.subgraphs[0]
    graph.tensors[graph.inputs[0]].name = b"\xc0pixels"
    path = tmp_path / "latin.tflite"
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    with pytest.raises(ValueError, match=r"^a tensor name of the model is not UTF-8 \(invalid"):
        dr.run_batched(dr.load_interpreter(path), np.zeros((1, N_FEATURES), np.int8))


def run_cli(*args):
    return subprocess.run(
        [sys.executable, str(dr.__file__), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_run_round_trips(models, tmp_path):
    x = quantized_inputs(models["int8"], 500)
    np.save(tmp_path / "x.npy", x)
    proc = run_cli(
        "run",
        "--model",
        models["int8"],
        "--inputs",
        tmp_path / "x.npy",
        "--outputs",
        tmp_path / "y.npy",
        "--reference",
        "--batch",
        "128",
    )
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
    proc = run_cli(
        "bench",
        "--model",
        models["int8"],
        "--inputs",
        tmp_path / "x.npy",
        "--batch-sizes",
        "1,4",
        "--threads",
        "1",
        "--warmup",
        "1",
        "--runs",
        "3",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [(r["threads"], r["batch"]) for r in report["results"]] == [(1, 1), (1, 4)]


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing model", "error: model file not found"),
        ("missing inputs", "error: inputs file not found"),
        ("pickled inputs", "error: cannot read inputs"),
        ("float inputs", "error: inputs have dtype float64 but"),
    ],
)
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
    tree = ast.parse(Path(dr.__file__).read_text(), feature_version=(3, 7))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    third_party = roots - set(sys.stdlib_module_names)
    assert third_party == {"numpy", "ai_edge_litert", "tflite_runtime"}


# --- serve: many requests in one process -----------------------------------------------------


class Server:
    """`device_runner.py serve` under this test's python, spoken to line by line."""

    def __init__(self, *options):
        self.proc = subprocess.Popen(
            [sys.executable, str(dr.__file__), "serve", *options],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.ready = json.loads(self.proc.stdout.readline())

    def ask(self, request):
        """The reply to `request` (a dict, sent as JSON, or a str, sent as it is)."""
        line = request if isinstance(request, str) else json.dumps(request)
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        """Close stdin; (exit code, what was left on stdout, stderr)."""
        self.proc.stdin.close()
        rest, err = self.proc.stdout.read(), self.proc.stderr.read()
        return self.proc.wait(timeout=60), rest, err


@pytest.fixture
def server():
    srv = Server()
    yield srv
    if srv.proc.poll() is None:
        srv.proc.kill()
        srv.proc.wait()


def test_serve_answers_like_the_one_shot_commands(server, models, tmp_path):
    assert server.ready["ready"] is True and server.ready["pid"] == server.proc.pid
    assert server.ready["litert_version"].startswith("ai-edge-litert ")
    cases = [
        ("int8", False, 1024),
        ("int8", True, 7),
        ("float32", False, 64),
        ("float32", True, 1024),
    ]
    for i, (mode, reference, batch) in enumerate(cases):
        x = quantized_inputs(models[mode], 300, seed=i)
        np.save(tmp_path / f"x{i}.npy", x)
        flags = ["--reference"] if reference else []
        proc = run_cli(
            "run",
            "--model",
            models[mode],
            "--inputs",
            tmp_path / f"x{i}.npy",
            "--outputs",
            tmp_path / f"once{i}.npy",
            "--batch",
            batch,
            *flags,
        )
        assert proc.returncode == 0, proc.stderr
        reply = server.ask(
            {
                "id": i,
                "command": "run",
                "model": str(models[mode]),
                "inputs": str(tmp_path / f"x{i}.npy"),
                "outputs": str(tmp_path / f"served{i}.npy"),
                "reference": reference,
                "batch": batch,
            }
        )
        assert reply["ok"] is True and reply["id"] == i, reply
        once = json.loads(proc.stdout)
        served = reply["result"]
        assert served.pop("invoke_seconds") > 0 and once.pop("invoke_seconds") > 0
        assert served == once
        a = np.load(tmp_path / f"once{i}.npy")
        b = np.load(tmp_path / f"served{i}.npy")
        assert a.dtype == b.dtype and a.shape == b.shape == (300, N_CLASSES)
        assert a.tobytes() == b.tobytes(), f"{mode} reference={reference}: outputs differ"

    reply = server.ask(
        {
            "id": "b",
            "command": "bench",
            "model": str(models["int8"]),
            "inputs": str(tmp_path / "x0.npy"),
            "batch_sizes": [1, 4],
            "threads": [1, None],
            "warmup": 1,
            "runs": 3,
        }
    )
    assert reply["ok"] is True and reply["id"] == "b", reply
    report = reply["result"]
    assert [(r["threads"], r["batch"]) for r in report["results"]] == [
        (1, 1),
        (1, 4),
        (None, 1),
        (None, 4),
    ]
    assert report["served_before"] == len(cases) and report["runs"] == 3
    assert server.close()[:2] == (0, "")


@pytest.mark.parametrize(
    "request_line, error",
    [
        ("not json", "bad request: not JSON: "),
        ('["run"]', "bad request: expected a JSON object, got list"),
        (
            '{"command": "predict"}',
            "bad request: command must be one of run, bench, rounds_open, rounds_run, "
            "rounds_close, got 'predict'",
        ),
        ('{"command": "rounds_run", "session": 7, "runs": 3}', "bad request: no open rounds"),
        (
            '{"command": "rounds_open", "configs": [{"model": "m"}]}',
            "bad request: 'configs' must be a non-empty list of",
        ),
        ('{"command": "run", "model": "m", "inputs": "x"}', "bad request: 'outputs' is missing"),
        (
            '{"command": "run", "model": "m", "inputs": "x", "outputs": "y", "batch": "8"}',
            "bad request: 'batch' must be an integer, got '8'",
        ),
        (
            '{"command": "bench", "model": "m", "inputs": "x", "threads": [1, "2"]}',
            "bad request: 'threads' must be a list of integers",
        ),
        (
            '{"command": "run", "model": "m", "inputs": "x", "outputs": "y", "shuffle": true}',
            "bad request: unknown field(s) shuffle",
        ),
        (
            '{"command": "run", "model": "MISSING", "inputs": "x", "outputs": "y"}',
            "model file not found: ",
        ),
    ],
)
def test_serve_refuses_a_bad_request_and_keeps_serving(
    server, models, tmp_path, request_line, error
):
    if "MISSING" in request_line:
        request_line = request_line.replace("MISSING", str(tmp_path / "nope.tflite"))
        np.save(tmp_path / "x", np.zeros((1, N_FEATURES), np.int8))
        request_line = request_line.replace('"x"', json.dumps(str(tmp_path / "x.npy")))
    reply = server.ask(request_line)
    assert reply["ok"] is False and reply["exit"] == dr.EXIT_BAD_INPUT
    assert reply["error"].startswith(error), reply["error"]
    # the same process answers the next, good request
    x = quantized_inputs(models["int8"], 5)
    np.save(tmp_path / "good.npy", x)
    reply = server.ask(
        {
            "command": "run",
            "model": str(models["int8"]),
            "inputs": str(tmp_path / "good.npy"),
            "outputs": str(tmp_path / "y.npy"),
        }
    )
    assert reply["ok"] is True and reply["result"]["n"] == 5
    code, rest, _ = server.close()
    assert code == 0 and rest == ""


def test_serve_times_rounds_across_requests(server, models, tmp_path):
    np.save(tmp_path / "x8.npy", quantized_inputs(models["int8"], 3))
    np.save(tmp_path / "xf.npy", quantized_inputs(models["float32"], 3))
    configs = [
        {"model": str(models[mode]), "inputs": str(tmp_path / x), "threads": threads, "batch": b}
        for mode, x, threads, b in (("int8", "x8.npy", 1, 4), ("float32", "xf.npy", None, 2))
    ]
    opened = server.ask({"id": 1, "command": "rounds_open", "configs": configs, "warmup": 1})
    assert opened["ok"] is True, opened
    session = opened["result"]["session"]
    assert len(opened["result"]["setup"]) == 2
    assert opened["result"]["litert_version"] == server.ready["litert_version"]
    for first in (0, 1):
        reply = server.ask({"command": "rounds_run", "session": session, "runs": 3, "first": first})
        assert reply["ok"] is True, reply
        assert [len(s) for s in reply["result"]["seconds"]] == [3, 3]
    budgeted = {"command": "rounds_run", "session": session, "runs": 10**6, "budget": 0.01}
    reply = server.ask(budgeted)
    assert reply["ok"] is True, reply
    assert all(1 <= len(s) < 10**6 for s in reply["result"]["seconds"])  # 10 ms, not a million
    reply = server.ask({**budgeted, "budget": "soon"})
    assert reply["exit"] == dr.EXIT_BAD_INPUT
    assert "'budget' must be a positive number of seconds or null" in reply["error"]
    assert server.ask({"command": "rounds_close", "session": session})["ok"] is True
    reply = server.ask({"command": "rounds_run", "session": session, "runs": 3})
    assert reply["exit"] == dr.EXIT_BAD_INPUT and "no open rounds session" in reply["error"]
    assert server.close()[:2] == (0, "")


def test_serve_caps_its_data_memory(models, tmp_path):
    """--memory-limit sets RLIMIT_DATA before the ready line; a request that needs more (a batch of
    2**25 rows: 512 MiB of inputs alone) is refused as bad input, by numpy (MemoryError) or by
    LiteRT (it cannot allocate its tensors), and the process serves on."""
    limit = 400 * 2**20
    limited = Server("--memory-limit", str(limit))
    try:
        assert resource.prlimit(limited.proc.pid, resource.RLIMIT_DATA)[0] == limit
        np.save(tmp_path / "x.npy", quantized_inputs(models["int8"], 3))
        config = {"model": str(models["int8"]), "inputs": str(tmp_path / "x.npy"), "threads": 1}
        for request in (
            {"command": "rounds_open", "configs": [{**config, "batch": 2**25}], "warmup": 0},
            {"command": "bench", **config, "batch_sizes": [2**25], "threads": [1], "runs": 1},
        ):
            reply = limited.ask(request)
            assert reply["ok"] is False and reply["exit"] == dr.EXIT_BAD_INPUT, reply
            assert re.match(r"the model needs more memory|LiteRT cannot run", reply["error"])
        reply = limited.ask({"command": "rounds_open", "configs": [{**config, "batch": 4}]})
        assert reply["ok"] is True, reply
        assert limited.close()[0] == 0
    finally:
        if limited.proc.poll() is None:
            limited.proc.kill()
            limited.proc.wait()


def test_serve_dies_with_the_model_that_crashes_litert(server, tmp_path):
    """The premise of the arm64 crash handling: the whole process goes, mid-request, by signal."""
    bad = build_crashing_model(tmp_path)
    np.save(tmp_path / "x.npy", np.zeros((2, N_FEATURES), np.int8))
    request = {
        "command": "run",
        "model": str(bad),
        "inputs": str(tmp_path / "x.npy"),
        "outputs": str(tmp_path / "y.npy"),
        "reference": True,
    }
    server.proc.stdin.write(json.dumps(request) + "\n")
    server.proc.stdin.flush()
    assert server.proc.stdout.readline() == ""  # stdout closed without an answer
    assert server.proc.wait(timeout=60) < 0  # killed by a signal (SIGABRT)
    # XNNPACK's softmax takes beta 0, so the file itself is readable
    other = Server()
    reply = other.ask({**request, "reference": False})
    assert reply["ok"] is True
    assert other.close()[:2] == (0, "")


# Runs serve with run_file wrapped to write to file descriptor 1 first, as native code (a LiteRT
# log line, a delegate's printf) may: that must land on stderr, not between the answers.
_NOISY_SERVE = """
import os, sys
sys.path.insert(0, sys.argv[1])
import device_runner as dr
real = dr.run_file
def noisy(*args, **kwargs):
    os.write(1, b"native noise on fd 1\\n")
    print("python noise on sys.stdout")
    return real(*args, **kwargs)
dr.run_file = noisy
sys.exit(dr.serve())
"""


def test_serve_keeps_writes_to_stdout_off_the_answer_pipe(models, tmp_path):
    np.save(tmp_path / "x.npy", quantized_inputs(models["int8"], 3))
    request = {
        "command": "run",
        "model": str(models["int8"]),
        "inputs": str(tmp_path / "x.npy"),
        "outputs": str(tmp_path / "y.npy"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _NOISY_SERVE, str(Path(dr.__file__).parent)],
        input=json.dumps(request) + "\n" + json.dumps(request) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["ready"] is True
    assert [json.loads(line)["ok"] for line in lines[1:]] == [True, True]
    assert proc.stderr.count("native noise on fd 1") == 2
    assert proc.stderr.count("python noise on sys.stdout") == 2
