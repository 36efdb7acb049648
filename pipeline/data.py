"""Data sets, their readers, and the preprocessing every later stage repeats.

`load_dataset(spec)` accepts the forms of DESIGN.md's `--data` contract:

    digits          scikit-learn's bundled 8x8 digits (pixels 0-16, divisor 16); offline
    mnist           Keras's MNIST: the cached `mnist.npz`, else a download through tf_keras
    PATH.npz        keys x_train, y_train, x_test, y_test (the layout of Keras's mnist.npz)
    DIR             the four MNIST IDX files, each optionally gzipped
    PATH.csv        first column the label, the rest features; an optional header row

and returns a `Dataset`: train / validation / test arrays, float32 (n, features) scaled to
[0, 1], int64 labels, the `Preprocessing` that produced them and a record of how the splits were
made. Loading writes nothing (a `mnist` download goes to Keras's own cache, as Keras does it).

Only numpy and the standard library are imported here; scikit-learn is imported when it is used
and TensorFlow only when MNIST has to be downloaded, so `bnpipe --help` stays fast.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import math
import os
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError

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
DIGITS_DIVISOR = 16.0  # load_digits pixels are counts 0..16 of a 4x4 block
PIXEL_DIVISOR = 255.0  # 8-bit pixels
PIXEL_CODES = 256  # integer pixels as uint8 codes 0..255 (digits use 0..16 of them)
MNIST_HINT = (
    "supply MNIST locally instead: --data PATH.npz (keys x_train, y_train, x_test, "
    "y_test) or --data DIR holding train-images-idx3-ubyte[.gz], "
    "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
    "t10k-labels-idx1-ubyte[.gz]"
)


@dataclass(frozen=True)
class Preprocessing:
    """Flatten, then divide by `divisor`: x = raw.reshape(n, -1).astype(float32) / divisor.

    Saved with the model; every later stage and device runner applies exactly this.
    """

    divisor: float  # 16 for digits, 255 for 8-bit pixels, 1 for floats already in [0, 1]
    n_features: int  # features per sample after flattening (64 for digits, 784 for MNIST)

    def __post_init__(self):
        # Stored as plain float / int (numpy scalars accepted) so that to_dict is JSON as is.
        if (
            isinstance(self.divisor, bool)
            or not isinstance(self.divisor, (int, float, np.number))
            or not math.isfinite(self.divisor)
            or self.divisor <= 0
        ):
            raise DataError(
                f"preprocessing divisor must be a finite number > 0, got {self.divisor!r}"
            )
        if (
            isinstance(self.n_features, bool)
            or not isinstance(self.n_features, (int, np.integer))
            or self.n_features < 1
        ):
            raise DataError(
                f"preprocessing n_features must be an integer >= 1, got {self.n_features!r}"
            )
        object.__setattr__(self, "divisor", float(self.divisor))
        object.__setattr__(self, "n_features", int(self.n_features))

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """(n, ...) raw samples -> a new float32 (n, n_features) array; `raw` is not modified."""
        raw = np.asarray(raw)
        flat = raw.reshape(raw.shape[0], -1) if raw.ndim else raw.reshape(1, -1)
        if flat.shape[1] != self.n_features:
            raise DataError(
                f"input has {flat.shape[1]} features per sample; "
                f"the preprocessing expects {self.n_features}"
            )
        return self._scale(flat)

    def _scale(self, raw: np.ndarray) -> np.ndarray:
        # Both operands float32 so that the division rounds as it will on a device.
        return raw.astype(np.float32) / np.float32(self.divisor)

    def code_values(self) -> np.ndarray:
        """float32 (256,): what each integer pixel 0..255 becomes, by exactly `apply`'s arithmetic."""
        return self._scale(np.arange(PIXEL_CODES))

    def to_dict(self) -> dict:
        return {"divisor": float(self.divisor), "n_features": int(self.n_features)}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        missing = [k for k in ("divisor", "n_features") if k not in d]
        if missing:
            raise DataError(
                f"preprocessing record lacks {', '.join(missing)}; found keys "
                f"{', '.join(sorted(map(str, d))) or 'none'}"
            )
        return cls(divisor=float(d["divisor"]), n_features=int(d["n_features"]))


