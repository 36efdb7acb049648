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

from pipeline.core.errors import ModelError


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


# --- convolutions ------------------------------------------------------------------------------
#
# Keras stores every convolution kernel channels-last whatever its data_format, so the
# arithmetic below does not depend on it (the BN must normalize the channel axis: the caller
# checks that). Shapes, with k… the spatial kernel axes (1 for Conv1D, 2 for Conv2D, 3 for
# Conv3D):
#     Conv          (k…, in / groups, out)        output channel o is the last axis
#     Depthwise     (k…, in, mult)                output channel of (c, m) is c·mult + m
#     Separable     depthwise (k…, in, mult), pointwise (1…, in·mult, out), one bias (out,)
#
# After (conv → BN): the BN scales each output channel, so each output channel's kernel slice
# and bias are scaled, exactly as for Dense. This holds for any stride, padding, dilation and
# groups, since every output channel is a linear function of the input plus its own bias.
#
# Before (BN → conv): the conv reads s_i·x + t_i. Where every output position's window lies on
# real input (nothing padded), each output o is
#     Σ_{k,i} W[k,i,o]·(s_i·x + t_i) + b_o = Σ_{k,i} (s_i·W[k,i,o])·x + (b_o + Σ_{k,i} t_i·W[k,i,o])
# so W' = s_i·W and b' = b + Σ over the window and inputs of t_i·W. Zero padding breaks it: the
# original conv reads zeros at padded positions, the folded one would need t_i there (its
# x = 0 contributes s_i·0, but its bias assumes t_i from every tap). So it is exact with
# "valid" padding (any stride, dilation), and with "same"/"causal" only where no zero is
# actually padded (a 1×1 kernel; or "same" when the sizes happen to need none).


def _channel_check(what: str, channels: int, s) -> None:
    if len(s) != channels:
        raise ModelError(f"{what} has {channels} output channels but the BN has {len(s)}")


def _bias(bias, channels: int) -> np.ndarray:
    return np.zeros(channels) if bias is None else np.asarray(bias, np.float64)


def fold_conv_after(kernel, bias, s, t):
    """W', b' for Conv1D/2D/3D (kernel (k…, in/groups, out)) followed by the BN (s, t): each
    output channel scaled. bias None means zero. New float64 arrays."""
    kernel = np.asarray(kernel, dtype=np.float64)
    _channel_check("the layer", kernel.shape[-1], s)
    return kernel * s, _bias(bias, kernel.shape[-1]) * s + t


def fold_transpose_after(kernel, bias, s, t):
    """W', b' for Conv1DTranspose/Conv2DTranspose (kernel (k…, out, in): Keras keeps a transposed
    kernel with its output channels on the second-to-last axis, axis 2 of a 2-D one) followed by
    the BN (s, t): each output channel's slice kernel[…, o, :] times s[o]."""
    kernel = np.asarray(kernel, dtype=np.float64)
    _channel_check("the layer", kernel.shape[-2], s)
    return kernel * np.asarray(s, np.float64)[:, None], _bias(bias, kernel.shape[-2]) * s + t


def fold_depthwise_after(kernel, bias, s, t):
    """W', b' for a DepthwiseConv (kernel (k…, in, mult), bias (in·mult,)) followed by the BN
    (s, t) over its in·mult output channels, channel c·mult + m holding (c, m)."""
    kernel = np.asarray(kernel, dtype=np.float64)
    channels, mult = kernel.shape[-2], kernel.shape[-1]
    _channel_check("the depthwise convolution", channels * mult, s)
    # s is ordered c·mult + m, which is row-major (in, mult): s.reshape(in, mult)[c, m].
    return kernel * np.reshape(s, (channels, mult)), _bias(bias, channels * mult) * s + t


def fold_separable_after(pointwise, bias, s, t):
    """Pointwise', b' for a SeparableConv (pointwise kernel (1…, in·mult, out)) followed by the
    BN (s, t): the BN scales the pointwise part's outputs; the depthwise kernel is unchanged."""
    return fold_conv_after(pointwise, bias, s, t)


def _spatial_sum(kernel: np.ndarray) -> np.ndarray:
    """Σ over the spatial axes: (k…, a, b) → (a, b)."""
    return kernel.reshape(-1, *kernel.shape[-2:]).sum(axis=0)


