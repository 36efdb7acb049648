"""tflite_file: parsing and structural checks without an interpreter, and bnpipe's metadata entry."""
import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)

import re

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as fb
from ai_edge_litert.tools import flatbuffer_utils

from pipeline.config import EXPORT_MODES
from pipeline.errors import ModelError
from pipeline.export import tflite_name
from pipeline.quantize import to_input
from pipeline.runtimes.host import HostRuntime
from pipeline.tflite_file import METADATA_NAME, parse_tflite, quant_params, read_tflite, with_metadata


@pytest.fixture(scope="module")
def float_bytes(exported):
    return (exported / tflite_name("float32")).read_bytes()


@pytest.fixture(scope="module")
def int8_bytes(exported):
    return (exported / tflite_name("int8")).read_bytes()


def _rewrite(data: bytes, change) -> bytes:
    """The model re-serialized after `change(ModelT)`: a well-formed flatbuffer with bad contents."""
    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    change(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


# --- reading the exported files ---------------------------------------------------------------

def test_int8_file_is_described_exactly(int8_bytes):
    info = parse_tflite(int8_bytes, "m.tflite")
    assert info.size_bytes == len(int8_bytes) and info.version == 3
    assert [o.op for o in info.operators] == ["FULLY_CONNECTED"] * 3 + ["SOFTMAX"]
    assert info.op_counts() == {"FULLY_CONNECTED": 3, "SOFTMAX": 1}
    assert info.input_tensor().shape == [-1, 64] and info.output_tensor().shape == [-1, 10]
    # Input q = x/scale + zp maps [0, 1] onto the whole int8 range; the softmax output of TFLite's
    # int8 kernels is fixed at scale 1/256, zero point −128.
    assert quant_params(info.input_tensor()) == {"dtype": "int8", "scale": pytest.approx(1 / 255),
                                                 "zero_point": -128}
    assert quant_params(info.output_tensor()) == {"dtype": "int8", "scale": 1 / 256, "zero_point": -128}
    # Every operator's tensor indices are in range (the parser checked them) and chain up.
    assert info.operators[0].inputs[0] == info.inputs[0]
    assert info.operators[-1].outputs == info.outputs


def test_float_file_has_float_io_and_no_quantization(float_bytes):
    info = parse_tflite(float_bytes)
    assert quant_params(info.input_tensor()) == {"dtype": "float32", "scale": None, "zero_point": None}
    assert all(t.dtype == "float32" for t in info.tensors)


def test_exported_files_carry_bnpipe_metadata(exported):
    for mode in EXPORT_MODES:
        info = read_tflite(exported / tflite_name(mode))
        meta = info.metadata
        assert meta["mode"] == mode
        assert meta["preprocessing"]["divisor"] == 16  # digits pixels are 0–16
        assert meta["num_classes"] == 10
        assert meta["input"] == quant_params(info.input_tensor())
        assert meta["output"] == quant_params(info.output_tensor())
        assert info.metadata_names.count(METADATA_NAME) == 1


# --- metadata round trip ----------------------------------------------------------------------

def test_with_metadata_round_trip(float_bytes):
    payload = {"mode": "x", "nested": {"divisor": 255.0, "list": [1, 2, 3]}, "text": "é µ"}
    info = parse_tflite(with_metadata(float_bytes, payload))
    assert info.metadata == payload


def test_with_metadata_replaces_its_entry_and_keeps_the_others(float_bytes):
    before = parse_tflite(float_bytes)
    twice = with_metadata(with_metadata(float_bytes, {"v": 1}), {"v": 2})
    after = parse_tflite(twice)
    assert after.metadata == {"v": 2}
    assert after.metadata_names.count(METADATA_NAME) == 1
    others = [n for n in before.metadata_names if n != METADATA_NAME]
    assert others and [n for n in after.metadata_names if n != METADATA_NAME] == others
    # The graph itself is untouched.
    assert after.operators == before.operators and after.tensors == before.tensors


def test_with_metadata_leaves_the_outputs_bit_identical(int8_bytes, tmp_path, digits):
    """LiteRT runs the annotated file and gets the very same int8 codes as from the original."""
    plain, annotated = tmp_path / "plain.tflite", tmp_path / "annotated.tflite"
    plain.write_bytes(_rewrite(int8_bytes, lambda m: setattr(m, "metadata", [])))
    annotated.write_bytes(with_metadata(plain.read_bytes(), {"mode": "int8"}))
    assert parse_tflite(plain.read_bytes()).metadata == {}
    x = to_input(digits.x_test[:50], quant_params(parse_tflite(int8_bytes).input_tensor()))
    ref = HostRuntime(reference=True)
    np.testing.assert_array_equal(ref.run(str(plain), x).outputs, ref.run(str(annotated), x).outputs)


def test_metadata_that_is_not_json_reads_as_empty(float_bytes):
    def garble(model):
        entry = next(m for m in model.metadata if m.name in (METADATA_NAME, METADATA_NAME.encode()))
        model.buffers[entry.buffer].data = np.frombuffer(b"\xff{not json", dtype=np.uint8)

    info = parse_tflite(_rewrite(with_metadata(float_bytes, {"a": 1}), garble))
    assert info.metadata == {} and METADATA_NAME in info.metadata_names


# --- structural checks ------------------------------------------------------------------------

@pytest.mark.parametrize("data, message", [
    (b"", "is not a TFLite model: 0 bytes is too short"),
    (b"\x00" * 31, "is not a TFLite model: 31 bytes is too short"),
    (b"\x10\x00\x00\x00ABCD" + b"\x00" * 40, "is not a TFLite model: no TFL3 identifier (found b'ABCD')"),
    (b"\xff\xff\xff\x00TFL3" + b"\x00" * 40, "is damaged: root offset 16777215 is outside the 48-byte file"),
    (b"\x04\x00\x00\x00TFL3" + b"\x00" * 40, "is damaged: root offset 4 is outside the 48-byte file"),
], ids=["empty", "short", "identifier", "root-far", "root-in-header"])
def test_header_checks(data, message):
    with pytest.raises(ModelError, match="^m.tflite " + re.escape(message) + "$"):
        parse_tflite(data, "m.tflite")


def test_every_truncation_is_a_model_error(int8_bytes):
    """Cut the file at every length: each is refused with a ModelError, never another exception
    and never a successful parse (flatbuffers read past the end raise; the parser converts it)."""
    for n in range(len(int8_bytes)):
        with pytest.raises(ModelError):
            parse_tflite(int8_bytes[:n], "cut.tflite")


def test_header_only_with_garbage_is_a_model_error():
    rng = np.random.default_rng(0)
    for _ in range(50):
        data = b"\x0c\x00\x00\x00TFL3" + rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
        with pytest.raises(ModelError, match="^g.tflite "):
            parse_tflite(data, "g.tflite")


def _set_first_op_input(i):
    def change(model):
        model.subgraphs[0].operators[0].inputs[0] = i
    return change


def _set_first_tensor(attr, value):
    def change(model):
        setattr(model.subgraphs[0].tensors[0], attr, value)
    return change


@pytest.mark.parametrize("change, message", [
    (_set_first_op_input(999), "is damaged: operator 0 refers to tensor 999 of 11"),
    (lambda m: setattr(m.subgraphs[0].operators[0], "opcodeIndex", 7),
     "is damaged: operator 0 has opcode 7 of 2"),
    (_set_first_tensor("buffer", 9999), "is damaged: tensor 0 points at buffer 9999 of"),
    (_set_first_tensor("type", 99), "is damaged: tensor 0 has unknown type 99"),
    (lambda m: setattr(m, "subgraphs", []), "is damaged: it has no subgraph"),
    (lambda m: setattr(m.subgraphs[0], "outputs", []), "has no inputs or no outputs"),
    (lambda m: setattr(m.subgraphs[0], "inputs", [42]), "is damaged: the inputs refers to tensor 42 of 11"),
])
def test_structural_checks_name_the_broken_index(int8_bytes, change, message):
    with pytest.raises(ModelError, match="^m.tflite " + message):
        parse_tflite(_rewrite(int8_bytes, change), "m.tflite")


def test_read_tflite_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelError, match=f"^model file {tmp_path / 'no.tflite'} does not exist$"):
        read_tflite(tmp_path / "no.tflite")
    with pytest.raises(ModelError, match=f"^{tmp_path} is a directory, not a .tflite file$"):
        read_tflite(tmp_path)