@dataclass
class Dataset:
    name: str  # "digits", "mnist", or the path given
    source: str  # human description, e.g. "scikit-learn digits (1797 samples)"
    x_train: np.ndarray  # float32 (n_train, n_features) in [0, 1]
    y_train: np.ndarray  # int64 (n_train,)
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    preprocessing: Preprocessing
    split: dict = field(default_factory=dict)  # seed, fractions, where the test split came from
    # uint8 (n_test, n_features) when the test images are integer pixels: x_test is exactly
    # preprocessing.code_values()[x_test_codes], so quantizing can look pixels up (quantize_codes)
    # instead of dividing floats. None for other data. Not part of the fingerprint: it is x_test again.
    x_test_codes: np.ndarray | None = None

    def fingerprint(self) -> str:
        """sha256 over dtype, shape and bytes of the six arrays, in a fixed order."""
        h = hashlib.sha256()
        for key in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            a = np.ascontiguousarray(getattr(self, key))
            h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def summary(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "sizes": {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)},
            "n_features": self.preprocessing.n_features,
            "num_classes": self.num_classes,
            "preprocessing": self.preprocessing.to_dict(),
            "split": dict(self.split),
            "fingerprint": self.fingerprint(),
        }


@dataclass
class _Part:
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


# ---------------------------------------------------------------------------------------------
# The entry point


def load_dataset(
    spec: str = "digits",
    test_spec: str | None = None,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    num_classes: int | None = None,
) -> Dataset:
    """Read `spec`, check it, scale it and split it; returns new arrays, writes nothing.

    `test_spec` is a separate test file, accepted only where the source has no test split of its
    own (a .csv); giving it with digits, mnist, a .npz or an IDX directory is a DataError rather
    than a silent override. Sources without a test split are split with `test_fraction`
    (seeded, stratified where every class has two members); the validation set is always
    `val_fraction` of the training part, split the same way. Same arguments -> identical arrays.
    """
    spec = str(spec)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be an integer >= 0, got {seed!r}")
    seed = int(seed)
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
    ):
        raise DataError(f"num_classes must be an integer >= 2, got {num_classes!r}")

    train, test, source, kind = _read_source(spec)
    divisor = DIGITS_DIVISOR if kind == "digits" else None
    if test_spec is not None:
        if kind == "digits":
            raise DataError(
                f"--test-data {test_spec} was given with digits, whose test split "
                "bnpipe makes itself (test_fraction); --test-data is only for a .csv"
            )
        if kind != "csv":
            raise DataError(
                f"--test-data {test_spec} was given, but {spec} ({kind}) has its own "
                "test split; --test-data is only for a .csv without one"
            )
        test_path = Path(str(test_spec))
        if not test_path.exists():
            raise DataError(f"--test-data path {test_spec} does not exist")
        if test_path.is_dir() or test_path.suffix.lower() != ".csv":
            raise DataError(
                f"--test-data {test_spec} is not a .csv file; the test data of a .csv "
                "data set must be a .csv file as well"
            )
        test = _read_csv(test_path, "test")
        source += f" + test file {test_spec} ({len(test.y)} samples)"

    parts = [p for p in (train, test) if p is not None]
    for p in parts:
        _check_part(p, num_classes)
    n_features = int(np.prod(train.x.shape[1:], dtype=np.int64))
    if test is not None:
        test_features = int(np.prod(test.x.shape[1:], dtype=np.int64))
        if test_features != n_features:
            raise DataError(
                f"the training data has {n_features} features per sample but the test "
                f"data ({test.origin}) has {test_features}"
            )
    if num_classes is None:
        num_classes = int(max(int(p.y.max()) for p in parts)) + 1
        if num_classes < 2:
            raise DataError(f"{spec} holds only the label 0; a classifier needs at least 2 classes")
    if divisor is None:
        divisor = _infer_divisor(parts)
    pre = Preprocessing(divisor=divisor, n_features=n_features)

    x_all = pre.apply(train.x)
    y_all = train.y.reshape(-1).astype(np.int64)
    split = {
        "seed": seed,
        "val_fraction": val_fraction,
        "source_has_test_split": kind in ("mnist", "npz", "idx"),
    }
    if test is not None:
        x_test, y_test = pre.apply(test.x), test.y.reshape(-1).astype(np.int64)
        split.update(
            test_from="source" if test_spec is None else "test_data",
            test_fraction=None,
            test_stratified=None,
        )
        if test_spec is not None:
            split["test_data"] = str(test_spec)
        x_pool, y_pool = x_all, y_all
    else:
        x_pool, x_test, y_pool, y_test, stratified = _split(
            x_all, y_all, test_fraction, seed, "the data", "test"
        )
        split.update(test_from="split", test_fraction=test_fraction, test_stratified=stratified)
    x_train, x_val, y_train, y_val, stratified = _split(
        x_pool, y_pool, val_fraction, seed, "the training part", "validation"
    )
    split["val_stratified"] = stratified

    return Dataset(
        name=spec,
        source=source,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        preprocessing=pre,
        split=split,
        x_test_codes=pixel_codes(x_test, pre),
    )


