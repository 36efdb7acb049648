"""What building and running a model will cost, from its config.json alone, before TensorFlow
sees it: every layer's output shape per sample, its weights, and the bytes of float32
activations one batch holds; refused (ModelError, one line) when over the budget or when it holds
what TensorFlow cannot represent (a non-finite hyper-parameter, an axis of 0, more axes than any
layer takes, a dilation, padding or multiplier past int32 or any sane size).

The walk reads the config of either Keras (Sequential or Functional, models inside models) as
plain JSON. A layer whose input it cannot place (a graph it cannot follow) is given the largest
tensor seen so far: an estimate that refuses nothing a real model holds. Nothing here imports
TensorFlow.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import ModelError
from pipeline.models.configcheck import MAX_DIM
from pipeline.models.cost_layers import MAX_RANK, integer, layer_output

FLOAT_BYTES = 4  # every activation bnpipe computes on the host is float32
# One call of the model may hold at most this many bytes of activations: every layer's output
# for the whole batch, the input included, as a training step keeps them for its backward pass
# (an inference call frees most of them earlier, so this bounds it too). 1 GiB keeps a stage,
# with its copies of weights and data, well inside a few GiB on a shared laptop or CI runner.
ACTIVATION_BUDGET = 1 << 30
# Batches bnpipe cannot shrink: export's QAT trains in batches of 32 (ExportConfig's default,
# as training), and a smaller batch changes what training computes. A model must run one such
# batch within ACTIVATION_BUDGET, i.e. hold at most 32 MiB of activations a sample; bnpipe's
# targets (microcontrollers, phones, NPUs with a few MiB of SRAM) are far below that.
MIN_BATCH = 32
MAX_WEIGHTS = 1 << 26  # parameters in all: 256 MiB as float32, 64 MiB even as int8
MAX_ELEMENTS = (1 << 31) - 1  # TensorFlow's kernels index one tensor with int32
MAX_NESTING = 8


@dataclass
class Cost:
    """A model's cost: `weights` parameters, `sample_bytes` of activations for one sample."""

    weights: int = 0
    sample_bytes: int = 0
    largest: tuple[int, ...] = (1,)  # the largest per-sample tensor seen (for the fallback)

    def tensor(self, shape: tuple[int, ...], label: str) -> tuple[int, ...]:
        """Count one per-sample tensor of `shape` (refused if TensorFlow cannot hold it)."""
        if len(shape) + 1 > MAX_RANK:
            raise ModelError(
                f"{label} makes a tensor of {len(shape) + 1:,} axes (at most {MAX_RANK})"
            )
        if any(d < 1 for d in shape):
            raise ModelError(f"{label} makes a tensor of shape {_shown(shape)}, with an empty axis")
        n = math.prod(shape)
        if n > MAX_ELEMENTS:
            raise ModelError(
                f"{label} makes a tensor of {n:,} values a sample (TensorFlow indexes at most "
                f"{MAX_ELEMENTS:,})"
            )
        self.sample_bytes += n * FLOAT_BYTES
        if n > math.prod(self.largest):
            self.largest = shape
        return shape


def _shown(shape) -> str:
    return "(" + ", ".join(f"{d:,}" for d in shape) + ")"


def model_cost(config, path: Path | None = None) -> Cost:
    """The Cost of the model config (a config.json dict, or a loaded model of either Keras).
    ModelError for a hyper-parameter or shape TensorFlow cannot represent; budgets unchecked."""
    config = _as_config(config)
    cost = Cost()
    try:
        _walk_model(config, cost, 0)
    except ModelError as exc:
        where = f"{path}: " if path is not None else ""
        raise ModelError(f"{where}{exc}") from None
    return cost


def check_cost(config, path: Path | None = None) -> Cost:
    """model_cost, and refuse a model over MAX_WEIGHTS or whose MIN_BATCH samples would hold more
    than ACTIVATION_BUDGET bytes of activations."""
    cost = model_cost(config, path)
    where = f"{path}: " if path is not None else ""
    if cost.weights > MAX_WEIGHTS:
        raise ModelError(
            f"{where}the model declares {cost.weights:,} weights (at most {MAX_WEIGHTS:,}); "
            "bnpipe takes small classifiers"
        )
    if cost.sample_bytes * MIN_BATCH > ACTIVATION_BUDGET:
        raise ModelError(
            f"{where}a batch of {MIN_BATCH} samples would hold "
            f"{_gib(cost.sample_bytes * MIN_BATCH)} "
            f"of activations (at most {_gib(ACTIVATION_BUDGET)}: "
            f"{ACTIVATION_BUDGET // MIN_BATCH >> 20} MiB a sample); bnpipe takes small classifiers"
        )
    return cost


