"""One writer per artifacts dir: every command that writes holds this lock while it runs.

The lock is `fcntl.flock` on `.bnpipe.lock` in the artifacts dir. The kernel releases a flock
when the process holding it ends, however it ends (`kill -9` included), so the lock of a dead
holder is simply free: no pid files to judge stale. The lock file holds a small JSON record of
its holder (pid, command line, start time, host) only so that a refused writer can say who holds
it. It is removed on release (an artifacts dir at rest holds no lock file); a waiter that then
finds it has locked a removed file opens the new one and tries again.

Holding the lock, a writer is alone in the directory, so any temporary file there is left over
from a writer that was killed (SIGKILL runs no cleanup): `writer_lock` sweeps them at once.
Locks are reentrant within a process: `bnpipe run` holds it across every stage, and each stage
takes it again for free. Only the standard library is imported.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import shutil
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.core.errors import ArtifactError
from pipeline.store import files
from pipeline.store.artifacts import TMP_PREFIX, ensure_dir, write_error

POLL_SECONDS = 0.2  # how often a waiting writer tries again
HOLDER_GRACE_SECONDS = 1.0  # how long a refused writer waits for a new holder to sign its name
WAIT_ENV = "BNPIPE_WAIT"  # set (to 1) to wait for the lock, as with --wait

_held: dict[str, int] = {}  # real path of a dir this process holds → nesting depth


@contextlib.contextmanager
def writer_lock(
    out: Path, *, wait: bool = False, say: Callable[[str], None] = lambda message: None
) -> Iterator[None]:
    """Hold the artifacts dir `out` (created if missing) for writing during the block.

    Another process holding it: ArtifactError naming it, or with `wait` a note through `say`
    and a wait until it is free. A directory that cannot take the lock file (read-only, full,
    under /proc): ArtifactError naming it. On entry, temporary files left by a killed writer are
    removed; on exit, the lock file, and `out` itself if this call created it and it is empty.
    """
    key = os.path.realpath(out)
    if key in _held:  # this process holds it already (bnpipe run → a stage)
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    created: list[Path] = []  # the directories this call creates
    fd = _acquire(out, wait, say, created)
    _held[key] = 1
    try:
        _sign(fd, out)
        swept = sweep_temporaries(out)
        if swept:
            say(f"removed {len(swept)} temporary file(s) left in {out} by a writer that was killed")
        yield
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            os.unlink(out / files.LOCK)  # before the close: a waiter then sees the file is gone
        os.close(fd)
        for d in sorted(created, key=lambda d: len(d.parts), reverse=True):
            try:  # only while empty: a stage that wrote nothing leaves no directory
                d.rmdir()
            except OSError:
                break


def _missing(out: Path) -> list[Path]:
    """`out` and those of its parents that do not exist yet, deepest first."""
    missing = []
    for d in [out, *out.parents]:
        if os.path.lexists(d):
            break
        missing.append(d)
    return missing


def _acquire(out: Path, wait: bool, say: Callable[[str], None], created: list[Path]) -> int:
    """An open descriptor of out/.bnpipe.lock, flock'ed by this process; `out` and the parents
    it had to create are added to `created`."""
    path = out / files.LOCK
    told = False
    while True:
        # Again on every try: a holder that created `out` removes it on release if it is empty.
        created.extend(d for d in _missing(out) if d not in created)
        ensure_dir(out)
        fd = _open(path, out)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise ArtifactError(f"cannot lock {path}: {exc.strerror or exc}") from None
            holder = _holder(fd)
            os.close(fd)
            if not wait:
                raise ArtifactError(
                    f"the artifacts directory {out} is being written by another bnpipe "
                    f"({holder}); rerun when it has ended, or with --wait (or {WAIT_ENV}=1) "
                    "to wait for it"
                ) from None
            if not told:
                say(f"waiting for another bnpipe to finish writing {out} ({holder})")
                told = True
            time.sleep(POLL_SECONDS)
            continue
        if _same_file(fd, path):
            return fd
        os.close(fd)  # locked a lock file its holder removed on release: take the new one


def _open(path: Path, out: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        raise ArtifactError(
            f"cannot write in the artifacts directory {out}: {exc.strerror or exc}"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ArtifactError(f"{path} is not a regular file; remove it (bnpipe's lock file)")
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _sign(fd: int, out: Path) -> None:
    """Write who holds the lock into the lock file; a full or read-only disk fails here first."""
    record = {
        "pid": os.getpid(),
        "command": shlex.join(["bnpipe", *sys.argv[1:]]),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": socket.gethostname(),
    }
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
    except OSError as exc:
        raise write_error(out / files.LOCK, exc) from None


def _holder(fd: int) -> str:
    """Who holds the lock, from the lock file: "pid 123, `bnpipe run`, since 2025-01-31 12:00:00"
    (and " on HOST" if another). A holder that has just taken it may not have signed yet, so
    a moment's grace."""
    deadline = time.monotonic() + HOLDER_GRACE_SECONDS
    while True:
        try:
            record = json.loads(os.pread(fd, 4096, 0))
            if isinstance(record, dict) and "pid" in record:
                break
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            return "its details are not recorded"
        time.sleep(0.05)
    text = f"pid {record.get('pid')}, `{str(record.get('command'))[:200]}`, since "
    text += str(record.get("since"))[:40]
    host = str(record.get("host"))[:80]
    return text if host == socket.gethostname() else f"{text} on {host}"


def sweep_temporaries(out: Path) -> list[Path]:
    """Remove what killed writers left in `out`: temporary files of atomic writes, beside their
    destinations, and half-written checkpoints in .resume/train/. Call only holding the lock."""
    removed = []
    for where in (out, out / files.RESUME_DIR):
        with contextlib.suppress(OSError):
            for p in where.iterdir():
                if not p.name.startswith(TMP_PREFIX):
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
                removed.append(p)
    return removed
