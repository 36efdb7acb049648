"""The host and host-ref targets (LiteRT in a child process) and the target registry, on tiny real
models.

The tiny models are built here once per test session (`tiny_models`) and reused by
tests/test_tflm.py and tests/test_quantize.py.
"""

import subprocess
import sys
import warnings

import numpy as np
import pytest

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
from pipeline.core.errors import BnpipeError, ModelCrashed, ModelError, TargetUnavailable
from pipeline.core.quantize import quantize
from pipeline.runtimes import device_runner
from pipeline.runtimes.host import HostRuntime
from pipeline.runtimes.registry import DEFAULT_TARGETS, get_runtime, parse_targets, resolve
from pipeline.tflite.file import quant_params, read_tflite

N_FEATURES, N_HIDDEN, N_CLASSES = 16, 8, 4
SEED = 0
# XNNPACK requantizes int8 accumulators with its own fixed-point rounding, not the reference
# kernels' gemmlowp-style one; the two can land on either side of a rounding tie, i.e. one step
# apart. (On this model and these inputs they agree exactly; 1 LSB is what may legitimately differ.)
INT8_LSB_TOLERANCE = 1
# Float32 softmax scores in [0, 1]: LiteRT and TensorFlow sum the 16 and 8 products in different
# orders (and XNNPACK uses FMA), so they differ in the last bits of float32; measured ≤ 1.2e-7.
FLOAT_ATOL = 1e-6

_BUILT: dict = {}


def build_tiny_models(directory):
    """A 16→8→4 softmax MLP (tf_keras, fixed seed, untrained) and three .tflite conversions.

    Returns {"keras": model, "float32": path, "int8": path, "int8_float_in": path}: "int8" is
    full-int8 with int8 input and output; "int8_float_in" keeps a float32 input (so its first
    operator is QUANTIZE) and an int8 output. Calibration: 200 uniform [0, 1) rows, like bnpipe's
    scaled pixels.
    """
    from pipeline.core.tfenv import keras, tf

    tf, keras = tf(), keras()
    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [
            keras.layers.Input((N_FEATURES,)),
            keras.layers.Dense(N_HIDDEN, activation="relu"),
            keras.layers.Dense(N_CLASSES, activation="softmax"),
        ]
    )
    calibration = np.random.default_rng(SEED).random((200, N_FEATURES), dtype=np.float32)
    paths = {"keras": model}

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    paths["float32"] = directory / "tiny_float32.tflite"
    paths["float32"].write_bytes(converter.convert())

    for name, input_type in (("int8", tf.int8), ("int8_float_in", tf.float32)):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([row[None]] for row in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = input_type
        converter.inference_output_type = tf.int8
        paths[name] = directory / f"tiny_{name}.tflite"
        with warnings.catch_warnings():  # "Statistics for quantized inputs were expected": the
            warnings.simplefilter("ignore")  # int8 input takes its range from the calibration
            paths[name].write_bytes(converter.convert())
    return paths


def tiny_models(tmp_path_factory):
    """build_tiny_models, built once per session whichever test file asks first."""
    if not _BUILT:
        _BUILT.update(build_tiny_models(tmp_path_factory.mktemp("tiny_mlp")))
    return _BUILT


def features(n, seed=1):
    """(n, 16) float32 uniform in [0, 1): preprocessed inputs."""
    return np.random.default_rng(seed).random((n, N_FEATURES), dtype=np.float32)


def model_inputs(model_path, x):
    """x quantized for the model's input tensor exactly as bnpipe does (float models: x)."""
    q = quant_params(read_tflite(model_path).input_tensor())
    return x if q["scale"] is None else quantize(x, q["scale"], q["zero_point"], q["dtype"])


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory)


# -- host / host-ref ------------------------------------------------------------------------------


def test_names_and_availability():
    assert HostRuntime().name == "host"
    assert HostRuntime(reference=True).name == "host-ref"
    assert HostRuntime().available() == (True, "")
    assert HostRuntime(reference=True).available() == (True, "")


def test_int8_host_and_host_ref_agree_within_one_lsb(models):
    x = model_inputs(models["int8"], features(2000))
    fast = HostRuntime().run(models["int8"], x)
    ref = HostRuntime(reference=True).run(models["int8"], x)
    assert fast.outputs.dtype == ref.outputs.dtype == np.int8
    assert fast.outputs.shape == ref.outputs.shape == (2000, N_CLASSES)
    diff = np.abs(fast.outputs.astype(np.int16) - ref.outputs.astype(np.int16))
    assert diff.max() <= INT8_LSB_TOLERANCE, (
        f"{int((diff > INT8_LSB_TOLERANCE).sum())} outputs differ by more"
    )
    assert fast.info["kernels"] == "default (XNNPACK delegate)"
    assert ref.info["kernels"] == "builtin_ref"
    assert ref.info["litert_version"] == device_runner.LITERT_VERSION


