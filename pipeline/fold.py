"""Stage 2: fold every BatchNormalization that directly follows a Dense into that Dense.

At inference a BN is an affine map per output unit j:
    bn(z)_j = γ_j · (z_j − μ_j) / √(σ²_j + ε) + β_j
and z = x·W + b is affine too, so their composition is one Dense with
    s_j  = γ_j / √(σ²_j + ε)
    W'_ij = W_ij · s_j                 (W: (in, out), each output column scaled)
    b'_j  = (b_j − μ_j) · s_j + β_j
(b = 0 for a Dense without bias; β = 0 with center=False; γ = 1 with scale=False).

The fold is exact in real arithmetic only when nothing sits between the two: the Dense must have
no activation of its own, its output must feed the BN alone (not also another layer or the model
output), and the BN must normalize the last axis (the Dense's units). Anything else stays in
the model, with a warning naming it (an error under `strict`).

The new model is built from the original's config with the folded BNs removed and their consumers
rewired to the Dense, so Sequential stays Sequential and Functional stays Functional. The original
model is never mutated. The folded parameters are computed in float64 and rounded once to float32.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import artifacts, files
from .config import FoldConfig
from .errors import DataError, ModelError
from .foldmath import fold_params

BN_CLASSES = ("BatchNormalization", "CustomBatchNorm", "bnpipe>CustomBatchNorm")


@dataclass
class FoldedPair:
    dense: str
    bn: str
    bn_class: str
    epsilon: float
    center: bool
    scale: bool
    dense_had_bias: bool
    units: int
    max_abs_diff: float | None = None  # at the BN's output (original) vs the Dense's (folded)
    max_rel_diff: float | None = None


@dataclass
class SkippedBN:
    bn: str
    reason: str


@dataclass
class FoldReport:
    pairs: list[FoldedPair]
    skipped: list[SkippedBN]
    samples: int
    sample_source: str
    output_max_abs_diff: float
    output_max_rel_diff: float
    rtol: float
    passed: bool
    failures: list[str] = field(default_factory=list)


@dataclass
class FoldResult:
    folded_path: Path
    record_path: Path
    report: FoldReport
    seconds: float


# --- graph analysis on the model config -------------------------------------------------------


def _node_refs(obj):
    """Yield every [layer_name, node_index, tensor_index, ...] reference inside inbound nodes."""
    if isinstance(obj, list):
        if len(obj) >= 3 and isinstance(obj[0], str) and isinstance(obj[1], int):
            yield obj
        else:
            for item in obj:
                yield from _node_refs(item)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _node_refs(v)


def _bn_axis_ok(bn_cfg: dict, rank: int) -> bool:
    axis = bn_cfg.get("axis", -1)
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return len(axes) == 1 and axes[0] % rank == rank - 1


def _bn_blocker(bn_entry: dict) -> str | None:
    cfg = bn_entry["config"]
    if cfg.get("renorm"):
        return "uses batch renormalization"
    if cfg.get("virtual_batch_size"):
        return "uses virtual batches"
    return None


def plan_fold(model) -> tuple[list[tuple[str, str]], list[SkippedBN]]:
    """Which (dense, bn) pairs can be folded exactly, and which BNs cannot, with the reason.

    Every BN-like layer of the model, nested models included, ends up in one of the two lists:
    none is kept silently (nor would `strict` let one through).
    """
    pairs, skipped = _plan_top_level(model)
    return pairs, skipped + _other_bns(model, None)


def _other_bns(model, nested_in: str | None) -> list[SkippedBN]:
    """A SkippedBN for each BN the config-level plan does not see: inside a nested model, or of
    a class (a BatchNormalization subclass) whose behaviour bnpipe cannot vouch for."""
    from .model import is_batch_norm

    found = []
    for layer in model.layers:
        if hasattr(layer, "layers"):  # a Model used as a layer
            found += _other_bns(layer, nested_in or layer.name)
        elif nested_in is not None and is_batch_norm(layer):
            found.append(
                SkippedBN(
                    layer.name,
                    f"is inside the nested model {nested_in!r}; bnpipe "
                    "folds only the outer model's own layers",
                )
            )
        elif is_batch_norm(layer) and type(layer).__name__ not in BN_CLASSES:
            found.append(
                SkippedBN(layer.name, f"is a {type(layer).__name__}, which bnpipe does not fold")
            )
    return found


def _plan_top_level(model) -> tuple[list[tuple[str, str]], list[SkippedBN]]:
    """plan_fold on the model's own layers, read from its config."""
    config = model.get_config()
    entries = config["layers"]
    sequential = "input_layers" not in config
    pairs: list[tuple[str, str]] = []
    skipped: list[SkippedBN] = []
    by_name = {e.get("name", e["config"].get("name")): e for e in entries}
    layer_objs = {layer.name: layer for layer in model.layers}
    from .model import is_batch_norm

    def is_bn(entry, name):
        # The class name alone is not enough: another package's layer may be called
        # "CustomBatchNorm" (the article's is) and have no moving statistics to fold.
        return entry["class_name"] in BN_CLASSES and is_batch_norm(layer_objs[name])

    def rank_of(name):
        shape = layer_objs[name].output_shape
        return len(shape) if isinstance(shape, tuple) else None

    if sequential:
        names = [e["config"]["name"] for e in entries]
        for i, e in enumerate(entries):
            if not is_bn(e, names[i]):
                continue
            bn = names[i]
            prev = entries[i - 1] if i > 0 else None
            reason = _bn_blocker(e)
            if reason is None:
                reason = _dense_blocker(prev, None)
            if reason is None and not _bn_axis_ok(e["config"], rank_of(bn) or 2):
                reason = f"normalizes axis {e['config'].get('axis')}, not the last (units) axis"
            (skipped.append(SkippedBN(bn, reason)) if reason else pairs.append((names[i - 1], bn)))
        return pairs, skipped

    consumers: dict[str, list[str]] = {name: [] for name in by_name}
    for name, e in by_name.items():
        for ref in _node_refs(e.get("inbound_nodes", [])):
            consumers.setdefault(ref[0], []).append(name)
    outputs = {ref[0] for ref in _node_refs(config["output_layers"])}
    for name, e in by_name.items():
        if not is_bn(e, name):
            continue
        refs = list(_node_refs(e.get("inbound_nodes", [])))
        reason = _bn_blocker(e)
        if reason is None and (len(e.get("inbound_nodes", [])) != 1 or len(refs) != 1):
            reason = "is applied to more than one input (shared layer)"
        prev = by_name.get(refs[0][0]) if refs else None
        if reason is None:
            reason = _dense_blocker(prev, len(prev.get("inbound_nodes", [])) if prev else None)
        if reason is None:
            dense = refs[0][0]
            others = [c for c in consumers.get(dense, []) if c != name]
            if others or dense in outputs:
                what = ", ".join(others) if others else "the model output"
                reason = f"follows Dense {dense!r} whose output also feeds {what}"
        if reason is None and not _bn_axis_ok(e["config"], rank_of(name) or 2):
            reason = f"normalizes axis {e['config'].get('axis')}, not the last (units) axis"
        (skipped.append(SkippedBN(name, reason)) if reason else pairs.append((refs[0][0], name)))
    return pairs, skipped


