"""Stage 2: fold every BatchNormalization into a neighbouring layer, exactly, and prove it.

At inference a BN is the per-channel affine map s·z + t (foldmath.py). It disappears into
    after   the layer that feeds it (Dense → BN): that layer's output channels are scaled;
            exact when the layer has no activation of its own and the BN alone reads its output;
    before  the Dense that reads it (BN → Dense, BN as the first layer, or Dense(relu) → BN →
            Dense): that Dense's input rows are scaled and its bias shifted; exact when the BN's
            output reaches only that Dense, directly or through Dropout (the identity at
            inference) or Flatten (input i of the Dense is then channel i mod C of the BN).
"after" is tried first (the Dense → BN → ReLU of the seed article). The BN must normalize the
last axis and be called once. A BN that neither way can remove stays in the model, with both
reasons (a warning; an error under `strict`).

The new model is built from the original's config with the folded BNs removed and their
readers rewired to the BN's input, so Sequential stays Sequential and Functional stays
Functional; the original is never mutated. The folded parameters are computed in float64 and
rounded once to float32. The check runs both models layer by layer (each absorbing layer's
output, or the BN's where the BN was after it) and end to end, on test data.

A model saved by Keras 3 is folded in its tf_keras translation (keras3.py) and written back as a
Keras 3 file, checked against the original in its own Keras.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.config import FoldConfig
from pipeline.core.errors import ModelError
from pipeline.folding.maths import bn_affine, fold_after_layer, fold_before_layer, fold_params
from pipeline.folding.plan import Plan, SkippedBN, plan_fold
from pipeline.models.cost import batch_that_fits
from pipeline.models.graph import LayerGraph, node_refs
from pipeline.store import artifacts, files


@dataclass(kw_only=True)
class FoldedPair:
    layer: str  # the layer the BN went into
    bn: str
    bn_class: str
    epsilon: float
    center: bool
    scale: bool
    layer_had_bias: bool
    units: int  # the BN's channels
    direction: str = "after"  # "after": layer → BN; "before": BN → layer
    layer_class: str = "Dense"
    via: list[str] = field(default_factory=list)  # Dropout / Flatten between BN and layer
    max_abs_diff: float | None = None  # where the two models must agree (see check_fold)
    max_rel_diff: float | None = None


@dataclass(kw_only=True)
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
    saved_by: str = "keras2"  # the Keras of the input (and of folded.keras)
    translation: dict = field(default_factory=dict)  # Keras 3: the translation checks
    equalized: list = field(default_factory=list)  # EqualizedPair: cross-layer equalization
    equalization: dict = field(default_factory=dict)  # kept or not, and the SQNRs that decided


@dataclass(kw_only=True)
class FoldResult:
    folded_path: Path
    record_path: Path
    report: FoldReport
    seconds: float


# --- building the folded model ------------------------------------------------------------------


def fold_model(model, strict: bool = False):
    """A new model with each foldable BN folded into its neighbour. `model` is not modified.

    Returns (folded_model, pairs: list[FoldedPair], skipped: list[SkippedBN]). With strict=True
    any BN that cannot be folded raises ModelError naming every one of them.
    """
    plans, skipped = plan_fold(model)
    if strict and skipped:
        raise ModelError("cannot fold exactly: " + "; ".join(f"{s.bn} {s.reason}" for s in skipped))
    folded = _without_bns(model, plans)
    absorbers = {p.layer for p in plans}
    for layer in folded.layers:
        if layer.name not in absorbers:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    # Folds into one layer compose: the BN before it first (its inputs), then the BN after it.
    ordered = sorted(plans, key=lambda p: p.direction != "before")
    weights = {
        n: [w.astype(np.float64) for w in model.get_layer(n).get_weights()] for n in absorbers
    }
    pairs = []
    for plan in ordered:
        weights[plan.layer], pair = _fold_one(model, plan, weights[plan.layer])
        pairs.append(pair)
    for name, values in weights.items():
        dtype = model.get_layer(name).get_weights()[0].dtype
        folded.get_layer(name).set_weights([w.astype(dtype) for w in values])
    order = [p.bn for p in plans]
    pairs.sort(key=lambda p: order.index(p.bn))
    return folded, pairs, skipped


def _fold_one(model, plan: Plan, weights: list[np.ndarray]):
    """(the layer's weight list, bias included, with `plan`'s BN folded in, float64; the
    FoldedPair describing it)."""
    bn, layer = model.get_layer(plan.bn), model.get_layer(plan.layer)
    cls = type(layer).__name__
    gamma = bn.gamma.numpy() if bn.scale else None
    beta = bn.beta.numpy() if bn.center else None
    mean, variance = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    channels = int(mean.shape[-1])
    if plan.direction == "after" and cls == "Dense":
        # (b − μ)·s + β, bit for bit what fold_params gives (tests/test_fold.py checks it)
        bias = weights[1] if len(weights) > 1 else None
        new = list(fold_params(weights[0], bias, gamma, beta, mean, variance, bn.epsilon))
    else:
        s, t = bn_affine(gamma, beta, mean, variance, bn.epsilon, channels)
        if plan.direction == "after":
            new = fold_after_layer(cls, weights, s, t)
        else:
            new = fold_before_layer(cls, weights, *_tiled(plan, s, t, weights[0], cls))
    pair = FoldedPair(
        layer=plan.layer,
        bn=plan.bn,
        bn_class=type(bn).__name__,
        epsilon=float(bn.epsilon),
        center=bool(bn.center),
        scale=bool(bn.scale),
        layer_had_bias=bool(layer.use_bias),
        units=channels,
        direction=plan.direction,
        layer_class=cls,
        via=list(plan.via),
    )
    return new, pair


def _tiled(plan: Plan, s, t, kernel: np.ndarray, cls: str):
    """s, t over the absorbing layer's inputs: through Flatten into a Dense (kernel (in, out)),
    input i is channel i mod C of the BN (channels last), so they repeat; a convolution's inputs
    are the channels themselves."""
    channels, inputs = len(s), kernel.shape[0]
    if cls != "Dense" or inputs == channels:
        return s, t
    if inputs % channels:
        raise ModelError(f"{plan.bn} has {channels} channels but {plan.layer} reads {inputs}")
    return np.tile(s, inputs // channels), np.tile(t, inputs // channels)


def _without_bns(model, plans: list[Plan]):
    """A new, unweighted model from `model`'s config without the planned BNs: each BN's readers
    read the BN's input instead, and every absorbing layer gets a bias."""
    from pipeline.core.tfenv import keras
    from pipeline.models.article import custom_bn_class

    k = keras()
    config = copy.deepcopy(model.get_config())
    graph = LayerGraph(model)
    source = {p.bn: graph.nodes[p.bn].inputs[0] for p in plans}
    absorbers = {p.layer for p in plans}
    kept = []
    for e in config["layers"]:
        name = e["config"].get("name", e.get("name"))
        if name in source:
            continue
        if name in absorbers:
            e["config"]["use_bias"] = True
        for ref in node_refs(e.get("inbound_nodes", [])):
            while ref[0] in source:  # BN → BN chains resolve to the first real producer
                ref[0] = source[ref[0]]
        kept.append(e)
    config["layers"] = kept
    for ref in node_refs(config.get("output_layers", [])):
        while ref[0] in source:
            ref[0] = source[ref[0]]
    cls = type(model) if isinstance(model, k.Sequential) else k.Model
    folded = cls.from_config(config, custom_objects={"CustomBatchNorm": custom_bn_class()})
    folded._name = f"{model.name}_folded"
    return folded


