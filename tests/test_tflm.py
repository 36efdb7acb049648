"""The tflm target: TensorFlow Lite Micro's interpreter in a child process, one sample per invoke,
arena sized for it."""

import numpy as np
import pytest
from test_runtimes_host import N_CLASSES, N_FEATURES, features, model_inputs, tiny_models

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
from pipeline.core.errors import ModelError
from pipeline.runtimes import tflm
from pipeline.runtimes.host import HostRuntime
from pipeline.runtimes.tflm import ARENA_START, TflmRuntime, find_arena, try_arena

# TFLM's float FULLY_CONNECTED / SOFTMAX are reference loops like LiteRT's BUILTIN_REF ones, but
# compiled separately (the compiler may contract a*b+c into an FMA in one and not the other), so
# float scores are compared within float32 rounding; measured: identical on these inputs.
FLOAT_ATOL = 1e-6
# int8: TFLM and LiteRT's reference kernels round the requantization differently (see the test
# below): one step at most, measured on 0.17 % of outputs; 1 % leaves room for other inputs.
INT8_LSB_TOLERANCE = 1
MAX_DIFFERING_SHARE = 0.01


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory)


@pytest.fixture(scope="module")
def int8_run(models):
    """(inputs, TFLM result, host-ref result) for 300 rows of the int8 model."""
    x = model_inputs(models["int8"], features(300))
    return (
        x,
        TflmRuntime().run(models["int8"], x),
        HostRuntime(reference=True).run(models["int8"], x),
    )


def test_available():
    assert TflmRuntime().available() == (True, "")
    assert TflmRuntime().name == "tflm"


def test_int8_outputs_equal_host_ref_within_one_lsb(int8_run):
    """Not bit-exact, measured: 2 of 1200 int8 codes differ by 1 (in the second FULLY_CONNECTED,
    carried through SOFTMAX). Both are integer reference kernels, but they requantize the int32
    accumulator differently: TFLM with gemmlowp's two roundings (SaturatingRoundingDoublingHighMul
    then RoundingDivideByPOT), LiteRT 2.3.0's BUILTIN_REF with a single rounding shift. Replaying
    the accumulators in NumPy reproduced each side exactly. The two agree except where the double
    rounding crosses a half, so: at most 1 LSB, on a small share of outputs."""
    _, micro, ref = int8_run
    assert micro.outputs.dtype == np.int8 and micro.outputs.shape == (300, N_CLASSES)
    diff = np.abs(micro.outputs.astype(np.int16) - ref.outputs.astype(np.int16))
    assert diff.max() <= INT8_LSB_TOLERANCE
    assert np.mean(diff > 0) <= MAX_DIFFERING_SHARE, (
        f"{int((diff > 0).sum())} of {diff.size} differ"
    )


def test_one_invoke_per_sample_with_batch_one(int8_run):
    _, micro, _ = int8_run
    assert micro.info["batch"] == 1 and micro.info["n"] == 300
    assert micro.invoke_seconds > 0
    assert micro.info["tflm_version"].startswith("tflite-micro ")


def test_arena_reported_and_within_the_arena_given(int8_run):
    _, micro, _ = int8_run
    info = micro.info
    assert info["arena_bytes_given"] == ARENA_START  # the tiny model fits the first try
    assert info["arena_attempts"] == [{"arena_bytes": ARENA_START, "ok": True}]
    assert 0 < info["arena_bytes_used"] <= info["arena_bytes_given"]
    assert info["arena_bytes_used"] == info["arena_bytes_head"] + info["arena_bytes_tail"]


def test_float_model_runs_and_matches_host_ref(models):
    x = features(100)
    micro = TflmRuntime().run(models["float32"], x)
    ref = HostRuntime(reference=True).run(models["float32"], x)
    assert micro.outputs.dtype == np.float32 and micro.outputs.shape == (100, N_CLASSES)
    np.testing.assert_allclose(micro.outputs, ref.outputs, rtol=0, atol=FLOAT_ATOL)
    assert 0 < micro.info["arena_bytes_used"] <= micro.info["arena_bytes_given"]