def _dense_blocker(prev: dict | None, prev_nodes: int | None) -> str | None:
    if prev is None:
        return "is not preceded by a layer"
    cls, cfg = prev["class_name"], prev["config"]
    if cls != "Dense":
        return f"follows {cls} {cfg.get('name')!r}, not a Dense"
    if cfg.get("activation", "linear") not in ("linear", None):
        return f"follows Dense {cfg['name']!r} which has its own activation {cfg['activation']!r}"
    if prev_nodes is not None and prev_nodes != 1:
        return f"follows Dense {cfg['name']!r} which is shared by several inputs"
    return None


# --- building the folded model ----------------------------------------------------------------


def fold_model(model, strict: bool = False):
    """A new model with each foldable BN folded into its Dense. `model` is not modified.

    Returns (folded_model, pairs: list[FoldedPair], skipped: list[SkippedBN]). With strict=True
    any BN that cannot be folded raises ModelError naming every one of them.
    """
    from .tfenv import keras

    k = keras()
    plan, skipped = plan_fold(model)
    if strict and skipped:
        raise ModelError("cannot fold exactly: " + "; ".join(f"{s.bn} {s.reason}" for s in skipped))
    config = copy.deepcopy(model.get_config())
    dense_of = {bn: dense for dense, bn in plan}
    bn_names = set(dense_of)
    new_layers = []
    for e in config["layers"]:
        name = e["config"].get("name")
        if name in bn_names:
            continue
        if name in dense_of.values():
            e["config"]["use_bias"] = True
        for ref in _node_refs(e.get("inbound_nodes", [])):
            if ref[0] in bn_names:
                ref[0] = dense_of[ref[0]]
        new_layers.append(e)
    config["layers"] = new_layers
    if "output_layers" in config:
        for ref in _node_refs(config["output_layers"]):
            if ref[0] in bn_names:
                ref[0] = dense_of[ref[0]]
    from .model import custom_bn_class

    objects = {"CustomBatchNorm": custom_bn_class()}
    cls = type(model) if isinstance(model, k.Sequential) else k.Model
    folded = cls.from_config(config, custom_objects=objects)
    folded._name = f"{model.name}_folded" if hasattr(folded, "_name") else folded.name

    pairs: list[FoldedPair] = []
    for layer in folded.layers:
        if layer.name not in dense_of.values():
            layer.set_weights(model.get_layer(layer.name).get_weights())
    for dense_name, bn_name in plan:
        dense, bn = model.get_layer(dense_name), model.get_layer(bn_name)
        kernel = dense.kernel.numpy()
        bias = dense.bias.numpy() if dense.use_bias else None
        gamma = bn.gamma.numpy() if bn.scale else None
        beta = bn.beta.numpy() if bn.center else None
        w, b = fold_params(
            kernel,
            bias,
            gamma,
            beta,
            bn.moving_mean.numpy(),
            bn.moving_variance.numpy(),
            bn.epsilon,
        )
        dtype = kernel.dtype
        folded.get_layer(dense_name).set_weights([w.astype(dtype), b.astype(dtype)])
        pairs.append(
            FoldedPair(
                dense_name,
                bn_name,
                type(bn).__name__,
                float(bn.epsilon),
                bool(bn.center),
                bool(bn.scale),
                bool(dense.use_bias),
                int(kernel.shape[-1]),
            )
        )
    return folded, pairs, skipped