# --- the numerical check ------------------------------------------------------------------------


def _rel(diff_max: float, ref_max: float) -> float:
    """Largest difference relative to the reference's largest magnitude (0 when both are 0)."""
    if diff_max == 0:
        return 0.0
    return float(diff_max / ref_max) if ref_max > 0 else float("inf")


def predict(model, x, batch: int = 1024):
    """model(x) in inference mode, in batches; an array, or a list for several outputs."""
    batch = batch_that_fits(model, batch)  # within the activation budget (models/cost.py)
    outs = [model(x[i : i + batch], training=False) for i in range(0, len(x), batch)]
    if isinstance(outs[0], (list, tuple)):
        return [np.concatenate([np.asarray(o[j]) for o in outs]) for j in range(len(outs[0]))]
    return np.concatenate([np.asarray(o) for o in outs])


def compare_outputs(a, b) -> tuple[float, float, list[tuple[int, float]]]:
    """(max abs diff, max rel diff, [(output index, rel diff)]) of two models' outputs."""
    outs_a, outs_b = (a, b) if isinstance(a, list) else ([a], [b])
    d = rel = 0.0
    each = []
    for i, (oa, ob) in enumerate(zip(outs_a, outs_b, strict=True)):
        di = float(np.max(np.abs(oa.astype(np.float64) - ob)))
        reli = _rel(di, float(np.max(np.abs(oa))))
        d, rel = max(d, di), max(rel, reli)
        each.append((i, reli))
    return d, rel, each


