"""safeio: JSON bounded in depth, zip members bounded in size, whatever the file claims."""

from __future__ import annotations

import json
import zipfile

import pytest

from pipeline.core.errors import ModelError
from pipeline.core.safeio import MAX_JSON_DEPTH, json_depth, loads_json, zip_json


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_json_depth_counts_containers_without_recursion():
    assert json_depth(3) == 0 and json_depth([]) == 1 and json_depth({"a": [1, {"b": []}]}) == 4
    assert json_depth(json.loads(_nested(900))) == 900  # deeper than any recursive walk survives


def test_loads_json_takes_the_limit_and_refuses_one_more():
    assert json_depth(loads_json(_nested(MAX_JSON_DEPTH))) == MAX_JSON_DEPTH
    for text in (_nested(MAX_JSON_DEPTH + 1), _nested(100_000)):  # the second: json's own limit
        with pytest.raises(ValueError, match=f"^nested deeper than {MAX_JSON_DEPTH} levels$"):
            loads_json(text)
    with pytest.raises(ValueError, match=r"^Expecting value: line 1 column 1"):
        loads_json(b"")


def test_zip_json_reads_a_member_within_its_bound(tmp_path):
    path = tmp_path / "m.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("small.json", '{"a": 1}')
        zf.writestr("big.json", " " * 2000 + "{}")
    assert zip_json(path, "small.json", 100, ModelError) == {"a": 1}
    assert zip_json(path, "absent.json", 100, ModelError) is None
    with pytest.raises(ModelError, match=r"big\.json is 2,002 bytes \(limit 1,000\)$"):
        zip_json(path, "big.json", 1000, ModelError)


def test_read_bytes_reads_in_chunks_under_an_address_space_limit(tmp_path):
    """Under `ulimit -v` (containers), a small file is read whole although the bound is 8 GiB:
    read() is never asked for the whole bound at once (it would allocate it first)."""
    import subprocess
    import sys

    small = tmp_path / "small.csv"
    small.write_bytes(b"0,1,2\n" * 1000)
    code = (
        "import resource, sys\n"
        "from pipeline.core.safeio import MAX_INPUT_BYTES, read_bytes\n"
        "limit = 1 << 30\n"
        "assert MAX_INPUT_BYTES > limit\n"
        "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
        "sys.stdout.write(str(len(read_bytes(sys.argv[1], 'data file'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(small)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == str(small.stat().st_size)
