"""A Keras model's layers as a graph: who feeds whom, read from the model's config.

Sequential and Functional models alike become `LayerGraph`: one `Node` per layer with the
layers it reads (`inputs`), the layers that read it (`consumers`), how many times it is called
(`calls`: a shared layer is called more than once) and whether its output is a model output.
Fold uses it to decide where a BatchNormalization can go; equalization to find the layer pairs
joined by an activation. Nothing here builds or changes a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Node:
    name: str
    cls: str  # the layer's class name ("Dense", "BatchNormalization", …)
    config: dict  # its serialized config (read only)
    inputs: list[str] = field(default_factory=list)  # producers, in call order
    calls: int = 1  # inbound nodes; > 1 for a shared layer
    consumers: list[str] = field(default_factory=list)
    is_output: bool = False

    @property
    def activation(self) -> str:
        return self.config.get("activation") or "linear"


class LayerGraph:
    """The layers of `model` (its own, not those inside a nested model), in config order."""

    def __init__(self, model) -> None:
        config = model.get_config()
        entries = config["layers"]
        self.sequential = "input_layers" not in config
        self.nodes: dict[str, Node] = {}
        previous = None
        for e in entries:
            name = e["config"].get("name", e.get("name"))
            node = Node(name, e["class_name"], e["config"])
            if self.sequential:
                node.inputs = [previous] if previous else []
                previous = name
            else:
                node.calls = max(1, len(e.get("inbound_nodes", [])))
                node.inputs = [ref[0] for ref in node_refs(e.get("inbound_nodes", []))]
            self.nodes[name] = node
        outputs = (
            [previous] if self.sequential else [r[0] for r in node_refs(config["output_layers"])]
        )
        for name in outputs:
            if name in self.nodes:
                self.nodes[name].is_output = True
        for node in self.nodes.values():
            for src in node.inputs:
                if src in self.nodes:
                    self.nodes[src].consumers.append(node.name)

    def producer(self, name: str) -> Node | None:
        """The one layer `name` reads, or None (several inputs, or none)."""
        inputs = self.nodes[name].inputs
        return self.nodes.get(inputs[0]) if len(inputs) == 1 else None

    def sole_consumer(self, name: str) -> Node | None:
        """The one layer that reads `name`'s output, None if several do, none does, or the output
        is also a model output (then something outside the model reads it too)."""
        node = self.nodes[name]
        if node.is_output or len(node.consumers) != 1:
            return None
        return self.nodes[node.consumers[0]]

    def readers(self, name: str) -> str:
        """Who reads `name`'s output, for messages: "add, concat" or "the model output"."""
        node = self.nodes[name]
        return ", ".join(node.consumers + (["the model output"] if node.is_output else []))


def node_refs(obj):
    """Every [layer_name, node_index, tensor_index, ...] reference in tf_keras inbound nodes."""
    if isinstance(obj, list):
        if len(obj) >= 3 and isinstance(obj[0], str) and isinstance(obj[1], int):
            yield obj
        else:
            for item in obj:
                yield from node_refs(item)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from node_refs(v)
