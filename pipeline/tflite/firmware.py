"""What a firmware needs beside a model's bytes, as lines of its C/C++ header and source
(carray.py puts them there): the input and output quantization, the operators to register with
TFLite Micro (exactly the file's), and a few golden input/output vectors, so the firmware can
check itself on the board: the golden inputs through the model must give the golden outputs
bit for bit (they are TFLM's own outputs on the host).

    #define MODEL_INT8_TFLITE_INPUT_SCALE 0.00392156886f
    #define MODEL_INT8_TFLITE_INPUT_ZERO_POINT -128
    #define MODEL_INT8_TFLITE_OP_COUNT 5
    template <typename OpResolver>  // tflite::MicroMutableOpResolver<MODEL_INT8_TFLITE_OP_COUNT>
    inline void model_int8_tflite_add_ops(OpResolver& op_resolver) { op_resolver.AddConv2D(); … }
    #define MODEL_INT8_TFLITE_GOLDEN_COUNT 3        // samples
    extern const signed char model_int8_tflite_golden_inputs[];   // COUNT × INPUT_SIZE
    extern const signed char model_int8_tflite_golden_outputs[];  // COUNT × OUTPUT_SIZE
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.tflite.file import parse_tflite, quant_params
from pipeline.tflite.resolver import add_method, model_operators

C_TYPES = {"int8": "signed char", "uint8": "unsigned char", "int16": "short", "float32": "float"}


@dataclass(frozen=True, kw_only=True)
class FirmwareKit:
    operators: tuple[str, ...]
    input: dict  # quant_params of the input tensor: dtype, scale, zero_point
    output: dict
    golden_inputs: np.ndarray | None = None  # (count, input elements) in the input dtype
    golden_outputs: np.ndarray | None = None  # (count, output elements) in the output dtype


def firmware_kit(data: bytes, golden_inputs=None, golden_outputs=None) -> FirmwareKit:
    """The kit of the model `data` (its .tflite bytes, parsed and checked here); golden vectors
    are flattened per sample and must come in pairs of equal count. Copies; mutates nothing."""
    info = parse_tflite(data)
    kit_in, kit_out = quant_params(info.input_tensor()), quant_params(info.output_tensor())
    if (golden_inputs is None) != (golden_outputs is None):
        raise ValueError("golden_inputs and golden_outputs come together or not at all")
    if golden_inputs is not None:
        golden_inputs = np.asarray(golden_inputs).reshape(len(golden_inputs), -1)
        golden_outputs = np.asarray(golden_outputs).reshape(len(golden_outputs), -1)
        if len(golden_inputs) != len(golden_outputs) or not len(golden_inputs):
            raise ValueError(
                f"golden vectors: {len(golden_inputs)} inputs and {len(golden_outputs)} outputs"
            )
    ops = tuple(model_operators(info))
    return FirmwareKit(
        operators=ops,
        input=kit_in,
        output=kit_out,
        golden_inputs=golden_inputs,
        golden_outputs=golden_outputs,
    )


def _float(x: float) -> str:
    return f"{float(np.float32(x)):.9g}f"  # 9 digits: exactly the float32 the file holds


def header_lines(kit: FirmwareKit, name: str) -> list[str]:
    """Declarations for the C part of the header (inside its extern "C" block)."""
    macro = name.upper()
    lines = []
    for role, q in (("INPUT", kit.input), ("OUTPUT", kit.output)):
        if q["scale"] is not None and not isinstance(q["scale"], list):
            lines += [
                f"// {role.lower()}: real = {role}_SCALE * (q - {role}_ZERO_POINT), q {q['dtype']}",
                f"#define {macro}_{role}_SCALE {_float(q['scale'])}",
                f"#define {macro}_{role}_ZERO_POINT {int(q['zero_point'])}",
            ]
    if kit.golden_inputs is not None and kit.golden_outputs is not None:
        lines += [
            "// Golden vectors: TFLM's outputs on the host for these inputs (test-set samples),",
            "// row after row; the model on the board must give the same, bit for bit.",
            f"#define {macro}_GOLDEN_COUNT {len(kit.golden_inputs)}",
            f"#define {macro}_INPUT_SIZE {kit.golden_inputs.shape[1]}",
            f"#define {macro}_OUTPUT_SIZE {kit.golden_outputs.shape[1]}",
            f"extern const {C_TYPES[kit.input['dtype']]} {name}_golden_inputs[];",
            f"extern const {C_TYPES[kit.output['dtype']]} {name}_golden_outputs[];",
        ]
    return lines


def cplusplus_lines(kit: FirmwareKit, name: str) -> list[str]:
    """The C++ part of the header (after its extern "C" block): the op registration."""
    macro = name.upper()
    return [
        "#ifdef __cplusplus",
        "// Exactly the operators of the model: declare",
        f"//   tflite::MicroMutableOpResolver<{macro}_OP_COUNT> op_resolver;",
        f"//   {name}_add_ops(op_resolver);",
        f"#define {macro}_OP_COUNT {len(kit.operators)}",
        "template <typename OpResolver>",
        f"inline void {name}_add_ops(OpResolver& op_resolver) {{",
        *[f"  op_resolver.{add_method(op)}();  // {op}" for op in kit.operators],
        "}",
        "#endif",
        "",
    ]


def source_lines(kit: FirmwareKit, name: str) -> list[str]:
    """Definitions of the golden vectors (none without them)."""
    if kit.golden_inputs is None or kit.golden_outputs is None:
        return []
    lines = []
    for role, rows, dtype in (
        ("inputs", kit.golden_inputs, kit.input["dtype"]),
        ("outputs", kit.golden_outputs, kit.output["dtype"]),
    ):
        lines.append(f"const {C_TYPES[dtype]} {name}_golden_{role}[] = {{")
        for row in rows:
            values = [_float(v) if dtype == "float32" else str(int(v)) for v in row]
            lines.append("  " + ", ".join(values) + ",")
        lines.append("};")
    return lines
