"""pipeline.core.quantize against the QUANTIZE operator of a real float-input, int8-output model.

The model's first operator is QUANTIZE (float32 input → int8); LiteRT is asked to keep every
intermediate tensor (experimental_preserve_all_tensors) so its output can be read after invoke.
"""

import numpy as np
import pytest
from test_runtimes_host import N_FEATURES, tiny_models

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
from pipeline.core.quantize import dequantize, quantize
from pipeline.tflite.file import read_tflite

# "Next to a tie": x / scale within a few float32 ulps of k + 0.5 (|x / scale| ≤ ~260 here, where
# one float32 ulp is ≤ 3e-5), the most a division and a multiply by the reciprocal can disagree.
NEAR_TIE = 1e-4

# LiteRT warns that preserving every tensor is for debugging: that is exactly the use here.
pytestmark = pytest.mark.filterwarnings("ignore:.*experimental_preserve_all_tensors:UserWarning")


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory)


@pytest.fixture(scope="module")
def quantize_op(models):
    """(model path, input tensor index, QUANTIZE output tensor index, scale, zero point)."""
    path = models["int8_float_in"]
    info = read_tflite(path)
    first = info.operators[0]
    assert first.op == "QUANTIZE" and first.inputs == info.inputs
    out = info.tensors[first.outputs[0]]
    assert out.dtype == "int8" and len(out.scale) == 1
    return path, info.inputs[0], first.outputs[0], out.scale[0], out.zero_point[0]


def probe_inputs(scale, zero_point):
    """float32 values that exercise every rounding case of the int8 range and beyond it.

    Ties: x = (k + 0.5)·scale for every code k that lands in [-128, 127] and a few outside,
    kept only where x / scale is exactly k + 0.5 in float32 (the kernel's arithmetic), plus the
    float32 neighbours of each tie; multiples of scale; random values covering both clamps.
    """
    s = np.float32(scale)
    k = np.arange(-128 - zero_point - 4, 128 - zero_point + 4, dtype=np.float64)
    ties = ((k + 0.5) * s).astype(np.float32)
    ties = ties[ties / s == (k + 0.5).astype(np.float32)]
    above = np.nextafter(ties, np.float32(np.inf))
    below = np.nextafter(ties, np.float32(-np.inf))
    grid = (k * s).astype(np.float32)
    rng = np.random.default_rng(0)
    rand = rng.uniform(-0.7, 1.3, 3000).astype(np.float32)
    extreme = np.array([0.0, -0.0, 1e6, -1e6, 1e-30, -1e-30], dtype=np.float32)
    x = np.concatenate([ties, above, below, grid, rand, extreme])
    pad = (-len(x)) % N_FEATURES  # whole rows of 16 features
    return np.concatenate([x, np.zeros(pad, np.float32)]), ties


def litert_quantize(path, input_index, q_index, x, reference):
    """The QUANTIZE output for x (flat), from one batched invoke of LiteRT."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {"experimental_op_resolver_type": OpResolverType.BUILTIN_REF} if reference else {}
    interp = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True, **kwargs)
    rows = x.reshape(-1, N_FEATURES)
    interp.resize_tensor_input(input_index, list(rows.shape))
    interp.allocate_tensors()
    interp.set_tensor(input_index, rows)
    interp.invoke()
    return interp.get_tensor(q_index).reshape(-1)


def test_quantize_equals_tflite_reference_quantize_op(quantize_op):
    path, input_index, q_index, scale, zero_point = quantize_op
    x, ties = probe_inputs(scale, zero_point)
    assert len(ties) >= 200, "too few exact float32 ties to test the rounding"
    expected = litert_quantize(path, input_index, q_index, x, reference=True)
    ours = quantize(x, scale, zero_point)
    assert ours.dtype == expected.dtype == np.int8
    bad = np.flatnonzero(ours != expected)
    assert bad.size == 0, (
        f"{bad.size} of {x.size} values differ, e.g. x={x[bad[:5]].tolist()}: "
        f"ours {ours[bad[:5]].tolist()} vs TFLite {expected[bad[:5]].tolist()}"
    )
    # The ties really are ties: rounding them half-to-even (NumPy's np.round) gives other codes.
    half_even = np.clip(np.round(ties / np.float32(scale)) + zero_point, -128, 127)
    assert np.any(half_even != quantize(ties, scale, zero_point))


def test_quantize_equals_tflm_quantize_op(quantize_op):
    """TFLM (what a microcontroller runs) rounds exactly like LiteRT's reference kernel."""
    from tflite_micro import runtime

    path, _, q_index, scale, zero_point = quantize_op
    x, _ = probe_inputs(scale, zero_point)
    interp = runtime.Interpreter.from_file(
        str(path),
        arena_size=64 * 1024,
        intrepreter_config=runtime.InterpreterConfig.kPreserveAllTensors,
    )  # sic: TFLM's spelling
    got = []
    for row in x.reshape(-1, N_FEATURES):  # TFLM: batch 1
        interp.set_input(np.ascontiguousarray(row[None]), 0)
        interp.invoke()
        got.append(interp.GetTensor(q_index, 0)["tensor_data"].reshape(-1))
    np.testing.assert_array_equal(quantize(x, scale, zero_point), np.concatenate(got))


