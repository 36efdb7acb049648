"""tflite_file: parsing and structural checks without an interpreter, and bnpipe's metadata."""

import itertools
import json
import re

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as fb
from ai_edge_litert.tools import flatbuffer_utils

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
from pipeline.core.config import EXPORT_MODES
from pipeline.core.errors import ModelError
from pipeline.core.quantize import to_input
from pipeline.runtimes.host import HostRuntime
from pipeline.store.files import tflite_name
from pipeline.tflite.file import (
    METADATA_NAME,
    parse_tflite,
    quant_params,
    read_tflite,
    with_metadata,
)


@pytest.fixture(scope="module")
def float_bytes(exported):
    return (exported / tflite_name("float32")).read_bytes()


@pytest.fixture(scope="module")
def int8_bytes(exported):
    return (exported / tflite_name("int8")).read_bytes()


def _rewrite(data: bytes, change) -> bytes:
    """The model re-serialized after `change(ModelT)`: well-formed flatbuffer, bad contents."""
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
    assert quant_params(info.input_tensor()) == {
        "dtype": "int8",
        "scale": pytest.approx(1 / 255),
        "zero_point": -128,
    }
    assert quant_params(info.output_tensor()) == {
        "dtype": "int8",
        "scale": 1 / 256,
        "zero_point": -128,
    }
    # Every operator's tensor indices are in range (the parser checked them) and chain up.
    assert info.operators[0].inputs[0] == info.inputs[0]
    assert info.operators[-1].outputs == info.outputs


def test_float_file_has_float_io_and_no_quantization(float_bytes):
    info = parse_tflite(float_bytes)
    assert quant_params(info.input_tensor()) == {
        "dtype": "float32",
        "scale": None,
        "zero_point": None,
    }
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
    np.testing.assert_array_equal(
        ref.run(str(plain), x).outputs, ref.run(str(annotated), x).outputs
    )


def test_metadata_that_is_not_json_reads_as_empty(float_bytes):
    def garble(model):
        entry = next(m for m in model.metadata if m.name in (METADATA_NAME, METADATA_NAME.encode()))
        model.buffers[entry.buffer].data = np.frombuffer(b"\xff{not json", dtype=np.uint8)

    info = parse_tflite(_rewrite(with_metadata(float_bytes, {"a": 1}), garble))
    assert info.metadata == {} and METADATA_NAME in info.metadata_names


# --- structural checks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "is not a TFLite model: 0 bytes is too short"),
        (b"\x00" * 31, "is not a TFLite model: 31 bytes is too short"),
        (
            b"\x10\x00\x00\x00ABCD" + b"\x00" * 40,
            "is not a TFLite model: no TFL3 identifier (found b'ABCD')",
        ),
        (
            b"\xff\xff\xff\x00TFL3" + b"\x00" * 40,
            "is damaged: root offset 16777215 is outside the 48-byte file",
        ),
        (
            b"\x04\x00\x00\x00TFL3" + b"\x00" * 40,
            "is damaged: root offset 4 is outside the 48-byte file",
        ),
    ],
    ids=["empty", "short", "identifier", "root-far", "root-in-header"],
)
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
        with pytest.raises(ModelError, match=r"^g\.tflite "):
            parse_tflite(data, "g.tflite")


def _set_first_op_input(i):
    def change(model):
        model.subgraphs[0].operators[0].inputs[0] = i

    return change


def _set_first_tensor(attr, value):
    def change(model):
        setattr(model.subgraphs[0].tensors[0], attr, value)

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (_set_first_op_input(999), "is damaged: operator 0 refers to tensor 999 of 11"),
        (
            lambda m: setattr(m.subgraphs[0].operators[0], "opcodeIndex", 7),
            "is damaged: operator 0 has opcode 7 of 2",
        ),
        (_set_first_tensor("buffer", 9999), "is damaged: tensor 0 points at buffer 9999 of"),
        (_set_first_tensor("type", 99), "is damaged: tensor 0 has unknown type 99"),
        (lambda m: setattr(m, "subgraphs", []), "is damaged: it has no subgraph"),
        (lambda m: setattr(m.subgraphs[0], "outputs", []), "has no inputs or no outputs"),
        (
            lambda m: setattr(m.subgraphs[0], "inputs", [42]),
            "is damaged: the inputs refers to tensor 42 of 11",
        ),
    ],
)
def test_structural_checks_name_the_broken_index(int8_bytes, change, message):
    with pytest.raises(ModelError, match="^m.tflite " + message):
        parse_tflite(_rewrite(int8_bytes, change), "m.tflite")