def pixel_codes(x: np.ndarray, pre: Preprocessing) -> np.ndarray | None:
    """uint8 codes with pre.code_values()[codes] == x bit for bit, or None if x is not such pixels.

    Recovered from the scaled floats (round(x · divisor)) and then checked bit for bit (so a −0.0
    is not taken for pixel 0), so the claim holds whatever the source was; a new array, x is not
    modified.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.size == 0:
        return None
    k = np.rint(x * np.float32(pre.divisor))
    if not (k.min() >= 0 and k.max() < PIXEL_CODES):  # NaN fails both: not pixels either
        return None
    codes = k.astype(np.uint8)
    if not np.array_equal(pre._scale(codes).view(np.uint32), x.view(np.uint32)):
        return None
    return codes


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise DataError(f"{name} must be a number between 0 and 1 (exclusive), got {value!r}")


def _read_source(spec: str) -> tuple[_Part, _Part | None, str, str]:
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
        n = len(train.y) + len(test.y)
        return train, test, f"MNIST IDX files in {spec} ({n} samples)", "idx"
    suffix = path.suffix.lower()
    if suffix == ".npz":
        train, test = _read_npz(path, spec)
        n = len(train.y) + len(test.y)
        return train, test, f"npz file {spec} ({n} samples)", "npz"
    if suffix == ".csv":
        train = _read_csv(path, "train")
        return train, None, f"CSV file {spec} ({len(train.y)} samples)", "csv"
    raise DataError(
        f"unknown data format {spec!r} (suffix {suffix or 'none'}); expected {ACCEPTED_FORMS}"
    )


# ---------------------------------------------------------------------------------------------
# Readers. Each returns raw arrays as stored; checks common to all live in _check_part.


def _read_digits() -> tuple[_Part, str]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no network

    bunch = load_digits()
    x, y = bunch.data, bunch.target  # (1797, 64) float64 pixels 0..16, (1797,) int
    return _Part("train", "digits", x, y), f"scikit-learn digits ({len(y)} samples)"


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


def _read_mnist() -> tuple[_Part, _Part, str]:
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
    return train, test, f"Keras MNIST ({len(train.y) + len(test.y)} samples)"


def _read_npz(path: Path, label: str) -> tuple[_Part, _Part]:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise DataError(f"{label} cannot be read: {exc.strerror}") from None
    # Check for a zip first: np.load takes anything else for a pickle and says so, misleadingly.
    if magic[:2] != b"PK" and magic != b"\x93NUM":
        raise DataError(
            f"{label} is not a readable .npz archive: it does not start like a zip "
            f"file (first bytes {magic!r})"
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(f"{label} holds pickled data; bnpipe never unpickles") from None
        raise DataError(f"{label} is not a readable .npz archive: {exc}") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{label} is not a readable .npz archive: {exc}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(
            f"{label} is a single .npy array, not a .npz archive with keys {', '.join(NPZ_KEYS)}"
        )
    with archive:
        found = list(archive.files)
        missing = [k for k in NPZ_KEYS if k not in found]
        if missing:
            raise DataError(
                f"{label} lacks the keys {', '.join(missing)}; found "
                f"{', '.join(found) or 'no keys'}; expected {', '.join(NPZ_KEYS)}"
            )
        arrays = {}
        for key in NPZ_KEYS:
            try:
                arrays[key] = archive[key]
            except ValueError as exc:
                if "pickle" in str(exc).lower() or "object" in str(exc).lower():
                    raise DataError(
                        f"{label} holds object arrays ({key}); bnpipe never unpickles; "
                        "save plain numeric arrays instead"
                    ) from None
                raise DataError(f"{label}: array {key} is unreadable: {exc}") from None
            except (OSError, EOFError) as exc:  # a truncated or corrupt member
                raise DataError(f"{label}: array {key} is unreadable: {exc}") from None
    return (
        _Part("train", f"{label} (x_train, y_train)", arrays["x_train"], arrays["y_train"]),
        _Part("test", f"{label} (x_test, y_test)", arrays["x_test"], arrays["y_test"]),
    )


def _idx_candidates(base: str) -> list[str]:
    dotted = base.replace("-idx", ".idx", 1)
    return [base, base + ".gz", dotted, dotted + ".gz"]


def _read_idx_dir(directory: Path) -> tuple[_Part, _Part]:
    found: dict[str, Path] = {}
    for role, base in IDX_FILES.items():
        for name in _idx_candidates(base):
            if (directory / name).is_file():
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
        _Part(
            "train",
            f"{found['x_train'].name} / {found['y_train'].name}",
            arrays["x_train"],
            arrays["y_train"],
        ),
        _Part(
            "test",
            f"{found['x_test'].name} / {found['y_test'].name}",
            arrays["x_test"],
            arrays["y_test"],
        ),
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """One IDX file (optionally .gz) -> a native-endian numpy array of the declared shape.

    Layout: 2 zero bytes, a type code byte, a dims count byte, one big-endian uint32 per dim,
    then the values in big-endian C order. The size is checked against the header both ways.
    """
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip: a truncated stream is an EOFError
        raise DataError(f"IDX file {path} cannot be read: {exc}") from None
    if len(data) < 4:
        raise DataError(
            f"IDX file {path} is truncated: {len(data)} bytes, shorter than the 4-byte magic number"
        )
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in IDX_DTYPES or ndim == 0:
        raise DataError(
            f"{path} is not an IDX file: magic number 0x{data[:4].hex()}; expected "
            "0x0000 then a type code (08 09 0b 0c 0d 0e) and a dims count"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"IDX file {path} is truncated: {len(data)} bytes, the header alone needs {header}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(IDX_DTYPES[code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual < expected:
        raise DataError(
            f"IDX file {path} is truncated: the header declares shape {dims} "
            f"({expected} data bytes) but the file holds {actual}"
        )
    if actual > expected:
        raise DataError(
            f"IDX file {path} has {actual - expected} bytes after the {expected} "
            f"data bytes its header (shape {dims}) declares"
        )
    values = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return values.astype(dtype.newbyteorder("="))


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_csv(path: Path, split: str) -> _Part:
    """A CSV whose first column is the label; a first row that is not all numeric is a header."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"CSV file {path} cannot be read as UTF-8 text: {exc}") from None
    # 1-based line numbers of the non-blank rows; messages point at these.
    row_lines = [i + 1 for i, line in enumerate(lines) if line.strip()]
    if not row_lines:
        raise DataError(f"CSV file {path} is empty; expected rows of label,feature,feature,...")
    first = next(csv.reader([lines[row_lines[0] - 1]]))
    has_header = not all(_is_number(c) for c in first)
    if has_header:
        row_lines = row_lines[1:]
    if not row_lines:
        raise DataError(f"CSV file {path} has a header row but no data rows")
    width = len(first)
    if width < 2:
        raise DataError(
            f"CSV file {path} has {width} column; expected the label and at least "
            "one feature column"
        )

    data = None
    try:  # numpy's C parser; on any complaint the slow pass below says exactly where
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = np.loadtxt(
                path,
                delimiter=",",
                skiprows=row_lines[0] - 1,
                ndmin=2,
                dtype=np.float64,
                encoding="utf-8",
                quotechar='"',
                comments=None,
            )
        if data.shape != (len(row_lines), width):
            data = None
    except ValueError:
        data = None
    if data is None:
        data = np.empty((len(row_lines), width), dtype=np.float64)
        for r, line_no in enumerate(row_lines):
            cells = next(csv.reader([lines[line_no - 1]]))
            if len(cells) != width:
                raise DataError(
                    f"CSV file {path}, row {line_no}: {len(cells)} columns; expected "
                    f"{width} like the first row"
                )
            for c, cell in enumerate(cells):
                try:
                    data[r, c] = float(cell)
                except ValueError:
                    raise DataError(
                        f"CSV file {path}, row {line_no}, column {c + 1}: {cell!r} is not a number"
                    ) from None

    def where(i: int, j: int | None = None) -> str:
        return f"row {row_lines[i]}" + ("" if j is None else f", column {j + 2}")

    return _Part(split, f"CSV file {path}", data[:, 1:], data[:, 0], where)


