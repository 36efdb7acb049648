"""A copy of a `.tflite` file whose batch axis is fixed at 1: what firmware runs.

The converter writes every tensor's shape with batch 1 and its shape signature with -1 (any
batch), so LiteRT can batch many samples in one invoke. A microcontroller runs one sample at a
time, and tools that compile for it take the -1 as a warning: Vela prints "has a dynamic
signature in axis 0. Setting shape axis 0 to 1 and proceeding" once per tensor. Here the -1 in
axis 0 of each signature whose shape has batch 1 becomes 1, in place: the flatbuffer keeps its
layout and length, every other byte is unchanged, and the interpreters read the same model.
"""

from __future__ import annotations

import struct

from pipeline.tflite.file import parse_tflite

# The vtable slot of Tensor.shape_signature (field 7 of schema.fbs's Tensor: 4 + 2 * 7).
SHAPE_SIGNATURE_SLOT = 18


def fixed_batch(data: bytes) -> bytes:
    """`data` with a fixed batch of 1 (a copy; `data` is not changed). The file is parsed and
    checked first (ModelError for a malformed one); returned as is when nothing is dynamic."""
    from ai_edge_litert import schema_py_generated as fb

    parse_tflite(data)  # offsets below are only followed in a file already checked
    out = bytearray(data)
    model = fb.Model.GetRootAs(data, 0)
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            if tensor.ShapeSignatureLength() == 0 or tensor.ShapeLength() == 0:
                continue
            if tensor.ShapeSignature(0) != -1 or tensor.Shape(0) != 1:
                continue
            # The vector's first int32: where the table's shape_signature field points.
            start = tensor._tab.Vector(tensor._tab.Offset(SHAPE_SIGNATURE_SLOT))
            struct.pack_into("<i", out, start, 1)
    return bytes(out)