@pytest.mark.parametrize("shape", [[1, 27], [1, 10, 1], [10]])
def test_a_shape_that_does_not_fit_its_signature_is_refused(int8_bytes, shape):
    """TFLM sizes a tensor by its shape, LiteRT and bnpipe read its signature: a file where the two
    disagree (one byte of the output's shape changed: 10 → 27) gave TFLM outputs of another width
    than verify expected."""

    def change(model):
        graph = model.subgraphs[0]
        graph.tensors[graph.outputs[0]].shape = shape

    index = parse_tflite(int8_bytes).outputs[0]
    with pytest.raises(
        ModelError,
        match=rf"^m\.tflite is damaged: tensor {index} has shape {re.escape(str(shape))} but "
        r"shape signature \[-1, 10\]$",
    ):
        parse_tflite(_rewrite(int8_bytes, change), "m.tflite")


def test_read_tflite_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelError, match=f"^model file {tmp_path / 'no.tflite'} does not exist$"):
        read_tflite(tmp_path / "no.tflite")
    with pytest.raises(ModelError, match=f"^{tmp_path} is a directory, not a .tflite file$"):
        read_tflite(tmp_path)


def test_read_tflite_refuses_what_is_not_a_regular_file_before_opening_it(tmp_path):
    """A FIFO would block the open (no writer) and a device may never end: both are refused by
    their type, before any read, so the call returns at once."""
    import os

    fifo = tmp_path / "model.tflite"
    os.mkfifo(fifo)
    for path in (fifo, os.devnull):
        with pytest.raises(
            ModelError, match=r"is not a regular file \(a device, a FIFO or a socket\)$"
        ):
            read_tflite(path)


def test_read_tflite_reads_no_more_than_its_limit(tmp_path, monkeypatch):
    from pipeline.tflite import file as tflite_file

    path = tmp_path / "big.tflite"
    path.write_bytes(b"\0" * 100)
    monkeypatch.setattr(tflite_file, "MAX_SIZE", 99)
    with pytest.raises(ModelError, match=rf"^{path} is larger than 99 bytes: "):
        read_tflite(path)
    monkeypatch.setattr(tflite_file, "MAX_SIZE", 100)
    with pytest.raises(ModelError, match="is not a TFLite model: no TFL3 identifier"):
        read_tflite(path)


def test_buffer_spans_are_the_weights_bytes(int8_bytes):
    """Every span holds exactly one buffer's data, as the object API reads it, and the spans do not
    overlap: what lies outside them is the model's structure."""
    from pipeline.tflite.file import buffer_spans

    spans = buffer_spans(int8_bytes)
    model = fb.ModelT.InitFromPackedBuf(bytearray(int8_bytes), 0)
    datas = [bytes(b.data.tobytes()) for b in model.buffers if b.data is not None and len(b.data)]
    assert [int8_bytes[s : s + n] for s, n in spans] == datas
    ends = sorted((s, s + n) for s, n in spans)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ends))
    with pytest.raises(ModelError):
        buffer_spans(int8_bytes[:100])


# --- the reader against LiteRT's generated schema and its object API ----------------------------


def _slot_classes():
    from pipeline.tflite import file as tf_file

    return [
        (tf_file._Model, fb.Model),
        (tf_file._OperatorCode, fb.OperatorCode),
        (tf_file._SubGraph, fb.SubGraph),
        (tf_file._Tensor, fb.Tensor),
        (tf_file._Quantization, fb.QuantizationParameters),
        (tf_file._Operator, fb.Operator),
        (tf_file._Buffer, fb.Buffer),
        (tf_file._Metadata, fb.Metadata),
        (tf_file._SignatureDef, fb.SignatureDef),
        (tf_file._TensorMap, fb.TensorMap),
        (tf_file._VariantSubType, fb.VariantSubType),
    ]


@pytest.mark.parametrize("ours, generated", _slot_classes(), ids=lambda c: c.__name__)
def test_field_slots_match_the_generated_schema(ours, generated):
    """Each slot the reader uses is where LiteRT's generated accessor reads that field
    (vtable entry 4 + 2·slot): FIELD_NAME ↔ FieldName."""
    import inspect

    slots = {k: v for k, v in vars(ours).items() if k.isupper()}
    assert slots
    for field_name, slot in slots.items():
        accessor = getattr(generated, "".join(w.capitalize() for w in field_name.split("_")))
        offsets = set(re.findall(r"_tab\.Offset\((\d+)\)", inspect.getsource(accessor)))
        assert offsets == {str(4 + 2 * slot)}, (generated.__name__, field_name, offsets)