@pytest.mark.parametrize("reference", [False, True])
def test_float_outputs_match_keras(models, reference):
    x = features(500)
    expected = models["keras"].predict(x, batch_size=500, verbose=0)
    result = HostRuntime(reference=reference).run(models["float32"], x)
    assert result.outputs.dtype == np.float32
    np.testing.assert_allclose(result.outputs, expected, rtol=0, atol=FLOAT_ATOL)


@pytest.mark.parametrize("mode", ["int8", "float32"])
@pytest.mark.parametrize("reference", [False, True])
def test_the_child_gives_the_runners_outputs_bit_for_bit(models, mode, reference):
    """The child runs device_runner's own code: its outputs are those of run_batched in this
    process (a tiny model of the test's own making) bit for bit, 1024 rows per invoke."""
    x = model_inputs(models[mode], features(2500))
    with HostRuntime(reference=reference) as runtime:
        result = runtime.run(models[mode], x)
    expected, _ = device_runner.run_batched(
        device_runner.load_interpreter(models[mode], reference=reference), x, batch=1024
    )
    assert result.outputs.dtype == expected.dtype and result.outputs.shape == expected.shape
    assert result.outputs.tobytes() == expected.tobytes()
    assert result.info["batch"] == 1024 and result.info["n"] == 2500
    assert result.invoke_seconds > 0


def test_no_interpreter_is_ever_loaded_in_this_process(models, tmp_path):
    """host, host-ref and tflm run models in child processes only: after a run on each, neither
    LiteRT's nor TFLM's interpreter module was imported here (a fresh python, to start clean)."""
    x = model_inputs(models["int8"], features(10))
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np\n"
        "from pipeline.runtimes.registry import close_all, resolve\n"
        "runtimes, _ = resolve('host,host-ref,tflm', explicit=True)\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        f"print([rt.run({str(models['int8'])!r}, x).outputs.shape for rt in runtimes])\n"
        "close_all(runtimes)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('ai_edge_litert.interpreter', "
        "'tflite_micro.runtime', 'tflite_micro.python'))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str([(10, N_CLASSES)] * 3), "[]"]


def test_wrong_input_dtype_is_a_model_error(models):
    with pytest.raises(ModelError, match=r"^host: inputs have dtype float32 but .* is int8"):
        HostRuntime().run(models["int8"], features(3))


def test_bench_passes_through(models):
    x = model_inputs(models["int8"], features(8))
    report = HostRuntime(reference=True, threads=1).bench(
        models["int8"], x, batch_sizes=(1, 4), warmup=1, runs=3
    )
    assert report["target"] == "host-ref" and report["reference"] is True
    assert [(r["threads"], r["batch"]) for r in report["results"]] == [(1, 1), (1, 4)]