def test_arena_doubles_until_the_model_fits(models):
    # The int8 MLP needs ~1.8 KB to build (TFLM reports ~1.5 KB used): 1 KiB fails, 2 KiB fits.
    size, attempts = find_arena(models["int8"], start=1024)
    assert size == 2048
    assert [(a["arena_bytes"], a["ok"]) for a in attempts] == [(1024, False), (2048, True)]
    assert attempts[0]["error"]


def test_no_arena_up_to_the_limit_is_a_model_error(models):
    with pytest.raises(ModelError, match=r"does not fit an arena of up to 1024 bytes"):
        find_arena(models["int8"], start=1024, limit=1024)


def test_a_crashing_arena_size_only_kills_the_child(models):
    # TFLM's constructor segfaults with an arena this small (it does not fail cleanly); the probe
    # runs in a child, so this process carries on.
    ok, why = try_arena(models["int8"], 256)
    assert not ok and why


def test_explicit_arena_too_small_is_a_model_error(models):
    x = model_inputs(models["int8"], features(2))
    with pytest.raises(ModelError, match=r"does not fit the given arena of 1024 bytes"):
        TflmRuntime(arena_size=1024).run(models["int8"], x)


def test_explicit_arena_is_used_as_given(models):
    x = model_inputs(models["int8"], features(5))
    result = TflmRuntime(arena_size=4096).run(models["int8"], x)
    assert result.info["arena_bytes_given"] == 4096
    assert 0 < result.info["arena_bytes_used"] <= 4096


def test_arena_below_the_floor_is_rejected():
    with pytest.raises(ValueError, match=r"arena_size must be None or >= 1024 bytes, got 100"):
        TflmRuntime(arena_size=100)


def test_wrong_input_dtype_and_shape_are_model_errors(models):
    with pytest.raises(ModelError, match=r"inputs have dtype float32 but .* is int8"):
        TflmRuntime(arena_size=4096).run(models["int8"], features(2))
    with pytest.raises(ModelError, match=r"inputs have shape \(2, 17\) but .* wants \(N, 16\)"):
        TflmRuntime(arena_size=4096).run(models["int8"], np.zeros((2, N_FEATURES + 1), np.int8))


