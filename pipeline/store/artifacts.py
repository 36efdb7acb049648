"""Artifacts: where outputs go, atomic writes, content hashes and the JSON record of each stage.

Every write goes to a temporary file in the destination's own directory and is renamed over the
destination only once it is complete, so a failed or interrupted stage never leaves a half-written
file where a good one was (rename within one file system is atomic on POSIX).

A stage writes several files (export: one per mode and export.json; run: those and the manifest).
Inside `transaction()` the renames wait until the block ends without an exception, and then all of
them happen with Ctrl-C held back, so an interrupted or failed stage leaves every file, and the
manifest, as they were before it began: all of its files land, or none does.

A write that fails (a full disk, a read-only directory) is an ArtifactError naming the file, and
its temporary file is removed like any other.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.core.errors import ArtifactError
from pipeline.core.interrupts import interrupts_deferred
from pipeline.core.safeio import loads_json, read_bytes, regular_file

SCHEMA_VERSION = 1
ARTIFACTS_ENV = "BNPIPE_ARTIFACTS"
DEFAULT_ARTIFACTS = "artifacts"
# The packages whose versions decide the numbers bnpipe reports.
TRACKED_PACKAGES = (
    "bnpipe",
    "tensorflow",
    "tf-keras",
    "tensorflow-model-optimization",
    "ai-edge-litert",
    "tflite-micro",
    "numpy",
    "scikit-learn",
)
TMP_PREFIX = ".bnpipe-tmp-"
# bnpipe's own JSON records are kilobytes (verify.json on 10,000 samples: tens of KB).
JSON_MAX_BYTES = 64 << 20


def artifacts_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The artifacts directory: `explicit`, else $BNPIPE_ARTIFACTS, else ./artifacts. Not created.

    An explicit empty path is refused (ArtifactError): it would otherwise mean the current
    directory, whatever it holds."""
    if explicit is not None and not str(explicit).strip():
        raise ArtifactError(
            "--artifacts is empty; give a directory, or leave the option out for "
            f"${ARTIFACTS_ENV} or ./{DEFAULT_ARTIFACTS}"
        )
    if explicit:
        return Path(explicit)
    return Path(os.environ.get(ARTIFACTS_ENV) or DEFAULT_ARTIFACTS)


def ensure_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(
            f"cannot create the artifacts directory {path}: {exc.strerror or exc}"
        ) from None
    return path


