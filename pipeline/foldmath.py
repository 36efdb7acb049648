"""The arithmetic of folding an inference-mode BatchNormalization into a neighbouring layer.

At inference a BN is an affine map per channel c:
    bn(z)_c = γ_c · (z_c − μ_c) / √(σ²_c + ε) + β_c = s_c · z_c + t_c
    s_c = γ_c / √(σ²_c + ε),   t_c = β_c − μ_c · s_c
(γ = 1 with scale=False, β = 0 with center=False). Folding it into the layer before it scales
that layer's output channels; folding it into the layer after it (a Dense that reads the BN's
output) scales that layer's input rows:

    after  (Dense → BN):  W' = W · diag(s)     b' = b · s + t        W: (in, out)
    before (BN → Dense):  W' = diag(s) · W     b' = b + t · W

Both are exact in real arithmetic. Everything here is pure NumPy in float64; callers round the
result once to the model's dtype. Nothing is mutated: every function returns new arrays.
"""

from __future__ import annotations

import numpy as np

from .errors import ModelError


def bn_affine(gamma, beta, mean, variance, epsilon: float, channels: int):
    """(s, t), float64 (channels,): the BN as s·z + t. None for an absent γ or β."""

    def vec(v, default):
        return np.full(channels, default, np.float64) if v is None else np.asarray(v, np.float64)

    gamma, beta = vec(gamma, 1.0), vec(beta, 0.0)
    mean, variance = vec(mean, 0.0), vec(variance, 1.0)
    if epsilon <= 0 and np.any(variance <= 0):
        raise ModelError("a BatchNormalization with ε ≤ 0 and a zero variance cannot be folded")
    s = gamma / np.sqrt(variance + float(epsilon))
    return s, beta - mean * s


def fold_params(kernel, bias, gamma, beta, mean, variance, epsilon):
    """W', b' for Dense(kernel, bias) followed by inference-mode BN.

    kernel (in, out); bias, gamma, beta, mean, variance (out,) or None for an absent bias / γ / β.
    Returns float64 arrays (in, out) and (out,).
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    units = kernel.shape[-1]
    s, _ = bn_affine(gamma, beta, mean, variance, epsilon, units)
    b = np.zeros(units) if bias is None else np.asarray(bias, np.float64)
    mean = np.zeros(units) if mean is None else np.asarray(mean, np.float64)
    beta = np.zeros(units) if beta is None else np.asarray(beta, np.float64)
    # (b − μ)·s + β rather than b·s + t: one rounding fewer where b = μ (the usual case).
    return kernel * s, (b - mean) * s + beta


def fold_after(kernel, bias, s, t):
    """W · diag(s), b·s + t: a BN (s, t) after a layer whose output channels are kernel's last
    axis (Dense (in, out); also Conv (…, in, out)). bias None means zero."""
    kernel = np.asarray(kernel, dtype=np.float64)
    b = np.zeros(kernel.shape[-1]) if bias is None else np.asarray(bias, np.float64)
    return kernel * s, b * s + t


def fold_before(kernel, bias, s, t):
    """diag(s) · W, b + t·W: a BN (s, t) on the input of a Dense with kernel (in, out).

    The BN's channels are the Dense's input features. bias None means zero.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    b = np.zeros(kernel.shape[-1]) if bias is None else np.asarray(bias, np.float64)
    return kernel * s[:, None], b + t @ kernel
