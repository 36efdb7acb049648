"""Reading a file the user names, whatever it turns out to be.

A path given as data, a model or a config may be a directory, a FIFO (reading blocks forever),
a device such as /dev/zero (reading never ends) or a file far larger than any input bnpipe
takes. `regular_file` refuses all of these with one line before anything is read, and
`read_bytes` reads at most the bound it was given. JSON (a manifest, a Keras config.json) may
also nest deeper than any recursive reader survives: `loads_json` bounds the depth, and
`zip_json` reads one zip member's JSON within a size bound. Only the standard library is imported.
"""

from __future__ import annotations

import io
import json
import os
import stat
import zipfile
from pathlib import Path
from typing import Any

from pipeline.core.errors import BnpipeError

# The largest input file bnpipe reads whole: 8 GiB is far above MNIST as CSV (~110 MB) or any
# small edge classifier's .keras file, and below this machine's memory.
MAX_INPUT_BYTES = 8 << 30

READ_CHUNK_BYTES = 16 << 20  # what read_bytes asks of read() at a time

# The deepest JSON bnpipe reads. Its own records nest up to 6 levels and a Keras config.json
# 8 to 15 (a model nested in a model adds about 6); 64 is far above both and far below Python's
# recursion limit (1,000 frames), which recursive readers downstream would otherwise reach: Keras's
# deserializer, json.dumps with indent, bnpipe's own walks.
MAX_JSON_DEPTH = 64


def regular_file(
    path: str | os.PathLike,
    what: str,
    error: type[BnpipeError] = BnpipeError,
    max_bytes: int = MAX_INPUT_BYTES,
) -> Path:
    """`path` if it names a regular file of at most `max_bytes` (after symlinks); else `error`
    saying what it is instead. `what` names the file's role in the message ("data file")."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a directory"
            if stat.S_ISDIR(st.st_mode)
            else "a FIFO"
            if stat.S_ISFIFO(st.st_mode)
            else "a device"
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            else "a socket"
            if stat.S_ISSOCK(st.st_mode)
            else "not a regular file"
        )
        raise error(f"{what} {path} is {kind}, not a regular file")
    if st.st_size > max_bytes:
        raise error(
            f"{what} {path} is {st.st_size:,} bytes, more than bnpipe reads ({max_bytes:,})"
        )
    return path


def read_bytes(
    path: str | os.PathLike,
    what: str,
    error: type[BnpipeError] = BnpipeError,
    max_bytes: int = MAX_INPUT_BYTES,
) -> bytes:
    """The bytes of the regular file `path` (see regular_file), read with a bound even if the
    file grows while it is read."""
    path = regular_file(path, what, error, max_bytes)
    chunks, total = [], 0
    try:
        with open(path, "rb") as f:
            # In chunks: one read() of the whole bound would ask for max_bytes of memory at once,
            # which an address-space limit (a container, `ulimit -v`) refuses for any file.
            while chunk := f.read(min(READ_CHUNK_BYTES, max_bytes + 1 - total)):
                chunks.append(chunk)
                total += len(chunk)
                if total > max_bytes:
                    break
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if total > max_bytes:
        raise error(f"{what} {path} is more than {max_bytes:,} bytes, more than bnpipe reads")
    return b"".join(chunks)


def json_depth(value: Any) -> int:
    """How deeply `value` (from json.loads) nests: 0 for a scalar, 1 for [] or {}. Iterative."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((v, depth + 1) for v in children)
    return deepest


def loads_json(data: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads, which also refuses a value nested deeper than `max_depth`: ValueError (as for
    anything that is not JSON, or not UTF-8) with a one-line reason.

    json's parser itself is safe at any depth (it stops at Python's recursion limit); the bound
    protects the recursive code that reads the value afterwards."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise ValueError(" ".join(str(exc).split())[:200] or type(exc).__name__) from None
    if json_depth(value) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    return value


def zip_json(
    path: str | os.PathLike,
    member: str,
    max_bytes: int,
    error: type[BnpipeError] = BnpipeError,
    data: bytes | None = None,
) -> Any:
    """The JSON value of member `member` of the zip file at `path` (loads_json), None if the zip
    has no such member. The member is read in at most `max_bytes` whatever its header claims
    (a header may lie); `error` (one line naming the file and the member) for anything else.
    `data`: the file's bytes, already read (the file is then not opened; `path` names it)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data) if data is not None else path) as zf:
            try:
                info = zf.getinfo(member)
            except KeyError:
                return None
            if info.file_size > max_bytes:
                raise error(f"{path}: {member} is {info.file_size:,} bytes (limit {max_bytes:,})")
            with zf.open(info) as f:
                data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise error(f"{path}: {member} is larger than its limit of {max_bytes:,} bytes")
        return loads_json(data)
    except BnpipeError:
        raise
    except Exception as exc:  # the member's bytes can fail to decompress in many ways
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression method;
        # EOFError, zlib.error, lzma.LZMAError, OSError (bz2): a truncated or corrupt stream.
        what = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise error(f"{path}: cannot read {member} ({what})") from None