def check_fold(
    original, folded, pairs: list[FoldedPair], x: np.ndarray, rtol: float, roundoff: bool = True
):
    """Compare layer by layer and at the model output. Fills each pair's max_abs_diff and
    max_rel_diff; returns (abs, rel, failures) at the output, every failing item listed.

    The folded layer's output is compared with the original's BN output where a BN came after
    that layer, else with the original layer's own output. A pair's relative difference is
    max|orig − folded| / max|orig| over the checked samples.
    """
    from pipeline.core.tfenv import keras

    k = keras()
    names_o, rels = [], []
    if pairs:
        # A layer that took a BN after it computes, folded, what that BN computed.
        after = {p.layer: p.bn for p in pairs if p.direction == "after"}
        names_o = [after.get(p.layer, p.layer) for p in pairs]
        probe_o = k.Model(original.inputs, [original.get_layer(n).output for n in names_o])
        probe_f = k.Model(folded.inputs, [folded.get_layer(p.layer).output for p in pairs])
        ya, yb = predict(probe_o, x), predict(probe_f, x)
        ya, yb = (ya, yb) if isinstance(ya, list) else ([ya], [yb])
        for p, a, b in zip(pairs, ya, yb, strict=True):
            d = float(np.max(np.abs(a.astype(np.float64) - b)))
            p.max_abs_diff, p.max_rel_diff = d, _rel(d, float(np.max(np.abs(a))))
            rels.append(p.max_rel_diff)
    d, rel, each = compare_outputs(predict(original, x), predict(folded, x))
    rels += [r for _, r in each]
    bounds = roundoff_tolerances(original, names_o, rels, x, rtol, roundoff)
    failures = [f"{p.layer}+{p.bn}: relative difference {r:.3g} > {b:.3g}"
                for p, r, b in zip(pairs, rels, bounds, strict=False) if r > b]  # fmt: skip
    for (i, reli), b in zip(each, bounds[len(pairs) :], strict=True):
        if reli > b:
            where = "model output" if len(each) == 1 else f"model output {i}"
            failures.append(f"{where}: relative difference {reli:.3g} > {b:.3g}")
    return d, rel, failures


def roundoff_tolerances(
    model, layers: list[str], rels: list[float], x, rtol: float, roundoff: bool = True
):
    """The bound for each of `layers`' outputs then each model output of `model`, whose relative
    differences are `rels`: rtol, or where that fails and `roundoff`, the float32 round-off
    `model` itself carries there (models/roundoff.py): depth alone never fails a fold."""
    from pipeline.models.roundoff import roundoff_bounds

    if not roundoff or all(r <= rtol for r in rels):
        return [rtol] * len(rels)
    tensors = [lambda m, n=n: m.get_layer(n).output for n in layers]
    tensors += [lambda m, i=i: m.outputs[i] for i in range(len(rels) - len(layers))]
    return roundoff_bounds(model, tensors, x, rtol) or [rtol] * len(rels)


# --- the stage ----------------------------------------------------------------------------------