@pytest.mark.parametrize("case", ["random bytes", "truncated model", "header only"])
def test_malformed_file_never_reaches_tflm(models, tmp_path, monkeypatch, case):
    def must_not_run(*args, **kwargs):
        raise AssertionError("a malformed file reached TFLM")

    monkeypatch.setattr(tflm, "try_arena", must_not_run)
    data = models["int8"].read_bytes()
    path = tmp_path / "bad.tflite"
    path.write_bytes(
        {
            "random bytes": np.random.default_rng(0)
            .integers(0, 256, 2000, dtype=np.uint8)
            .tobytes(),
            "truncated model": data[: len(data) // 2],
            "header only": data[:8],
        }[case]
    )
    runtime = TflmRuntime()
    with pytest.raises(ModelError, match=r"bad\.tflite"):
        runtime.run(path, np.zeros((2, N_FEATURES), dtype=np.int8))
    assert runtime.server.starts == 0  # no child, so no TFLM, ever saw the file


def _with_hidden_shape(models, directory, width):
    """The tiny int8 model with its hidden activation declared (1, width) instead of (1, 8):
    LiteRT recomputes the shape, TFLM trusts it and its FULLY_CONNECTED writes `width` values."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = fb.ModelT.InitFromPackedBuf(bytearray(models["int8"].read_bytes()), 0)
    graph = model.subgraphs[0]
    hidden = graph.tensors[graph.operators[0].outputs[0]]
    hidden.shape, hidden.shapeSignature = [1, width], [-1, width]
    path = directory / f"hidden{width}.tflite"
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    return path


def test_a_model_that_crashes_tflm_is_that_models_error_and_the_next_gets_a_fresh_child(
    models, tmp_path
):
    """TFLM builds the model with a 8,256-wide hidden tensor in 16 KiB and then writes past its
    buffers at the first invoke: the child dies by SIGSEGV, which is a ModelCrashed for that model
    (exit 2, never one target's failure); the next model runs in a fresh child."""
    from pipeline.core.errors import ModelCrashed

    path = _with_hidden_shape(models, tmp_path, 8 + 256 * 32)
    x = model_inputs(models["int8"], features(3))
    with TflmRuntime() as runtime:
        with pytest.raises(ModelCrashed) as info:
            runtime.run(path, x)
        assert str(info.value) == (
            f"tflm: the TFLM runner crashed on {path} (signal 11 (SIGSEGV): no message on "
            "stderr); the file is malformed or uses an operator in a way the kernels do not accept"
        )
        assert runtime.run(models["int8"], x).outputs.shape == (3, N_CLASSES)
        assert runtime.server.starts == 2


def test_a_model_that_crashes_tflm_while_it_is_built_is_tried_once_more_at_the_limit(tmp_path):
    """A crash while building may be an arena just short of what the model needs; one more try at
    the largest arena tells: the beta-0 SOFTMAX aborts TFLM's constructor there too, so the model
    is a ModelCrashed after two tries, not a walk through every size."""
    from test_device_runner import build_crashing_model

    from pipeline.core.errors import ModelCrashed

    path = build_crashing_model(tmp_path)
    with TflmRuntime() as runtime, pytest.raises(ModelCrashed) as info:
        runtime.run(path, np.zeros((2, N_FEATURES), np.int8))
    assert str(info.value).startswith(
        f"tflm: {path} crashes TFLM when its interpreter is built, even in an arena of "
        f"{tflm.ARENA_LIMIT} bytes (the TFLM interpreter crashed (signal 6 (SIGABRT)"
    )
    assert runtime.server.starts == 2  # one child per crash; the third was never needed


def test_one_child_serves_every_model_and_sizes_the_arena_there(models):
    """The arena search loads the model in the serving child and the run uses that interpreter:
    one child, one build, for a model that fits the first size."""
    x = model_inputs(models["int8"], features(4))
    with TflmRuntime() as runtime:
        for _ in range(2):
            result = runtime.run(models["int8"], x)
            assert result.info["arena_attempts"] == [{"arena_bytes": ARENA_START, "ok": True}]
        runtime.run(models["float32"], features(4))
        assert runtime.server.starts == 1 and runtime.server.requests == 6


def test_the_child_data_memory_is_capped(models):
    import resource

    with TflmRuntime(memory_limit=700 * 2**20) as runtime:
        runtime.run(models["int8"], model_inputs(models["int8"], features(1)))
        limit = resource.prlimit(runtime.server.process.pid, resource.RLIMIT_DATA)[0]
    assert limit == 700 * 2**20


def test_a_model_tflm_does_not_support_is_refused_after_one_try_at_the_limit(exported, monkeypatch):
    """float16 weights reach a DEQUANTIZE TFLM refuses in Prepare: one more try at the largest
    arena shows memory is not the reason, so the search stops there (2 children, not 9)."""
    tried = []
    real = tflm.try_arena
    monkeypatch.setattr(
        tflm, "try_arena", lambda path, size: tried.append(size) or real(path, size)
    )
    with pytest.raises(ModelError) as info:
        find_arena(exported / "model_ptq-float16.tflite")
    assert str(info.value).startswith(f"tflm: cannot run {exported / 'model_ptq-float16.tflite'}: ")
    assert "failed to prepare" in str(info.value)
    assert tried == [ARENA_START, tflm.ARENA_LIMIT]


def test_a_prepare_failure_from_a_small_arena_keeps_doubling(exported):
    """The digits int8 net fails *in Prepare* at 2 KiB (no room for a weight tensor) and runs at
    4 KiB: the try at the limit succeeds, so the search goes on and still ends at the smallest
    size that works, walked here independently."""
    path = exported / "model_int8.tflite"
    size, attempts = find_arena(path, start=1024)
    smallest = next(s for s in (1024 << k for k in range(13)) if try_arena(path, s)[0])
    assert size == smallest
    prepare = [
        a
        for a in attempts
        if "failed to prepare" in a.get("error", "") or "was not true" in a.get("error", "")
    ]
    if prepare:  # the case this test is for: the limit was tried once, and worked
        assert [(a["arena_bytes"], a["ok"]) for a in attempts].count((tflm.ARENA_LIMIT, True)) == 1


def _reshaped_and_dilated(keras, padding: str):
    L = keras.layers
    return [
        L.Reshape((8, 8, 1)),
        L.Conv2D(4, 3, dilation_rate=2, padding=padding, activation="relu"),
        L.DepthwiseConv2D(3, dilation_rate=2, depth_multiplier=2, padding="same"),  # 4×4 left
        L.Reshape((-1,)),
    ]


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("mode", ["float32", "ptq-int8"])
def test_reshape_and_dilated_convolutions_run_under_tflm(tmp_path, keras, mode, padding):
    """tf_keras's Reshape asks for the batch size at run time, and a dilated convolution is
    SPACE_TO_BATCH_ND around it: TFLM cannot prepare the first and got the second wrong (NaN
    with "valid"). bnpipe's conversion makes each one operator, and TFLM then computes what the
    reference kernels compute."""
    from pipeline.core.config import ExportConfig
    from pipeline.core.quantize import to_input
    from pipeline.tflite.convert import convert
    from pipeline.tflite.file import parse_tflite, quant_params

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            *_reshaped_and_dilated(keras, padding),
            keras.layers.Dense(N_CLASSES, activation="softmax"),
        ]
    )
    x = np.random.default_rng(4).random((40, 64), dtype=np.float32)
    blob = convert(model, mode, x, ExportConfig(calibration_samples=40))
    info = parse_tflite(blob)
    assert info.op_counts()["RESHAPE"] == 2
    assert {"CONV_2D", "DEPTHWISE_CONV_2D"} <= set(info.op_counts())
    assert not {"SHAPE", "SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND"} & set(info.op_counts())
    path = tmp_path / "reshape.tflite"
    path.write_bytes(blob)
    inputs = to_input(x, quant_params(info.input_tensor()))
    micro = TflmRuntime().run(str(path), inputs)
    ref = HostRuntime(reference=True).run(str(path), inputs)
    if mode == "float32":
        np.testing.assert_allclose(micro.outputs, ref.outputs, rtol=0, atol=FLOAT_ATOL)
    else:
        assert np.array_equal(micro.outputs, ref.outputs)


def test_an_operator_tflm_lacks_is_named_at_once(tmp_path, keras):
    """GELU runs under LiteRT but TFLM has no kernel for it: the error names it, after one
    child (no arena size would help), not as an arena the model does not fit."""
    from pipeline.core.config import ExportConfig
    from pipeline.tflite.convert import convert

    model = keras.Sequential(
        [keras.Input((N_FEATURES,)), keras.layers.Dense(N_CLASSES, activation="gelu")]
    )
    x = features(8)
    path = tmp_path / "gelu.tflite"
    path.write_bytes(convert(model, "float32", x, ExportConfig(calibration_samples=8)))
    assert HostRuntime(reference=True).run(str(path), x).outputs.shape == (8, N_CLASSES)
    attempts = []

    def attempt(model_path, size):
        attempts.append(size)
        return tflm.try_arena(model_path, size)

    with pytest.raises(
        ModelError, match=r"^tflm: TFLite Micro has no kernel for the operator GELU"
    ):
        find_arena(path, attempt=attempt)
    assert attempts == [ARENA_START]
