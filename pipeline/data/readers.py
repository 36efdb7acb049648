"""The readers behind `--data`: each turns one source into raw arrays, exactly as stored.

    digits          scikit-learn's bundled 8x8 digits (pixels 0-16)
    mnist           Keras's MNIST: the cached `mnist.npz`, else a download through tf_keras
    PATH.npz        keys x_train, y_train, x_test, y_test (the layout of Keras's mnist.npz)
    DIR             the four MNIST IDX files, each optionally gzipped
    PATH.csv        first column the label, the rest features; an optional header row

A reader returns `RawPart`s (arrays of any numeric dtype, with where each sample came from, for
messages); checking, scaling and splitting them is data.py's job. Nothing here writes (a `mnist`
download goes to Keras's own cache, as Keras does it). Only numpy and the standard library are
imported at module level.
"""

from __future__ import annotations

import csv
import gzip
import os
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.errors import DataError
from pipeline.core.safeio import read_bytes, regular_file

# The accepted `--data` forms, quoted by every "unknown format" message.
ACCEPTED_FORMS = (
    "'digits', 'mnist', a .npz file with x_train, y_train, x_test, y_test, "
    "a directory holding the four MNIST IDX files, or a .csv file with the label "
    "in the first column"
)
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
# The four MNIST IDX files, by role. Each may also be gzipped or spelt with a dot
# (`train-images.idx3-ubyte`), as some mirrors ship them.
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
# IDX type codes (the third byte of the magic number) -> big-endian numpy dtype.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_FILE = "mnist.npz"
# The largest array a reader allocates (IDX values, .npz members): 4 GiB is 5× MNIST's 60,000
# images as float64, far beyond what bnpipe's small classifiers train on; a header claiming more
# is a damaged or hostile file, refused before anything is allocated.
MAX_ARRAY_BYTES = 4 << 30
MAX_IDX_DIMS = 8  # numpy arrays have at most 64; images and labels need 3 and 1
DIGITS_FILE = "digits.csv.gz"  # scikit-learn's bundled copy, read by load_digits
MNIST_HINT = (
    "supply MNIST locally instead: --data PATH.npz (keys x_train, y_train, x_test, "
    "y_test) or --data DIR holding train-images-idx3-ubyte[.gz], "
    "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
    "t10k-labels-idx1-ubyte[.gz]"
)


@dataclass
class RawPart:
    """Raw arrays of one split as read from the source, before scaling."""

    split: str  # "train" or "test"
    origin: str  # the file (or data set) it came from, for messages
    x: np.ndarray  # (n, ...) any numeric dtype
    y: np.ndarray  # (n,)
    # (sample index, feature index or None) -> where that is in the source, for messages
    where: Callable[..., str] = field(default=None)

    def __post_init__(self):
        if self.where is None:
            self.where = _array_where


def _array_where(i: int, j: int | None = None) -> str:
    return f"index {i}" if j is None else f"sample {i}, feature {j}"


def read_source(spec: str) -> tuple[RawPart, RawPart | None, str, str]:
    """(train part, test part or None, description, kind) for a `--data` spec."""
    if spec == "digits":
        train, source = _read_digits()
        return train, None, source, "digits"
    if spec == "mnist":
        train, test, source = _read_mnist()
        return train, test, source, "mnist"
    path = Path(spec)
    if not path.exists():
        if path.suffix.lower() in (".npz", ".csv") or os.sep in spec or "/" in spec:
            raise DataError(f"data path {spec} does not exist")
        raise DataError(
            f"unknown data set {spec!r}: it is neither a keyword nor an existing path; "
            f"expected {ACCEPTED_FORMS}"
        )
    if path.is_dir():
        train, test = _read_idx_dir(path)
        n = _samples(train) + _samples(test)
        return train, test, f"MNIST IDX files in {spec} ({n} samples)", "idx"
    suffix = path.suffix.lower()
    if suffix == ".npz":
        train, test = _read_npz(path, spec)
        n = _samples(train) + _samples(test)
        return train, test, f"npz file {spec} ({n} samples)", "npz"
    if suffix == ".csv":
        train = read_csv(path, "train")
        return train, None, f"CSV file {spec} ({len(train.y)} samples)", "csv"
    raise DataError(
        f"unknown data format {spec!r} (suffix {suffix or 'none'}); expected {ACCEPTED_FORMS}"
    )


