"""One layer's output shape and weights from its config and its per-sample input shapes (no batch
axis), for the layer classes configcheck.SUPPORTED_LAYERS lists; the cost model's arithmetic
(cost.py walks the graph). Every integer hyper-parameter is checked to be one TensorFlow can
represent and a sane size; a value that is not is a ModelError naming the layer and the key.

A class not handled here keeps its input's shape (activations, normalization, dropout).
"""

from __future__ import annotations

import math

from pipeline.core.errors import ModelError
from pipeline.models.configcheck import MAX_DIM, MAX_WIDTH

MAX_RANK = 6  # axes of a tensor, the batch included: TFLite's kernels take at most 6
Shape = tuple[int, ...]
CONVS = {"Conv1D": 1, "Conv2D": 2, "DepthwiseConv2D": 2, "SeparableConv2D": 2}
POOLS = {"AveragePooling1D": 1, "AveragePooling2D": 2, "MaxPooling1D": 1, "MaxPooling2D": 2}


def integer(value, key: str, label: str, lo: int, hi: int) -> int:
    """`value` if it is an integer in [lo, hi], else ModelError naming the layer and the key."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelError(f"{label} declares {key} = {str(value)[:40]}, not an integer")
    if not lo <= value <= hi:
        raise ModelError(f"{label} declares {key} = {value:,} (from {lo:,} to {hi:,})")
    return value


def _ints(value, n: int, key: str, label: str, lo: int, hi: int) -> tuple[int, ...]:
    """An int or a list of `n` ints (kernel_size, strides …), each in [lo, hi]."""
    values = value if isinstance(value, list) else [value] * n
    if len(values) != n:
        raise ModelError(f"{label} declares {key} = {str(value)[:40]} ({n} values expected)")
    return tuple(integer(v, key, label, lo, hi) for v in values)


def layer_output(cls, cfg: dict, ins: list[Shape], label: str) -> tuple[list[Shape], int, int]:
    """(output shapes, weights, extra values a sample holds inside the layer) for one call."""
    x = ins[0] if ins and ins[0] else (1,)
    if cls == "Dense":
        units = integer(cfg.get("units"), "units", label, 1, MAX_WIDTH)
        bias = units if cfg.get("use_bias", True) else 0
        return [(*x[:-1], units)], x[-1] * units + bias, 0
    if cls in CONVS and len(x) == CONVS[cls] + 1:
        return _conv(cls, cfg, x, label)
    if cls in POOLS and len(x) == POOLS[cls] + 1:
        return _pool(cfg, x, POOLS[cls], label)
    if cls in ("GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        first = cfg.get("data_format") == "channels_first"
        c = x[0] if first else x[-1]
        return [(1,) * (len(x) - 1) + (c,) if cfg.get("keepdims") else (c,)], 0, 0
    if cls == "ZeroPadding2D" and len(x) == 3:
        return [_zero_padding(cfg, x, label)], 0, 0
    if cls == "Flatten":
        return [(math.prod(x),)], 0, 0
    if cls == "Reshape":
        return [_reshape(cfg, x, label)], 0, 0
    if cls == "Add":
        return [_broadcast(ins)], 0, 0
    if cls == "Concatenate":
        return [_concatenate(cfg, ins, label)], 0, 0
    if cls in ("BatchNormalization", "CustomBatchNorm"):
        return [x], 4 * _channels(cfg.get("axis", -1), x), 0
    return [x], 0, 0


def _channels(axis, x: Shape) -> int:
    """The size of a BN's `axis` (counted with the batch axis) in the per-sample shape x."""
    axis = axis[0] if isinstance(axis, list) and axis else axis
    if isinstance(axis, bool) or not isinstance(axis, int):
        return x[-1]
    i = axis - 1 if axis > 0 else axis
    return x[i] if -len(x) <= i < len(x) else x[-1]


