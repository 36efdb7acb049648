"""layerstats.py against values worked out by hand or by an independent formula."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.analysis.layerstats import sqnr_db, tensor_stats
from pipeline.core.quantize import quantize

RNG_SEED = 7
# Rounding to a uniform grid leaves an error uniform on [−½, ½] step: rms 1/√12. On 200,000
# values the sample rms is within 0.3 % of it (its standard error is ≈ 0.1 %).
UNIFORM_RMS = 1 / math.sqrt(12)
RMS_RTOL = 3e-3
EXACT = 1e-12  # float64 arithmetic on exactly representable values
SQNR_DB_TOL = 0.3  # sampling spread of the mean squares over 2000 × 64 values


def grid(scale=0.05, zero_point=-128):
    lo, hi = (-128 - zero_point) * scale, (127 - zero_point) * scale
    return scale, zero_point, lo, hi


def test_values_on_the_grid_have_no_error():
    scale, zp, _, _ = grid(scale=1 / 16)  # a power of two: every grid value exact in float32
    codes = np.arange(-128, 128, dtype=np.int8).reshape(-1, 4)
    real = (codes.astype(np.float64) - zp) * scale
    s = tensor_stats(real.astype(np.float32), codes, scale, zp, "int8")
    assert s.sqnr_db is None and s.sqnr_db_worst_channel is None
    assert s.error_steps_rms == 0 and s.error_steps_max == 0 and s.clipped == 0
    # Column c holds codes c, c+4, …, c+252: it spans 252 of the 255 steps.
    assert s.range_used_per_channel == pytest.approx([252 / 255] * 4, abs=EXACT)
    assert s.range_used == pytest.approx(1.0, abs=EXACT)


def test_rounding_alone_gives_the_uniform_rms_and_at_most_half_a_step():
    scale, zp, lo, hi = grid()
    real = np.random.default_rng(RNG_SEED).uniform(lo, hi, size=(50_000, 4)).astype(np.float32)
    s = tensor_stats(real, quantize(real, scale, zp), scale, zp, "int8")
    assert s.error_steps_rms == pytest.approx(UNIFORM_RMS, rel=RMS_RTOL)
    assert s.error_steps_max <= 0.5 + 1e-5  # float32 division of the real value by the scale
    # SQNR of a uniform signal on [0, 255 s] against uniform noise of s²/12: 10·log10(4·255²)
    mean_square = (hi**3 - lo**3) / (3 * (hi - lo))
    assert s.sqnr_db == pytest.approx(10 * math.log10(mean_square / (scale**2 / 12)), abs=0.05)


def test_two_wide_channels_leave_the_others_a_few_levels():
    """The issue's outlier case in miniature: 62 channels uniform on [0, 1], 2 on [0, 100]; the
    grid is set by the wide ones, so each narrow channel spans 1 % of it, and its SQNR is poor
    while the whole tensor's looks fine (the wide channels dominate the energy). Expected SQNRs:
    mean square of the signal over the rounding noise's s²/12."""
    rng = np.random.default_rng(RNG_SEED)
    real = rng.uniform(0, 1, size=(2000, 64)).astype(np.float32)
    real[:, [0, 1]] *= 100
    real[0, :] = [100, 100] + [1] * 62  # each channel reaches its top
    real[1, :] = 0
    scale, zp = 100 / 255, -128
    s = tensor_stats(real, quantize(real, scale, zp), scale, zp, "int8")
    assert s.range_used == pytest.approx(1.0, abs=EXACT)
    assert s.range_used_median_channel == pytest.approx(0.01, abs=EXACT)
    assert s.range_used_worst_channel == pytest.approx(0.01, abs=EXACT)
    assert s.worst_channel == 2  # the first of the narrow channels (ties: the lowest index)
    noise = scale**2 / 12
    narrow_db = 10 * math.log10((1 / 3) / noise)  # 14.2 dB
    whole_db = 10 * math.log10((2 * 100**2 / 3 + 62 / 3) / 64 / noise)  # 39.1 dB
    assert s.sqnr_db == pytest.approx(whole_db, abs=SQNR_DB_TOL)
    # The worst of 62 narrow channels: below their expected value, by sampling spread only.
    assert narrow_db - 1.0 < s.sqnr_db_worst_channel < narrow_db
    assert s.live_channels == 64 and s.channels == 64


def test_dead_channels_and_clipping():
    scale, zp, _, hi = grid(scale=0.01)
    real = np.zeros((1000, 3), np.float32)
    real[:, 1] = np.linspace(0, 2 * hi, 1000)  # half its values beyond the grid's top
    real[:, 2] = np.linspace(0, hi, 1000)
    s = tensor_stats(real, quantize(real, scale, zp), scale, zp, "int8")
    assert s.live_channels == 2 and s.range_used_per_channel[0] == 0  # dead: never fires
    assert s.worst_channel in (1, 2) and s.range_used_worst_channel == pytest.approx(1.0)
    n_beyond = int(np.sum(real[:, 1] > hi + scale / 2))
    assert s.clipped == pytest.approx(n_beyond / real.size, abs=EXACT)
    assert s.error_steps_max == pytest.approx((2 * hi - hi) / scale, rel=1e-5)


def test_sqnr_against_a_formula():
    reference = np.full((10, 2), 3.0)
    approx = reference + 0.03  # 1 % error everywhere: 40 dB
    assert sqnr_db(reference, approx) == pytest.approx(40.0, abs=EXACT)
    assert sqnr_db(reference, reference) is None
    per_channel = sqnr_db(reference, approx, axis=0)
    assert per_channel == pytest.approx([40.0, 40.0], abs=EXACT)


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(dtype="int4"), "dtype must be one of"),
        (dict(scale=0.0), "scale must be a finite number > 0"),
        (dict(scale=float("nan")), "scale must be a finite number > 0"),
        (dict(codes=np.zeros((3, 2), np.int8)), "need equal non-empty shapes"),
    ],
)
def test_bad_arguments_say_what_was_received(args, message):
    call = dict(real=np.zeros((2, 2), np.float32), codes=np.zeros((2, 2), np.int8), scale=0.1,
                zero_point=0, dtype="int8") | args  # fmt: skip
    with pytest.raises(ValueError, match=message):
        tensor_stats(**call)