# --- the numerical check ----------------------------------------------------------------------


def _rel(diff_max: float, ref_max: float) -> float:
    """Largest difference relative to the reference's largest magnitude (0 when both are 0)."""
    if diff_max == 0:
        return 0.0
    return float(diff_max / ref_max) if ref_max > 0 else float("inf")


def _predict(model, x, batch=1024):
    outs = [model(x[i : i + batch], training=False) for i in range(0, len(x), batch)]
    if isinstance(outs[0], (list, tuple)):
        return [np.concatenate([np.asarray(o[j]) for o in outs]) for j in range(len(outs[0]))]
    return np.concatenate([np.asarray(o) for o in outs])


def check_fold(original, folded, pairs: list[FoldedPair], x: np.ndarray, rtol: float):
    """Compare outputs layer by layer (BN output vs folded Dense output) and at the model output.

    Fills each pair's max_abs_diff / max_rel_diff and returns (abs, rel, failures) at the output.
    A pair's relative difference is max|orig − folded| / max|orig| over the checked samples.
    """
    from .tfenv import keras

    k = keras()
    failures = []
    if pairs:
        probe_o = k.Model(original.inputs, [original.get_layer(p.bn).output for p in pairs])
        probe_f = k.Model(folded.inputs, [folded.get_layer(p.dense).output for p in pairs])
        ya, yb = _predict(probe_o, x), _predict(probe_f, x)
        ya = ya if isinstance(ya, list) else [ya]
        yb = yb if isinstance(yb, list) else [yb]
        for p, a, b in zip(pairs, ya, yb):
            d = float(np.max(np.abs(a.astype(np.float64) - b)))
            p.max_abs_diff, p.max_rel_diff = d, _rel(d, float(np.max(np.abs(a))))
            if p.max_rel_diff > rtol:
                failures.append(
                    f"{p.dense}+{p.bn}: relative difference {p.max_rel_diff:.3g} > {rtol:g}"
                )
    a, b = _predict(original, x), _predict(folded, x)
    # A Functional model may have several outputs: each is compared, the largest difference kept.
    outs_a, outs_b = (a, b) if isinstance(a, list) else ([a], [b])
    d = rel = 0.0
    for i, (oa, ob) in enumerate(zip(outs_a, outs_b)):
        di = float(np.max(np.abs(oa.astype(np.float64) - ob)))
        reli = _rel(di, float(np.max(np.abs(oa))))
        d, rel = max(d, di), max(rel, reli)
        if reli > rtol:
            where = "model output" if len(outs_a) == 1 else f"model output {i}"
            failures.append(f"{where}: relative difference {reli:.3g} > {rtol:g}")
    return d, rel, failures


