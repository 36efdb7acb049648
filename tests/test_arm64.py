"""The arm64 target: aarch64 LiteRT under qemu-user, checked against the host's reference kernels.

Needs `bash scripts/setup_arm64_emulator.sh` first. In CI (CI=true) a missing set-up fails these
tests; elsewhere they are skipped with the reason.
"""
import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)

import json
import os

import numpy as np
import pytest

from pipeline.errors import ModelError, TargetUnavailable
from pipeline.runtimes import RunResult
from pipeline.runtimes import device_runner as dr
from pipeline.runtimes.arm64 import Arm64Runtime
from test_device_runner import N_CLASSES, N_FEATURES, build_tiny_models, quantized_inputs

pytestmark = pytest.mark.device

N_SAMPLES = 2000
# aarch64 and x86-64 float kernels sum in different orders (NEON vs AVX FMA); int8 is exact.
FLOAT_ATOL = 1e-5


@pytest.fixture(scope="module")
def arm64():
    runtime = Arm64Runtime()
    ok, why = runtime.available()
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the set-up first: {why}")
        pytest.skip(why)
    return runtime


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("models"))


def host_reference(model_path, x):
    outputs, _ = dr.run_batched(dr.load_interpreter(model_path, reference=True), x)
    return outputs


@pytest.mark.parametrize("reference", [False, True], ids=["xnnpack", "reference-kernels"])
def test_int8_outputs_equal_host_reference_exactly(arm64, models, reference):
    x = quantized_inputs(models["int8"], N_SAMPLES)
    result = Arm64Runtime(reference=reference).run(str(models["int8"]), x)
    assert isinstance(result, RunResult) and result.target == "arm64"
    assert result.outputs.dtype == np.int8 and result.outputs.shape == (N_SAMPLES, N_CLASSES)
    expected = host_reference(models["int8"], x)
    differing = int((result.outputs != expected).sum())
    assert differing == 0, f"{differing} of {expected.size} int8 outputs differ from host-ref"
    assert result.info["emulated"] is True and result.info["machine"] == "aarch64"
    assert result.info["n"] == N_SAMPLES and result.info["reference"] is reference
    assert result.info["litert_version"] == "ai-edge-litert 2.3.0"
    assert result.info["qemu_cpu"] == "cortex-a76"
    assert result.invoke_seconds > 0


def test_float_outputs_match_host_reference_within_tolerance(arm64, models):
    x = quantized_inputs(models["float32"], N_SAMPLES)
    result = arm64.run(str(models["float32"]), x)
    assert result.outputs.dtype == np.float32
    np.testing.assert_allclose(result.outputs, host_reference(models["float32"], x),
                               rtol=0, atol=FLOAT_ATOL)


def test_bench_runs_under_emulation(arm64, models):
    sample = quantized_inputs(models["int8"], 8)
    report = arm64.bench(str(models["int8"]), sample, batch_sizes=(1, 16), threads=(1,),
                         warmup=1, runs=3)
    json.dumps(report)
    assert report["emulated"] is True and report["machine"] == "aarch64"
    assert [(r["threads"], r["batch"]) for r in report["results"]] == [(1, 1), (1, 16)]
    assert report["qemu_version"].startswith("qemu-aarch64 version ")


def test_wrong_dtype_is_a_model_error_with_the_runner_message(arm64, models):
    x = np.zeros((3, N_FEATURES), dtype=np.float32)
    with pytest.raises(ModelError, match=r"^arm64: inputs have dtype float32 but .* is int8"):
        arm64.run(str(models["int8"]), x)


def test_missing_model_is_a_model_error(arm64, tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        arm64.run(str(tmp_path / "nope.tflite"), np.zeros((1, N_FEATURES), np.int8))


def test_not_set_up_says_how_to_set_up(tmp_path):
    runtime = Arm64Runtime(directory=tmp_path / "empty")
    ok, why = runtime.available()
    assert not ok and "bash scripts/setup_arm64_emulator.sh" in why
    with pytest.raises(TargetUnavailable, match="setup_arm64_emulator.sh"):
        runtime.run(str(tmp_path / "m.tflite"), np.zeros((1, N_FEATURES), np.int8))


def test_unknown_cpu_model_is_unavailable_with_qemus_message(arm64, models):
    runtime = Arm64Runtime(cpu="cortex-z9")
    with pytest.raises(TargetUnavailable, match=r"unable to find CPU model 'cortex-z9'"):
        runtime.run(str(models["int8"]), quantized_inputs(models["int8"], 2))
