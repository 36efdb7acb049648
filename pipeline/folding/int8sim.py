"""How well a float model survives int8: its output under simulated int8 quantization, against a
reference, as a signal-to-quantization-noise ratio. Fold uses it to keep cross-layer
equalization only where it does not make the int8 model worse.

The simulation quantizes what an int8 TFLite file does: each kernel symmetrically to int8 per
output channel (scale max|W|/127), and each layer's output to int8 per tensor, asymmetric, over
the range it takes on the calibration inputs (TensorFlow's fake quantization, which nudges the
range to hold 0 exactly). Biases stay float (int32 in the file: much finer than the activations).
The input is left float: equalization does not change it, so it would only add the same noise to
both sides of the comparison. It is a model of the file, not the file (no converter run, no fused
ReLUs, layer outputs quantized where TFLite might fuse two layers), cheap enough for every fold:
one clone and one pass over the calibration inputs. tf_keras models only.
"""

from __future__ import annotations

import numpy as np

WEIGHT_LEVELS = 127  # symmetric int8 weights: −127 … 127 (TFLite's int8 weight range)
QUANTIZED = ("Dense", "Conv1D", "Conv2D", "DepthwiseConv2D")  # their first weight: the kernel


def sqnr_db(reference: list[np.ndarray], approx: list[np.ndarray]) -> float:
    """10·log10(Σ reference² / Σ (reference − approx)²) over every output (float64); inf when
    they are equal."""
    signal = sum(float(np.sum(np.asarray(r, np.float64) ** 2)) for r in reference)
    noise = sum(
        float(np.sum((np.asarray(r, np.float64) - a) ** 2))
        for r, a in zip(reference, approx, strict=True)
    )
    if noise == 0:
        return float("inf")
    return 10 * np.log10(signal / noise) if signal > 0 else float("-inf")


def int8_outputs(model, x: np.ndarray, batch: int = 256) -> list[np.ndarray]:
    """The outputs of `model` (tf_keras; not modified) on x with its weights and every layer's
    output quantized to int8 as above, ranges from x itself."""
    ranges = _ranges(model, x, batch)
    quantized, wrappers = _quantized_clone(model, ranges)
    for wrapper in wrappers:
        wrapper.inner.set_weights(_int8_weights(model.get_layer(wrapper.original)))
    return _run(quantized, x, batch)


def _run(model, x, batch: int) -> list[np.ndarray]:
    chunks = []
    for i in range(0, len(x), batch):
        out = model(x[i : i + batch], training=False)
        out = out if isinstance(out, (list, tuple)) else [out]
        chunks.append([np.asarray(o) for o in out])
    return [np.concatenate([c[j] for c in chunks]) for j in range(len(chunks[0]))]


def _quantizable(layer) -> bool:
    """A layer whose single output a TFLite file would hold as an int8 tensor."""
    return type(layer).__name__ != "InputLayer" and not isinstance(layer.output, (list, tuple))


def _ranges(model, x, batch: int) -> dict[str, tuple[float, float]]:
    """{layer: (min, max) of its output over x} for every quantizable layer."""
    from pipeline.core.tfenv import keras

    layers = [layer for layer in model.layers if _quantizable(layer)]
    probe = keras().Model(model.inputs, [layer.output for layer in layers])
    outs = _run(probe, x, batch)
    pairs = zip(layers, outs, strict=True)
    return {layer.name: (float(np.min(o)), float(np.max(o))) for layer, o in pairs}


def _int8_weights(layer) -> list[np.ndarray]:
    """The layer's weights with its kernel rounded to the int8 grid, per output channel."""
    ws = layer.get_weights()
    if type(layer).__name__ not in QUANTIZED or not ws:
        return ws
    kernel = ws[0].astype(np.float64)
    # (…, output channels); a depthwise kernel (kh, kw, c, m) has output channel c·m + k
    outputs = kernel.shape[-1] * (kernel.shape[-2] if _depthwise(layer) else 1)
    flat = kernel.reshape(-1, outputs)
    scale = np.max(np.abs(flat), axis=0) / WEIGHT_LEVELS
    scale[scale == 0] = 1.0
    ws[0] = (np.round(flat / scale) * scale).reshape(kernel.shape).astype(ws[0].dtype)
    return ws


def _depthwise(layer) -> bool:
    return type(layer).__name__ == "DepthwiseConv2D"


def _quantized_clone(model, ranges: dict[str, tuple[float, float]]):
    """(a clone of `model` whose quantizable layers' outputs go through int8 fake quantization
    over `ranges`, the wrappers; their inner layers still need the weights)."""
    from pipeline.core.tfenv import keras, tf
    from pipeline.models.article import custom_bn_class

    k, t = keras(), tf()
    wrappers = []

    class QuantizedOutput(k.layers.Layer):
        def __init__(self, inner, original: str, lo: float, hi: float):
            super().__init__(name=f"{original}_int8")
            self.inner, self.original = inner, original
            self.lo, self.hi = min(lo, 0.0), max(hi, 0.0, min(lo, 0.0) + 1e-30)

        def call(self, inputs):
            y = self.inner(inputs, training=False) if self._takes_training() else self.inner(inputs)
            return t.quantization.fake_quant_with_min_max_args(y, self.lo, self.hi, num_bits=8)

        def _takes_training(self) -> bool:
            return type(self.inner).__name__ in ("Dropout", "BatchNormalization", "CustomBatchNorm")

    def wrapped(layer):
        inner = layer.__class__.from_config(layer.get_config())
        if layer.name not in ranges:
            wrappers.append(_Plain(inner, layer.name))
            return inner
        w = QuantizedOutput(inner, layer.name, *ranges[layer.name])
        wrappers.append(w)
        return w

    with k.utils.custom_object_scope({"CustomBatchNorm": custom_bn_class()}):
        clone = k.models.clone_model(model, clone_function=wrapped)
    return clone, wrappers


class _Plain:
    """A layer cloned without quantization, to receive its weights like the wrapped ones."""

    def __init__(self, inner, original: str):
        self.inner, self.original = inner, original


SAMPLES = 512  # calibration inputs for the comparison: a few seconds for a 27-BN net on 2 cores


def equalization_verdict(original, folded, equalized, records, x) -> tuple[bool, dict, list[str]]:
    """(keep the equalized model?, the record for fold.json, lines to print). Equalization is
    kept only when the simulated int8 output of the equalized model is at least as close to the
    original float model's (SQNR) as the folded model's without it, on x's first SAMPLES inputs.
    `records` are equalize.equalize's; no model is modified."""
    xs = x[:SAMPLES]
    reference = _run(original, xs, 256)
    off = sqnr_db(reference, int8_outputs(folded, xs))
    on = sqnr_db(reference, int8_outputs(equalized, xs))
    keep = bool(on >= off)
    lines = []
    for r in records:
        pair = f"{r.first} → {r.second}"
        if r.negligible:
            lines.append(
                f"equalization: {pair}: {len(r.negligible)} negligible channel(s) left out "
                "(largest weight below 2⁻²⁴ of the layer's)"
            )
        if not r.rescaled:
            lines.append(
                f"equalization: {pair} left as it was: its channel range ratio would not improve "
                f"({r.range_ratio_before:.3g})"
            )
    verdict = "kept" if keep else "not kept"
    lines.append(
        f"equalization {verdict}: simulated int8 output SQNR {on:.1f} dB with it, {off:.1f} dB "
        f"without ({len(xs)} samples)"
    )
    record = {"kept": keep, "int8_sqnr_db_on": on, "int8_sqnr_db_off": off, "samples": len(xs)}
    return keep, record, lines
