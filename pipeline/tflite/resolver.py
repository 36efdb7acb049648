"""The operators a firmware must register with TFLite Micro to run a model: exactly the builtin
operators the file uses, as `MicroMutableOpResolver<N>` and its `Add…()` calls."""

from __future__ import annotations

from pipeline.tflite.file import TfliteInfo

# TFLM's method names that do not follow from the operator's name word by word.
_SPELLED = {
    "BATCH_MATMUL": "BatchMatMul",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "UnidirectionalSequenceLSTM",
}


def model_operators(info: TfliteInfo) -> list[str]:
    """The distinct operators of the file (every subgraph's, as read), sorted: what it needs."""
    return sorted({op.op for op in info.operators})


def add_method(op: str) -> str:
    """`DEPTHWISE_CONV_2D` → `AddDepthwiseConv2D`, the MicroMutableOpResolver method for it.
    Words such as 2D and V2 keep their capitals, as TFLM spells them."""
    if op in _SPELLED:
        return f"Add{_SPELLED[op]}"
    words = [w if any(c.isdigit() for c in w) else w.capitalize() for w in op.split("_")]
    return "Add" + "".join(words)


def resolver_lines(operators: list[str], name: str = "op_resolver") -> list[str]:
    """C++ lines declaring a resolver with room for exactly `operators` and registering each."""
    lines = [f"tflite::MicroMutableOpResolver<{len(operators)}> {name};"]
    return lines + [f"{name}.{add_method(op)}();" for op in operators]
