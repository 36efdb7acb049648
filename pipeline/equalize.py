"""Cross-layer equalization: give two layers joined by a ReLU the same per-channel weight ranges.

For W1 (in, C) → ReLU → W2 (C, out), ReLU(z/s) = ReLU(z)/s for any s > 0, so dividing output
channel i of the first layer (column i of W1 and b1_i) by s_i and multiplying input channel i of
the second (row i of W2) by s_i computes exactly the same function in real arithmetic. With
r1_i = max|W1[:, i]| and r2_i = max|W2[i, :]|, the choice s_i = √(r1_i · r2_i) / r2_i leaves
both ranges at √(r1_i · r2_i): a channel whose weights are 100× the others' no longer sets the
scale every other channel of a per-tensor int8 quantization must share (Nagel et al., "Data-Free
Quantization Through Weight Equalization and Bias Correction", 2019).

Pairs: Dense → Dense joined by a ReLU (the first Dense's own activation, or a ReLU or LeakyReLU
layer — both positively homogeneous; ReLU6 and thresholds are not, and stop a pair), with only
Dropout allowed between, each layer read by the next alone. Along a chain the pairs share
layers, so the equalization sweeps them until the scales settle. Pure NumPy on float64 weights;
nothing here touches a model: the caller reads and writes the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .graph import LayerGraph

SWEEPS = 20  # sweeps over a chain's pairs; equalization converges in a handful (Nagel et al.)
SETTLED = 1e-6  # stop when no scale moved by more than this (relative)


@dataclass
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


def find_pairs(model) -> list[tuple[str, str, list[str]]]:
    """(first Dense, second Dense, layers between) for every ReLU-joined pair that can be
    equalized exactly."""
    graph = LayerGraph(model)
    pairs = []
    for node in graph.nodes.values():
        if node.cls != "Dense" or node.calls != 1 or node.activation not in ("linear", "relu"):
            continue
        homogeneous, via, current = node.activation == "relu", [], node
        while (nxt := graph.sole_consumer(current.name)) is not None and nxt.calls == 1:
            if nxt.cls == "Dense":
                if homogeneous:
                    pairs.append((node.name, nxt.name, via))
                break
            if nxt.cls == "Dropout":
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


def equalize(weights: dict[str, list[np.ndarray]], pairs) -> list[EqualizedPair]:
    """Equalize each pair in `weights` ({layer: [kernel (in, out), bias (out,)]}, float64,
    mutated in place); returns a record per pair with the ranges before and after."""
    before = {(a, b): _ranges(weights, a, b) for a, b, _ in pairs}
    for _ in range(SWEEPS):
        moved = 0.0
        for a, b, _ in pairs:
            r1, r2 = _ranges(weights, a, b)
            s = np.ones_like(r1)
            ok = (r1 > 0) & (r2 > 0)  # a dead channel stays as it is
            s[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
            weights[a][0] = weights[a][0] / s
            weights[a][1] = weights[a][1] / s
            weights[b][0] = weights[b][0] * s[:, None]
            moved = max(moved, float(np.max(np.abs(s - 1.0))))
        if moved < SETTLED:
            break
    records = []
    for a, b, via in pairs:
        (r1, r2), (q1, q2) = before[(a, b)], _ranges(weights, a, b)
        records.append(EqualizedPair(a, b, list(via), _ratio(r1), _ratio(q1), r1.tolist(),
                                     r2.tolist(), q1.tolist(), q2.tolist()))  # fmt: skip
    return records


def _ranges(weights, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    """r1 (C,): max |W1| per output channel of `a`; r2 (C,): max |W2| per input channel of `b`."""
    return np.max(np.abs(weights[a][0]), axis=0), np.max(np.abs(weights[b][0]), axis=1)


def _ratio(r: np.ndarray) -> float:
    live = r[r > 0]
    return float(live.max() / live.min()) if live.size else 1.0
