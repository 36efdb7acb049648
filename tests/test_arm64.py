"""The arm64 target: aarch64 LiteRT under qemu-user, checked against the host's reference kernels.

Needs `bash scripts/setup_arm64_emulator.sh` first. In CI (CI=true) a missing set-up fails these
tests; elsewhere they are skipped with the reason. Every runtime here is closed by the test that
made it, and the tests check that no emulator process outlives its runtime.
"""

import gc
import json
import os
import signal
import subprocess

import numpy as np
import pytest
from test_device_runner import (
    N_CLASSES,
    N_FEATURES,
    build_crashing_model,
    build_tiny_models,
    quantized_inputs,
)

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
from pipeline.core.errors import ModelCrashed, ModelError, TargetUnavailable
from pipeline.runtimes import RunResult
from pipeline.runtimes import device_runner as dr
from pipeline.runtimes.arm64 import Arm64Runtime
from pipeline.runtimes.registry import close_all, get_runtime

pytestmark = pytest.mark.device

N_SAMPLES = 2000
# aarch64 and x86-64 float kernels sum in different orders (NEON vs AVX FMA); int8 is exact.
FLOAT_ATOL = 1e-5
ONE_SHOT_TIMEOUT_S = 300  # one emulated `device_runner.py run`: ≈ 4 s, far more under load


@pytest.fixture(scope="module")
def emulator():
    """Skips (fails in CI) unless the emulator is set up."""
    ok, why = Arm64Runtime().available()
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the set-up first: {why}")
        pytest.skip(why)


@pytest.fixture(scope="module")
def arm64(emulator):
    """One runtime (one emulated runner) shared by the module's tests, closed at its end."""
    with Arm64Runtime() as runtime:
        yield runtime
    assert runtime.server.process is None


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    directory = tmp_path_factory.mktemp("models")
    return {**build_tiny_models(directory), "crash": build_crashing_model(directory)}


def assert_gone(popen):
    """The emulator process has exited and been reaped: no such pid any more."""
    assert popen.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(popen.pid, 0)


def host_reference(model_path, x):
    outputs, _ = dr.run_batched(dr.load_interpreter(model_path, reference=True), x)
    return outputs


@pytest.mark.parametrize("reference", [False, True], ids=["xnnpack", "reference-kernels"])
def test_int8_outputs_equal_host_reference_exactly(emulator, models, reference):
    x = quantized_inputs(models["int8"], N_SAMPLES)
    with Arm64Runtime(reference=reference) as runtime:
        result = runtime.run(str(models["int8"]), x)
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
    np.testing.assert_allclose(
        result.outputs, host_reference(models["float32"], x), rtol=0, atol=FLOAT_ATOL
    )


def test_bench_runs_under_emulation(arm64, models):
    sample = quantized_inputs(models["int8"], 8)
    report = arm64.bench(
        str(models["int8"]), sample, batch_sizes=(1, 16), threads=(1,), warmup=1, runs=3
    )
    json.dumps(report)
    assert report["emulated"] is True and report["machine"] == "aarch64"
    assert [(r["threads"], r["batch"]) for r in report["results"]] == [(1, 1), (1, 16)]
    assert report["qemu_version"].startswith("qemu-aarch64 version ")
    assert report["served_before"] == arm64.server.requests - 1  # its peak RSS is shared


def test_wrong_dtype_is_a_model_error_with_the_runner_message(arm64, models):
    x = np.zeros((3, N_FEATURES), dtype=np.float32)
    with pytest.raises(ModelError, match=r"^arm64: inputs have dtype float32 but .* is int8"):
        arm64.run(str(models["int8"]), x)


