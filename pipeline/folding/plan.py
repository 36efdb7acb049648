"""Where each BatchNormalization of a model can be folded, exactly, and why the others cannot.

    after   into the layer feeding it (Dense or convolution → BN): exact when that layer has no
            activation of its own and the BN alone reads its output;
    before  into the Dense or convolution that reads it (BN as the first layer, Dense(relu) →
            BN → Dense, ReLU → BN → Conv): exact when the BN's output reaches only that layer,
            directly or through PASS_THROUGH layers, and (a convolution) no zero is padded
            where the BN's shift would have been (foldmath.before_fold_blocker).
"after" is tried first. The BN must normalize the last (channels) axis and be called once.
Fold builds the folded model from this plan; export refuses a model that still holds a BN the
plan could fold, and names the operators the others became. Reads the model's config (and
its layers' shapes) only; changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.folding.maths import FOLDABLE_CLASSES, before_fold_blocker
from pipeline.models.graph import LayerGraph

BN_CLASSES = ("BatchNormalization", "CustomBatchNorm", "bnpipe>CustomBatchNorm")
# Layers a BN can be folded into, in either direction (foldmath: Dense, Conv1D/2D/3D,
# DepthwiseConv1D/2D with any multiplier, SeparableConv1D/2D).
ABSORB_AFTER = ABSORB_BEFORE = FOLDABLE_CLASSES
# Layers a BN's output may pass through on its way forward: the identity at inference
# (Dropout), a reshape (Flatten, into a Dense: input i is then channel i mod C) and averages
# over positions, which commute with a per-channel affine map (s·x + t averaged is s·x̄ + t).
PASS_THROUGH = (
    "Dropout",
    "Flatten",
    "AveragePooling1D",
    "AveragePooling2D",
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
)


@dataclass(kw_only=True)
class SkippedBN:
    bn: str
    reason: str


@dataclass(frozen=True)
class Plan:
    bn: str
    layer: str
    direction: str  # "after" or "before"
    via: tuple[str, ...] = ()


def plan_fold(model) -> tuple[list[Plan], list[SkippedBN]]:
    """Where each BN goes, and which BNs cannot go anywhere exactly, with the reason.

    Every BN-like layer of the model, nested models included, ends up in one of the two lists:
    none is kept silently (nor would `strict` let one through).
    """
    from pipeline.models.article import is_batch_norm

    graph = LayerGraph(model)
    objects = {layer.name: layer for layer in model.layers}
    plans: list = []
    skipped: list[SkippedBN] = []
    taken: set[tuple[str, str]] = set()
    for node in graph.nodes.values():
        # The class name alone is not enough: another package's layer may be called
        # "CustomBatchNorm" (the article's is) and have no moving statistics to fold.
        if node.cls not in BN_CLASSES or not is_batch_norm(objects[node.name]):
            continue
        reason = _bn_blocker(node, objects[node.name])
        plan = None
        if reason is None:
            plan, why_after = _plan_after(graph, node, taken)
            if plan is None:
                plan, why_before = _plan_before(graph, node, taken, objects)
                reason = None if plan else f"{why_after}, and {why_before}"
        if plan is None:
            skipped.append(SkippedBN(bn=node.name, reason=reason or "no layer to fold into"))
        else:
            plans.append(plan)
            taken.add((plan.layer, plan.direction))
    return plans, skipped + _other_bns(model, None)


def _bn_blocker(node, layer) -> str | None:
    cfg = node.config
    if cfg.get("renorm"):
        return "uses batch renormalization"
    if cfg.get("virtual_batch_size"):
        return "uses virtual batches"
    if node.calls != 1:
        return "is applied to more than one input (shared layer)"
    axis = cfg.get("axis", -1)
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    shape = layer.output_shape
    rank = len(shape) if isinstance(shape, tuple) else 2
    if len(axes) != 1 or axes[0] % rank != rank - 1:
        return f"normalizes axis {axis}, not the last (channels) axis"
    return None


def _plan_after(graph: LayerGraph, bn, taken) -> tuple[Plan | None, str]:
    """BN folded into the layer feeding it, or (None, why not)."""
    prev = graph.producer(bn.name)
    if prev is None:
        return None, "is not fed by one layer"
    if prev.cls not in ABSORB_AFTER:
        return None, f"follows {prev.cls} {prev.name!r}, not a Dense or a convolution"
    if prev.activation != "linear":
        return None, f"follows {prev.cls} {prev.name!r} which has its own activation " + repr(
            prev.activation
        )
    if prev.calls != 1:
        return None, f"follows {prev.cls} {prev.name!r} which is shared by several inputs"
    if prev.consumers != [bn.name] or prev.is_output:
        others = [c for c in prev.consumers if c != bn.name]
        others += ["the model output"] if prev.is_output else []
        return None, f"follows {prev.cls} {prev.name!r} whose output also feeds {', '.join(others)}"
    if (prev.name, "after") in taken:
        return None, f"{prev.cls} {prev.name!r} already takes another BN"
    return Plan(bn.name, prev.name, "after"), ""


def _plan_before(graph: LayerGraph, bn, taken, objects) -> tuple[Plan | None, str]:
    """BN folded forward into the Dense or convolution that reads it (through PASS_THROUGH
    layers), or (None, why not)."""
    via, current = [], bn
    while True:
        nxt = graph.sole_consumer(current.name)
        if nxt is None:
            return None, f"feeds {graph.readers(current.name) or 'nothing'}"
        if nxt.calls != 1:
            return None, f"feeds {nxt.cls} {nxt.name!r}, which is shared by several inputs"
        if nxt.cls in PASS_THROUGH:
            via.append(nxt.name)
            current = nxt
            continue
        if nxt.cls not in ABSORB_BEFORE:
            return None, f"feeds {nxt.cls} {nxt.name!r}, not a Dense or a convolution"
        spatial = tuple(objects[nxt.name].input_shape[1:-1])
        why = before_fold_blocker(nxt.cls, nxt.config, spatial if None not in spatial else None)
        if why is not None:
            return None, why.replace(f"a {nxt.cls}", f"{nxt.cls} {nxt.name!r}", 1)
        if "Flatten" in [graph.nodes[v].cls for v in via] and nxt.cls != "Dense":
            return None, f"feeds {nxt.cls} {nxt.name!r} through Flatten"
        if (nxt.name, "before") in taken:
            return None, f"{nxt.cls} {nxt.name!r} already takes another BN"
        return Plan(bn.name, nxt.name, "before", tuple(via)), ""


def _other_bns(model, nested_in: str | None) -> list[SkippedBN]:
    """A SkippedBN for each BN the plan does not see: inside a nested model, or of a class (a
    BatchNormalization subclass) whose behaviour bnpipe cannot vouch for."""
    from pipeline.models.article import is_batch_norm

    found = []
    for layer in model.layers:
        if hasattr(layer, "layers"):  # a Model used as a layer
            found += _other_bns(layer, nested_in or layer.name)
        elif nested_in is not None and is_batch_norm(layer):
            found.append(
                SkippedBN(
                    bn=layer.name,
                    reason=f"is inside the nested model {nested_in!r}; bnpipe folds only the outer "
                    "model's own layers",
                )
            )
        elif is_batch_norm(layer) and type(layer).__name__ not in BN_CLASSES:
            found.append(
                SkippedBN(
                    bn=layer.name, reason=f"is a {type(layer).__name__}, which bnpipe does not fold"
                )
            )
    return found
