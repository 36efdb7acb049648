"""Cross-layer equalization: give two layers joined by a ReLU the same per-channel weight ranges.

For W1 (in, C) → ReLU → W2 (C, out), ReLU(z/s) = ReLU(z)/s for any s > 0, so dividing output
channel i of the first layer (column i of W1 and b1_i) by s_i and multiplying input channel i of
the second (row i of W2) by s_i computes exactly the same function in real arithmetic. With
r1_i = max|W1[:, i]| and r2_i = max|W2[i, :]|, the choice s_i = √(r1_i · r2_i) / r2_i leaves
both ranges at √(r1_i · r2_i): a channel whose weights are 100× the others' no longer sets the
scale every other channel of a per-tensor int8 quantization must share (Nagel et al., "Data-Free
Quantization Through Weight Equalization and Bias Correction", 2019).

Layers (channels last): Dense (kernel (in, C)), Conv1D / Conv2D with groups = 1 (kernel
(…, in, C)), DepthwiseConv2D (kernel (kh, kw, c, m): output channel c·m + k, input channel c
feeds its m outputs). Pairs: two of them joined by a ReLU (the first layer's own activation, or a
ReLU or LeakyReLU layer — both positively homogeneous; ReLU6 and thresholds are not, and stop a
pair), with only layers that act on each channel alone and commute with a positive scale in
between (Dropout, max / average / global average pooling, zero padding), each layer read by the
next alone. Flatten, Reshape, Add and Concatenate stop a pair. Along a chain the pairs share
layers, so the equalization sweeps them until the scales settle. Pure NumPy on float64 weights;
nothing here touches a model: the caller reads and writes the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.models.graph import LayerGraph

SWEEPS = 20  # sweeps over a chain's pairs; equalization converges in a handful (Nagel et al.)
SETTLED = 1e-6  # stop when no scale moved by more than this (relative)
EQUALIZABLE = ("Dense", "Conv1D", "Conv2D", "DepthwiseConv2D")
# Act on each channel alone and commute with a positive per-channel scale.
CHANNELWISE = (
    "Dropout",
    "MaxPooling1D",
    "MaxPooling2D",
    "AveragePooling1D",
    "AveragePooling2D",
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "ZeroPadding1D",
    "ZeroPadding2D",
)


@dataclass(kw_only=True)
class EqualizedPair:
    first: str
    second: str
    via: list[str]  # the activation / Dropout layers between them
    range_ratio_before: float  # max/min over channels of r1 (the first layer's output ranges)
    range_ratio_after: float
    r1_before: list[float] = field(default_factory=list)  # per channel
    r2_before: list[float] = field(default_factory=list)
    r1_after: list[float] = field(default_factory=list)
    r2_after: list[float] = field(default_factory=list)


def _equalizable(node) -> bool:
    """A layer equalize can rescale exactly: one of EQUALIZABLE, called once, channels last, a
    convolution without groups."""
    return (
        node.cls in EQUALIZABLE
        and node.calls == 1
        and node.config.get("data_format", "channels_last") == "channels_last"
        and node.config.get("groups", 1) == 1
    )


def find_pairs(model) -> list[tuple[str, str, list[str]]]:
    """(first layer, second layer, layers between) for every ReLU-joined pair that can be
    equalized exactly."""
    graph = LayerGraph(model)
    pairs = []
    for node in graph.nodes.values():
        if not _equalizable(node) or node.activation not in ("linear", "relu"):
            continue
        homogeneous, via, current = node.activation == "relu", [], node
        while (nxt := graph.sole_consumer(current.name)) is not None and nxt.calls == 1:
            if nxt.cls in EQUALIZABLE:
                if homogeneous and _equalizable(nxt):
                    pairs.append((node.name, nxt.name, via))
                break
            if nxt.cls in CHANNELWISE:
                pass
            elif _positively_homogeneous(nxt.cls, nxt.config):
                homogeneous = True
            else:
                break
            via.append(nxt.name)
            current = nxt
    return pairs


def _positively_homogeneous(cls: str, config: dict) -> bool:
    """An activation layer with f(x/s) = f(x)/s for every s > 0 (a ReLU without a cap or a
    threshold, a LeakyReLU); ReLU6 is not one."""
    if cls == "Activation":
        return config.get("activation") == "relu"
    if cls == "ReLU":
        return config.get("max_value") is None and not config.get("threshold")
    return cls == "LeakyReLU"


def equalize(
    weights: dict[str, list[np.ndarray]], pairs, classes: dict[str, str] | None = None
) -> list[EqualizedPair]:
    """Equalize each pair in `weights` ({layer: [kernel, bias (output channels,)]}, float64,
    mutated in place; `classes` {layer: class name}, Dense where not given); returns a record
    per pair with the ranges before and after."""
    classes = classes or {}
    before = {(a, b): _ranges(weights, a, b, classes) for a, b, _ in pairs}
    for _ in range(SWEEPS):
        moved = 0.0
        for a, b, _ in pairs:
            r1, r2 = _ranges(weights, a, b, classes)
            s = np.ones_like(r1)
            ok = (r1 > 0) & (r2 > 0)  # a dead channel stays as it is
            s[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
            weights[a][0] = _scale_outputs(weights[a][0], classes.get(a, "Dense"), 1 / s)
            weights[a][1] = weights[a][1] / s
            weights[b][0] = _scale_inputs(weights[b][0], s)
            moved = max(moved, float(np.max(np.abs(s - 1.0))))
        if moved < SETTLED:
            break
    records = []
    for a, b, via in pairs:
        (r1, r2), (q1, q2) = before[(a, b)], _ranges(weights, a, b, classes)
        records.append(
            EqualizedPair(
                first=a,
                second=b,
                via=list(via),
                range_ratio_before=_ratio(r1),
                range_ratio_after=_ratio(q1),
                r1_before=r1.tolist(),
                r2_before=r2.tolist(),
                r1_after=q1.tolist(),
                r2_after=q2.tolist(),
            )
        )
    return records


def output_channels(kernel: np.ndarray, cls: str) -> int:
    """How many output channels a layer of class `cls` with this kernel has."""
    if cls == "DepthwiseConv2D":
        return kernel.shape[-2] * kernel.shape[-1]
    return kernel.shape[-1]


def _by_output(kernel: np.ndarray, cls: str) -> np.ndarray:
    """The kernel as (everything else, output channel): a view."""
    return kernel.reshape(-1, output_channels(kernel, cls))


def _by_input(kernel: np.ndarray) -> np.ndarray:
    """The kernel as (input channel, everything else). Every layer here keeps its input
    channels on the second-last axis: Dense (in, out), convolutions (…, in, out), depthwise
    (kh, kw, c, m), whose channel c feeds its m outputs."""
    return np.moveaxis(kernel, -2, 0).reshape(kernel.shape[-2], -1)


def _scale_outputs(kernel: np.ndarray, cls: str, s: np.ndarray) -> np.ndarray:
    """The kernel with output channel i multiplied by s_i."""
    return (_by_output(kernel, cls) * s).reshape(kernel.shape)


def _scale_inputs(kernel: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The kernel with input channel i (the second-last axis) multiplied by s_i."""
    return kernel * s[:, None]


def _ranges(weights, a: str, b: str, classes: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """r1 (C,): max |W1| per output channel of `a`; r2 (C,): max |W2| per input channel of `b`."""
    r1 = np.max(np.abs(_by_output(weights[a][0], classes.get(a, "Dense"))), axis=0)
    r2 = np.max(np.abs(_by_input(weights[b][0])), axis=1)
    return r1, r2


def range_ratio(weights, a: str, b: str, classes: dict[str, str]) -> float:
    """max/min over the live output channels of `a` of its largest |weight|: how far apart the
    channel ranges a per-tensor int8 grid must share are."""
    return _ratio(_ranges(weights, a, b, classes)[0])


def _ratio(r: np.ndarray) -> float:
    live = r[r > 0]
    return float(live.max() / live.min()) if live.size else 1.0