def _check_inputs(model, data: str | None, model_path: Path, config: FoldConfig):
    """(x, description): test data from `data`, else the data recorded at training, else random.

    x has the model's input shape (batch, *input_shape); flat data is reshaped to it.
    """
    if len(model.inputs) != 1 or any(d is None for d in model.inputs[0].shape[1:]):
        raise ModelError(
            f"the fold is checked on models with one input of fixed shape; this model "
            f"takes {[tuple(t.shape) for t in model.inputs]}"
        )
    input_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    n_features = int(np.prod(input_shape, dtype=np.int64))
    from .data import recorded_dataset

    if data is None and not (model_path.parent / files.TRAIN_RECORD).is_file():
        rng = np.random.default_rng(0)
        x = rng.random((config.random_samples, *input_shape), dtype=np.float32)
        return x, f"{config.random_samples} uniform random inputs (no data known)"
    ds, _ = recorded_dataset([model_path.parent], data)
    if ds.preprocessing.n_features != n_features:
        raise DataError(
            f"data {ds.name!r} has {ds.preprocessing.n_features} features but the model "
            f"takes {n_features}"
        )
    x = ds.x_test[: config.check_samples].reshape((-1, *input_shape))
    return x, f"{len(x)} test samples of {ds.name}"


@artifacts.transactional
def run_fold(
    model_path: Path,
    artifacts_dir: Path,
    *,
    data: str | None = None,
    config: FoldConfig = FoldConfig(),
    warn=print,
) -> FoldResult:
    """Load, fold, check, and write folded.keras and fold.json (atomically). Raises on failure."""
    from .model import load_model, save_model

    t0 = time.perf_counter()
    model = load_model(model_path)
    folded, pairs, skipped = fold_model(model, strict=config.strict)
    for s in skipped:
        warn(f"Warning: BatchNormalization {s.bn!r} stays in the model: it {s.reason}")
    x, source = _check_inputs(model, data, model_path, config)
    d, rel, failures = check_fold(model, folded, pairs, x, config.rtol)
    report = FoldReport(pairs, skipped, len(x), source, d, rel, config.rtol, not failures, failures)
    if failures:
        raise ModelError("folded model differs from the original: " + "; ".join(failures))
    out = artifacts.ensure_dir(artifacts_dir)
    folded_path = save_model(folded, out / files.FOLDED)
    record = {
        "stage": "fold",
        "config": dataclasses.asdict(config),
        "report": report,
        "model": str(model_path),
        "outputs": {files.FOLDED: artifacts.sha256_file(folded_path)},
        "timings": {"total_s": time.perf_counter() - t0},
    }
    record_path = artifacts.write_json(
        out / files.FOLD_RECORD, record, inputs={"model": artifacts.sha256_file(model_path)}
    )
    return FoldResult(folded_path, record_path, report, time.perf_counter() - t0)