def write_error(path: str | os.PathLike, exc: OSError) -> ArtifactError:
    """The one-line ArtifactError for a write to `path` that failed with `exc`."""
    return ArtifactError(f"cannot write {path}: {exc.strerror or exc}")


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on normal exit rename it over `dest`.

    On any exception (KeyboardInterrupt included) the temporary file is removed and `dest` is left
    as it was. Inside a `transaction()` the rename waits for the transaction's end. `suffix`
    defaults to dest's own, for writers that insist on an extension (Keras).
    """
    dest = Path(dest)
    ensure_dir(dest.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix or dest.suffix, dir=dest.parent)
    except OSError as exc:
        raise write_error(dest, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        # mkstemp makes the file owner-only (0600); an artifact gets the mode of any new file.
        os.chmod(tmp_path, 0o666 & ~_umask())
        yield tmp_path
        if _open_transactions:
            _open_transactions[-1].add(dest, tmp_path)
        else:
            _replace(tmp_path, dest)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(exc, OSError):  # the writer's own (a full disk): one line naming the file
            raise write_error(dest, exc) from None
        raise


def _replace(tmp: Path, dest: Path) -> None:
    if dest.is_dir() and not dest.is_symlink():  # os.replace would fail, or a half-commit
        raise ArtifactError(f"cannot write {dest}: it is a directory")
    try:
        os.replace(tmp, dest)
    except OSError as exc:
        raise write_error(dest, exc) from None


class _Transaction:
    """Files written but not yet renamed into place, and what to do once they are."""

    def __init__(self) -> None:
        self.pending: dict[Path, Path] = {}  # destination → its complete temporary file
        self.before: list = []  # run before the renames, e.g. mark the stage as not recorded
        self.after: list = []
        self.failed: list = []  # called with the exception when the transaction is discarded
        self.removals: list[Path] = []  # files to delete once the renames are done

    def add(self, dest: Path, tmp: Path) -> None:
        """Rename `tmp` over `dest` at the commit, after every file added before it."""
        key = dest.absolute()
        old = self.pending.pop(key, None)
        if old is not None:  # written twice in one stage: the second write wins, and lands last
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        self.pending[key] = tmp

    def discard(self) -> None:
        for tmp in self.pending.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self.pending.clear()

    def failure(self, exc: BaseException) -> None:
        self.discard()
        for action in self.failed:
            with contextlib.suppress(Exception):  # cleanup must not hide the exception
                action(exc)

    def commit(self) -> None:
        with interrupts_deferred("the stage had finished; its files were saved"):
            for dest in self.pending:  # before anything moves: no half-commit on this
                if dest.is_dir() and not dest.is_symlink():
                    raise ArtifactError(f"cannot write {dest}: it is a directory")
            for dest in [*self.pending, *self.removals]:  # nor on a file no rename can replace
                if unreplaceable(dest):
                    raise ArtifactError(
                        f"cannot write {dest}: it is immutable or append-only (chattr +i/+a); "
                        "nothing was written"
                    )
            for action in self.before:
                action()
            for dest, tmp in self.pending.items():
                _replace(tmp, dest)
            self.pending.clear()
            for path in self.removals:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            for action in self.after:
                action()


_open_transactions: list[_Transaction] = []

FS_IOC_GETFLAGS = 0x80086601  # linux/fs.h (_IOR('f', 1, long) on 64-bit)
FS_IMMUTABLE_FL, FS_APPEND_FL = 0x10, 0x20  # a rename cannot replace it, nor unlink remove it


def unreplaceable(path: Path) -> bool:
    """True if `path` is a file the kernel will neither replace by a rename nor remove (chattr
    +i or +a); False where the flags cannot be read (no such file, another file system or OS)."""
    import array

    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except (ImportError, OSError):
        return False
    try:
        flags = array.array("i", [0, 0])  # the kernel writes an int; room for a long
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags)
    except OSError:
        return False
    finally:
        os.close(fd)
    return bool(flags[0] & (FS_IMMUTABLE_FL | FS_APPEND_FL))


def remove_at_commit(path: str | os.PathLike) -> None:
    """Delete `path` once the open transaction's files are in place (at once if none is open);
    a file that cannot be deleted stops the commit before anything moves."""
    path = Path(path).absolute()
    if not _open_transactions:
        if unreplaceable(path):
            raise ArtifactError(f"cannot remove {path}: it is immutable or append-only")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    _open_transactions[-1].removals.append(path)


@contextlib.contextmanager
def transaction() -> Iterator[None]:
    """Hold back the renames of every atomic write in the block; do them all when it ends cleanly.

    On an exception (Ctrl-C included) every file written in the block is deleted and the
    destinations are untouched. Nested transactions join the outermost one. Code inside the block
    that reads a file it wrote must go through `sha256_file` or `current` (the destination still
    holds the old content until the commit).
    """
    tx = _Transaction()
    _open_transactions.append(tx)
    try:
        yield
    except BaseException as exc:
        _open_transactions.pop()
        tx.failure(exc)
        raise
    _open_transactions.pop()
    if _open_transactions:  # nested: the outer transaction commits these too
        outer = _open_transactions[-1]
        for dest, tmp in tx.pending.items():
            outer.add(dest, tmp)
        outer.before.extend(tx.before)
        outer.after.extend(tx.after)
        outer.failed.extend(tx.failed)
        outer.removals.extend(tx.removals)
        return
    try:
        tx.commit()
    except BaseException as exc:
        tx.failure(exc)
        raise


def transactional(func):
    """Run `func` inside a `transaction()`: the files it writes land together or not at all."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with transaction():
            return func(*args, **kwargs)

    return wrapper


