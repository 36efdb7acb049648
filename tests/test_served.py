"""ServedRunner: one `device_runner.py serve` process for many requests, here under this test's own
python (fast); tests/test_arm64.py runs the same under qemu. Real LiteRT, real processes."""

import gc
import os
import signal
import sys
import threading

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
from pipeline.runtimes import device_runner as dr
from pipeline.runtimes.served import ServedRunner, how_it_ended

RUNNER = [sys.executable, dr.__file__, "serve"]
# A bench long enough never to finish within the short timeouts below (≈ minutes on the host).
ENDLESS_BENCH = dict(batch_sizes=[1024], threads=[1], warmup=0, runs=10**7)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    directory = tmp_path_factory.mktemp("models")
    return {**build_tiny_models(directory), "crash": build_crashing_model(directory)}


def command(argv=RUNNER):
    return lambda: (list(argv), None, None)


@pytest.fixture
def runner():
    with ServedRunner(command(), target="test", timeout=120) as served:
        yield served
    assert served.process is None


def run_request(models, tmp_path, mode="int8", n=20, reference=False, name="y.npy"):
    x = quantized_inputs(models["int8" if mode == "crash" else mode], n)
    np.save(tmp_path / "x.npy", x)
    return {
        "command": "run",
        "model": str(models[mode]),
        "inputs": str(tmp_path / "x.npy"),
        "outputs": str(tmp_path / name),
        "reference": reference,
    }, x


def test_one_process_answers_every_request(runner, models, tmp_path):
    for i, (mode, reference) in enumerate([("int8", False), ("float32", True), ("int8", True)]):
        request, x = run_request(models, tmp_path, mode, reference=reference, name=f"y{i}.npy")
        result = runner.request(request, what=mode)
        expected, _ = dr.run_batched(dr.load_interpreter(models[mode], reference=reference), x)
        outputs = np.load(tmp_path / f"y{i}.npy")
        assert outputs.tobytes() == expected.tobytes() and outputs.shape == (20, N_CLASSES)
        assert result["n"] == 20 and result["reference"] is reference
    assert runner.starts == 1 and runner.requests == 3
    pid = runner.process.pid
    assert runner.process.poll() is None
    popen = runner.process
    runner.close()
    assert popen.returncode == 0  # left on its own when stdin closed
    assert runner.process is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_crash_is_that_models_error_and_the_next_request_gets_a_new_process(
    runner, models, tmp_path
):
    request, _ = run_request(models, tmp_path)
    runner.request(request, what="good")
    first = runner.process
    crash, _ = run_request(models, tmp_path, "crash", reference=True)
    with pytest.raises(
        ModelCrashed,
        match=r"^test: the device runner crashed on beta0\.tflite "
        r"\(signal 6 \(SIGABRT\): .*\); the file is malformed",
    ):
        runner.request(crash, what="beta0.tflite")
    assert first.returncode == -signal.SIGABRT and runner.process is None
    assert runner.last_crash.startswith("signal 6 (SIGABRT): ")
    assert not issubclass(ModelCrashed, ModelError)  # a stage never records it as a target failure
    result = runner.request(request, what="good")
    assert result["n"] == 20 and runner.starts == 2 and runner.process is not first


def test_a_refused_request_is_a_model_error_and_the_process_stays(runner, models, tmp_path):
    request, _ = run_request(models, tmp_path)
    with pytest.raises(ModelError, match=r"^test: inputs have dtype float32 but .* is int8"):
        runner.request(
            {**request, "inputs": _saved(tmp_path, np.zeros((2, N_FEATURES), np.float32))}, what="m"
        )
    with pytest.raises(ModelError, match=r"^test: bad request: 'batch' must be an integer"):
        runner.request({**request, "batch": 1.5}, what="m")
    assert runner.request(request, what="m")["n"] == 20
    assert runner.starts == 1


def _saved(tmp_path, array):
    np.save(tmp_path / "other.npy", array)
    return str(tmp_path / "other.npy")


def test_a_process_killed_between_requests_is_restarted(runner, models, tmp_path):
    request, _ = run_request(models, tmp_path)
    runner.request(request, what="m")
    runner.process.kill()
    runner.process.wait()
    assert runner.request(request, what="m")["n"] == 20
    assert runner.starts == 2


def test_close_is_idempotent_and_a_closed_runner_starts_again(runner, models, tmp_path):
    runner.close()  # never started: nothing to do
    request, _ = run_request(models, tmp_path)
    runner.request(request, what="m")
    runner.close()
    runner.close()
    assert runner.process is None
    runner.request(request, what="m")
    assert runner.starts == 2