def fold_conv_before(kernel, bias, s, t):
    """W', b' for the BN (s, t) on the input channels of a Conv1D/2D/3D with groups = 1 and no
    zero padding (see before_fold_blocker): W'[k,i,o] = s_i·W[k,i,o], b' = b + Σ_{k,i} t_i·W."""
    kernel = np.asarray(kernel, dtype=np.float64)
    if len(s) != kernel.shape[-2]:
        raise ModelError(
            f"the convolution reads {kernel.shape[-2]} channels per group but the BN has "
            f"{len(s)}; a BN folds forward only into a convolution with groups = 1"
        )
    b = _bias(bias, kernel.shape[-1])
    return kernel * s[:, None], b + t @ _spatial_sum(kernel)


def fold_depthwise_before(kernel, bias, s, t):
    """W', b' for the BN (s, t) on the input channels of a DepthwiseConv (kernel (k…, in, mult))
    with no zero padding: W'[k,c,m] = s_c·W[k,c,m], b'[c·mult + m] = b + t_c·Σ_k W[k,c,m]."""
    kernel = np.asarray(kernel, dtype=np.float64)
    channels, mult = kernel.shape[-2], kernel.shape[-1]
    if len(s) != channels:
        raise ModelError(f"the depthwise convolution reads {channels} channels, the BN {len(s)}")
    shift = (t[:, None] * _spatial_sum(kernel)).reshape(-1)  # (in, mult) → c·mult + m
    return kernel * s[:, None], _bias(bias, channels * mult) + shift


def fold_separable_before(depthwise, pointwise, bias, s, t):
    """(depthwise', pointwise, b') for the BN (s, t) on a SeparableConv's input, no zero padding.

    The depthwise part takes the scale; its constant t_c·Σ_k D[k,c,m] per channel c·mult + m
    goes through the pointwise kernel into the one bias: b' = b + shift · P. The pointwise
    kernel is returned as a float64 copy, unchanged.
    """
    d, shift = fold_depthwise_before(depthwise, None, s, t)
    p = np.asarray(pointwise, dtype=np.float64)
    b = _bias(bias, p.shape[-1])
    return d, p.copy(), b + shift @ p.reshape(-1, p.shape[-1])


# --- a Keras layer's weight list, by class ------------------------------------------------------
#
# The lists are what Keras's get_weights() / set_weights() hold, for tf_keras and Keras 3 alike:
#     Dense, Conv…       [kernel, bias?]
#     DepthwiseConv…     [depthwise_kernel, bias?]
#     SeparableConv…     [depthwise_kernel, pointwise_kernel, bias?]
# The folded list always ends with a bias: the caller sets use_bias=True on the layer's config.

CONV_CLASSES = ("Conv1D", "Conv2D", "Conv3D")
TRANSPOSE_CLASSES = ("Conv1DTranspose", "Conv2DTranspose")  # folded after only (see blocker)
DEPTHWISE_CLASSES = ("DepthwiseConv1D", "DepthwiseConv2D")
SEPARABLE_CLASSES = ("SeparableConv1D", "SeparableConv2D")
FOLDABLE_CLASSES = (
    "Dense",
    *CONV_CLASSES,
    *TRANSPOSE_CLASSES,
    *DEPTHWISE_CLASSES,
    *SEPARABLE_CLASSES,
)


def _split_weights(class_name: str, weights) -> tuple[list[np.ndarray], np.ndarray | None]:
    """(kernels, bias or None) of a weight list, checked against its class's layout."""
    kernels = 2 if class_name in SEPARABLE_CLASSES else 1
    if class_name not in FOLDABLE_CLASSES:
        raise ModelError(f"a BatchNormalization cannot be folded into a {class_name}")
    if len(weights) not in (kernels, kernels + 1):
        raise ModelError(
            f"a {class_name} holds {kernels} kernel(s) and an optional bias, got "
            f"{len(weights)} weight arrays"
        )
    bias = weights[kernels] if len(weights) > kernels else None
    return [np.asarray(w) for w in weights[:kernels]], bias


def fold_after_layer(class_name: str, weights, s, t) -> list[np.ndarray]:
    """The weight list of a `class_name` layer with the BN (s, t) on its output folded in.

    float64 arrays in Keras's order, bias included; `weights` is not modified.
    """
    kernels, bias = _split_weights(class_name, weights)
    if class_name in DEPTHWISE_CLASSES:
        return list(fold_depthwise_after(kernels[0], bias, s, t))
    if class_name in TRANSPOSE_CLASSES:
        return list(fold_transpose_after(kernels[0], bias, s, t))
    if class_name in SEPARABLE_CLASSES:
        w, b = fold_separable_after(kernels[1], bias, s, t)
        return [np.array(kernels[0], np.float64), w, b]  # a copy, even of float64
    return list(fold_conv_after(kernels[0], bias, s, t))  # Dense (in, out) is the 0-d case