def _window(
    spatial: Shape, kernel: Shape, strides: Shape, dilation: Shape, padding, label: str
) -> Shape:
    """The spatial output of a sliding window (convolution or pooling)."""
    padding = str(padding).lower()
    out = []
    for axis, (n, k, s, d) in enumerate(zip(spatial, kernel, strides, dilation, strict=True)):
        extent = (k - 1) * d + 1
        if extent > MAX_DIM:
            raise ModelError(
                f"{label} spans {extent:,} values in one axis (kernel {k:,}, dilation {d:,}; at "
                f"most {MAX_DIM:,})"
            )
        if padding == "valid":
            size = (n - extent) // s + 1
            if size < 1:
                raise ModelError(
                    f"{label} spans {extent:,} values in axis {axis + 1} of an input of "
                    f"{n:,} without padding: its output would be empty"
                )
        else:  # "same", "causal"
            size = -(-n // s)
        out.append(size)
    return tuple(out)


def _conv(cls: str, cfg: dict, x: Shape, label: str) -> tuple[list[Shape], int, int]:
    n = CONVS[cls]
    first = cfg.get("data_format") == "channels_first"
    spatial, cin = (x[1:], x[0]) if first else (x[:-1], x[-1])
    kernel = _ints(cfg.get("kernel_size"), n, "kernel_size", label, 1, MAX_DIM)
    strides = _ints(cfg.get("strides", 1), n, "strides", label, 1, MAX_DIM)
    dilation = _ints(cfg.get("dilation_rate", 1), n, "dilation_rate", label, 1, MAX_DIM)
    out = _window(spatial, kernel, strides, dilation, cfg.get("padding", "valid"), label)
    taps, extra = math.prod(kernel), 0
    bias = 1 if cfg.get("use_bias", True) else 0
    if any(d > 1 for d in dilation):
        # A dilated convolution runs as SpaceToBatchND → convolution → BatchToSpaceND, over the
        # input padded by the kernel's extent and rounded up to a multiple of the dilation.
        padded = [n_ + (k - 1) * d + d for n_, k, d in zip(spatial, kernel, dilation, strict=True)]
        extra = math.prod(padded) * cin
    if cls in ("DepthwiseConv2D", "SeparableConv2D"):
        mult = integer(cfg.get("depth_multiplier", 1), "depth_multiplier", label, 1, MAX_WIDTH)
        mid = cin * mult
        if mid > MAX_WIDTH:
            raise ModelError(
                f"{label} makes {cin:,} channels × depth_multiplier {mult:,} = {mid:,} channels "
                f"(at most {MAX_WIDTH:,})"
            )
        if cls == "DepthwiseConv2D":
            return [_with_channels(out, mid, first)], taps * mid + bias * mid, extra
        filters = integer(cfg.get("filters"), "filters", label, 1, MAX_WIDTH)
        weights = taps * mid + mid * filters + bias * filters
        return [_with_channels(out, filters, first)], weights, extra + math.prod(out) * mid
    filters = integer(cfg.get("filters"), "filters", label, 1, MAX_WIDTH)
    groups = integer(cfg.get("groups", 1), "groups", label, 1, max(1, cin))
    weights = taps * (cin // groups) * filters + bias * filters
    return [_with_channels(out, filters, first)], weights, extra


def _with_channels(spatial: Shape, channels: int, first: bool) -> Shape:
    return (channels, *spatial) if first else (*spatial, channels)


def _pool(cfg: dict, x: Shape, n: int, label: str) -> tuple[list[Shape], int, int]:
    first = cfg.get("data_format") == "channels_first"
    spatial, c = (x[1:], x[0]) if first else (x[:-1], x[-1])
    size = _ints(cfg.get("pool_size", 2), n, "pool_size", label, 1, MAX_DIM)
    given = cfg.get("strides")
    strides = size if given is None else _ints(given, n, "strides", label, 1, MAX_DIM)
    out = _window(spatial, size, strides, (1,) * n, cfg.get("padding", "valid"), label)
    return [_with_channels(out, c, first)], 0, 0


def _zero_padding(cfg: dict, x: Shape, label: str) -> Shape:
    pad = cfg.get("padding", 1)
    if isinstance(pad, list) and len(pad) == 2 and all(isinstance(p, list) for p in pad):
        pairs = [tuple(_ints(p, 2, "padding", label, 0, MAX_DIM)) for p in pad]
    else:
        h, w = _ints(pad, 2, "padding", label, 0, MAX_DIM)
        pairs = [(h, h), (w, w)]
    first = cfg.get("data_format") == "channels_first"
    spatial, c = (x[1:], x[0]) if first else (x[:-1], x[-1])
    out = tuple(n + a + b for n, (a, b) in zip(spatial, pairs, strict=True))
    return _with_channels(out, c, first)


def _reshape(cfg: dict, x: Shape, label: str) -> Shape:
    target = cfg.get("target_shape")
    if not isinstance(target, list) or len(target) + 1 > MAX_RANK:
        shown = f"{len(target):,} axes" if isinstance(target, list) else str(target)[:40]
        raise ModelError(f"{label} declares target_shape of {shown} (at most {MAX_RANK - 1} axes)")
    dims = [-1 if d == -1 else integer(d, "target_shape", label, 1, MAX_DIM) for d in target]
    if dims.count(-1) > 1:
        raise ModelError(f"{label} declares target_shape {target} with more than one -1")
    known = math.prod(d for d in dims if d != -1)
    return tuple(max(1, math.prod(x) // known) if d == -1 else d for d in dims)


def _broadcast(ins: list[Shape]) -> Shape:
    rank = max(len(s) for s in ins)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in ins]
    return tuple(max(dims) for dims in zip(*padded, strict=True))


def _concatenate(cfg: dict, ins: list[Shape], label: str) -> Shape:
    rank = max(len(s) for s in ins)
    axis = integer(cfg.get("axis", -1), "axis", label, -rank - 1, rank)
    axis = axis - 1 if axis > 0 else rank + axis if axis < 0 else 0
    same = [s for s in ins if len(s) == rank]
    out = list(_broadcast(same))
    out[axis] = sum(s[axis] for s in same)
    return tuple(out)