def _malformed(model_bytes):
    rng = np.random.default_rng(SEED)
    return {
        "random bytes": rng.integers(0, 256, 2000, dtype=np.uint8).tobytes(),
        "truncated model": model_bytes[: len(model_bytes) // 2],
        "truncated tail": model_bytes[:-16],
        "header only": model_bytes[:8],
        "empty": b"",
    }


@pytest.mark.parametrize(
    "case", ["random bytes", "truncated model", "truncated tail", "header only", "empty"]
)
@pytest.mark.parametrize("reference", [False, True])
def test_malformed_file_is_a_model_error_before_litert_sees_it(models, tmp_path, case, reference):
    path = tmp_path / "bad.tflite"
    path.write_bytes(_malformed(models["int8"].read_bytes())[case])
    runtime = HostRuntime(reference=reference)
    with pytest.raises(ModelError, match=r"bad\.tflite"):
        runtime.run(path, np.zeros((2, N_FEATURES), dtype=np.int8))
    with pytest.raises(ModelError, match=r"bad\.tflite"):
        runtime.bench(path, np.zeros((2, N_FEATURES), dtype=np.int8), runs=1, warmup=0)
    with pytest.raises(ModelError, match=r"bad\.tflite"):
        runtime.rounds([(path, np.zeros((2, N_FEATURES), dtype=np.int8), 1, 4)])
    assert runtime.server.starts == 0  # no child, so no LiteRT, ever saw the file


def test_missing_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        HostRuntime().run(tmp_path / "nope.tflite", np.zeros((1, N_FEATURES), dtype=np.int8))


def test_a_checked_model_is_parsed_once_per_content(models, tmp_path, monkeypatch):
    """checked_tflite remembers a check by the sha256 of the bytes: the same file (under any
    name) is parsed once; new bytes at the same path are parsed again, and a damaged file is
    refused even right after a good one was checked there."""
    from pipeline.runtimes import host

    parsed = []
    real = host.parse_tflite
    monkeypatch.setattr(
        host, "parse_tflite", lambda data, name: (parsed.append(name), real(data, name))[1]
    )
    host.forget_checked()
    good = models["int8"].read_bytes()
    a, b = tmp_path / "a.tflite", tmp_path / "b.tflite"
    a.write_bytes(good)
    b.write_bytes(good)
    x = model_inputs(models["int8"], features(5))
    first = host.checked_tflite(a)
    HostRuntime(reference=True).run(a, x)
    HostRuntime().run(b, x)
    assert parsed == [str(a)]
    assert first.path == str(a) and host.checked_tflite(b).path == str(b)
    assert host.checked_tflite(b).tensors == first.tensors

    a.write_bytes(models["int8_float_in"].read_bytes())
    assert host.checked_tflite(a).input_tensor().dtype == "float32"
    assert parsed == [str(a), str(a)]
    a.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelError, match=r"a\.tflite"):
        HostRuntime().run(a, x)
    host.forget_checked()
    host.checked_tflite(b)
    assert len(parsed) == 4


def test_checked_models_are_remembered_up_to_a_bound(models, tmp_path):
    from pipeline.runtimes import host

    host.forget_checked()
    good = models["int8"].read_bytes()
    for i in range(host.CHECKED_CACHE_SIZE + 3):
        path = tmp_path / f"m{i}.tflite"
        path.write_bytes(good + bytes([i]))  # trailing bytes: another sha256, the same model
        host.checked_tflite(path)
    assert len(host._checked) == host.CHECKED_CACHE_SIZE


def test_a_model_that_crashes_the_child_is_that_models_error(models, tmp_path):
    """The beta-0 SOFTMAX aborts LiteRT's reference kernels (the child dies by SIGABRT): that model
    is a ModelCrashed naming it (exit 2, not one target's failure); the next model gets a fresh
    child, and this process lives on."""
    from test_device_runner import build_crashing_model

    crashing = build_crashing_model(tmp_path)
    x = model_inputs(models["int8"], features(5))
    with HostRuntime(reference=True) as runtime:
        with pytest.raises(ModelCrashed) as info:
            runtime.run(crashing, np.zeros((4, N_FEATURES), np.int8))
        assert str(info.value).startswith(
            f"host-ref: the device runner crashed on {crashing} (signal 6 (SIGABRT): "
        )
        assert runtime.run(models["int8"], x).outputs.shape == (5, N_CLASSES)
        assert runtime.server.starts == 2
    # XNNPACK's SOFTMAX takes beta 0: the same file runs on host
    with HostRuntime() as runtime:
        assert runtime.run(crashing, np.zeros((4, N_FEATURES), np.int8)).outputs.shape == (4, 4)


def test_one_child_serves_every_model_until_closed(models):
    x = model_inputs(models["int8"], features(5))
    runtime = HostRuntime()
    runtime.start()  # started early: the first run waits for it to be ready
    for path in (models["int8"], models["int8"], models["float32"]):
        runtime.run(path, x if path == models["int8"] else features(5))
    child = runtime.server.process
    assert runtime.server.starts == 1 and child.poll() is None
    runtime.close()
    assert child.returncode == 0 and runtime.server.process is None


def test_the_shared_runtime_starts_one_child_for_the_whole_process(models):
    from pipeline.runtimes.host import shared_runtime

    runtime = shared_runtime(reference=True)
    assert shared_runtime(reference=True) is runtime and shared_runtime() is not runtime
    assert runtime.reference and runtime.name == "host-ref"
    starts = runtime.server.starts
    for _ in range(3):
        runtime.run(models["int8"], model_inputs(models["int8"], features(3)))
    assert runtime.server.starts == max(starts, 1)


