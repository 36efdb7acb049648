"""What a final SOFTMAX does to verify's max-lsb gate: how many output steps one step of the
logits can move (`softmax_gain`), and how far two SOFTMAX kernels may differ on their own
(`softmax_slack`). Functions of a parsed .tflite file (tflite/file.py's TfliteInfo) alone.
"""

from __future__ import annotations


def _ends_in_softmax(info) -> bool:
    return bool(info.operators) and info.operators[-1].op == "SOFTMAX"


def softmax_gain(info) -> int:
    """Output steps that one step of the logits can move, when the model ends in SOFTMAX.

    --max-lsb counts steps of the last FULLY_CONNECTED's output (the logits), where kernels differ
    by their rounding (TFLM requantizes in two roundings, LiteRT's reference in one: ±1 step), and
    every logit may be off at once. SOFTMAX then magnifies: ∂p_i/∂z_j = p_i(δ_ij − p_j), whose
    absolute values sum over j to 2·p_i(1 − p_i) ≤ 1/2, so logits each moved by at most δ move a
    probability by at most δ/2 (mean value theorem, exact, not to first order). In output steps:
    ceil(s_in / (2·s_out)) (digits, int8: 0.047·256/2 → 7 steps). Without a final SOFTMAX: 1.
    """
    if not _ends_in_softmax(info):
        return 1
    softmax = info.operators[-1]
    t_in, t_out = info.tensors[softmax.inputs[0]], info.tensors[softmax.outputs[0]]
    if not t_in.scale or not t_out.scale:
        return 1
    import math

    return max(1, math.ceil(t_in.scale[0] / (2 * t_out.scale[0]) - 1e-9))


# Softmax kernels compute exp differently (LiteRT's reference: a float/LUT path; TFLM: fixed-point
# approximations); they may differ by this much probability on their own: one int8 step.
SOFTMAX_SLACK_PROBABILITY = 1 / 256


def softmax_slack(info) -> int:
    """Output steps two SOFTMAX kernels may differ by on the same logits (0 without a SOFTMAX).

    int8 output (scale 1/256): 1 step. int16 output (scale ≈ 3.05e-5): 128 steps, still 1/256 in
    probability — TFLM's int16 softmax interpolates a lookup table, LiteRT's reference does not.
    """
    if not _ends_in_softmax(info):
        return 0
    t_out = info.tensors[info.operators[-1].outputs[0]]
    if not t_out.scale:
        return 0
    import math

    return max(1, math.floor(SOFTMAX_SLACK_PROBABILITY / t_out.scale[0] + 1e-6))
