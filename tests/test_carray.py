"""carray.py: the C/C++ arrays compile with the system compilers (C11 and C++11, warnings as
errors), hold exactly the model's bytes at a 16-byte-aligned address, and carry the length and
arena the header promises, whatever the file is called."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import CC, WARNINGS, build_and_run, run_checked

from pipeline.tflite.carray import KEYWORDS, c_array, c_identifier, write_c_array


@pytest.fixture(scope="module")
def tflite_file(keras, tf, tmp_path_factory) -> Path:
    """A real model file: a small Dense classifier converted by TensorFlow (float32)."""
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
    )
    path = tmp_path_factory.mktemp("carray") / "model_int8.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


@pytest.mark.parametrize(
    "language,main_lang", [("c++", "c"), ("c++", "c++"), ("c", "c"), ("c", "c++")]
)
def test_model_array_compiles_and_holds_the_files_bytes(tflite_file, tmp_path, language, main_lang):
    arr = write_c_array(tflite_file, tmp_path, arena_bytes=2816, language=language)
    assert arr.source_name == f"model_int8{'.cc' if language == 'c++' else '.c'}"
    assert arr.header_name == "model_int8.h" and arr.name == "model_int8_tflite"
    proc = build_and_run(arr, tmp_path, main_lang)
    assert proc.returncode == 0, proc.returncode  # 3: misaligned, 5: macro ≠ variable
    assert proc.stdout == tflite_file.read_bytes()
    assert proc.stderr == b"arena 2816\n"


def test_small_array_is_aligned_by_alignas(tmp_path):
    """x86-64's ABI aligns any array of ≥ 16 bytes to 16 by itself; below that only the
    alignas does, so a 13-byte array checks the emitted alignment for real."""
    data = bytes(range(7, 20))
    for language in ("c", "c++"):
        sub = tmp_path / language
        sub.mkdir()
        proc = build_and_run(c_array(data, "tiny.tflite", language=language), sub)
        assert proc.returncode == 0 and proc.stdout == data


def test_every_byte_value_and_line_boundaries(tmp_path):
    """All 256 byte values, and lengths around a full line of 12."""
    rng = np.random.default_rng(0)
    for n in (1, 12, 13, 256 + 7):
        data = bytes(range(256)) + rng.bytes(7) if n == 263 else rng.bytes(n)
        sub = tmp_path / str(n)
        sub.mkdir()
        arr = c_array(data, "m.tflite", language="c")
        assert arr.length == n and arr.source.count("0x") == n
        proc = build_and_run(arr, sub)
        assert proc.returncode == 0 and proc.stdout == data


def test_without_arena_nothing_about_it_is_declared(tflite_file):
    arr = c_array(tflite_file.read_bytes(), tflite_file.name)
    assert arr.arena_bytes is None
    assert "arena" not in arr.header.lower() and "arena" not in arr.source.lower()


def test_header_names_the_file_its_hash_and_has_a_guard(tflite_file):
    import hashlib

    data = tflite_file.read_bytes()
    arr = c_array(data, str(tflite_file), arena_bytes=100)
    sha = hashlib.sha256(data).hexdigest()
    first_lines = arr.header.splitlines()[:3]
    assert first_lines == [
        "// model_int8.tflite as a C++ array, written by bnpipe.",
        f"// sha256 {sha}, {len(data)} bytes.",
        "// TFLM tensor arena: 100 bytes as TFLM reported on the host.",
    ]
    assert arr.sha256 == sha and arr.source.startswith("\n".join(first_lines))
    assert (
        "#ifndef BNPIPE_MODEL_INT8_TFLITE_H_\n#define BNPIPE_MODEL_INT8_TFLITE_H_\n" in arr.header
    )
    assert "alignas(16) const unsigned char model_int8_tflite[] = {\n  0x" in arr.source


def test_header_included_twice_compiles(tmp_path):
    arr = c_array(b"\x01\x02", "m.tflite", arena_bytes=64)
    (tmp_path / arr.header_name).write_text(arr.header)
    (tmp_path / "twice.c").write_text(f'#include "{arr.header_name}"\n' * 2 + "int x;\n")
    run_checked([CC, "-std=c11", *WARNINGS, "-c", "twice.c"], tmp_path)


@pytest.mark.parametrize(
    "file_name,identifier",
    [
        ("model_int8.tflite", "model_int8_tflite"),
        ("/some/dir/model.tflite", "model_tflite"),
        ("2nd model (v1).tflite", "model_2nd_model_v1_tflite"),
        ("__private.tflite", "private_tflite"),
        ("a--b__c.tflite", "a_b_c_tflite"),
        ("modèle.tflite", "mod_le_tflite"),
        ("int", "int_data"),
        ("...", "model"),
    ],
)
def test_c_identifier(file_name, identifier):
    assert c_identifier(file_name) == identifier


def test_identifiers_are_never_keywords_or_reserved():
    for word in KEYWORDS:
        name = c_identifier(word)
        assert name not in KEYWORDS and not name.startswith("_") and "__" not in name


def test_hostile_file_name_cannot_escape_the_comment(tmp_path):
    """A newline would end a // comment and a trailing backslash would splice the next line
    into it; both, and non-ASCII, become '?', and the pair still compiles and runs."""
    name = "evil\n#error injected \\\n*x é.tflite"  # a file name holds anything but / and NUL
    arr = c_array(b"\x00\xff\x10", name, language="c")
    assert (
        arr.header.splitlines()[0] == "// evil?#error injected ??*x ?.tflite as a C array, "
        "written by bnpipe."
    )
    assert arr.header_name == "evil_error_injected_x.h"
    proc = build_and_run(arr, tmp_path)
    assert proc.returncode == 0 and proc.stdout == b"\x00\xff\x10"


def test_same_input_same_text(tflite_file):
    data = tflite_file.read_bytes()
    a, b = c_array(data, "m.tflite", arena_bytes=9), c_array(data, "m.tflite", arena_bytes=9)
    assert a == b


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="language must be one of c\\+\\+, c, got 'rust'"):
        c_array(b"x", "m.tflite", language="rust")
    with pytest.raises(ValueError, match="1 to 4294967295 bytes, got 0"):
        c_array(b"", "m.tflite")
    for bad in (0, -1, 2**32, True, 1.5):
        with pytest.raises(ValueError, match="arena_bytes"):
            c_array(b"x", "m.tflite", arena_bytes=bad)
    with pytest.raises(ValueError, match="name must be a C identifier such as 'g_model'"):
        c_array(b"x", "m.tflite", name="g model")
    assert c_array(b"x", "m.tflite", name="g_model").name == "g_model"