def batch_that_fits(model_or_config, want: int) -> int:
    """`want`, or fewer samples if `want` of them would hold more than ACTIVATION_BUDGET bytes
    of activations in one call of the model (at least 1). A sizing helper: the door has refused
    what cannot be represented, so a model it cannot cost (a wrapper's config) keeps `want`."""
    try:
        per_sample = max(1, model_cost(model_or_config).sample_bytes)
    except ModelError:
        return max(1, int(want))
    return max(1, min(int(want), ACTIVATION_BUDGET // per_sample))


def _gib(n: int) -> str:
    return f"{n / (1 << 30):,.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):,.1f} MiB"


def _as_config(obj) -> dict:
    """A config.json-like dict from a config.json dict or a loaded model (either Keras)."""
    if isinstance(obj, dict):
        return obj
    # In memory a config holds tuples and objects where the file holds lists and strings.
    inner = json.loads(json.dumps(obj.get_config(), default=str))
    cls = "Functional" if isinstance(inner, dict) and "input_layers" in inner else "Sequential"
    return {"class_name": cls, "config": inner}


# --- the walk through the graph ------------------------------------------------------------------


def _entries(config) -> list[dict]:
    inner = config.get("config") if isinstance(config, dict) else None
    layers = inner.get("layers") if isinstance(inner, dict) else None
    return [e for e in layers if isinstance(e, dict)] if isinstance(layers, list) else []


def _name(entry: dict) -> str:
    cfg = entry.get("config")
    name = cfg.get("name") if isinstance(cfg, dict) else None
    return str(name if name is not None else entry.get("name"))


def _label(entry: dict) -> str:
    return f"layer {_name(entry)[:80]!r} ({str(entry.get('class_name'))[:40]})"


def _walk_model(config: dict, cost: Cost, depth: int) -> list[tuple[int, ...]]:
    """Count every layer of `config` into `cost`; the model's per-sample output shapes."""
    entries = _entries(config)
    for entry in entries:
        _check_values(entry.get("config"), _label(entry))
    inner = config.get("config") if isinstance(config.get("config"), dict) else {}
    if "input_layers" in inner:
        return _walk_functional(entries, inner, cost, depth)
    # A Sequential without an InputLayer is built from the model's own declared input shape.
    model_input = _built_shape({"build_config": config.get("build_config"), "config": inner})
    if model_input is None and isinstance(inner.get("build_input_shape"), list):
        model_input = _built_shape({"build_config": {"input_shape": inner["build_input_shape"]}})
    shapes = None
    for i, entry in enumerate(entries):
        declared = _declared_input(entry)
        if i == 0 and declared is None and model_input is not None:
            declared = model_input
        if shapes is None and declared is not None:
            shapes = [cost.tensor(declared, _label(entry))]
        if entry.get("class_name") == "InputLayer":
            continue
        shapes = _call(entry, shapes or [_built_shape(entry) or cost.largest], cost, depth)
    return shapes or []


def _walk_functional(entries, inner: dict, cost: Cost, depth: int) -> list[tuple[int, ...]]:
    """Follow a Functional graph's inbound nodes; calls whose inputs never resolve (a graph the
    walk cannot follow) are counted with the largest tensor seen in their place."""
    produced: dict[tuple[str, int], list[tuple[int, ...]]] = {}
    pending = []
    for entry in entries:
        declared = _declared_input(entry) if entry.get("class_name") == "InputLayer" else None
        if declared is not None:
            produced[(_name(entry), 0)] = [cost.tensor(declared, _label(entry))]
            continue
        calls = _inbound(entry)
        for i, refs in enumerate(calls):
            pending.append((entry, i, refs))
        if not calls and _built_shape(entry) is not None:  # never called, but built: its weights
            cfg = entry.get("config") if isinstance(entry.get("config"), dict) else {}
            cost.weights += layer_output(
                entry.get("class_name"), cfg, [_built_shape(entry)], _label(entry)
            )[1]
    _in_order(pending, produced, cost, depth)
    outs = _refs(inner.get("output_layers"))
    return [_pick(produced, r, cost) for r in outs]


def _in_order(pending: list, produced: dict, cost: Cost, depth: int) -> None:
    """Count each call once its inputs are produced (Kahn's order: linear in the graph's size);
    the calls left (a cycle, a reference to nothing) once each with the fallback."""
    from collections import defaultdict, deque

    waiting, consumers = {}, defaultdict(list)
    for n, (_, _, refs) in enumerate(pending):
        keys = {(r[0], r[1]) for r in refs} - produced.keys()
        waiting[n] = len(keys)
        for key in keys:
            consumers[key].append(n)
    queue = deque(n for n, count in waiting.items() if count == 0)
    done, stuck = set(), iter(range(len(pending)))  # stuck: the next call to force
    while len(done) < len(pending):
        n = queue.popleft() if queue else next(m for m in stuck if m not in done)
        if n in done:
            continue
        done.add(n)
        entry, i, refs = pending[n]
        ins = [_pick(produced, r, cost) for r in refs] or [_built_shape(entry) or cost.largest]
        key = (_name(entry), i)
        fresh = key not in produced
        produced[key] = _call(entry, ins, cost, depth)
        for m in consumers.pop(key, []) if fresh else []:
            waiting[m] -= 1
            if waiting[m] == 0:
                queue.append(m)


def _pick(produced: dict, ref: tuple[str, int, int], cost: Cost) -> tuple[int, ...]:
    shapes = produced.get((ref[0], ref[1]))
    if not shapes:
        return cost.largest
    return shapes[ref[2]] if 0 <= ref[2] < len(shapes) else shapes[0]


def _refs(obj) -> list[tuple[str, int, int]]:
    """Every [layer, node, tensor] reference (tf_keras's lists, Keras 3's __keras_tensor__
    histories) inside `obj`, in order."""
    found, stack = [], [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("class_name") == "__keras_tensor__":
                cfg = node.get("config")
                node = cfg.get("keras_history") if isinstance(cfg, dict) else None
                if _is_ref(node):
                    found.append((node[0], node[1], node[2]))
                continue
            stack.extend(reversed(list(node.values())))
        elif _is_ref(node):
            found.append((node[0], node[1], node[2]))
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return found


def _is_ref(obj) -> bool:
    return (
        isinstance(obj, list)
        and len(obj) in (3, 4)
        and isinstance(obj[0], str)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in obj[1:3])
    )


def _inbound(entry: dict) -> list[list[tuple[str, int, int]]]:
    nodes = entry.get("inbound_nodes")
    return [_refs(n) for n in nodes] if isinstance(nodes, list) else []


def _declared_input(entry: dict) -> tuple[int, ...] | None:
    """The per-sample input shape an entry declares (InputLayer, or a first layer's
    batch_input_shape); None if it declares none."""
    cfg = entry.get("config") if isinstance(entry.get("config"), dict) else {}
    for key in ("batch_shape", "batch_input_shape"):
        shape = cfg.get(key)
        if isinstance(shape, list):
            return _batch_shape(shape, _label(entry))
    return None


def _batch_shape(shape: list, label: str) -> tuple[int, ...]:
    if len(shape) > MAX_RANK:
        raise ModelError(f"{label} declares an input of {len(shape):,} axes (at most {MAX_RANK})")
    if not shape:
        raise ModelError(f"{label} declares an input of no axes (bnpipe needs a batch axis)")
    if shape[0] == 0:
        raise ModelError(f"{label} declares a batch axis of 0")
    if shape[0] is not None:
        integer(shape[0], "its batch axis", label, 1, MAX_DIM)
    dims = [1 if d is None else integer(d, "an input axis", label, 1, MAX_DIM) for d in shape[1:]]
    return tuple(dims)


def _built_shape(entry: dict) -> tuple[int, ...] | None:
    """The input shape a layer's build_config declares (Keras builds its weights from it)."""
    build = entry.get("build_config")
    shape = build.get("input_shape") if isinstance(build, dict) else None
    if not isinstance(shape, list) or not shape or isinstance(shape[0], list):
        return None
    if len(shape) > MAX_RANK:
        raise ModelError(f"{_label(entry)} is built for {len(shape):,} axes (at most {MAX_RANK})")
    label = _label(entry)
    dims = shape[1:]
    return tuple(1 if d is None else integer(d, "an input axis", label, 1, MAX_DIM) for d in dims)


def _call(entry: dict, ins: list, cost: Cost, depth: int) -> list[tuple[int, ...]]:
    """Count one call of a layer on per-sample input shapes `ins`; its output shapes."""
    cls, label = entry.get("class_name"), _label(entry)
    if cls in ("Sequential", "Functional"):
        if depth >= MAX_NESTING:
            return [ins[0]]
        return [cost.tensor(s, label) for s in _walk_model(entry, cost, depth + 1)]
    cfg = entry.get("config") if isinstance(entry.get("config"), dict) else {}
    wrapped = cfg.get("layer")  # a wrapper (tfmot's QuantizeWrapper) computes its layer's shape
    if isinstance(wrapped, dict) and isinstance(wrapped.get("config"), dict):
        cls, cfg = wrapped.get("class_name"), wrapped["config"]
    built = _built_shape(entry)
    if built is not None and len(ins) == 1:  # weights are built from the declared shape
        _, weights, _ = layer_output(cls, cfg, [built], label)
        cost.weights += weights
    shapes, weights, extra = layer_output(cls, cfg, ins, label)
    if built is None or len(ins) != 1:
        cost.weights += weights
    cost.sample_bytes += extra * FLOAT_BYTES
    return [cost.tensor(s, label) for s in shapes]


# --- values TensorFlow cannot represent ---------------------------------------------------------


def _check_values(cfg, label: str) -> None:
    """Refuse a non-finite float (JSON's NaN/Infinity, which no Keras can save back) or an
    integer past int64 anywhere in a layer's config."""
    stack = [("", cfg)]
    while stack:
        key, node = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            raise ModelError(f"{label} has {key or 'a value'} = {node}; values must be finite")
        if isinstance(node, int) and not isinstance(node, bool) and abs(node) >= 1 << 63:
            raise ModelError(f"{label} has {key or 'a value'} = {node:.3e} (beyond int64)")
        if isinstance(node, dict):
            stack.extend((str(k)[:40], v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((key, v) for v in node)
