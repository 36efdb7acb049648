"""The numerical proof that a translation computes what its original computes, layer by layer,
and the Keras 3 file bnpipe writes back (deterministic bytes).
"""

from __future__ import annotations

import json
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import ModelError
from pipeline.models.configcheck import KERAS2, KERAS3
from pipeline.models.cost import batch_that_fits
from pipeline.models.keras3 import parse_graph, to_tf_keras
from pipeline.models.keras3_file import flatten_nested, keras3, load_keras3
from pipeline.models.names import NAMES_ATTR, user_names
from pipeline.models.roundoff import roundoff_bounds

# The translation must compute what the original computes up to float32 round-off. Both Keras run
# the same TensorFlow kernels for Dense and the convolutions (often bit for bit), but order some
# arithmetic differently: BatchNormalization is (x − μ)·γ/√(σ² + ε) + β in one and x·s + (β − μ·s)
# (or the fused kernel) in the other, a few ulp (2⁻²⁴ ≈ 6e-8 of the value) per BN, which later
# layers can amplify by their gain. 1e-5 of the largest magnitude (≈ 170 ulp) leaves that room:
# the test models measure 0 (MLPs, 1-D: the same ops in the same order) to 5.5e-7 (the CNN, whose
# BNs tf_keras runs with the fused kernel). A real mistake is larger: a 1 % error in one of 16
# BN channels' variance measures 2.7e-4 at that BN and 9.5e-5 at the output (tests/test_keras3.py).
TRANSLATION_RTOL = 1e-5

# Random probe inputs when the caller has no data: uniform in [0, 1), the range bnpipe scales every
# data set to; 256 samples exercise every unit with varied values in a few milliseconds.
PROBE_SAMPLES = 256

# The zip format's earliest date, which both Keras already give metadata.json and config.json.
KERAS_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


# --- the numerical proof ------------------------------------------------------------------------


@dataclass(kw_only=True)
class TranslationCheck:
    """How far a translation's outputs are from the original's, over `samples` inputs (all within
    `rtol`: translation_check raises otherwise).

    A relative difference is max|original − translation| / max|original| (float64), per model
    output and per layer (each single-call layer both models name)."""

    samples: int
    rtol: float
    max_rel_diff: float  # over the model outputs
    output_rel_diffs: list[float]
    layer_rel_diffs: dict[str, float] = field(default_factory=dict)
    # Where rtol was too tight for this model's own float32 round-off: the bound it was held to.
    roundoff_bounds: dict[str, float] = field(default_factory=dict)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):  # weights near float32's limit
        return 0.0 if np.array_equal(a, b, equal_nan=True) else float("inf")
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    if diff == 0.0:
        return 0.0
    ref = float(np.max(np.abs(a)))
    return diff / ref if ref > 0 else float("inf")


def _run(model, x, batch: int = 1024) -> list[np.ndarray]:
    """Every output of `model` (either Keras) on x, in inference mode, as NumPy arrays."""
    xs = x if isinstance(x, (list, tuple)) else [x]
    chunks, batch = [], batch_that_fits(model, batch)  # within the activation budget (cost.py)
    for i in range(0, len(xs[0]), batch):
        part = [a[i : i + batch] for a in xs]
        out = model(part if len(part) > 1 else part[0], training=False)
        out = list(out.values()) if isinstance(out, dict) else out
        chunks.append([np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])])
    return [np.concatenate([c[j] for c in chunks]) for j in range(len(chunks[0]))]


def _single_call_layers(model) -> list[str]:
    graph = parse_graph(model.get_config(), KERAS3 if _is_keras3(model) else KERAS2)
    return [layer.name for layer in graph.layers if len(layer.calls) == 1]


def _is_keras3(model) -> bool:
    return type(model).__module__.startswith("keras.")


