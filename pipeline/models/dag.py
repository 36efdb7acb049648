"""A Functional model's layer graph, read from config.json and refused unless it is a DAG, before
any Keras loader sees it.

Both loaders rebuild a Functional model by calling its layers in a loop that retries every call
whose inputs do not exist yet. tf_keras's loop has no exit for a call whose inputs never will
(a cycle, a layer fed its own output, an inbound node index past the end): it spins for ever.
Keras 3's gives up with an error that prints the whole node. Here the graph is checked on the
config alone, for both config forms, and for every model nested inside another:

- tf_keras: a call is a list of `[layer, node_index, tensor_index, kwargs]`; tensors inside
  `kwargs` are `[layer, node_index, tensor_index]`.
- Keras 3: a call is `{"args": …, "kwargs": …}`; a tensor anywhere inside is
  `{"class_name": "__keras_tensor__", "config": {"keras_history": [layer, node, tensor]}}`.

A node is one call of a layer (an InputLayer has one node and no call). Node i of a layer waits
for its node i − 1, as both loaders process a layer's calls in order, so the graph checked is the
loaders' own: a DAG here is one they rebuild in a bounded number of passes.

Nothing here imports TensorFlow or Keras.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

from pipeline.core.errors import ModelError

NESTED_MODELS = ("Sequential", "Functional")  # a model used as a layer of another
MAX_NESTING = 8  # as configcheck: deeper models are refused there as unsupported layers
CONSTANT = "_CONSTANT_VALUE"  # tf_keras's marker for a constant passed to a call, not a tensor
SHOWN = 80  # characters of a name shown in a message


def shown(name) -> str:
    """A name as a message shows it: quoted, cut to SHOWN characters, control characters (NUL,
    newline, right-to-left marks …) escaped so that none reaches the terminal."""
    return repr(str(name)[:SHOWN])


def check_graph(config, path: Path | None = None) -> None:
    """Refuse (ModelError, one line) a model config whose Functional graph, or that of any model
    nested in it, is not a DAG of known layers: a call of an unknown layer, a node or tensor index
    past the end, a layer fed its own output, a cycle. Reads the dict only."""
    stack = [(config, 0)]
    while stack:
        model, depth = stack.pop()
        entries = _entries(model)
        if model.get("class_name") == "Functional" and entries is not None:
            _check_functional(model, entries, path)
        for entry in entries or []:
            if entry.get("class_name") in NESTED_MODELS and depth < MAX_NESTING:
                stack.append((entry, depth + 1))


def _entries(model) -> list | None:
    inner = model.get("config") if isinstance(model, dict) else None
    layers = inner.get("layers") if isinstance(inner, dict) else None
    return [e for e in layers if isinstance(e, dict)] if isinstance(layers, list) else None


def _name(entry: dict):
    cfg = entry.get("config") if isinstance(entry.get("config"), dict) else {}
    return entry.get("name", cfg.get("name"))


class _Graph:
    """One Functional model's nodes: (layer name, node index) → the nodes it waits for."""

    def __init__(self, model: dict, entries: list, path: Path | None):
        self.path, self.model_name = path, _model_name(model)
        self.nodes: dict[str, int] = {}  # layer name → its number of nodes
        self.first: dict[str, int] = {}  # layer name → the index its first node has in config
        self.outputs: dict[str, int] = {}  # layer name → tensors one of its nodes puts out
        self.keras2 = any(isinstance(call, list) for e in entries for call in _calls(e))
        for i, entry in enumerate(entries):
            name = _name(entry)
            cfg = entry.get("config")
            cfg_name = cfg.get("name") if isinstance(cfg, dict) else None
            if not isinstance(name, str) or (isinstance(cfg_name, str) and cfg_name != name):
                self.refuse(f"layer {i} has the name {shown(name)} and {shown(cfg_name)}")
            if name in self.nodes:
                self.refuse(f"two layers are named {shown(name)}")
            calls = entry.get("inbound_nodes", [])
            if not isinstance(calls, list):
                self.refuse(f"layer {shown(name)} has inbound nodes that are not a list")
            if entry.get("class_name") == "InputLayer":
                if calls:
                    self.refuse(f"input layer {shown(name)} is called on other layers")
                self.nodes[name] = 1
            else:
                self.nodes[name] = len(calls)
            nested = entry.get("class_name") in NESTED_MODELS
            # tf_keras numbers a nested model's calls from 1 (its node 0 is its own making).
            self.first[name] = 1 if nested and self.keras2 else 0
            functional = entry.get("class_name") == "Functional"
            self.outputs[name] = len(_refs(_io(entry, "output_layers"))) if functional else 1

    def refuse(self, why: str):
        where = f"{self.path}: " if self.path is not None else ""
        raise ModelError(
            f"{where}the graph of model {shown(self.model_name)} is not a DAG of its layers: "
            f"{why}; bnpipe refuses it before Keras loads it"
        )

    def node(self, ref: list, user: str) -> tuple[str, int]:
        """The node `ref` ([layer, node_index, tensor_index]) names, checked; `user` says who
        holds the reference, for the message."""
        layer, index, tensor = [*list(ref), None, None][:3]
        if not isinstance(layer, str) or layer not in self.nodes:
            self.refuse(f"{user} takes the output of unknown layer {shown(layer)}")
        first, count = self.first[layer], self.nodes[layer]
        if not _is_int(index) or not first <= index < first + count:
            self.refuse(
                f"{user} takes node {_index(index)} of layer {shown(layer)}, which has "
                f"{count} node(s)"
            )
        if not _is_int(tensor) or not 0 <= tensor < self.outputs[layer]:
            self.refuse(
                f"{user} takes output {_index(tensor)} of layer {shown(layer)}, which has "
                f"{self.outputs[layer]}"
            )
        return layer, index - first