def test_start_overlaps_the_start_up_and_the_first_request_waits_for_it(models, tmp_path):
    """start() returns before the runner is ready (its ready line unread); the first request reads
    it and is answered by that same process, and a second start() while it runs is a no-op."""
    served = ServedRunner(command(), target="test", timeout=120)
    served.start()
    popen = served.process
    assert popen is not None and served.starts == 1
    served.start()
    assert served.process is popen
    request, _ = run_request(models, tmp_path)
    assert served.request(request, what="m")["n"] == 20
    assert served.process is popen and served.starts == 1
    served.close()


def test_a_runner_started_early_that_cannot_start_is_unavailable_at_the_first_request():
    served = ServedRunner(command([sys.executable, "-S", dr.__file__, "serve"]), "test", 60)
    served.start()
    with pytest.raises(TargetUnavailable, match=r"^test: the device runner failed \(exit 1: "):
        served.request({"command": "run"}, what="m")
    assert served.process is None


def test_a_dropped_runner_stops_its_process(models, tmp_path):
    served = ServedRunner(command(), target="test", timeout=120)
    request, _ = run_request(models, tmp_path)
    served.request(request, what="m")
    popen = served.process
    del served
    gc.collect()
    assert popen.returncode == 0


def test_a_runner_that_cannot_start_is_unavailable_with_its_message():
    # -S: no site-packages, so the runner's `import numpy` fails, as on a board without numpy
    served = ServedRunner(command([sys.executable, "-S", dr.__file__, "serve"]), "test", 60)
    with pytest.raises(
        TargetUnavailable,
        match=r"^test: the device runner failed \(exit 1: "
        r"ModuleNotFoundError: No module named 'numpy'\)",
    ):
        served.request({"command": "run"}, what="m")
    assert served.process is None


def test_a_program_that_is_not_the_runner_is_unavailable():
    served = ServedRunner(command([sys.executable, "-c", "print('hello')"]), "test", 60)
    with pytest.raises(TargetUnavailable, match=r"printed 'hello' instead of its ready line"):
        served.request({"command": "run"}, what="m")
    assert served.process is None


def test_a_missing_program_is_unavailable(tmp_path):
    served = ServedRunner(command([str(tmp_path / "no-such-qemu")]), "test", 60)
    with pytest.raises(TargetUnavailable, match=r"^test: cannot start .*no-such-qemu"):
        served.request({"command": "run"}, what="m")


def test_a_request_past_the_timeout_is_unavailable_and_the_process_killed(models, tmp_path):
    served = ServedRunner(command(), target="test", timeout=120)
    np.save(tmp_path / "x.npy", quantized_inputs(models["int8"], 4))
    served.request(
        {
            "command": "run",
            "model": str(models["int8"]),
            "inputs": str(tmp_path / "x.npy"),
            "outputs": str(tmp_path / "y.npy"),
        },
        what="m",
    )
    popen = served.process
    served.timeout = 5  # after the start-up, which a busy machine can stretch past 5 s
    with pytest.raises(
        TargetUnavailable,
        match=r"^test: the device runner did not answer "
        r"within 5 s \(slow\.tflite\)",
    ):
        served.request(
            {
                "command": "bench",
                "model": str(models["int8"]),
                "inputs": str(tmp_path / "x.npy"),
                **ENDLESS_BENCH,
            },
            what="slow.tflite",
        )
    assert popen.returncode == -signal.SIGKILL and served.process is None


class Interrupted(BaseException):
    """Stands for KeyboardInterrupt without pytest taking it for the user's Ctrl-C."""


def test_an_interrupt_during_a_request_kills_the_process_at_once(runner, models, tmp_path):
    np.save(tmp_path / "x.npy", quantized_inputs(models["int8"], 4))
    bench = {
        "command": "bench",
        "model": str(models["int8"]),
        "inputs": str(tmp_path / "x.npy"),
        **ENDLESS_BENCH,
    }

    def interrupt(signum, frame):
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, interrupt)
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        runner.request(
            {
                "command": "run",
                "model": str(models["int8"]),
                "inputs": str(tmp_path / "x.npy"),
                "outputs": str(tmp_path / "y.npy"),
            },
            what="m",
        )
        popen = runner.process
        timer.start()
        with pytest.raises(Interrupted):
            runner.request(bench, what="m")
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert popen.returncode == -signal.SIGKILL and runner.process is None


@pytest.mark.parametrize(
    "code, words",
    [
        (0, "exit 0"),
        (3, "exit 3"),
        (-6, "signal 6 (SIGABRT)"),
        (-11, "signal 11 (SIGSEGV)"),
        (None, "still running"),
    ],
)
def test_how_it_ended(code, words):
    assert how_it_ended(code) == words