def _probe(model, names: list[str]):
    """A model of the same Keras whose outputs are the outputs of layers `names`."""
    lib = keras3() if _is_keras3(model) else _tf_keras()
    inputs = model.inputs if len(model.inputs) > 1 else model.inputs[0]
    return lib.Model(inputs, [model.get_layer(n).output for n in names])


def _tf_keras():
    from pipeline.core.tfenv import keras

    return keras()


def translation_check(original, translation, x, rtol: float = TRANSLATION_RTOL):
    """Run both models (each in its own Keras) on x and compare every output and every layer.

    `original` and `translation` may be either Keras (to_tf_keras's or to_keras3's result);
    x is (batch, *input_shape) float32, or a list of such per input. Returns a TranslationCheck;
    raises ModelError naming every output and layer off by more than `rtol` (relative).
    An item beyond `rtol` is held to the original's own float32 round-off there instead
    (roundoff.py): a deep model's round-off is no translation error. Neither model is modified.
    """
    if not rtol > 0:
        raise ValueError(f"rtol must be > 0, got {rtol}")
    a, b = _run(original, x), _run(translation, x)
    if len(a) != len(b) or any(p.shape != q.shape for p, q in zip(a, b, strict=True)):
        raise ModelError(
            f"translation has outputs {[q.shape for q in b]}, the original {[p.shape for p in a]}"
        )
    outputs = [_rel(p, q) for p, q in zip(a, b, strict=True)]
    # A model inside the original is one layer there: its own layers are probed in the
    # flattened copy (the same layers, called alike), checked above by the outputs themselves.
    probed = flatten_nested(original) if _is_keras3(original) else original
    theirs = set(_single_call_layers(translation))  # once: parsing a config is not free
    names = [n for n in _single_call_layers(probed) if n in theirs]
    layers = {}
    if names:
        for name, p, q in zip(
            names,
            _run(_probe(probed, names), x),
            _run(_probe(translation, names), x),
            strict=True,
        ):
            layers[name] = _rel(p, q) if p.shape == q.shape else float("inf")
    bounds = _bounds(probed, outputs, layers, x, rtol)
    failures = [
        f"{where}: relative difference {rel:.3g} > {bound:.3g}"
        for where, rel, bound in _checked(outputs, layers, bounds)
        if not rel <= bound
    ]
    n = len(x[0]) if isinstance(x, (list, tuple)) else len(x)
    if failures:
        raise ModelError("translation differs from the original: " + "; ".join(failures))
    raised = {w: b for w, _, b in _checked(outputs, layers, bounds) if b > rtol}
    return TranslationCheck(
        samples=n,
        rtol=rtol,
        max_rel_diff=max(outputs, default=0.0),
        output_rel_diffs=outputs,
        layer_rel_diffs=layers,
        roundoff_bounds=raised,
    )


def _checked(outputs: list[float], layers: dict[str, float], bounds: list[float]):
    """(where, relative difference, bound) for every output, then every layer."""
    one = len(outputs) == 1
    wheres = ["model output" if one else f"model output {i}" for i in range(len(outputs))]
    wheres += [f"layer {name!r}" for name in layers]
    return zip(wheres, [*outputs, *layers.values()], bounds, strict=True)


def _bounds(model, outputs: list[float], layers: dict[str, float], x, rtol: float) -> list[float]:
    """The bound each output and layer is held to: rtol, or where that fails, the float32
    round-off `model` itself carries there (roundoff.py), so depth alone never refuses a model."""
    fixed = [rtol] * (len(outputs) + len(layers))
    if all(r <= rtol for r in [*outputs, *layers.values()]):
        return fixed
    tensors = [lambda m, i=i: m.outputs[i] for i in range(len(outputs))]
    tensors += [lambda m, n=n: m.get_layer(n).output for n in layers]
    return roundoff_bounds(model, tensors, x, rtol) or fixed