def fold_before_layer(class_name: str, weights, s, t) -> list[np.ndarray]:
    """The weight list of a `class_name` layer with the BN (s, t) on its input folded in.

    Exact only where before_fold_blocker(class_name, config) is None: check that first.
    float64 arrays in Keras's order, bias included; `weights` is not modified.
    """
    if class_name in TRANSPOSE_CLASSES:  # folded after only: see before_fold_blocker
        raise ModelError(f"a BatchNormalization cannot be folded into a {class_name} it feeds")
    kernels, bias = _split_weights(class_name, weights)
    if class_name == "Dense":
        return list(fold_before(kernels[0], bias, s, t))
    if class_name in DEPTHWISE_CLASSES:
        return list(fold_depthwise_before(kernels[0], bias, s, t))
    if class_name in SEPARABLE_CLASSES:
        return list(fold_separable_before(kernels[0], kernels[1], bias, s, t))
    return list(fold_conv_before(kernels[0], bias, s, t))


def after_fold_blocker(class_name: str, config: dict) -> str | None:
    """Why a BN right after this layer cannot be folded into it, or None (it can, exactly).

    Only the layer's own properties; the graph (does the layer feed the BN alone? does the BN
    normalize the channel axis?) is the caller's to check.
    """
    if class_name not in FOLDABLE_CLASSES:
        return f"follows a {class_name}, which bnpipe does not fold into"
    activation = config.get("activation", "linear")
    if activation not in ("linear", None):
        return f"follows a {class_name} with its own activation {activation!r}"
    return None


def _as_tuple(value, rank: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (int(value),) * rank


def zero_padding(config: dict, input_spatial=None) -> tuple[int, ...] | None:
    """Zeros padded along each spatial axis (before + after) by a conv with `config`; None when
    that depends on the input size and `input_spatial` (e.g. (H, W)) is not given.

    "same" pads max((⌈n/stride⌉ − 1)·stride + k_eff − n, 0), k_eff = (k − 1)·dilation + 1;
    "causal" pads k_eff − 1; "valid" nothing. A kernel with k_eff = 1 never pads.
    """
    kernel_size = config.get("kernel_size", 1)
    rank = len(kernel_size) if isinstance(kernel_size, (list, tuple)) else 1
    ks = _as_tuple(kernel_size, rank)
    strides = _as_tuple(config.get("strides", 1), rank)
    dilation = _as_tuple(config.get("dilation_rate", 1), rank)
    k_eff = [(k - 1) * d + 1 for k, d in zip(ks, dilation, strict=True)]
    padding = str(config.get("padding", "valid")).lower()
    if padding == "valid" or all(k == 1 for k in k_eff):
        return (0,) * rank
    if padding == "causal":
        return tuple(k - 1 for k in k_eff)
    if input_spatial is None:
        return None
    sizes = _as_tuple(input_spatial, rank)
    if len(sizes) != rank:
        raise ModelError(f"a {rank}-d convolution's input size needs {rank} numbers, got {sizes}")
    steps = zip(sizes, strides, k_eff, strict=True)
    return tuple(max((-(-n // st) - 1) * st + k - n, 0) for n, st, k in steps)


def before_fold_blocker(class_name: str, config: dict, input_spatial=None) -> str | None:
    """Why a BN right before this layer cannot be folded forward into it, or None (exactly).

    Dense: always exact. Convolutions: groups must be 1 and nothing may be zero-padded (see
    zero_padding; pass the conv's input size (H, W) to settle "same" with a larger kernel).
    """
    if class_name not in FOLDABLE_CLASSES:
        return f"feeds a {class_name}, which bnpipe does not fold into"
    if class_name == "Dense":
        return None
    if class_name in TRANSPOSE_CLASSES:
        # Each output position sums the kernel taps that reach it, fewer at the borders, so the
        # BN's shift t would become a bias that varies with position: not one per channel.
        return f"feeds a {class_name}, whose border outputs sum fewer taps than the others"
    if int(config.get("groups", 1) or 1) != 1:
        return f"feeds a {class_name} with groups={config['groups']}"
    pads = zero_padding(config, input_spatial)
    padding = config.get("padding")
    if pads is None:
        return (
            f"feeds a {class_name} with padding {padding!r} whose input size is unknown, so "
            "it may pad zeros where the BN's shift would have been"
        )
    if any(pads):
        return (
            f"feeds a {class_name} with padding {padding!r} that pads {list(pads)} zeros, "
            "where the BN would have given its shift t (folding forward is exact only "
            "without padding)"
        )
    return None
