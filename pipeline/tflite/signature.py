"""Outputs paired with their tensors by name, never by position.

The TFLite converter keeps a Keras model's output names only in the file's signature (its first
SignatureDef, `serving_default`), which maps each name to a tensor; the subgraph's output list and
the signature's own order (alphabetical) need not follow the Keras model's order. Every stage that
reads an output looks its tensor up here by the Keras output's name.
"""

from __future__ import annotations

from pipeline.core.errors import ModelError

QAT_PREFIX = "quant_"  # tfmot's QuantizeWrapper: the layer "dense_3" becomes "quant_dense_3"


def output_tensors(info, names: list[str]) -> dict[str, int]:
    """{Keras output name: tensor index} from the file's signature (info: a TfliteInfo).

    A file without a signature (not written by the converter) is paired only when it has one
    output and one name; ModelError naming what is missing otherwise."""
    mapped = dict((info.signature or {}).get("outputs", {}))
    if not mapped:
        if len(names) == 1 and len(info.outputs) == 1:
            return {names[0]: info.outputs[0]}
        raise ModelError(
            f"{info.path} has {len(info.outputs)} outputs and no signature naming them; "
            "bnpipe pairs outputs by name (convert it with TFLiteConverter.from_keras_model)"
        )
    # QAT (tfmot) wraps each layer in a QuantizeWrapper named quant_<layer>: the int8 file's
    # signature then names the output after the wrapper.
    mapped.update({k.removeprefix(QAT_PREFIX): v for k, v in mapped.items() if k not in names})
    missing = [n for n in names if n not in mapped]
    if missing:
        raise ModelError(
            f"{info.path} has no output named {', '.join(missing)}; its signature names "
            f"{', '.join(sorted(mapped)) or 'none'}"
        )
    pairs = {n: int(mapped[n]) for n in names}
    stray = [n for n, t in pairs.items() if t not in info.outputs]
    if stray:
        raise ModelError(
            f"{info.path} is damaged: its signature maps {', '.join(stray)} to a tensor that is "
            "not one of its outputs"
        )
    return pairs


def output_positions(info, names: list[str]) -> dict[str, int]:
    """{Keras output name: its position in the subgraph's outputs (what an interpreter's
    get_output_details lists)}, paired by name through the signature."""
    return {n: info.outputs.index(t) for n, t in output_tensors(info, names).items()}
