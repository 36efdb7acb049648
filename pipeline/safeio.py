"""Reading a file the user names, whatever it turns out to be.

A path given as data, a model or a config may be a directory, a FIFO (reading blocks forever),
a device such as /dev/zero (reading never ends) or a file far larger than any input bnpipe
takes. `regular_file` refuses all of these with one line before anything is read, and
`read_bytes` reads at most the bound it was given. Only the standard library is imported.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import BnpipeError

# The largest input file bnpipe reads whole: 8 GiB is far above MNIST as CSV (~110 MB) or any
# small edge classifier's .keras file, and below this machine's memory.
MAX_INPUT_BYTES = 8 << 30


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
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise error(f"{what} {path} is more than {max_bytes:,} bytes, more than bnpipe reads")
    return data
