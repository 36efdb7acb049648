"""How much float32 round-off a model's own outputs carry: the model against its float64 twin.

A fixed relative tolerance cannot prove a deep network: every layer adds a few ulp (2⁻²⁴ ≈ 6e-8
of the value) and the layers after it amplify them, so a 27-BN MobileNet carries ~2e-5 of
round-off at its output in float32 whichever Keras runs it, more than a tolerance tight enough
to catch a wrong weight in a shallow one. So a check that fails its fixed tolerance looks at the
original once more, computed in float64 (the same weights, exactly widened): |float32 − float64|
is the round-off this model has on these inputs, layer by layer. Two float32 evaluations of one
function (another order of the same operations) each differ from the float64 one by that much,
so from each other by about twice it (triangle inequality); ROUNDOFF_FACTOR allows twice that
again for the other order's constants. A translation or fold that really computes something else
(one wrong weight) differs by far more at the layer that holds it, where the round-off is small.
"""

from __future__ import annotations

import numpy as np

ROUNDOFF_FACTOR = 4.0


def float64_twin(model):
    """A copy of `model` (either Keras; not modified) computing in float64 with its weights
    widened exactly; None when a layer cannot be rebuilt in float64 (then no round-off can be
    measured and the fixed tolerance stands)."""
    lib = _library(model)

    def widened(layer):
        config = layer.get_config()
        config["dtype"] = "float64"
        return layer.__class__.from_config(config)

    try:
        twin = lib.models.clone_model(model, clone_function=widened)
        twin.set_weights([np.asarray(w, np.float64) for w in model.get_weights()])
    except (TypeError, ValueError, KeyError, NotImplementedError):
        return None
    return twin


def _library(model):
    if type(model).__module__.startswith("keras."):
        from pipeline.models.keras3_file import keras3

        return keras3()
    from pipeline.core.tfenv import keras

    return keras()


def relative_error(reference, approx) -> float:
    """max |approx − reference| / max |reference| (float64; inf where non-finite values differ)."""
    a, b = np.asarray(reference, np.float64), np.asarray(approx, np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return 0.0 if np.array_equal(a, b, equal_nan=True) else float("inf")
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    if diff == 0.0:
        return 0.0
    ref = float(np.max(np.abs(a)))
    return diff / ref if ref > 0 else float("inf")


def roundoff_bounds(model, tensors, x, rtol: float) -> list[float] | None:
    """For each of `tensors` (callables model → that model's tensor: an output or a layer's
    output), max(rtol, ROUNDOFF_FACTOR × the float32 round-off `model` carries there on x); None
    when the float64 twin cannot be built."""
    twin = float64_twin(model)
    if twin is None:
        return None
    lib = _library(model)
    inputs = model.inputs if len(model.inputs) > 1 else model.inputs[0]
    twin_inputs = twin.inputs if len(twin.inputs) > 1 else twin.inputs[0]
    ours = lib.Model(inputs, [t(model) for t in tensors])
    wide = lib.Model(twin_inputs, [t(twin) for t in tensors])
    xs = x if isinstance(x, (list, tuple)) else [x]
    a, b = _run(ours, xs, np.float32), _run(wide, xs, np.float64)
    errors = [relative_error(q, p) for p, q in zip(a, b, strict=True)]
    # An overflow of the float32 model (inf where float64 holds a number) is not round-off: the
    # fixed tolerance stays, so such a model fails its proof in one line instead of passing.
    return [max(rtol, ROUNDOFF_FACTOR * e) if np.isfinite(e) else rtol for e in errors]


def _run(model, xs: list, dtype, batch: int = 256) -> list[np.ndarray]:
    """Every output of `model` on the inputs xs (cast to dtype), in batches of `batch`."""
    chunks = []
    for i in range(0, len(xs[0]), batch):
        part = [np.asarray(a[i : i + batch], dtype) for a in xs]
        out = _listed(model(part if len(part) > 1 else part[0], training=False))
        chunks.append([np.asarray(o) for o in out])
    return [np.concatenate([c[j] for c in chunks]) for j in range(len(chunks[0]))]


def _listed(out) -> list:
    out = list(out.values()) if isinstance(out, dict) else out
    return list(out) if isinstance(out, (list, tuple)) else [out]