def test_outputs_of_another_shape_than_declared_are_a_model_error(models, tmp_path):
    """A damaged output shape in the file (10 features where LiteRT makes 4): the outputs are not
    what the file says it gives, and verify indexes them by what it says. ModelError naming both."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = fb.ModelT.InitFromPackedBuf(bytearray(models["int8"].read_bytes()), 0)
    graph = model.subgraphs[0]
    graph.tensors[graph.outputs[0]].shape = [1, 10]
    graph.tensors[graph.outputs[0]].shapeSignature = [-1, 10]
    path = tmp_path / "ten.tflite"
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    with pytest.raises(
        ModelError,
        match=rf"^host: {path} produced outputs of shape \(3, 4\) for 3 inputs, but its output "
        r"tensor declares \(N, 10\)$",
    ):
        HostRuntime().run(path, model_inputs(models["int8"], features(3)))


def test_rounds_time_in_turns_in_the_child(models):
    """HostRuntime.rounds: device_runner.Rounds in the child, round by round."""
    x8, xf = model_inputs(models["int8"], features(8)), features(8)
    with HostRuntime() as runtime:
        rounds = runtime.rounds(
            [
                (models["int8"], x8, 1, 1),
                (models["int8"], x8, 1, 32),
                (models["float32"], xf, 2, 4),
            ],
            warmup=2,
        )
        assert len(rounds.setup) == 3 and all(s["init_seconds"] > 0 for s in rounds.setup)
        for first in range(3):
            seconds = rounds.run(5, first=first)
            assert [len(s) for s in seconds] == [5, 5, 5] and min(map(min, seconds)) > 0
        rounds.close()
        with pytest.raises(ModelError, match=r"^host: bad request: no open rounds session"):
            rounds.run(1)
        assert runtime.server.starts == 1


def test_cold_start_in_a_fresh_process(models):
    from pipeline.runtimes.host import cold_start

    result = cold_start(models["int8"], model_inputs(models["int8"], features(4)))
    assert set(result) == {"init_ms", "first_invoke_us", "peak_rss_added_kb"}
    assert result["init_ms"] > 0 and result["first_invoke_us"] > 0
    assert result["peak_rss_added_kb"] is None or result["peak_rss_added_kb"] >= 0
    with pytest.raises(
        ModelError,
        match=r"failed to run in a fresh process: Cannot set tensor: .*FLOAT32 but expected .*INT8",
    ):
        cold_start(models["int8"], features(4))  # float inputs for an int8 model


# -- registry -------------------------------------------------------------------------------------


def test_parse_targets_defaults_order_and_duplicates():
    assert parse_targets(None) == parse_targets("") == parse_targets(" , ") == list(DEFAULT_TARGETS)
    assert DEFAULT_TARGETS == ("host", "host-ref", "tflm", "arm64")
    assert parse_targets(" tflm,host ,tflm,ssh:pi@board.local:2222") == [
        "tflm",
        "host",
        "ssh:pi@board.local:2222",
    ]


def test_unknown_target_lists_the_valid_ones():
    expected = (
        r"^unknown target 'gpu': expected one of host, host-ref, tflm, arm64, "
        r"ssh:USER@HOST\[:PORT\]$"
    )
    with pytest.raises(BnpipeError, match=expected):
        parse_targets("host,gpu")
    with pytest.raises(BnpipeError, match=expected):
        get_runtime("gpu")


def test_bad_ssh_address_is_rejected():
    with pytest.raises(BnpipeError, match="bad ssh target 'nobody'"):
        parse_targets("ssh:nobody")


def test_get_runtime_names():
    for name in ("host", "host-ref", "tflm", "arm64", "ssh:pi@board.local"):
        assert get_runtime(name).name == name
    assert get_runtime("host-ref").reference is True


class _Unavailable:
    name = "arm64"

    def available(self):
        return False, "the arm64 emulator is not set up: run the set-up script"


def test_resolve_skips_or_raises_for_an_unavailable_target(monkeypatch):
    from pipeline.runtimes import registry

    real = registry.get_runtime
    monkeypatch.setattr(
        registry, "get_runtime", lambda name: _Unavailable() if name == "arm64" else real(name)
    )
    runtimes, skipped = resolve(None, explicit=False)
    assert [r.name for r in runtimes] == ["host", "host-ref", "tflm"]
    assert skipped == [("arm64", "the arm64 emulator is not set up: run the set-up script")]
    assert [r.name for r in resolve("host,tflm", explicit=True)[0]] == ["host", "tflm"]
    with pytest.raises(
        TargetUnavailable,
        match=r"^target arm64 is not available: the arm64 "
        r"emulator is not set up: run the set-up script$",
    ):
        resolve(["host", "arm64"], explicit=True)