def test_xnnpack_quantize_differs_only_next_to_ties(quantize_op):
    """LiteRT's default kernels (XNNPACK) compute QUANTIZE as round-half-to-even(x · (1/scale))
    (observed with ai-edge-litert 2.3.0: it matches that formula on every probe input); the
    reference kernel and TFLM compute round-half-away(x / scale). bnpipe quantizes like the
    reference, so a float-input model run by XNNPACK may get a code one step different where
    x / scale is a tie or within float32 rounding of one — and nowhere else."""
    path, input_index, q_index, scale, zero_point = quantize_op
    x, _ = probe_inputs(scale, zero_point)
    fast = litert_quantize(path, input_index, q_index, x, reference=False)
    ours = quantize(x, scale, zero_point)
    differ = fast != ours
    assert np.abs(fast.astype(np.int16) - ours.astype(np.int16)).max() <= 1
    v = x[differ].astype(np.float64) / scale
    distance_to_half = np.abs(v - np.floor(v) - 0.5)
    assert np.all(distance_to_half <= NEAR_TIE), (
        f"XNNPACK differs away from a tie: x={x[differ][distance_to_half > NEAR_TIE][:5]}"
    )


def test_ties_round_half_away_from_zero():
    # scale 0.5, zero point 0: x / scale = ±0.5, ±1.5, ±2.5 exactly
    x = np.array([0.25, 0.75, 1.25, -0.25, -0.75, -1.25], dtype=np.float32)
    np.testing.assert_array_equal(quantize(x, 0.5, 0), [1, 2, 3, -1, -2, -3])


def test_clamps_to_the_dtype_range():
    x = np.array([-1e9, 1e9], dtype=np.float32)
    np.testing.assert_array_equal(quantize(x, 0.1, -128), [-128, 127])
    np.testing.assert_array_equal(quantize(x, 0.1, 0, "uint8"), [0, 255])
    np.testing.assert_array_equal(quantize(x, 0.1, 0, "int16"), [-32768, 32767])


def test_dequantize_round_trip(quantize_op):
    _, _, _, scale, zero_point = quantize_op
    codes = np.arange(-128, 128).astype(np.int8)
    values = dequantize(codes, scale, zero_point)
    assert values.dtype == np.float32
    # every code survives dequantize → quantize exactly
    np.testing.assert_array_equal(quantize(values, scale, zero_point), codes)
    # in-range floats come back within half a step (plus float32 rounding of the product)
    x = np.random.default_rng(2).uniform(0, 1, 1000).astype(np.float32)
    err = np.abs(dequantize(quantize(x, scale, zero_point), scale, zero_point) - x)
    assert err.max() <= scale / 2 * (1 + 1e-5)


@pytest.mark.parametrize("scale", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_scale_is_a_value_error(scale):
    with pytest.raises(ValueError, match=r"scale must be a finite number > 0, got"):
        quantize(np.zeros(3, np.float32), scale, 0)
    with pytest.raises(ValueError, match=r"scale must be a finite number > 0, got"):
        dequantize(np.zeros(3, np.int8), scale, 0)


@pytest.mark.parametrize("dtype", ["float32", "int4", "int32"])
def test_bad_dtype_is_a_value_error(dtype):
    with pytest.raises(
        ValueError, match=rf"dtype must be one of \['int16', 'int8', 'uint8'\], got '{dtype}'"
    ):
        quantize(np.zeros(3, np.float32), 0.1, 0, dtype)


# -- the fast paths: slices, table lookup of pixel codes, the wrapping shift ----------------------


def half_away_reference(x, scale, zero_point, dtype):
    """quantize written the slow, obvious way: the float32 quotient (as the kernel divides), then
    round half away from zero in float64, where |v| + 0.5 is exact, then shift and clamp."""
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
    v = (np.asarray(x, np.float32) / np.float32(scale)).astype(np.float64)
    return np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5) + zero_point, lo, hi).astype(dtype)


def test_quantize_is_the_same_in_every_slice():
    """More values than one slice (CHUNK), with exact ties, huge values whose quotient overflows
    to ±inf (v − rint(v) is NaN there) and a 2-D shape, placed in the first three slices."""
    from pipeline.core.quantize import CHUNK

    scale = 0.125  # x / scale = k + 0.5 exactly for x = (2k + 1) / 16
    rng = np.random.default_rng(3)
    x = rng.uniform(-20, 20, 3 * CHUNK + 17).astype(np.float32)
    ties = (2 * rng.integers(-200, 200, 600) + 1).astype(np.float32) / 16
    for start in (0, CHUNK + 5, 3 * CHUNK - 300):
        x[start : start + 300] = ties[:300]
        x[start + 300] = np.float32(3e38)  # 3e38 / 0.125 overflows float32: +inf
        x[start + 301] = -np.float32(3e38)
    x = x.reshape(-1, 5)  # 2-D: 3·CHUNK + 17 is a multiple of 5
    with np.errstate(over="ignore", invalid="ignore"):
        expected = half_away_reference(x, scale, 3, "int8")
        got = quantize(x, scale, 3)
        half_even = np.clip(np.round(x / np.float32(scale)) + 3, -128, 127)
    assert got.shape == x.shape and got.dtype == np.int8
    np.testing.assert_array_equal(got, expected)
    assert np.sum(half_even != got) >= 300  # the ties are real: half-to-even differs on half