def _check_functional(model: dict, entries: list, path: Path | None) -> None:
    graph = _Graph(model, entries, path)
    waits: dict[tuple[str, int], set] = {}
    for entry in entries:
        name = _name(entry)
        if entry.get("class_name") == "InputLayer":
            waits[(name, 0)] = set()
            continue
        for i, call in enumerate(entry.get("inbound_nodes", [])):
            user = f"call {i} of layer {shown(name)}"
            if not isinstance(call, (list, dict)):
                graph.refuse(f"{user} is a {type(call).__name__}, not a call")
            refs = _refs(call, lists=isinstance(call, list))
            inputs = {graph.node(ref, user) for ref in refs}
            if (name, i) in inputs:
                graph.refuse(f"{user} takes its own output")
            waits[(name, i)] = inputs | ({(name, i - 1)} if i else set())
    for key in ("input_layers", "output_layers"):
        for ref in _refs(_io(model, key)):
            graph.node(ref, f"the model's {key}")
    left = _unordered(waits)
    if left:
        layers = sorted({name for name, _ in left})
        more = f" and {len(layers) - 4} more" if len(layers) > 4 else ""
        names = ", ".join(shown(n) for n in layers[:4])
        graph.refuse(f"layers {names}{more} wait for one another (a cycle)")


def _unordered(waits: dict) -> set:
    """The nodes no topological order reaches (those on or after a cycle); Kahn's algorithm."""
    needed = {node: len(inputs) for node, inputs in waits.items()}
    users: dict = {}
    for node, inputs in waits.items():
        for source in inputs:
            users.setdefault(source, []).append(node)
    ready = deque(node for node, n in needed.items() if n == 0)
    while ready:
        for user in users.get(ready.popleft(), []):
            needed[user] -= 1
            if needed[user] == 0:
                ready.append(user)
    return {node for node, n in needed.items() if n > 0}


def _calls(entry: dict) -> list:
    calls = entry.get("inbound_nodes")
    return calls if isinstance(calls, list) else []


def _io(model: dict, key: str):
    inner = model.get("config")
    return inner.get(key, []) if isinstance(inner, dict) else []


def _index(value) -> str:
    """An index as a message shows it: an int as such (unless absurdly long), anything else
    quoted and escaped."""
    return str(value) if _is_int(value) and abs(value) < 10**12 else shown(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _refs(obj, lists: bool = True) -> list[list]:
    """Every tensor reference inside a call, or inside input_layers / output_layers, of either
    form: a Keras 3 `__keras_tensor__`'s keras_history, or (`lists`: tf_keras's form, and both
    Keras's input_layers) a `[layer, node, tensor(, kwargs)]` list, its kwargs searched in turn;
    a tf_keras constant is no reference."""
    found, stack = [], [obj]
    while stack:  # iterative: a crafted config may nest deeper than Python's recursion limit
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("class_name") == "__keras_tensor__":
                cfg = node.get("config") if isinstance(node.get("config"), dict) else {}
                history = cfg.get("keras_history")
                found.append(history if isinstance(history, list) else [None])
                continue
            stack.extend(node.values())
        elif isinstance(node, list):
            if lists and len(node) in (3, 4) and isinstance(node[0], str):
                if node[0] != CONSTANT:
                    found.append(node[:3])
                stack.extend(node[3:])
            else:
                stack.extend(node)
    return found


def _model_name(model: dict):
    inner = model.get("config") if isinstance(model.get("config"), dict) else {}
    return inner.get("name", model.get("name"))
