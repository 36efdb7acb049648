"""Data sets: checked, scaled and split; the preprocessing every later stage repeats.

`load_dataset(spec)` accepts the forms of pipeline/DESIGN.md's "Data" contract:

    digits          scikit-learn's bundled 8x8 digits (pixels 0-16, divisor 16); offline
    mnist           Keras's MNIST: the cached `mnist.npz`, else a download through tf_keras
    PATH.npz        keys x_train, y_train, x_test, y_test (the layout of Keras's mnist.npz)
    DIR             the four MNIST IDX files, each optionally gzipped
    PATH.csv        first column the label, the rest features; an optional header row

and returns a `Dataset`: train / validation / test arrays, float32 (n, features) scaled to
[0, 1], int64 labels, the `Preprocessing` that produced them and a record of how the splits were
made. Loading writes nothing (a `mnist` download goes to Keras's own cache, as Keras does it).

Only numpy and the standard library are imported here; scikit-learn only for `digits` and
TensorFlow only when MNIST has to be downloaded, so `bnpipe --help` stays fast.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.errors import DataError
from pipeline.data.readers import RawPart, read_csv, read_source
from pipeline.data.splits import seeded_split
from pipeline.data.targets import check_targets, float_targets, split_targets
from pipeline.store import files

DIGITS_DIVISOR = 16.0  # load_digits pixels are counts 0..16 of a 4x4 block
PIXEL_DIVISOR = 255.0  # 8-bit pixels
# Classes a model may have: labels are class numbers 0 … MAX_CLASSES − 1. Far beyond the 10 of
# MNIST (and ImageNet's 1,000); a label of 2**40 is a damaged file, not a class.
MAX_CLASSES = 10_000
# Values a sample may have: 2**20 is 224×224×3 (ImageNet's input) four times over. Beyond it the
# float32 copies and the first layer's weights (with Adam's two slots) outgrow a machine's memory
# from a file of kilobytes (a compressed .npz of zeros), so it is refused before either exists.
MAX_FEATURES = 1 << 20
PIXEL_CODES = 256  # integer pixels as uint8 codes 0..255 (digits use 0..16 of them)


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
        """float32 (256,): what each integer pixel 0..255 becomes by `apply`'s exact arithmetic."""
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
    # instead of dividing floats. None for other data. Not part of the fingerprint: it is x_test
    # again.
    x_test_codes: np.ndarray | None = None
    # One sample's shape as the source stores it: (64,) for digits, (28, 28) for MNIST images.
    sample_shape: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "sample_shape", tuple(int(d) for d in self.sample_shape))

    def fingerprint(self) -> str:
        """sha256 over dtype, shape and bytes of the six arrays, in a fixed order."""
        h = hashlib.sha256()
        for key in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            a = np.ascontiguousarray(getattr(self, key))
            h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a)  # the array's own buffer (C-contiguous): the bytes tobytes() would copy
        return h.hexdigest()

    def summary(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "sizes": {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)},
            "n_features": self.preprocessing.n_features,
            "sample_shape": list(self.sample_shape),
            "num_classes": self.num_classes,
            "preprocessing": self.preprocessing.to_dict(),
            "split": dict(self.split),
            "fingerprint": self.fingerprint(),
        }


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
    seed = _check_arguments(seed, val_fraction, test_fraction, num_classes)
    train, test, source, kind = _read_parts(spec, test_spec)
    parts = [p for p in (train, test) if p is not None]
    regression = float_targets(parts)  # float (n, k) labels: a regressor's targets (targets.py)
    for p in parts:
        _check_part(p, num_classes, regression and train.y.shape[-1])
    n_features = _feature_count(train, test)
    if num_classes is None:
        num_classes = 0 if regression else _count_classes(spec, parts)
    divisor = DIGITS_DIVISOR if kind == "digits" else _infer_divisor(parts)
    pre = Preprocessing(divisor=divisor, n_features=n_features)
    split = {
        "seed": seed,
        "val_fraction": val_fraction,
        "source_has_test_split": kind in ("mnist", "npz", "idx"),
    }
    x_all, y_all = pre.apply(train.x), _labels(train.y, regression)
    divide = split_targets if regression else seeded_split  # targets: rows, not stratified
    if test is not None:
        x_test, y_test = pre.apply(test.x), _labels(test.y, regression)
        split.update(
            test_from="source" if test_spec is None else "test_data",
            test_fraction=None,
            test_stratified=None,
            **({"test_data": str(test_spec)} if test_spec is not None else {}),
        )
        x_pool, y_pool = x_all, y_all
    else:
        x_pool, x_test, y_pool, y_test, stratified = divide(
            x_all, y_all, test_fraction, seed, "the data", "test"
        )
        split.update(test_from="split", test_fraction=test_fraction, test_stratified=stratified)
    x_train, x_val, y_train, y_val, split["val_stratified"] = divide(
        x_pool, y_pool, val_fraction, seed, "the training part", "validation"
    )
    arrays = (x_train, y_train, x_val, y_val, x_test, y_test)
    extra = {"x_test_codes": pixel_codes(x_test, pre), "sample_shape": train.x.shape[1:]}
    return Dataset(spec, source, *arrays, num_classes, pre, split, **extra)