def check_inputs(model, data: str | None, model_path: Path, config: FoldConfig):
    """(x, description): test data from `data`, else the data recorded at training, else random
    inputs; x is (n, *input_shape) of `model` (data is reshaped to it, DataError if it cannot)."""
    from pipeline.data.dataset import recorded_dataset, shaped
    from pipeline.models.door import input_shape

    shape = input_shape(model)
    if data is None and not (model_path.parent / files.TRAIN_RECORD).is_file():
        rng = np.random.default_rng(0)
        n = batch_that_fits(model, config.random_samples)  # held whole: within the budget
        x = rng.random((n, *shape), dtype=np.float32)
        return x, f"{n} uniform random inputs (no data known)"
    ds, _ = recorded_dataset([model_path.parent], data, model)
    x = shaped(ds.x_test[: config.check_samples], shape)
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
    """Load, fold, check, and write folded.keras and fold.json (atomically). Raises on failure.

    folded.keras is written in the Keras that saved the input, so its user loads it with the
    code they already have."""
    from pipeline.models.configcheck import KERAS3
    from pipeline.models.door import ModelFile
    from pipeline.models.names import NAMES_ATTR, with_user_names

    t0 = time.perf_counter()
    mf = ModelFile.open(model_path)  # the file's one read: checked, fingerprinted, copied
    kind = mf.kind
    x, source = check_inputs(mf.reference(), data, model_path, config)
    model = mf.tf_keras(x)  # tf_keras (a Keras 3 model translated and proved on x)
    folded, pairs, skipped = fold_model(model, strict=config.strict)
    for s in skipped:
        warn(f"Warning: BatchNormalization {s.bn!r} stays in the model: it {s.reason}")
    d, rel, failures = check_fold(model, folded, pairs, x, config.rtol, config.roundoff)
    equalized, verdict = [], {}
    if config.equalize and not failures:
        folded, equalized, verdict, (d, rel, more) = _equalized(model, folded, x, config, warn)
        failures += more
    translation, to_save = {}, folded
    if kind == KERAS3 and not failures:
        to_save, translation, (d, rel, more) = _back_to_keras3(mf, folded, x, config)
        failures += more
    report = FoldReport(
        pairs=pairs,
        skipped=skipped,
        samples=len(x),
        sample_source=source,
        output_max_abs_diff=d,
        output_max_rel_diff=rel,
        rtol=config.rtol,
        passed=not failures,
        failures=failures,
        saved_by=kind,
        translation=translation,
        equalized=equalized,
        equalization=verdict,
    )
    report = with_user_names(report, getattr(model, NAMES_ATTR, {}))  # the names they wrote
    if failures:
        raise ModelError("folded model differs from the original: " + "; ".join(failures))
    return _write(artifacts_dir, mf, to_save, config, report, t0)


def _pairs_to_equalize(folded, config: FoldConfig):
    """(pairs, weights, classes): the ReLU-joined pairs whose first layer's channel ranges span
    at least config.equalize_from, with their weights as float64 [kernel, bias] (a zero bias
    where a layer has none) and class names, for equalize.equalize."""
    from pipeline.folding.equalize import find_pairs, output_channels, range_ratio

    found = find_pairs(folded)
    names = {n for a, b, _ in found for n in (a, b)}
    classes = {n: type(folded.get_layer(n)).__name__ for n in names}
    weights = {}
    for n in names:
        ws = [w.astype(np.float64) for w in folded.get_layer(n).get_weights()]
        bias = ws[1] if len(ws) > 1 else np.zeros(output_channels(ws[0], classes[n]))
        weights[n] = [ws[0], bias]
    pairs = [p for p in found if range_ratio(weights, p[0], p[1], classes) >= config.equalize_from]
    kept = {n for a, b, _ in pairs for n in (a, b)}
    return pairs, {n: weights[n] for n in kept}, {n: classes[n] for n in kept}


def _equalized(original, folded, x, config: FoldConfig, warn):
    """(the folded model with its ReLU-joined layer pairs equalized when that does not worsen its
    simulated int8 output (int8sim.py; else the folded model), the EqualizedPair records, that
    verdict, (abs, rel, failures) of the result against the original). The last layer of each
    chain of pairs must compute what it computed before equalization, and the model what the
    original does."""
    from pipeline.folding.int8sim import equalization_verdict

    pairs, weights, classes = _pairs_to_equalize(folded, config)
    if not pairs:
        return folded, [], {}, check_fold(original, folded, [], x, config.rtol, config.roundoff)
    result, records, checked = _equalize_pairs(original, folded, x, config, pairs, weights, classes)
    if checked[2]:
        return result, records, {}, checked
    keep, verdict, lines = equalization_verdict(original, folded, result, records, x)
    for line in lines:
        warn(line)
    if keep:
        return result, records, verdict, checked
    return (
        folded,
        records,
        verdict,
        check_fold(original, folded, [], x, config.rtol, config.roundoff),
    )


