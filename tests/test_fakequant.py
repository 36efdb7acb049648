"""fakequant.py on real exports: operator matching, weights carried over, the fake quantization
checked against the float twin (nothing quantized: identical) and the integer file (everything
quantized: the same codes but for the kernels' rounding)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from pipeline.analysis.fakequant import FakeQuant, dequantized, match_operators
from pipeline.core.errors import ModelError
from pipeline.core.quantize import quantize
from pipeline.runtimes.tensors import TensorJob, run_jobs
from pipeline.tflite.file import read_tflite

# With every operator and the input fake-quantized, the last operator's output codes may differ
# from the integer file's by one step: the integer kernel requantizes with a fixed-point
# multiplier and the float path rounds x/s exactly (the measured share is ≤ 0.1 %).
SIM_MAX_STEPS = 1
SIM_MAX_SHARE = 0.01
SIM_MIN_AGREEMENT = 0.99
# Dequantized int8 weights lie within half a step of the float weights they were rounded from
# (per channel: |w − ŵ| ≤ s/2), up to float32 round-off of the division.
HALF_STEP_SLACK = 1e-6
# DEQUANTIZE computes (q − z)·s in float32; dividing by s again lands within float32 round-off of
# an integer (|q − z| ≤ 255: ≤ 255 · 2⁻²³ relative ≈ 3e-5 steps).
GRID_TOL = 1e-4


@pytest.fixture(scope="module", params=["plain", "outlier"])
def twins(request, outlier_case):
    d = outlier_case[0 if request.param == "plain" else 1]
    q, f = d / "model_ptq-int8.tflite", d / "model_float32.tflite"
    qi, fi = read_tflite(q), read_tflite(f)
    pairs = match_operators(qi, fi)
    return qi, fi, pairs, FakeQuant(q.read_bytes(), f.read_bytes(), pairs)


def test_operators_pair_in_graph_order(twins):
    qi, _, pairs, _ = twins
    assert [p.op for p in pairs] == ["FULLY_CONNECTED"] * 3 + ["SOFTMAX"]
    assert [p.int8_op for p in pairs] == [p.float_op for p in pairs] == [0, 1, 2, 3]
    assert [p.int8_output for p in pairs] == [o.outputs[0] for o in qi.operators]


def test_files_that_are_not_twins_are_refused_with_every_mismatch(twins):
    qi, fi, _, _ = twins
    fewer = dataclasses.replace(fi, operators=fi.operators[1:])
    with pytest.raises(ModelError) as info:
        match_operators(qi, fewer)
    message = str(info.value)
    assert "has 4 operators (FULLY_CONNECTED, FULLY_CONNECTED, FULLY_CONNECTED, SOFTMAX)" in message
    assert "operator 2 is FULLY_CONNECTED in one and SOFTMAX in the other" in message
    assert "`bnpipe export --mode float32`" in message


def test_dequantized_weights_lie_within_half_a_step_of_the_float_weights(twins):
    """Post-training int8 rounds each float weight to its channel's grid: an independent check of
    the per-channel dequantization (axis, scale, zero point)."""
    _, _, pairs, fq = twins
    from ai_edge_litert import schema_py_generated as fb

    fm = fb.ModelT.InitFromPackedBuf(bytearray(fq.float_bytes), 0)
    checked = 0
    for p in pairs:
        q_op, f_op = (
            fq.int8.subgraphs[0].operators[p.int8_op],
            fm.subgraphs[0].operators[p.float_op],
        )
        for qi, fi in zip(q_op.inputs[1:2], f_op.inputs[1:2], strict=True):  # the kernel
            qt, ft = fq.int8.subgraphs[0].tensors[qi], fm.subgraphs[0].tensors[fi]
            w = np.frombuffer(fm.buffers[ft.buffer].data.tobytes(), np.float32).reshape(ft.shape)
            step = np.asarray(qt.quantization.scale).reshape(-1, 1)  # (units, 1): per unit
            assert np.all(np.abs(dequantized(fq.int8, qt) - w) <= step / 2 + HALF_STEP_SLACK)
            checked += 1
    assert checked == 3


def test_nothing_quantized_is_the_float_twin_bit_for_bit(twins, digits):
    _, fi, _, fq = twins
    none = fq.model([])
    [float_run, none_run] = run_jobs([
        TensorJob(fq.float_bytes, digits.x_test, (fi.outputs[0],), "float", reference=False),
        TensorJob(none.data, digits.x_test, (none.output,), "none", reference=False),
    ])  # fmt: skip
    np.testing.assert_array_equal(none_run[none.output], float_run[fi.outputs[0]])


def test_one_layer_quantized_puts_its_output_on_the_files_grid(twins, digits):
    """Layer 1 alone: the outputs before it are the float twin's bit for bit, its own output
    takes only values (q − z)·s of the file's grid, and the model output moves."""
    qi, fi, pairs, fq = twins
    built = fq.model([1])
    keep = (pairs[0].float_output, built.quantized[1], built.output)
    [ref, one] = run_jobs([
        TensorJob(fq.float_bytes, digits.x_test, (pairs[0].float_output, fi.outputs[0]), "f",
                  reference=False),
        TensorJob(built.data, digits.x_test, keep, "one", reference=False),
    ])  # fmt: skip
    np.testing.assert_array_equal(one[pairs[0].float_output], ref[pairs[0].float_output])
    t = qi.tensors[pairs[1].int8_output]
    codes = one[built.quantized[1]] / np.float32(t.scale[0]) + t.zero_point[0]
    assert np.max(np.abs(codes - np.rint(codes))) <= GRID_TOL
    assert codes.min() >= -128 - GRID_TOL and codes.max() <= 127 + GRID_TOL
    assert not np.array_equal(one[built.output], ref[fi.outputs[0]])


def test_everything_quantized_computes_what_the_integer_file_computes(twins, digits):
    qi, _, pairs, fq = twins
    sim = fq.model(range(len(pairs)), quantize_input=True)
    t_in, last = qi.input_tensor(), pairs[-1]
    xq = quantize(digits.x_test, t_in.scale[0], t_in.zero_point[0])
    [q_run, s_run] = run_jobs([
        TensorJob(Path(qi.path).read_bytes(), xq, (last.int8_output,), "int8"),
        TensorJob(sim.data, digits.x_test, (sim.quantized[last.position],), "sim", False),
    ])  # fmt: skip
    t = qi.tensors[last.int8_output]
    sim_codes = np.rint(s_run[sim.quantized[last.position]] / t.scale[0]) + t.zero_point[0]
    diff = np.abs(sim_codes - q_run[last.int8_output].astype(np.int64))
    assert diff.max() <= SIM_MAX_STEPS and np.mean(diff > 0) <= SIM_MAX_SHARE
    agree = np.mean(sim_codes.argmax(1) == q_run[last.int8_output].argmax(1))
    assert agree >= SIM_MIN_AGREEMENT
