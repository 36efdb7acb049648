"""A `.tflite` model as a C or C++ source and header: what TFLM users otherwise make with `xxd -i`.

For `model_int8.tflite` (C++) the pair is `model_int8.cc` and `model_int8.h`:

    // model_int8.h
    extern const unsigned char model_int8_tflite[];       // the file's bytes
    extern const unsigned int model_int8_tflite_len;      // how many
    extern const unsigned int model_int8_tflite_arena_bytes;  // when the arena is known, and
    #define MODEL_INT8_TFLITE_ARENA_BYTES 2816u           // the same as a compile-time constant

    // model_int8.cc
    alignas(16) const unsigned char model_int8_tflite[] = { 0x1c, 0x00, … };

The array is 16-byte aligned: a flatbuffer's 8-byte fields (int64 zero points) need 8, and
TFLM's optimized kernels read weights in wider words; 16 is what TFLM's own examples use. The
header declares everything `extern "C"`, so C and C++ code can share one build of the source.
The arena is the figure TFLM reported on this host (a 64-bit build, reference kernels): a 32-bit
build's bookkeeping is smaller, but optimized kernels (CMSIS-NN) may ask for scratch memory and
set-up briefly needs a little more than what stays allocated, so give the device's arena a margin
and confirm it there (runtimes/tflm.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.tflite.firmware import FirmwareKit

ALIGNMENT = 16
BYTES_PER_LINE = 12  # as `xxd -i` writes them
LANGUAGES = {"c++": ".cc", "c": ".c"}
MAX_UINT = 2**32 - 1  # `unsigned int` is at least 32 bits wherever TFLM runs
# Keywords of C (to C23) and C++ (to C++20) an identifier made from a file name could hit.
_KEYWORDS = """
alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t char16_t
char32_t class compl concept const consteval constexpr constinit const_cast continue co_await
co_return co_yield decltype default delete do double dynamic_cast else enum explicit export
extern false float for friend goto if inline int long mutable namespace new noexcept not not_eq
nullptr operator or or_eq private protected public register reinterpret_cast requires restrict
return short signed sizeof static static_assert static_cast struct switch template this
thread_local throw true try typedef typeid typename typeof union unsigned using virtual void
volatile wchar_t while xor xor_eq
"""
KEYWORDS = frozenset(_KEYWORDS.split())


@dataclass(kw_only=True, frozen=True)
class CArray:
    name: str  # the array's identifier; also the prefix of _len and _arena_bytes
    source_name: str  # e.g. model_int8.cc
    header_name: str  # e.g. model_int8.h
    source: str
    header: str
    length: int
    sha256: str
    arena_bytes: int | None


def c_identifier(file_name: str) -> str:
    """A valid C and C++ identifier for a file, as `xxd -i` makes one (`model_int8.tflite` →
    `model_int8_tflite`): every run of other characters becomes one `_`; none is reserved (no
    leading `_`, no `__`), none starts with a digit (`model_` is put in front) or is a keyword."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", Path(file_name).name).strip("_")
    if not name:
        return "model"
    if name[0].isdigit():
        name = f"model_{name}"
    return f"{name}_data" if name in KEYWORDS else name


def _printable(text: str) -> str:
    """`text` safe inside a // comment: ASCII only, no line break or backslash (a trailing
    backslash would splice the next line into the comment)."""
    return "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in text)


def _byte_lines(data: bytes) -> str:
    hexes = data.hex()
    items = [f"0x{hexes[i : i + 2]}" for i in range(0, len(hexes), 2)]
    rows = (items[i : i + BYTES_PER_LINE] for i in range(0, len(items), BYTES_PER_LINE))
    return ",\n".join("  " + ", ".join(row) for row in rows) + ",\n"


def _check_args(data: bytes, arena_bytes, language: str) -> None:
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {', '.join(LANGUAGES)}, got {language!r}")
    if not 0 < len(data) <= MAX_UINT:
        raise ValueError(f"the model must hold 1 to {MAX_UINT} bytes, got {len(data)}")
    if arena_bytes is not None and (
        not isinstance(arena_bytes, int) or isinstance(arena_bytes, bool)
    ):
        raise ValueError(f"arena_bytes must be an int or None, got {arena_bytes!r}")
    if arena_bytes is not None and not 0 < arena_bytes <= MAX_UINT:
        raise ValueError(f"arena_bytes must be 1 to {MAX_UINT}, got {arena_bytes}")