def probe_inputs(model, n: int = PROBE_SAMPLES, seed: int = 0):
    """n random inputs for `model` (either Keras), uniform in [0, 1) like bnpipe's scaled data:
    one float32 array (n, *input_shape), or a list of them for a model with several inputs."""
    rng = np.random.default_rng(seed)
    xs = []
    for tensor in model.inputs:
        shape = tuple(tensor.shape)
        if any(d is None for d in shape[1:]):
            raise ModelError(f"input {tensor.name!r} has an undefined dimension: {shape}")
        batch = shape[0] if shape[0] is not None else n
        xs.append(rng.random((batch, *shape[1:]), dtype=np.float32))
    return xs[0] if len(xs) == 1 else xs


@dataclass(kw_only=True)
class Translation:
    model3: Any  # the Keras 3 model as loaded (safe mode)
    model2: Any  # its tf_keras translation
    check: TranslationCheck
    seconds: float  # load + translate + check


def translate_file(path: str | Path, x=None, rtol: float = TRANSLATION_RTOL) -> Translation:
    """Load the Keras 3 file at `path` (load_keras3), translate it (to_tf_keras) and prove the
    translation on x (default: probe_inputs). ModelError for anything refused or a failed proof."""
    t0 = time.perf_counter()
    model3 = load_keras3(path)
    model2 = user_names(to_tf_keras(model3), getattr(model3, NAMES_ATTR, {}))
    probes = probe_inputs(model3, batch_that_fits(model3, PROBE_SAMPLES)) if x is None else x
    check = translation_check(model3, model2, probes, rtol)
    return Translation(model3=model3, model2=model2, check=check, seconds=time.perf_counter() - t0)


# --- writing Keras 3 files ----------------------------------------------------------------------


def save_keras3(model3, dest: str | Path) -> Path:
    """Save the Keras 3 `model3` atomically as a `.keras` file a Keras 3 user loads with plain
    `keras.models.load_model` (safe mode). The same model gives the same bytes: the time of saving
    and Python object ids are taken out (see _deterministic). `model3` is not modified."""
    from pipeline.store.artifacts import atomic_path

    if not _is_keras3(model3):
        raise TypeError(f"save_keras3 needs a Keras 3 model, got {type(model3).__module__}")
    if not str(dest).endswith(".keras"):
        raise ValueError(f"dest must end in .keras, got {dest}")
    with atomic_path(dest, suffix=".keras") as tmp:
        model3.save(tmp, overwrite=True)
        _deterministic(tmp)
    return Path(dest)


def _deterministic(path: Path) -> None:
    """Rewrite a Keras 3 .keras archive in place without what varies from one save to the next.

    Keras 3 puts three such things in: metadata.json's "date_saved"; model.weights.h5's zip
    entry date (the time of saving); and config.json's "shared_object_id"s, which are Python
    id()s (memory addresses) of objects several layers share, e.g. the dtype policy. The ids are
    renumbered 1, 2, … in order of first appearance: Keras only matches equal ids to share one
    object, so the loaded model is the same. Entries keep their names, order, compression and
    attributes; Keras 3's loader reads neither metadata.json's date nor the entry dates.
    """
    with zipfile.ZipFile(path) as zf:
        entries = [(info, zf.read(info)) for info in zf.infolist()]
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in entries:
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta.pop("date_saved", None)
                data = json.dumps(meta).encode("utf-8")
            elif info.filename == "config.json":
                data = json.dumps(_renumbered(json.loads(data), {})).encode("utf-8")
            fixed = zipfile.ZipInfo(info.filename, date_time=KERAS_ZIP_DATE)
            fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
            zf.writestr(fixed, data)


def _renumbered(node, ids: dict):
    """A copy of `node` with every shared_object_id replaced by its rank of first appearance."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "shared_object_id":
                out[k] = ids.setdefault(v, len(ids) + 1)
            else:
                out[k] = _renumbered(v, ids)
        return out
    if isinstance(node, list):
        return [_renumbered(v, ids) for v in node]
    return node
