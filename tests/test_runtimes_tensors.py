"""runtimes/tensors.py and its child, tensor_runner.py: intermediate tensors of real models, run
by LiteRT in a child process; a model that aborts LiteRT is a ModelError here, not a crash."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.errors import ModelError
from pipeline.core.quantize import quantize
from pipeline.runtimes import device_runner
from pipeline.runtimes.tensor_runner import BATCH
from pipeline.runtimes.tensors import TensorJob, TensorRunner, run_jobs
from pipeline.tflite.file import read_tflite

# The float twin's first FULLY_CONNECTED against numpy's relu(x·W + b) in float64: float32
# round-off of 64 products and a sum (≈ 1e-6 relative); 1e-5 of the largest value leaves 10×.
FLOAT_RTOL = 1e-5


@pytest.fixture(scope="module")
def files(outlier_case):
    plain, _ = outlier_case
    return plain / "model_float32.tflite", plain / "model_ptq-int8.tflite"


@pytest.fixture(scope="module")
def x(digits):
    """More rows than one invoke takes, so that two batches of different sizes are run."""
    return np.concatenate([digits.x_test] * 5)[: BATCH + 300]


def test_intermediate_tensors_of_the_float_twin_are_the_layers_outputs(files, x, outlier_case):
    from pipeline.models.door import load_model

    float_path, _ = files
    info = read_tflite(float_path)
    first = info.operators[0].outputs[0]
    [saved] = run_jobs([TensorJob(float_path, x, (first,), "float", reference=False)])
    kernel, bias = load_model(outlier_case[0] / "folded.keras").layers[0].get_weights()
    expected = np.maximum(x.astype(np.float64) @ kernel + bias, 0)
    assert saved[first].shape == expected.shape == (len(x), kernel.shape[1])
    assert np.max(np.abs(saved[first] - expected)) <= FLOAT_RTOL * np.max(np.abs(expected))


def test_the_output_is_the_device_runners_bit_for_bit(files, x):
    """The same reference kernels, batched otherwise (BATCH rows, then 300): the same codes."""
    _, int8_path = files
    info = read_tflite(int8_path)
    t = info.input_tensor()
    xq = quantize(x, t.scale[0], t.zero_point[0])
    keep = tuple(o.outputs[0] for o in info.operators)
    [saved] = run_jobs([TensorJob(int8_path.read_bytes(), xq, keep, "int8")])
    interp = device_runner.load_interpreter(int8_path, reference=True)
    expected, _ = device_runner.run_batched(interp, xq, batch=len(xq))
    assert sorted(saved) == sorted(keep)
    assert saved[info.outputs[0]].dtype == np.int8
    np.testing.assert_array_equal(saved[info.outputs[0]], expected)


def test_a_model_that_aborts_litert_is_a_model_error_naming_it(files, x, tmp_path):
    """A SOFTMAX with beta 0 passes the structural check but aborts LiteRT's reference kernels:
    the child dies of the signal, this process raises ModelError naming the job's model."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    float_path, int8_path = files
    model = fb.ModelT.InitFromPackedBuf(bytearray(int8_path.read_bytes()), 0)
    for op in model.subgraphs[0].operators:
        if isinstance(op.builtinOptions, fb.SoftmaxOptionsT):
            op.builtinOptions.beta = 0.0
    bad = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    xq = np.zeros((4, x.shape[1]), np.int8)
    jobs = [TensorJob(float_path, x[:4], (0,), "the good one", reference=False),
            TensorJob(bad, xq, (0,), "beta0.tflite")]  # fmt: skip
    with pytest.raises(ModelError) as info:
        run_jobs(jobs)
    assert str(info.value).startswith("beta0.tflite crashes LiteRT's kernels (signal ")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(tensors=(999,)), "float32: the model has no tensor 999"),
        (dict(inputs=np.zeros((3, 5), np.float32)), "float32: inputs are float32 (3, 5) but"),
    ],
)
def test_bad_jobs_are_one_line_model_errors(files, x, change, message):
    float_path, _ = files
    job = dict(model=float_path, inputs=x[:8], tensors=(0,), label="float32") | change
    with pytest.raises(ModelError) as info:
        run_jobs([TensorJob(**job)])
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_a_runner_started_ahead_serves_one_job_list_and_is_always_reaped(files, x):
    float_path, _ = files
    job = TensorJob(float_path, x[:8], (0,), "float32", reference=False)
    with TensorRunner() as runner:
        [saved] = runner.run([job])
        assert saved[0].shape[0] == 8
        with pytest.raises(RuntimeError, match="one list of jobs"):
            runner.run([job])
    unused = TensorRunner()
    unused.close()  # never given work: killed (or done) and reaped, no zombie left
    assert unused._proc.returncode is not None