def c_array(
    data: bytes,
    file_name: str,
    *,
    arena_bytes: int | None = None,
    language: str = "c++",
    name: str | None = None,
    kit: FirmwareKit | None = None,
) -> CArray:
    """The source and header holding `data`, the bytes of the file `file_name` (only its last
    part is used: it names the files and, unless `name` is given, the array); with `kit`
    (firmware.py) also its quantization, op registration and golden vectors. Pure: writes
    nothing."""
    import hashlib

    _check_args(data, arena_bytes, language)
    name = name or c_identifier(file_name)
    if c_identifier(name) != name:
        raise ValueError(
            f"name must be a C identifier such as {c_identifier(name)!r}, got {name!r}"
        )
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(Path(file_name).name).stem).strip("._") or name
    sha = hashlib.sha256(data).hexdigest()
    header_name, source_name = f"{stem}.h", f"{stem}{LANGUAGES[language]}"
    about = [
        f"// {_printable(Path(file_name).name)} as a {language.upper()} array, written by bnpipe.",
        f"// sha256 {sha}, {len(data)} bytes.",
    ]
    if arena_bytes is not None:
        about.append(f"// TFLM tensor arena: {arena_bytes} bytes as TFLM reported on the host.")
    return CArray(
        name=name,
        source_name=source_name,
        header_name=header_name,
        source=_source(data, name, header_name, about, arena_bytes, language, kit),
        header=_header(name, about, arena_bytes, kit),
        length=len(data),
        sha256=sha,
        arena_bytes=arena_bytes,
    )


def _header(name: str, about: list[str], arena_bytes: int | None, kit=None) -> str:
    from pipeline.tflite import firmware

    guard = f"BNPIPE_{name.upper()}_H_"
    lines = [*about, f"#ifndef {guard}", f"#define {guard}", ""]
    lines += ["#ifdef __cplusplus", 'extern "C" {', "#endif", ""]
    lines += [
        f"// The model's flatbuffer, {ALIGNMENT}-byte aligned, and its length in bytes.",
        f"extern const unsigned char {name}[];",
        f"extern const unsigned int {name}_len;",
    ]
    if arena_bytes is not None:
        lines += [
            "// The tensor arena TFLM needed for this model; the macro can size a static array.",
            f"extern const unsigned int {name}_arena_bytes;",
            f"#define {name.upper()}_ARENA_BYTES {arena_bytes}u",
        ]
    lines += firmware.header_lines(kit, name) if kit else []
    lines += ["", "#ifdef __cplusplus", "}", "#endif", ""]
    lines += firmware.cplusplus_lines(kit, name) if kit else []
    lines += [f"#endif  // {guard}", ""]
    return "\n".join(lines)


def _source(data, name, header_name, about, arena_bytes, language, kit=None) -> str:
    from pipeline.tflite.firmware import source_lines

    lines = [*about, f'#include "{header_name}"', ""]
    if language == "c":
        lines[-1:-1] = ["#include <stdalign.h>"]  # alignas is a macro before C23
    lines.append(f"alignas({ALIGNMENT}) const unsigned char {name}[] = {{")
    text = "\n".join(lines) + "\n" + _byte_lines(data) + "};\n"
    text += f"const unsigned int {name}_len = {len(data)};\n"
    if arena_bytes is not None:
        text += f"const unsigned int {name}_arena_bytes = {arena_bytes};\n"
    if kit is not None:
        text += "".join(line + "\n" for line in source_lines(kit, name))
    return text


def write_c_array(
    tflite_path: str | Path,
    dest_dir: str | Path | None = None,
    *,
    arena_bytes: int | None = None,
    language: str = "c++",
) -> CArray:
    """Write the source and header of the `.tflite` file into `dest_dir` (default: beside it),
    atomically (inside a stage's transaction, with its other files). Returns what was written."""
    from pipeline.store.artifacts import write_text

    path = Path(tflite_path)
    arr = c_array(path.read_bytes(), path.name, arena_bytes=arena_bytes, language=language)
    out = Path(dest_dir) if dest_dir is not None else path.parent
    write_text(out / arr.header_name, arr.header)
    write_text(out / arr.source_name, arr.source)
    return arr