# ---------------------------------------------------------------------------------------------
# Checks, scaling and splitting


def _check_part(p: _Part, num_classes: int | None) -> None:
    """Counts, emptiness, label values and finite pixels of one raw split. Raises one DataError."""
    x, y = p.x, p.y
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(f"{p.origin}: the {p.split} images have dtype {x.dtype}; expected numbers")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        raise DataError(f"{p.origin}: the {p.split} labels have dtype {y.dtype}; expected integers")
    if x.ndim < 2:
        raise DataError(
            f"{p.origin}: the {p.split} images have shape {x.shape}; expected "
            "(n, features) or (n, rows, cols)"
        )
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise DataError(f"{p.origin}: the {p.split} labels have shape {y.shape}; expected (n,)")
    if len(x) != len(y):
        raise DataError(
            f"{p.origin}: {len(x)} {p.split} images but {len(y)} {p.split} labels; "
            "expected one label per image"
        )
    if len(y) == 0:
        raise DataError(f"{p.origin}: the {p.split} set is empty; expected at least one sample")
    if x.shape[1:] and int(np.prod(x.shape[1:])) == 0:
        raise DataError(f"{p.origin}: the {p.split} images have shape {x.shape}, no features")
    p.y = y

    if np.issubdtype(y.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{p.origin}: {bad.size} {p.split} labels are not integers, the first "
                f"{_fmt(y[i])} at {p.where(i)}; expected class numbers 0, 1, 2, ..."
            )
    negative = np.flatnonzero(y < 0)
    if negative.size:
        i = int(negative[0])
        raise DataError(
            f"{p.origin}: {negative.size} {p.split} labels are negative, the first "
            f"{_fmt(y[i])} at {p.where(i)}; expected class numbers 0, 1, 2, ..."
        )
    if num_classes is not None:
        over = np.flatnonzero(y >= num_classes)
        if over.size:
            i = int(over[0])
            raise DataError(
                f"{p.origin}: {over.size} {p.split} labels are >= num_classes "
                f"{num_classes}, the first {_fmt(y[i])} at {p.where(i)}; expected 0 to "
                f"{num_classes - 1}"
            )

    if np.issubdtype(x.dtype, np.floating):
        flat = x.reshape(len(x), -1)
        bad = ~np.isfinite(flat)
        if bad.any():
            i, j = (int(v) for v in np.argwhere(bad)[0])
            raise DataError(
                f"{p.origin}: {int(bad.sum())} NaN or infinite values in the {p.split} "
                f"images, the first at {p.where(i, j)}; expected finite numbers"
            )