def _feature_count(train: RawPart, test: RawPart | None) -> int:
    n_features = int(np.prod(train.x.shape[1:], dtype=np.int64))
    if test is not None:
        test_features = int(np.prod(test.x.shape[1:], dtype=np.int64))
        if test_features != n_features:
            raise DataError(
                f"the training data has {n_features} features per sample but the test "
                f"data ({test.origin}) has {test_features}"
            )
    return n_features


def _check_arguments(seed, val_fraction, test_fraction, num_classes) -> int:
    if (
        isinstance(seed, bool)
        or not isinstance(seed, (int, np.integer))
        or not 0 <= seed < 2**32  # what numpy's RandomState takes
    ):
        raise DataError(f"seed must be an integer from 0 to 2**32 - 1, got {seed!r}")
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if num_classes is not None and (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int)
        or not 2 <= num_classes <= MAX_CLASSES
    ):
        raise DataError(
            f"num_classes must be an integer from 2 to {MAX_CLASSES}, got {num_classes!r}"
        )
    return int(seed)


def _read_parts(spec: str, test_spec: str | None) -> tuple[RawPart, RawPart | None, str, str]:
    """read_source(spec), with the separate test file a .csv may have."""
    train, test, source, kind = read_source(spec)
    if test_spec is None:
        return train, test, source, kind
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
    if not test_path.is_file() or test_path.suffix.lower() != ".csv":
        raise DataError(
            f"--test-data {test_spec} is not a .csv file; the test data of a .csv "
            "data set must be a .csv file as well"
        )
    test = read_csv(test_path, "test")
    return train, test, source + f" + test file {test_spec} ({len(test.y)} samples)", kind


def _count_classes(spec: str, parts: list[RawPart]) -> int:
    """The largest label + 1, bounded: a label of 2**40 would ask for a 2**40-way classifier."""
    top = max(int(p.y.max()) for p in parts)
    if top < 1:
        raise DataError(f"{spec} holds only the label 0; a classifier needs at least 2 classes")
    if top >= MAX_CLASSES:
        raise DataError(
            f"{spec} has the label {top}; bnpipe trains classifiers of at most {MAX_CLASSES} "
            f"classes, numbered 0 to {MAX_CLASSES - 1}"
        )
    present = np.unique(np.concatenate([p.y.reshape(-1) for p in parts]))
    if len(present) == 1:  # e.g. every label 3: a 4-class model that never saw classes 0 to 2
        raise DataError(
            f"{spec} holds only the label {int(present[0])}; a classifier needs at least 2 "
            f"classes (it would train {top + 1} outputs, {top} of them never seen)"
        )
    return top + 1


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


# ---------------------------------------------------------------------------------------------
# Checks, scaling and splitting


def _labels(y: np.ndarray, regression: bool) -> np.ndarray:
    return y.astype(np.float32) if regression else y.reshape(-1).astype(np.int64)


def _check_part(p: RawPart, num_classes: int | None, targets: int | bool = False) -> None:
    """Counts, emptiness, label values and finite pixels of one raw split. Raises one DataError.
    `targets`: the labels are float regression targets (k columns, data/targets.py)."""
    x, y = p.x, p.y
    # Booleans, integers and reals; not complex numbers, nor timedeltas (numpy counts both as
    # numbers, and a cast would drop the imaginary part or the unit without a word).
    if x.dtype.kind not in "biuf":
        raise DataError(
            f"{p.origin}: the {p.split} images have dtype {x.dtype}; expected real numbers"
        )
    if targets:
        y = check_targets(p, None if targets is True else int(targets))
    if y.dtype.kind not in "biuf":
        raise DataError(f"{p.origin}: the {p.split} labels have dtype {y.dtype}; expected integers")
    if x.ndim < 2:
        raise DataError(
            f"{p.origin}: the {p.split} images have shape {x.shape}; expected "
            "(n, features) or (n, rows, cols)"
        )
    if y.ndim == 2 and y.shape[1] == 1 and not targets:
        y = y.reshape(-1)
    if y.ndim != 1 and not targets:
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
    values = int(np.prod(x.shape[1:], dtype=np.int64))
    if values > MAX_FEATURES:
        raise DataError(
            f"{p.origin}: the {p.split} images have shape {x.shape}, {values:,} values a "
            f"sample; bnpipe's small classifiers take at most {MAX_FEATURES:,}"
        )
    p.y = y
    if not targets:
        _check_labels(p, num_classes)
    if np.issubdtype(x.dtype, np.floating):
        flat = x.reshape(len(x), -1)
        bad = ~np.isfinite(flat)
        if bad.any():
            i, j = (int(v) for v in np.argwhere(bad)[0])
            raise DataError(
                f"{p.origin}: {int(bad.sum())} NaN or infinite values in the {p.split} "
                f"images, the first at {p.where(i, j)}; expected finite numbers"
            )


def _check_labels(p: RawPart, num_classes: int | None) -> None:
    """Labels are whole numbers from 0 (below num_classes when it is given)."""
    y = p.y
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