def before_commit(action) -> None:
    """Call `action()` at the start of the open transaction's commit, before any rename (at once
    if none is open)."""
    if _open_transactions:
        _open_transactions[-1].before.append(action)
    else:
        action()


def on_failure(action) -> None:
    """Call `action(exc)` if the open transaction is discarded (its block or its commit raised
    `exc`); nothing if none is open."""
    if _open_transactions:
        _open_transactions[-1].failed.append(action)


def on_success(action) -> None:
    """Call `action()` once the open transaction's files are in place (at once if none is open)."""
    if _open_transactions:
        _open_transactions[-1].after.append(action)
    else:
        action()


def current(path: str | os.PathLike) -> Path:
    """Where `path`'s newest content is: its pending temporary file (in a transaction) or itself."""
    for tx in reversed(_open_transactions):
        tmp = tx.pending.get(Path(path).absolute())
        if tmp is not None:
            return tmp
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it, so set it straight back
    os.umask(mask)
    return mask


def write_bytes(dest: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def write_text(dest: str | os.PathLike, text: str) -> Path:
    return write_bytes(dest, text.encode("utf-8"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of the file's newest content (see `current`)."""
    h = hashlib.sha256()
    with open(current(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tool_versions() -> dict[str, str | None]:
    """Versions of Python and of the packages that decide the numbers (None: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# CPU features that decide which kernels XNNPACK, TensorFlow and the reference code run (so two
# machines with one model name but other features may give other timings, or other float bits).
KERNEL_FLAGS = (
    "sse4_1",
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "asimd",
    "asimddp",
    "asimdhp",
    "i8mm",
    "sve",
    "sve2",
)


def machine_info() -> dict[str, Any]:
    """The machine that produced a figure: CPU model and the kernel-relevant CPU features."""
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and cpu in (platform.processor(), platform.machine()):
                cpu = value.strip()
            elif key in ("flags", "Features") and not flags:  # x86 / ARM spelling
                present = set(value.split())
                flags = [f for f in KERNEL_FLAGS if f in present]
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "system": platform.system(),
        "python": sys.version.split()[0],
    }


def jsonable(obj: Any) -> Any:
    """numpy scalars and arrays, Paths and dataclasses into plain JSON values."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    return obj


def write_json(
    dest: str | os.PathLike, record: dict[str, Any], inputs: dict[str, str] | None = None
) -> Path:
    """Write a stage record with schema_version, versions and the sha256 of its inputs.

    `inputs` maps a name to the sha256 of what the record was computed from.
    """
    full = {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": tool_versions(),
        "machine": machine_info(),
        "inputs": inputs or {},
    }
    full.update(record)
    return write_text(dest, json.dumps(jsonable(full), indent=2, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike, what: str = "file") -> dict[str, Any]:
    """The JSON object in the file at `path` (`what` names it in messages).

    Such a file may have been replaced by anything: ArtifactError, one line naming it, for a
    path that is not a regular file (a FIFO blocks, a device never ends), a file over
    JSON_MAX_BYTES, text that is not JSON or nests deeper than safeio.MAX_JSON_DEPTH, and a
    JSON value that is not an object.
    """
    path = Path(path)
    data = read_bytes(path, what, ArtifactError, JSON_MAX_BYTES)
    try:
        value = loads_json(data)
    except ValueError as exc:
        raise ArtifactError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(value, dict):
        kind = "an array" if isinstance(value, list) else f"the value {str(value)[:40]}"
        raise ArtifactError(f"{path} is not readable JSON: it holds {kind}, not an object")
    return value


def require_file(path: Path, what: str, hint: str) -> Path:
    """`path` if it is a regular file, else an ArtifactError that says what it is instead or, if
    it is missing, what to run to make it."""
    if not path.is_file():
        if path.exists():
            regular_file(path, what, ArtifactError)  # "… is a FIFO, not a regular file"
        raise ArtifactError(f"{what} {path} does not exist; {hint}")
    return path