def _equalize_pairs(original, folded, x, config: FoldConfig, pairs, weights, classes):
    """(a copy of `folded` with `pairs` equalized, the records, (abs, rel, failures))."""
    from pipeline.core.tfenv import keras
    from pipeline.folding.equalize import equalize

    records = equalize(weights, pairs, classes)
    k = keras()
    result = k.models.clone_model(folded)
    result.set_weights(folded.get_weights())
    for n, (kernel, bias) in weights.items():
        layer = result.get_layer(n)
        new = [kernel.astype(np.float32)] + ([bias.astype(np.float32)] if layer.use_bias else [])
        layer.set_weights(new)
    # Where a chain of pairs ends (a layer no pair rescales the outputs of), the equalized model
    # must compute what the folded one did; inside a chain outputs are rescaled on purpose.
    firsts = {a for a, _, _ in pairs}
    seconds = [b for _, b, _ in pairs if b not in firsts]
    probe_a = k.Model(folded.inputs, [folded.get_layer(n).output for n in seconds])
    probe_b = k.Model(result.inputs, [result.get_layer(n).output for n in seconds])
    _, _, each = compare_outputs(_listed(predict(probe_a, x)), _listed(predict(probe_b, x)))
    bounds = roundoff_tolerances(
        folded, seconds, [r for _, r in each], x, config.rtol, config.roundoff
    )
    failures = [
        f"{seconds[i]} after equalization: relative difference {r:.3g} > {b:.3g}"
        for (i, r), b in zip(each, bounds, strict=True)
        if r > b
    ]
    d, rel, more = check_fold(original, result, [], x, config.rtol, config.roundoff)
    return result, records, (d, rel, failures + more)


def _listed(outputs):
    return outputs if isinstance(outputs, list) else [outputs]


def _back_to_keras3(mf, folded, x, config: FoldConfig):
    """(the folded model in Keras 3, the translation checks, (abs, rel, failures) of the Keras 3
    folded model against the original Keras 3 model): the fold proved in the user's own Keras."""
    from pipeline.models.keras3 import to_keras3
    from pipeline.models.translation import translation_check

    original = mf.reference()
    folded3 = to_keras3(folded)
    back = translation_check(folded, folded3, x)
    there = mf.translation(x).check  # made and proved on x when fold took the tf_keras model
    d, rel, each = compare_outputs(predict(original, x), predict(folded3, x))
    bounds = roundoff_tolerances(
        original, [], [r for _, r in each], x, config.rtol, config.roundoff
    )
    failures = [
        f"model output {i} (Keras 3): relative difference {r:.3g} > {b:.3g}"
        for (i, r), b in zip(each, bounds, strict=True)
        if r > b
    ]
    return folded3, {"to_tf_keras": there, "to_keras3": back}, (d, rel, failures)


def _write(out, mf, to_save, config, report, t0) -> FoldResult:
    from pipeline.models.configcheck import KERAS3
    from pipeline.models.door import save_model
    from pipeline.models.translation import save_keras3

    out = artifacts.ensure_dir(out)
    save = save_keras3 if mf.kind == KERAS3 else save_model
    folded_path = save(to_save, out / files.FOLDED)
    record = {
        "stage": "fold",
        "config": dataclasses.asdict(config),
        "report": report,
        "model": str(mf.path),
        "saved_by": mf.kind,
        "outputs": {files.FOLDED: artifacts.sha256_file(folded_path)},
        "timings": {"total_s": time.perf_counter() - t0},
    }
    record_path = artifacts.write_json(
        out / files.FOLD_RECORD,
        record,
        inputs={"model": mf.sha256},  # the bytes loaded, not a fresh read
    )
    return FoldResult(
        folded_path=folded_path,
        record_path=record_path,
        report=report,
        seconds=time.perf_counter() - t0,
    )