def _fmt(value) -> str:
    """A label as a person writes it: 7, -1, 1.5, nan (not np.float64(7.0))."""
    return f"{float(value):g}"


def _infer_divisor(parts: list[RawPart]) -> float:
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


def recorded_dataset(where: Path | list[Path], data: str | None = None, model=None):
    """The data set a later stage should use, and its preprocessing (a dict).

    `data` if given (loaded with the default split); else the data and split recorded in the
    first train.json found in `where` (one or more directories). The split is seeded, so the
    test set is the very one training held out. DataError if neither exists or if the data does
    not fit `model` (check_fits).
    """
    from pipeline.store.artifacts import read_json

    dirs = [where] if isinstance(where, Path) else list(where)
    cfg = None
    if data is None:
        for d in dirs:
            if (d / files.TRAIN_RECORD).is_file():
                record = read_json(d / files.TRAIN_RECORD)
                cfg = record.get("config", {}) if isinstance(record, dict) else None
                if not isinstance(cfg, dict):
                    raise DataError(
                        f"{d / files.TRAIN_RECORD} holds no table of options under 'config' "
                        "(edited?); pass --data, or run `bnpipe train` again"
                    )
                break
        if cfg is None:
            raise DataError(
                "no data given and no train.json found beside the model; pass --data "
                "(digits, mnist, a .npz, an IDX directory or a .csv)"
            )
        ds = load_dataset(
            cfg.get("data", "digits"),
            cfg.get("test_data"),
            seed=cfg.get("seed", 0),
            val_fraction=cfg.get("val_fraction", 0.1),
            test_fraction=cfg.get("test_fraction", 0.2),
        )
    else:
        ds = load_dataset(data)
    if model is not None:
        check_fits(ds, model_input_shape(model), output_width(model))
    return ds, ds.preprocessing.to_dict()


def model_input_shape(model) -> tuple[int, ...]:
    """The one input shape of a Keras model (either Keras) without the batch axis."""
    shape = model.inputs[0].shape[1:]
    if len(model.inputs) != 1 or any(d is None for d in shape):
        raise DataError(
            "bnpipe feeds models with one input of fixed shape; this model takes "
            + ", ".join(str(tuple(t.shape)) for t in model.inputs)
        )
    return tuple(int(d) for d in shape)


def output_width(model) -> int:
    """The classes a model's output can score: its width when it is (batch, k); an output of
    more axes (an image) scores none, so check_fits does not count classes against it."""
    shape = model.outputs[0].shape
    return int(shape[-1]) if len(shape) == 2 else MAX_CLASSES


def check_fits(ds: Dataset, input_shape: tuple[int, ...], outputs: int) -> None:
    """DataError naming both shapes when a sample cannot be reshaped to `input_shape`, or when
    the data has more classes than the model outputs."""
    n_in = int(np.prod(input_shape, dtype=np.int64))
    if ds.preprocessing.n_features != n_in:
        raise DataError(
            f"the data has {ds.preprocessing.n_features} features per sample (shape "
            f"{ds.sample_shape}) but the model takes input shape {tuple(input_shape)} ({n_in} "
            "values)"
        )
    if ds.num_classes > outputs:
        raise DataError(f"the data has {ds.num_classes} classes but the model outputs {outputs}")


def shaped(x: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """(n, features) samples as (n, *input_shape), the model's own layout (a view, no copy):
    flat for an MLP, (H, W) or (H, W, C) for an image model. Pixels are stored row-major, as every
    source here and Keras's Flatten lay them out."""
    return x.reshape((len(x), *input_shape))


def as_model_input(ds: Dataset, input_shape: tuple[int, ...]) -> Dataset:
    """The same data set with every x (and the test pixel codes) laid out as the model takes
    them, (n, *input_shape): views, no copies. Fingerprint and summarize `ds` itself, not this
    (the arrays' shapes are part of the fingerprint)."""
    import dataclasses

    codes = ds.x_test_codes
    return dataclasses.replace(
        ds,
        x_train=shaped(ds.x_train, input_shape),
        x_val=shaped(ds.x_val, input_shape),
        x_test=shaped(ds.x_test, input_shape),
        x_test_codes=None if codes is None else shaped(codes, input_shape),
    )


def image_shape(ds: Dataset) -> tuple[int, int, int]:
    """The (H, W, C) a convolutional model takes the data's samples as: (H, W) images get one
    channel, (H, W, C) ones keep theirs, flat samples of a square size (digits' 64) are square
    images. DataError for anything else."""
    shape = tuple(ds.sample_shape) or (ds.preprocessing.n_features,)
    if len(shape) == 3:
        return shape
    if len(shape) == 2:
        return (*shape, 1)
    side = math.isqrt(shape[0]) if len(shape) == 1 else 0
    if side > 0 and side * side == shape[0]:
        return (side, side, 1)
    raise DataError(
        f"{ds.name} has samples of shape {shape}, which are not images; --arch cnn takes "
        "(H, W) or (H, W, C) images, or flat ones of a square size"
    )