def _from_object_api(data: bytes, name: str):
    """What parse_tflite must return, computed independently: the whole model unpacked by the
    flatbuffers object API (ModelT), then read field by field. Raises whatever the API raises."""
    from pipeline.tflite.file import OperatorInfo, TensorInfo, TfliteInfo

    def text(v):
        return v.decode("utf-8", "replace") if isinstance(v, bytes) else (v or "")

    def ints(v):
        return [] if v is None else [int(x) for x in v]

    ops = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    codes = []
    for oc in model.operatorCodes or []:
        code = max(oc.builtinCode, oc.deprecatedBuiltinCode)
        op = ops.get(code, f"UNKNOWN_{code}")
        codes.append(f"CUSTOM:{text(oc.customCode)}" if op == "CUSTOM" else op)
    buffers, sg = model.buffers or [], model.subgraphs[0]
    tensors = []
    for i, t in enumerate(sg.tensors or []):
        q, buf = t.quantization, buffers[t.buffer] if buffers else None
        tensors.append(
            TensorInfo(
                i,
                text(t.name),
                ints(t.shapeSignature if t.shapeSignature is not None else t.shape),
                types[t.type].lower(),
                [] if q is None or q.scale is None else [float(s) for s in q.scale],
                ints(None if q is None else q.zeroPoint),
                buf is not None and ((buf.data is not None and len(buf.data) > 0) or buf.size > 0),
            )
        )
    operators = [
        OperatorInfo(i, codes[op.opcodeIndex], ints(op.inputs), ints(op.outputs))
        for i, op in enumerate(sg.operators or [])
    ]
    meta = {}
    for m in model.metadata or []:
        if (
            text(m.name) == METADATA_NAME
            and m.buffer < len(buffers)
            and buffers[m.buffer].data is not None
        ):
            try:
                meta = json.loads(bytes(buffers[m.buffer].data).decode("utf-8"))
            except ValueError:  # what parse_tflite promises: an entry that is not JSON reads as {}
                meta = {}
    return TfliteInfo(
        name,
        len(data),
        model.version,
        text(model.description),
        operators,
        tensors,
        ints(sg.inputs),
        ints(sg.outputs),
        meta,
        [text(m.name) for m in model.metadata or []],
        _signature_of(model, text),
    )


def _signature_of(model, text) -> dict:
    """The first signature's tensor maps, as the object API unpacks them."""
    signature: dict = {"inputs": {}, "outputs": {}}
    for sig in (model.signatureDefs or [])[:1]:
        for role, maps in (("inputs", sig.inputs), ("outputs", sig.outputs)):
            signature[role] = {text(m.name): int(m.tensorIndex) for m in maps or []}
    return signature


@pytest.mark.parametrize("mode", EXPORT_MODES)
def test_the_reader_describes_what_the_object_api_unpacks(exported, mode):
    data = (exported / tflite_name(mode)).read_bytes()
    assert parse_tflite(data, "m.tflite") == _from_object_api(data, "m.tflite")


# Byte flips the fuzz test below makes; each is 1–3 bytes set to random values.
FUZZ_CASES = 400


def test_damage_the_object_api_refuses_is_refused_and_the_rest_reads_alike(int8_bytes):
    """Random damage: the reader raises nothing but ModelError; whatever the object API refused
    it refuses too (the object API refused by raising from deep inside flatbuffers); and where
    both read the file, they read the same (repr, so that a flipped scale that is NaN compares)."""
    rng = np.random.default_rng(3)
    refused_by_both = read_by_both = 0
    for _ in range(FUZZ_CASES):
        data = bytearray(int8_bytes)
        for pos in rng.integers(0, len(data), rng.integers(1, 4)):
            data[pos] = rng.integers(0, 256)
        data = bytes(data)
        try:
            expected = _from_object_api(data, "f.tflite")
        except Exception:
            expected = None
        try:
            got = parse_tflite(data, "f.tflite")
        except ModelError as exc:
            assert str(exc).startswith("f.tflite ")
            got = None
        if expected is None:
            assert got is None, "the reader accepted a file the object API refused"
            refused_by_both += 1
        elif got is not None:
            assert repr(got) == repr(expected)
            read_by_both += 1
    assert refused_by_both > 0 and read_by_both > 0  # both kinds of damage were exercised


def _string_length_position(data: bytes) -> int:
    """Where the length of tensor 0's name is stored."""
    t = fb.Model.GetRootAs(data, 0).Subgraphs(0).Tensors(0)
    field = t._tab.Pos + t._tab.Offset(10)  # Tensor.name
    return field + int.from_bytes(data[field : field + 4], "little")


def test_a_name_reaching_past_the_end_is_refused(int8_bytes):
    """The object API cut such a string short at the end of the file and read on; LiteRT's own
    verifier refuses it, and so does the reader."""
    at = _string_length_position(int8_bytes)
    data = int8_bytes[:at] + (0x7FFF0000).to_bytes(4, "little") + int8_bytes[at + 4 :]
    with pytest.raises(
        ModelError,
        match=r"^m\.tflite is damaged or truncated: a tensor's name at "
        rf"bytes {at + 4}–{at + 4 + 0x7FFF0000} lies outside the "
        rf"{len(data)}-byte file$",
    ):
        parse_tflite(data, "m.tflite")


def test_a_vtable_before_the_start_of_the_file_is_refused(int8_bytes):
    root = int.from_bytes(int8_bytes[:4], "little")
    data = (
        int8_bytes[:root] + (root + 100).to_bytes(4, "little", signed=True) + int8_bytes[root + 4 :]
    )
    with pytest.raises(
        ModelError,
        match=r"^m\.tflite is damaged or truncated: the vtable of the "
        r"model table at bytes -100–-96 lies outside",
    ):
        parse_tflite(data, "m.tflite")