def _fmt(value) -> str:
    """A label as a person writes it: 7, -1, 1.5, nan (not np.float64(7.0))."""
    return f"{float(value):g}"


def _infer_divisor(parts: list[_Part]) -> float:
    """255 for 8-bit pixels, 1 for values already in [0, 1]; anything else is refused.

    Decided over train and test together so that both get the same scaling. uint8 is always
    8-bit pixels; other dtypes count as pixels when every value is an integer in 0..255 and the
    largest exceeds 1 (0/1 data is already in range, divisor 1).
    """
    lo = min(float(p.x.min()) for p in parts)
    hi = max(float(p.x.max()) for p in parts)
    if all(p.x.dtype == np.uint8 for p in parts):
        return PIXEL_DIVISOR
    if lo >= 0.0 and hi <= 1.0:
        return 1.0
    integral = all(
        not np.issubdtype(p.x.dtype, np.floating) or bool(np.all(p.x == np.round(p.x)))
        for p in parts
    )
    if integral and lo >= 0 and hi <= 255:
        return PIXEL_DIVISOR
    kind = "integer" if integral else "non-integer"
    raise DataError(
        f"{parts[0].origin}: image values run from {lo:g} to {hi:g} ({kind}); expected "
        "8-bit pixels (integers 0 to 255) or floats already in [0, 1]"
    )


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int, what: str, held_out: str):
    """Seeded split of `fraction` off (x, y) -> (x_keep, x_out, y_keep, y_out, stratified).

    Stratified when every class has at least two members and both sides can hold one sample
    of every class (scikit-learn refuses otherwise); unstratified (still seeded) if not.
    """
    from sklearn.model_selection import train_test_split

    n = len(y)
    n_out = math.ceil(fraction * n)  # scikit-learn's own rounding of a float test_size
    if n_out < 1 or n - n_out < 1:
        raise DataError(
            f"{what} holds {n} samples, too few to split off a {held_out} set of "
            f"{fraction:g} and keep one to train on; expected at least 2"
        )
    counts = np.unique(y, return_counts=True)[1]
    present = len(counts)
    stratified = bool(counts.min() >= 2 and n_out >= present and n - n_out >= present)
    x_keep, x_out, y_keep, y_out = train_test_split(
        x,
        y,
        test_size=fraction,
        random_state=seed,
        shuffle=True,
        stratify=y if stratified else None,
    )
    return x_keep, x_out, y_keep, y_out, stratified