# ---------------------------------------------------------------------------------------------
# Readers. Each returns raw arrays as stored; checks common to all live in _check_part.


def _read_digits() -> tuple[RawPart, str]:
    """scikit-learn's bundled digits, read as load_digits reads them but without importing
    scikit-learn (≈ 2 s of imports for a 60 KB file): one row per image, 64 pixel counts 0..16
    and the class last."""
    import gzip

    path = digits_file()
    if path is None:
        raise DataError(f"scikit-learn's {DIGITS_FILE} is not installed; reinstall scikit-learn")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    x, y = table[:, :-1], table[:, -1].astype(int)  # (1797, 64) float64, (1797,) int
    return RawPart("train", "digits", x, y), f"scikit-learn digits ({len(y)} samples)"


def digits_file() -> Path | None:
    """The file scikit-learn's load_digits reads (found without importing scikit-learn)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / DIGITS_FILE
    return path if path.is_file() else None


def keras_home() -> Path:
    """Keras's cache root: $KERAS_HOME, else ~/.keras (tf_keras always uses ~/.keras)."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


def mnist_cache_path() -> Path:
    """Where Keras caches MNIST: <keras home>/datasets/mnist.npz (it may not exist)."""
    return keras_home() / "datasets" / MNIST_FILE


def find_cached_mnist() -> Path | None:
    path = mnist_cache_path()
    return path if path.is_file() else None


def _download_mnist(cache_root: Path) -> None:
    """Have tf_keras fetch mnist.npz into <cache_root>/datasets (it checks the file's sha256)."""
    import tf_keras  # TensorFlow is imported here only, never at module import

    tf_keras.datasets.mnist.load_data(path=MNIST_FILE, cache_dir=str(cache_root))


def _read_mnist() -> tuple[RawPart, RawPart, str]:
    """MNIST from Keras's cache, downloading it first if needed.

    The cached file is read by bnpipe's own .npz reader (allow_pickle=False), not by tf_keras,
    whose loader enables pickle; so a cached copy needs no TensorFlow at all.
    """
    cached = find_cached_mnist()
    if cached is None:
        expected = mnist_cache_path()
        try:
            _download_mnist(expected.parent.parent)
        except Exception as exc:  # network, proxy, disk, hash mismatch: all end the same way
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DataError(
                f"MNIST is not cached at {expected} and the download failed "
                f"({type(exc).__name__}: {reason}); {MNIST_HINT}"
            ) from None
        cached = find_cached_mnist()
        if cached is None:
            raise DataError(f"MNIST download finished but {expected} does not exist; {MNIST_HINT}")
    train, test = _read_npz(cached, f"Keras MNIST cache {MNIST_FILE}")
    return train, test, f"Keras MNIST ({_samples(train) + _samples(test)} samples)"