def test_quantize_reads_strided_input_and_empty_input():
    x = np.random.default_rng(4).uniform(0, 1, (50, 40)).astype(np.float32)
    np.testing.assert_array_equal(
        quantize(x[:, ::3], 1 / 255, -128), half_away_reference(x[:, ::3], 1 / 255, -128, "int8")
    )
    empty = quantize(np.zeros((0, 5), np.float32), 0.1, 0)
    assert empty.shape == (0, 5) and empty.dtype == np.int8


# (divisor of the preprocessing, scale, zero point, dtype): the QAT int8 input (1/255, −128: the
# table is a plain shift), digits with the same input (a true table), a scale that puts every odd
# pixel of digits on a tie (k/16 / 1/8 = k/2), int16 (ptq-int16x8's input) and uint8.
TABLE_CASES = [
    (255.0, 1 / 255, -128, "int8"),
    (16.0, 1 / 255, -128, "int8"),
    (16.0, 0.125, -5, "int8"),
    (255.0, 1 / 32767, 0, "int16"),
    (255.0, 0.0041, 7, "uint8"),
    (1.0, 0.02, -128, "int8"),
]


@pytest.mark.parametrize("divisor,scale,zero_point,dtype", TABLE_CASES)
def test_quantize_codes_equals_quantize_of_the_floats(divisor, scale, zero_point, dtype):
    from pipeline.core.quantize import quantize_codes
    from pipeline.data.dataset import Preprocessing

    pre = Preprocessing(divisor=divisor, n_features=28)
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 256, (5000, 28)).astype(np.uint8)  # every code, in every slice
    x = pre.apply(codes)
    got = quantize_codes(codes, pre.code_values(), scale, zero_point, dtype)
    assert got.dtype == np.dtype(dtype) and got.shape == codes.shape
    np.testing.assert_array_equal(got, quantize(x, scale, zero_point, dtype))
    np.testing.assert_array_equal(got, half_away_reference(x, scale, zero_point, dtype))


def test_the_qat_input_table_is_a_shift():
    """The premise of the wrapping-add path: pixels ÷ 255 at scale 1/255, zero point −128 map
    pixel k to k − 128, for all 256 of them."""
    from pipeline.data.dataset import Preprocessing

    table = quantize(Preprocessing(divisor=255.0, n_features=1).code_values(), 1 / 255, -128)
    np.testing.assert_array_equal(table, np.arange(256) - 128)


def test_to_input_with_and_without_codes_agree():
    from pipeline.core.quantize import to_input
    from pipeline.data.dataset import Preprocessing

    pre = Preprocessing(divisor=16.0, n_features=8)
    codes = np.random.default_rng(6).integers(0, 17, (300, 8)).astype(np.uint8)
    x = pre.apply(codes)
    for tensor in (
        {"dtype": "int8", "scale": 0.0625, "zero_point": -128},
        {"dtype": "int16", "scale": 1 / 32767, "zero_point": 0},
    ):
        np.testing.assert_array_equal(
            to_input(x, tensor, codes, pre.code_values()), to_input(x, tensor)
        )
    same = to_input(
        x, {"dtype": "float32", "scale": None, "zero_point": None}, codes, pre.code_values()
    )
    assert same is x  # a float model takes the floats themselves
    with pytest.raises(ValueError, match=r"codes have shape \(300, 4\) but the inputs \(300, 8\)"):
        to_input(
            x, {"dtype": "int8", "scale": 0.1, "zero_point": 0}, codes[:, :4], pre.code_values()
        )


def test_quantize_codes_checks_its_arguments():
    from pipeline.core.quantize import quantize_codes

    values = np.arange(256, dtype=np.float32) / 255
    with pytest.raises(ValueError, match="codes must be uint8 pixel codes, got dtype int16"):
        quantize_codes(np.zeros(3, np.int16), values, 0.1, 0)
    with pytest.raises(
        ValueError, match=r"values must be float32 of shape \(256,\), got float64 \(256,\)"
    ):
        quantize_codes(np.zeros(3, np.uint8), values.astype(np.float64), 0.1, 0)
    with pytest.raises(
        ValueError, match=r"values must be float32 of shape \(256,\), got float32 \(17,\)"
    ):
        quantize_codes(np.zeros(3, np.uint8), values[:17], 0.1, 0)
    with pytest.raises(ValueError, match=r"scale must be a finite number > 0, got 0\.0"):
        quantize_codes(np.zeros(3, np.uint8), values, 0.0, 0)