def test_missing_model_is_a_model_error(arm64, tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        arm64.run(str(tmp_path / "nope.tflite"), np.zeros((1, N_FEATURES), np.int8))


def one_shot(runtime, model, x, tmp_path):
    """The one-process-per-model path: `device_runner.py run` alone in a fresh emulator."""
    np.save(tmp_path / "x.npy", x)
    args = [
        "run",
        "--model",
        str(model),
        "--inputs",
        str(tmp_path / "x.npy"),
        "--outputs",
        str(tmp_path / "once.npy"),
        "--batch",
        str(runtime.batch),
    ]
    if runtime.reference:
        args.append("--reference")
    argv, env, cwd = runtime.runner_command(args)
    proc = subprocess.run(
        argv,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=ONE_SHOT_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr
    return np.load(tmp_path / "once.npy", allow_pickle=False), json.loads(proc.stdout)


@pytest.mark.parametrize("reference", [False, True], ids=["xnnpack", "reference-kernels"])
def test_one_server_gives_the_one_shot_outputs_bit_for_bit(emulator, models, tmp_path, reference):
    """Several models through one emulated process equal a fresh process per model, byte for
    byte (float32 included: same aarch64 kernels, same summation order), whatever ran before
    them in that process."""
    inputs = {
        mode: quantized_inputs(models[mode], 700, seed=i)  # 300, 300, 100 rows per invoke
        for i, mode in enumerate(["float32", "int8"])
    }
    with Arm64Runtime(reference=reference, batch=300) as runtime:
        served = [
            (mode, runtime.run(str(models[mode]), inputs[mode]))
            for mode in ["float32", "int8", "float32", "int8"]
        ]
        assert runtime.server.starts == 1 and runtime.server.requests == 4
        popen = runtime.server.process
        once = {mode: one_shot(runtime, models[mode], inputs[mode], tmp_path) for mode in inputs}
    for mode, result in served:
        outputs, info = once[mode]
        assert result.outputs.dtype == outputs.dtype and result.outputs.shape == outputs.shape
        assert result.outputs.tobytes() == outputs.tobytes(), f"{mode}: outputs differ"
        assert {k: v for k, v in result.info.items() if k != "invoke_seconds"} == {
            **{k: v for k, v in info.items() if k != "invoke_seconds"},
            "emulated": True,
            "machine": "aarch64",
            "qemu_cpu": runtime.cpu,
            "qemu_version": runtime.setup_info()["qemu_version"],
        }
    assert_gone(popen)
    assert popen.returncode == 0  # it left by itself when its stdin closed


def test_a_model_that_crashes_litert_fails_alone_and_the_server_recovers(emulator, models):
    x = quantized_inputs(models["int8"], 300)
    expected = host_reference(models["int8"], x)
    with Arm64Runtime(reference=True) as runtime:
        assert runtime.run(str(models["int8"]), x).outputs.tobytes() == expected.tobytes()
        first = runtime.server.process
        with pytest.raises(
            ModelCrashed,
            match=r"^arm64: the device runner crashed on "
            r"beta0_softmax\.tflite \(signal 6 \(SIGABRT\): "
            r"qemu: uncaught target signal 6",
        ):
            runtime.run(str(models["crash"]), np.zeros((2, N_FEATURES), np.int8))
        assert first.returncode == -signal.SIGABRT
        assert runtime.run(str(models["int8"]), x).outputs.tobytes() == expected.tobytes()
        assert runtime.server.starts == 2
        second = runtime.server.process
    assert_gone(first)
    assert_gone(second)


def test_close_stops_the_emulator_and_a_later_run_restarts_it(emulator, models):
    x = quantized_inputs(models["int8"], 10)
    runtime = get_runtime("arm64")  # as verify and bench make it
    runtime.run(str(models["int8"]), x)
    popen = runtime.server.process
    assert popen.poll() is None  # kept running between models
    close_all([runtime, get_runtime("host")])  # host has nothing to close
    assert_gone(popen)
    assert popen.returncode == 0 and runtime.server.process is None
    runtime.close()  # idempotent
    runtime.run(str(models["int8"]), x)
    again = runtime.server.process
    assert again is not popen and runtime.server.starts == 2
    del runtime  # no close(): dropping the runtime stops its emulator too
    gc.collect()
    assert_gone(again)


def test_a_start_past_the_timeout_is_unavailable_and_leaves_no_process(emulator, models):
    runtime = Arm64Runtime(timeout=0.2)  # the emulated python needs seconds to import LiteRT
    with pytest.raises(
        TargetUnavailable,
        match=r"^arm64: the device runner did not start "
        r"within 0\.2 s",
    ):
        runtime.run(str(models["int8"]), quantized_inputs(models["int8"], 2))
    assert runtime.server.process is None and runtime.server.starts == 1


def test_not_set_up_says_how_to_set_up(tmp_path):
    runtime = Arm64Runtime(directory=tmp_path / "empty")
    ok, why = runtime.available()
    assert not ok and "bash scripts/setup_arm64_emulator.sh" in why
    with pytest.raises(TargetUnavailable, match=r"setup_arm64_emulator\.sh"):
        runtime.run(str(tmp_path / "m.tflite"), np.zeros((1, N_FEATURES), np.int8))


def test_unknown_cpu_model_is_unavailable_with_qemus_message(emulator, models):
    with Arm64Runtime(cpu="cortex-z9") as runtime:
        with pytest.raises(TargetUnavailable, match=r"unable to find CPU model 'cortex-z9'"):
            runtime.run(str(models["int8"]), quantized_inputs(models["int8"], 2))
        assert runtime.server.process is None