def _read_npz(path: Path, label: str) -> tuple[RawPart, RawPart]:
    """The four arrays of a Keras-style .npz, each member's header checked before it is read."""
    import zipfile

    regular_file(path, "data file", DataError)  # `label` may be the path itself
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise DataError(f"{label} cannot be read: {exc.strerror}") from None
    # Check for a zip first: np.load takes anything else for a pickle and says so, misleadingly.
    if magic == b"\x93NUM":
        raise DataError(
            f"{label} is a single .npy array, not a .npz archive with keys {', '.join(NPZ_KEYS)}"
        )
    if magic[:2] != b"PK":
        raise DataError(
            f"{label} is not a readable .npz archive: it does not start like a zip "
            f"file (first bytes {magic!r})"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            members = {n.removesuffix(".npy"): n for n in archive.namelist()}
            missing = [k for k in NPZ_KEYS if k not in members]
            if missing:
                raise DataError(
                    f"{label} lacks the keys {', '.join(missing)}; found "
                    f"{', '.join(members) or 'no keys'}; expected {', '.join(NPZ_KEYS)}"
                )
            arrays = {k: _npz_member(archive, members[k], label, k) for k in NPZ_KEYS}
    except DataError:
        raise
    except Exception as exc:  # a crafted central directory fails in many ways
        raise DataError(f"{label} is not a readable .npz archive: {_one_line(exc)}") from None
    return (
        RawPart("train", f"{label} (x_train, y_train)", arrays["x_train"], arrays["y_train"]),
        RawPart("test", f"{label} (x_test, y_test)", arrays["x_test"], arrays["y_test"]),
    )


def _npz_member(archive, name: str, label: str, key: str) -> np.ndarray:
    """One .npy member: its header says dtype and shape; refused before allocating when the
    dtype holds objects (pickles) or the shape asks for more bytes than the member holds."""
    fmt = np.lib.format
    info = archive.getinfo(name)
    try:
        with archive.open(info) as f:
            version = fmt.read_magic(f)
            read_header = (
                fmt.read_array_header_1_0 if version == (1, 0) else (fmt.read_array_header_2_0)
            )
            shape, _, dtype = read_header(f)
            if dtype.hasobject:
                raise DataError(
                    f"{label} holds object arrays ({key}); bnpipe never unpickles; "
                    "save plain numeric arrays instead"
                )
            declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if declared > min(info.file_size, MAX_ARRAY_BYTES):
                raise DataError(
                    f"{label}: array {key} declares shape {shape} of {dtype} ({declared:,} "
                    f"bytes) but its member holds {info.file_size:,} bytes"
                )
        with archive.open(info) as f:
            return fmt.read_array(f, allow_pickle=False)
    except DataError:
        raise
    except Exception as exc:  # every way the member's bytes can fail to parse
        # zip: a corrupt stream (zlib.error, lzma.LZMAError, OSError), an encrypted member
        # (RuntimeError), an unknown compression method (NotImplementedError); numpy's header
        # parser: ValueError, tokenize.TokenError, SyntaxError, RecursionError, MemoryError.
        raise DataError(f"{label}: array {key} is unreadable: {_one_line(exc)}") from None


def _samples(part: RawPart) -> int:
    """Labels in a part, for descriptions (a scalar counts as 1; the checks refuse it later)."""
    return int(np.shape(part.y)[0]) if np.ndim(part.y) else 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def idx_candidates(base: str) -> list[str]:
    dotted = base.replace("-idx", ".idx", 1)
    return [base, base + ".gz", dotted, dotted + ".gz"]


def _read_idx_dir(directory: Path) -> tuple[RawPart, RawPart]:
    found: dict[str, Path] = {}
    for role, base in IDX_FILES.items():
        for name in idx_candidates(base):
            if os.path.lexists(directory / name):  # a device or FIFO is refused when read
                found[role] = directory / name
                break
    if not found:
        raise DataError(
            f"directory {directory} holds none of the MNIST IDX files "
            f"({', '.join(b + '[.gz]' for b in IDX_FILES.values())}); "
            f"expected {ACCEPTED_FORMS}"
        )
    missing = [IDX_FILES[r] + "[.gz]" for r in IDX_FILES if r not in found]
    if missing:
        raise DataError(
            f"directory {directory} lacks {', '.join(missing)}; found "
            f"{', '.join(p.name for p in found.values())}"
        )
    arrays = {role: read_idx(path) for role, path in found.items()}
    for role in ("x_train", "x_test"):
        if arrays[role].ndim != 3:
            raise DataError(
                f"{found[role]} holds a {arrays[role].ndim}-D array "
                f"{arrays[role].shape}; expected images (n, rows, cols)"
            )
    for role in ("y_train", "y_test"):
        if arrays[role].ndim != 1:
            raise DataError(
                f"{found[role]} holds a {arrays[role].ndim}-D array "
                f"{arrays[role].shape}; expected labels (n,)"
            )
    return (
        RawPart(
            "train",
            f"{found['x_train'].name} / {found['y_train'].name}",
            arrays["x_train"],
            arrays["y_train"],
        ),
        RawPart(
            "test",
            f"{found['x_test'].name} / {found['y_test'].name}",
            arrays["x_test"],
            arrays["y_test"],
        ),
    )


@dataclass(frozen=True)
class IdxHeader:
    """What an IDX file's header declares: 2 zero bytes, a type code, a dims count, one
    big-endian uint32 per dim; the values follow in big-endian C order."""

    path: Path
    code: int  # the type code (0x08: unsigned bytes, as MNIST's)
    dims: tuple[int, ...]
    header_bytes: int  # bytes before the first value
    gzipped: bool

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(IDX_DTYPES[self.code])

    @property
    def data_bytes(self) -> int:
        return int(np.prod(self.dims, dtype=object)) * self.dtype.itemsize

    def open(self):
        """The file's (decompressed) byte stream, from its first byte."""
        return gzip.open(self.path, "rb") if self.gzipped else open(self.path, "rb")

    def stored_bytes(self) -> int:
        """The length of the (decompressed) file, cheaply: its size, or gzip's trailer (the
        length modulo 2**32, which the full read checks exactly)."""
        if not self.gzipped:
            return self.path.stat().st_size
        with open(self.path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            return struct.unpack("<I", f.read(4))[0]

    def length_ok(self) -> bool:
        expected = self.header_bytes + self.data_bytes
        if self.gzipped:
            return self.stored_bytes() == expected % 2**32
        return self.stored_bytes() == expected


def idx_header(path: str | os.PathLike) -> IdxHeader:
    """The header of one IDX file (optionally .gz), read without reading the values."""
    path = regular_file(path, "IDX file", DataError)
    gzipped = path.name.endswith(".gz")
    try:
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4:
                raise DataError(
                    f"IDX file {path} is truncated: {len(magic)} bytes, shorter than the 4-byte "
                    "magic number"
                )
            zero, code, ndim = struct.unpack(">HBB", magic)
            if zero != 0 or code not in IDX_DTYPES or ndim == 0:
                raise DataError(
                    f"{path} is not an IDX file: magic number 0x{magic.hex()}; expected "
                    "0x0000 then a type code (08 09 0b 0c 0d 0e) and a dims count"
                )
            if ndim > MAX_IDX_DIMS:
                raise DataError(
                    f"IDX file {path} declares {ndim} dimensions; bnpipe reads images (3) and "
                    f"labels (1), and no IDX file of more than {MAX_IDX_DIMS}"
                )
            raw = f.read(4 * ndim)
    except (OSError, EOFError, zlib.error) as exc:  # gzip: truncated EOFError, corrupt zlib.error
        raise DataError(f"IDX file {path} cannot be read: {exc}") from None
    header = 4 + 4 * ndim
    if len(raw) < 4 * ndim:
        raise DataError(
            f"IDX file {path} is truncated: {4 + len(raw)} bytes, the header alone needs {header}"
        )
    dims = tuple(int(d) for d in struct.unpack(f">{ndim}I", raw))
    return IdxHeader(path, code, dims, header, gzipped)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """One IDX file (optionally .gz) -> a native-endian numpy array of the declared shape.

    The size is checked against the header both ways, and before anything is allocated: a
    header that claims more than MAX_ARRAY_BYTES, or more than the file holds, is refused.
    """
    h = idx_header(path)
    expected = h.data_bytes
    if expected > MAX_ARRAY_BYTES:
        raise DataError(
            f"IDX file {h.path} declares shape {h.dims}: {expected:,} data bytes, more than "
            f"bnpipe reads into memory ({MAX_ARRAY_BYTES:,})"
        )
    try:
        with h.open() as f:
            f.read(h.header_bytes)
            data = f.read(expected + 1)  # one byte more tells a longer file from an exact one
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"IDX file {h.path} cannot be read: {exc}") from None
    actual = len(data)
    if actual < expected:
        raise DataError(
            f"IDX file {h.path} is truncated: the header declares shape {h.dims} "
            f"({expected} data bytes) but the file holds {actual}"
        )
    if actual > expected:
        extra = h.stored_bytes() - h.header_bytes - expected if not h.gzipped else None
        raise DataError(
            f"IDX file {h.path} has {extra if extra else 'more'} bytes after the {expected} "
            f"data bytes its header (shape {h.dims}) declares"
        )
    values = np.frombuffer(data, dtype=h.dtype).reshape(h.dims)
    return values.astype(h.dtype.newbyteorder("="))


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def read_csv(path: Path, split: str) -> RawPart:
    """A CSV whose first column is the label; a first row that is not all numeric is a header."""
    data = read_bytes(path, "CSV file", DataError)
    try:
        lines = data.decode("utf-8-sig").splitlines()  # -sig: a leading byte-order mark is dropped
    except UnicodeDecodeError as exc:
        raise DataError(
            f"CSV file {path} is not UTF-8 text: {exc.reason} at byte {exc.start}"
        ) from None
    # 1-based line numbers of the non-blank rows; messages point at these.
    row_lines = [i + 1 for i, line in enumerate(lines) if line.strip()]
    if not row_lines:
        raise DataError(f"CSV file {path} is empty; expected rows of label,feature,feature,...")
    first = _cells(path, row_lines[0], lines[row_lines[0] - 1])
    if not all(_is_number(c) for c in first):  # a header
        row_lines = row_lines[1:]
    if not row_lines:
        raise DataError(f"CSV file {path} has a header row but no data rows")
    width = len(first)
    if width < 2:
        raise DataError(
            f"CSV file {path} has {width} column; expected the label and at least "
            "one feature column"
        )
    table = _csv_fast(path, row_lines, width)
    if table is None:
        table = _csv_slow(path, lines, row_lines, width)

    def where(i: int, j: int | None = None) -> str:
        return f"row {row_lines[i]}" + ("" if j is None else f", column {j + 2}")

    return RawPart(split, f"CSV file {path}", table[:, 1:], table[:, 0], where)


def _cells(path: Path, line_no: int, line: str) -> list[str]:
    """One row's cells; the csv module's own complaints (a cell over its field size limit, a
    NUL byte) name the row."""
    try:
        return next(csv.reader([line]))
    except csv.Error as exc:
        raise DataError(f"CSV file {path}, row {line_no}: {exc}") from None


def _csv_fast(path: Path, row_lines: list[int], width: int) -> np.ndarray | None:
    """numpy's C parser: float64 (rows, width), or None on any complaint (the slow pass then
    says exactly where)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = np.loadtxt(
                path,
                delimiter=",",
                skiprows=row_lines[0] - 1,
                ndmin=2,
                dtype=np.float64,
                encoding="utf-8",
                quotechar='"',
                comments=None,
            )
    except ValueError:
        return None
    return table if table.shape == (len(row_lines), width) else None


def _csv_slow(path: Path, lines: list[str], row_lines: list[int], width: int) -> np.ndarray:
    """Cell by cell, so that a ragged row or a cell that is not a number is named."""
    table = np.empty((len(row_lines), width), dtype=np.float64)
    for r, line_no in enumerate(row_lines):
        cells = _cells(path, line_no, lines[line_no - 1])
        if len(cells) != width:
            raise DataError(
                f"CSV file {path}, row {line_no}: {len(cells)} columns; expected "
                f"{width} like the first row"
            )
        for c, cell in enumerate(cells):
            try:
                table[r, c] = float(cell)
            except ValueError:
                raise DataError(
                    f"CSV file {path}, row {line_no}, column {c + 1}: {cell!r} is not a number"
                ) from None
    return table
