"""pipeline.data: every reader on real files written here, the checks, scaling and splits."""

import gzip
import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from pipeline import data
from pipeline.data import Dataset, Preprocessing, load_dataset, read_idx
from pipeline.errors import DataError

RNG = np.random.default_rng(1234)


def _images(n, rows=4, cols=4, classes=3, seed=0):
    """(n, rows, cols) uint8 pixels and (n,) uint8 labels cycling through every class."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, rows, cols), dtype=np.uint8)
    y = (np.arange(n) % classes).astype(np.uint8)
    return x, y


def _write_npz(path, n_train=30, n_test=12, **override):
    x_train, y_train = _images(n_train, seed=1)
    x_test, y_test = _images(n_test, seed=2)
    arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    arrays.update(override)
    np.savez(path, **arrays)
    return arrays


def _idx_bytes(a: np.ndarray) -> bytes:
    """The IDX encoding written independently of the reader: magic, dims, big-endian values."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}[a.dtype]
    header = struct.pack(">HBB", 0, code, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


def _write_idx_dir(directory, gz=False, dotted=False, n_train=30, n_test=12):
    directory.mkdir(exist_ok=True)
    x_train, y_train = _images(n_train, seed=1)
    x_test, y_test = _images(n_test, seed=2)
    for base, a in (
        ("train-images-idx3-ubyte", x_train),
        ("train-labels-idx1-ubyte", y_train),
        ("t10k-images-idx3-ubyte", x_test),
        ("t10k-labels-idx1-ubyte", y_test),
    ):
        name = base.replace("-idx", ".idx", 1) if dotted else base
        raw = _idx_bytes(a)
        if gz:
            (directory / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (directory / name).write_bytes(raw)
    return x_train, y_train, x_test, y_test


def _write_csv(path, rows, header=None):
    lines = ([",".join(header)] if header else []) + [",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def _csv_rows(n=40, features=5, classes=2):
    x = RNG.integers(0, 256, size=(n, features))
    y = np.arange(n) % classes
    return [[int(y[i]), *map(int, x[i])] for i in range(n)], x, y


def _raises(fragment, fn, *args, **kwargs):
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert fragment in message, message
    assert "\n" not in message  # one line for the CLI
    return message


# --- digits -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_digits_loads_offline_with_every_sample(digits):
    assert len(digits.y_train) + len(digits.y_val) + len(digits.y_test) == 1797
    for x in (digits.x_train, digits.x_val, digits.x_test):
        assert x.dtype == np.float32 and x.shape[1] == 64
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert digits.x_train.max() == 1.0  # 16 / 16
    for y in (digits.y_train, digits.y_val, digits.y_test):
        assert y.dtype == np.int64
    assert digits.preprocessing == Preprocessing(divisor=16.0, n_features=64)
    assert digits.num_classes == 10
    assert digits.source == "scikit-learn digits (1797 samples)"
    assert digits.split["test_from"] == "split" and digits.split["source_has_test_split"] is False
    # 0.2 of 1797 held out (ceil), then 0.1 of the rest
    assert len(digits.y_test) == 360 and len(digits.y_val) == 144


def test_digits_values_are_the_raw_pixels_over_16(digits):
    from sklearn.datasets import load_digits

    raw = load_digits().data
    # every scaled row is some raw row / 16, exactly (the divisor is a power of two)
    scaled = {row.tobytes() for row in (raw / 16).astype(np.float32)}
    assert all(row.tobytes() in scaled for row in digits.x_test)


def test_same_seed_gives_identical_arrays_other_seed_differs(digits):
    again = load_dataset("digits", seed=0)
    for key in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(again, key), getattr(digits, key))
    assert again.fingerprint() == digits.fingerprint()
    other = load_dataset("digits", seed=1)
    assert other.fingerprint() != digits.fingerprint()
    assert not np.array_equal(other.y_test, digits.y_test)


def test_splits_are_stratified(digits):
    assert digits.split["test_stratified"] and digits.split["val_stratified"]
    total = (
        np.bincount(digits.y_train, minlength=10)
        + np.bincount(digits.y_val, minlength=10)
        + np.bincount(digits.y_test, minlength=10)
    )
    for y, fraction in ((digits.y_test, 0.2), (digits.y_val, 0.8 * 0.1)):
        counts = np.bincount(y, minlength=10)
        # stratified: each class within 1 of its share (an unstratified split misses by ~5)
        assert np.all(np.abs(counts - fraction * total) <= 1.5), counts


def test_summary_and_fingerprint(digits):
    s = digits.summary()
    assert s["name"] == "digits" and s["num_classes"] == 10 and s["n_features"] == 64
    assert s["sizes"] == {"train": 1293, "val": 144, "test": 360}
    assert s["preprocessing"] == {"divisor": 16.0, "n_features": 64}
    assert s["fingerprint"] == digits.fingerprint() and len(s["fingerprint"]) == 64
    assert s["split"]["seed"] == 0 and s["split"]["test_fraction"] == 0.2
    assert json.loads(json.dumps(s)) == s  # plain JSON values, ready for train.json


def test_fingerprint_sees_dtype_and_shape():
    x = np.zeros((4, 2), np.float32)
    y = np.zeros(4, np.int64)
    pre = Preprocessing(1.0, 2)
    a = Dataset("a", "s", x, y, x, y, x, y, 2, pre)
    b = Dataset("a", "s", x.reshape(2, 4), y, x, y, x, y, 2, pre)  # same bytes, other shape
    c = Dataset("a", "s", x, y.astype(np.int32).repeat(2), x, y, x, y, 2, pre)  # same bytes
    assert len({a.fingerprint(), b.fingerprint(), c.fingerprint()}) == 3


def test_loading_digits_does_not_import_tensorflow():
    code = (
        "import sys, pipeline.data as d; d.load_dataset('digits'); "
        "assert 'tensorflow' not in sys.modules and 'tf_keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- npz ---------------------------------------------------------------------------------------


def test_npz_keeps_its_test_split_and_scales_by_255(tmp_path):
    path = tmp_path / "small.npz"
    arrays = _write_npz(path)
    ds = load_dataset(str(path), seed=3)
    np.testing.assert_array_equal(
        ds.x_test, arrays["x_test"].reshape(12, 16).astype(np.float32) / np.float32(255)
    )
    np.testing.assert_array_equal(ds.y_test, arrays["y_test"].astype(np.int64))
    assert len(ds.y_train) == 27 and len(ds.y_val) == 3
    assert ds.preprocessing == Preprocessing(255.0, 16)
    assert ds.num_classes == 3
    assert ds.split["source_has_test_split"] and ds.split["test_from"] == "source"
    assert ds.split["test_fraction"] is None
    assert ds.source == f"npz file {path} (42 samples)"


def test_npz_float_data_in_unit_range_keeps_divisor_1(tmp_path):
    path = tmp_path / "f.npz"
    _write_npz(
        path,
        x_train=RNG.random((30, 6)).astype(np.float32),
        x_test=RNG.random((12, 6)).astype(np.float32),
    )
    ds = load_dataset(str(path))
    assert ds.preprocessing.divisor == 1.0 and ds.preprocessing.n_features == 6


def test_npz_missing_keys_named(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.zeros((3, 4)), images=np.zeros((3, 4)))
    msg = _raises(
        "lacks the keys y_train, x_test, y_test; found x_train, images", load_dataset, str(path)
    )
    assert "expected x_train, y_train, x_test, y_test" in msg


def test_npz_object_arrays_refused_without_unpickling(tmp_path):
    path = tmp_path / "obj.npz"
    x, y = _images(5)
    np.savez(
        path,
        x_train=np.array([x[0], "not a picture"], dtype=object),
        y_train=y,
        x_test=x,
        y_test=y,
        allow_pickle=True,
    )
    _raises("holds object arrays (x_train); bnpipe never unpickles", load_dataset, str(path))


def test_npz_not_an_archive(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"this is no zip file")
    _raises("is not a readable .npz archive", load_dataset, str(path))


def test_npz_refuses_test_data(tmp_path):
    path = tmp_path / "small.npz"
    _write_npz(path)
    other = tmp_path / "t.csv"
    _write_csv(other, _csv_rows()[0])
    _raises(
        "has its own test split; --test-data is only for a .csv",
        load_dataset,
        str(path),
        str(other),
    )


def test_digits_refuses_test_data(tmp_path):
    other = tmp_path / "t.csv"
    _write_csv(other, _csv_rows()[0])
    _raises(
        "given with digits, whose test split bnpipe makes itself",
        load_dataset,
        "digits",
        str(other),
    )


# --- IDX ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz,dotted", [(False, False), (True, False), (False, True), (True, True)])
def test_idx_directory_plain_gzipped_and_dotted(tmp_path, gz, dotted):
    x_train, y_train, x_test, y_test = _write_idx_dir(tmp_path / "mnist", gz=gz, dotted=dotted)
    ds = load_dataset(str(tmp_path / "mnist"))
    np.testing.assert_array_equal(
        ds.x_test, x_test.reshape(12, 16).astype(np.float32) / np.float32(255)
    )
    np.testing.assert_array_equal(ds.y_test, y_test)
    assert len(ds.y_train) + len(ds.y_val) == 30
    assert ds.preprocessing == Preprocessing(255.0, 16)
    # the training pool is the IDX training set, reshuffled
    pool = np.concatenate([ds.y_train, ds.y_val])
    np.testing.assert_array_equal(np.sort(pool), np.sort(y_train))


def test_read_idx_other_dtypes_round_trip(tmp_path):
    for a in (
        np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5,
        np.linspace(0, 1, 6, dtype=np.float32),
    ):
        (tmp_path / "f").write_bytes(_idx_bytes(a))
        out = read_idx(tmp_path / "f")
        assert out.dtype == a.dtype and out.dtype.isnative
        np.testing.assert_array_equal(out, a)


def test_idx_truncated_file(tmp_path):
    _write_idx_dir(tmp_path / "m")
    f = tmp_path / "m" / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-7])
    _raises(
        "is truncated: the header declares shape (12, 4, 4) (192 data bytes) but the file holds 185",
        load_dataset,
        str(tmp_path / "m"),
    )


def test_idx_truncated_gzip(tmp_path):
    _write_idx_dir(tmp_path / "m", gz=True)
    f = tmp_path / "m" / "train-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-12])
    _raises("train-labels-idx1-ubyte.gz cannot be read", load_dataset, str(tmp_path / "m"))


def test_idx_trailing_bytes_and_bad_magic(tmp_path):
    _write_idx_dir(tmp_path / "m")
    f = tmp_path / "m" / "train-labels-idx1-ubyte"
    good = f.read_bytes()
    f.write_bytes(good + b"\0\0")
    _raises(
        "has 2 bytes after the 30 data bytes its header (shape (30,)) declares",
        load_dataset,
        str(tmp_path / "m"),
    )
    f.write_bytes(b"\x01\x02" + good[2:])
    _raises("is not an IDX file: magic number 0x01020801", load_dataset, str(tmp_path / "m"))


def test_idx_directory_missing_files(tmp_path):
    _write_idx_dir(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").unlink()
    _raises(
        "lacks t10k-labels-idx1-ubyte[.gz]; found train-images-idx3-ubyte",
        load_dataset,
        str(tmp_path / "m"),
    )
    (tmp_path / "empty").mkdir()
    _raises("holds none of the MNIST IDX files", load_dataset, str(tmp_path / "empty"))


def test_idx_label_count_mismatch(tmp_path):
    _write_idx_dir(tmp_path / "m")
    (tmp_path / "m" / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(29, np.uint8)))
    _raises("30 train images but 29 train labels", load_dataset, str(tmp_path / "m"))


# --- CSV ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, ["label"] + [f"px{i}" for i in range(5)]])
def test_csv_with_and_without_header(tmp_path, header):
    rows, x, y = _csv_rows()
    path = tmp_path / "d.csv"
    _write_csv(path, rows, header)
    ds = load_dataset(str(path), seed=2, test_fraction=0.25)
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 40 and len(ds.y_test) == 10
    assert ds.preprocessing == Preprocessing(255.0, 5)
    assert ds.split["test_from"] == "split" and ds.split["test_fraction"] == 0.25
    # every test sample is one of the file's rows, scaled
    expected = {(int(y[i]), *(x[i] / 255).astype(np.float32).tolist()) for i in range(40)}
    for xi, yi in zip(ds.x_test, ds.y_test):
        assert (int(yi), *xi.tolist()) in expected


def test_csv_separate_test_file(tmp_path):
    rows, _, _ = _csv_rows()
    _write_csv(tmp_path / "train.csv", rows)
    test_rows, _, _ = _csv_rows(n=8)
    _write_csv(tmp_path / "test.csv", test_rows, header=["y", "a", "b", "c", "d", "e"])
    ds = load_dataset(str(tmp_path / "train.csv"), str(tmp_path / "test.csv"))
    assert len(ds.y_test) == 8 and len(ds.y_train) + len(ds.y_val) == 40
    np.testing.assert_array_equal(ds.y_test, [r[0] for r in test_rows])
    assert ds.split["test_from"] == "test_data" and ds.split["test_data"] == str(
        tmp_path / "test.csv"
    )
    assert ds.source.endswith(f"+ test file {tmp_path / 'test.csv'} (8 samples)")


def test_csv_non_numeric_cell_named_by_row_and_column(tmp_path):
    rows, _, _ = _csv_rows(n=6)
    rows[3][4] = "oops"
    path = tmp_path / "d.csv"
    _write_csv(path, rows, header=["label", "a", "b", "c", "d", "e"])
    _raises("row 5, column 5: 'oops' is not a number", load_dataset, str(path))


def test_csv_ragged_row(tmp_path):
    rows, _, _ = _csv_rows(n=6)
    rows[2] = rows[2][:-1]
    path = tmp_path / "d.csv"
    _write_csv(path, rows)
    _raises("row 3: 5 columns; expected 6", load_dataset, str(path))


def test_csv_feature_count_differs_from_test_file(tmp_path):
    _write_csv(tmp_path / "train.csv", _csv_rows()[0])
    _write_csv(tmp_path / "test.csv", _csv_rows(features=4)[0])
    _raises(
        "the training data has 5 features per sample but the test data (CSV file",
        load_dataset,
        str(tmp_path / "train.csv"),
        str(tmp_path / "test.csv"),
    )


def test_csv_label_problems_point_at_the_row(tmp_path):
    rows, _, _ = _csv_rows(n=10)
    path = tmp_path / "d.csv"
    rows[6][0] = 1.5
    _write_csv(path, rows, header=["l", "a", "b", "c", "d", "e"])
    _raises("1 train labels are not integers, the first 1.5 at row 8", load_dataset, str(path))
    rows[6][0] = -1
    _write_csv(path, rows)
    _raises("1 train labels are negative, the first -1 at row 7", load_dataset, str(path))
    rows[6][0] = 7
    _write_csv(path, rows)
    _raises(
        "1 train labels are >= num_classes 3, the first 7 at row 7; expected 0 to 2",
        load_dataset,
        str(path),
        num_classes=3,
    )


def test_csv_nan_counted_and_located(tmp_path):
    rows, _, _ = _csv_rows(n=10)
    rows[2][3] = "nan"
    rows[5][1] = "inf"
    path = tmp_path / "d.csv"
    _write_csv(path, rows)
    _raises(
        "2 NaN or infinite values in the train images, the first at row 3, column 4",
        load_dataset,
        str(path),
    )


def test_csv_header_only_and_empty(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("label,a,b\n")
    _raises("has a header row but no data rows", load_dataset, str(path))
    path.write_text("\n")
    _raises("is empty", load_dataset, str(path))


# --- checks common to all formats ----------------------------------------------------------------


def test_missing_path_and_unknown_formats(tmp_path):
    _raises(
        f"data path {tmp_path / 'nope.npz'} does not exist",
        load_dataset,
        str(tmp_path / "nope.npz"),
    )
    msg = _raises(
        "unknown data set 'fashion': it is neither a keyword nor an existing path",
        load_dataset,
        "fashion",
    )
    assert "'digits', 'mnist', a .npz file" in msg
    (tmp_path / "d.txt").write_text("1,2\n")
    _raises("unknown data format", load_dataset, str(tmp_path / "d.txt"))
    _write_csv(tmp_path / "d.csv", _csv_rows()[0])
    _raises(
        f"--test-data path {tmp_path / 'none.csv'} does not exist",
        load_dataset,
        str(tmp_path / "d.csv"),
        str(tmp_path / "none.csv"),
    )


def test_count_mismatch_named_with_both_numbers(tmp_path):
    path = tmp_path / "m.npz"
    _write_npz(path, y_test=np.zeros(11, np.uint8))
    _raises("12 test images but 11 test labels", load_dataset, str(path))


def test_labels_out_of_range_in_arrays(tmp_path):
    path = tmp_path / "m.npz"
    y = np.array([0, 1, 2] * 10)
    y[17] = 9
    _write_npz(path, y_train=y)
    _raises(
        "1 train labels are >= num_classes 3, the first 9 at index 17",
        load_dataset,
        str(path),
        num_classes=3,
    )
    _write_npz(path, y_train=np.full(30, 0.5))
    _raises("30 train labels are not integers, the first 0.5 at index 0", load_dataset, str(path))


def test_nan_in_arrays(tmp_path):
    path = tmp_path / "m.npz"
    x = RNG.random((30, 3, 2))
    x[4, 1, 0] = np.nan
    _write_npz(path, x_train=x)
    _raises(
        "1 NaN or infinite values in the train images, the first at sample 4, feature 2",
        load_dataset,
        str(path),
    )


def test_empty_split(tmp_path):
    path = tmp_path / "m.npz"
    _write_npz(path, x_test=np.zeros((0, 4, 4), np.uint8), y_test=np.zeros(0, np.uint8))
    _raises("the test set is empty", load_dataset, str(path))


def test_too_few_samples_to_split(tmp_path):
    path = tmp_path / "d.csv"
    _write_csv(path, [[0, 1, 2], [1, 3, 4]])
    _raises(
        "the training part holds 1 samples, too few to split off a validation set",
        load_dataset,
        str(path),
    )


@pytest.mark.parametrize(
    "x,fragment",
    [
        (np.full((30, 4), -1.0), "image values run from -1 to 255 (integer)"),
        (np.full((30, 4), 300, np.int32), "image values run from 0 to 300 (integer)"),
        (np.full((30, 4), 2.5), "image values run from 0 to 255 (non-integer)"),
    ],
)
def test_value_range_refused(tmp_path, x, fragment):
    path = tmp_path / "m.npz"
    x_test = np.zeros((12, 4), np.int32)
    x_test[0, 0] = 255
    _write_npz(path, x_train=x, x_test=x_test)
    msg = _raises(fragment, load_dataset, str(path))
    assert "expected 8-bit pixels (integers 0 to 255) or floats already in [0, 1]" in msg


def test_unstratified_when_a_class_has_one_member(tmp_path):
    rows, _, _ = _csv_rows(n=30)
    rows.append([2, 1, 2, 3, 4, 5])  # class 2: one sample only
    path = tmp_path / "d.csv"
    _write_csv(path, rows)
    ds = load_dataset(str(path))
    assert ds.split["test_stratified"] is False and ds.num_classes == 3


def test_argument_checks():
    _raises("val_fraction must be a number between 0 and 1", load_dataset, "digits", val_fraction=0)
    _raises(
        "test_fraction must be a number between 0 and 1", load_dataset, "digits", test_fraction=1.5
    )
    _raises("num_classes must be an integer >= 2, got 1", load_dataset, "digits", num_classes=1)
    _raises("seed must be an integer >= 0, got -1", load_dataset, "digits", seed=-1)


# --- Preprocessing -------------------------------------------------------------------------------


def test_preprocessing_apply_and_round_trip():
    pre = Preprocessing(divisor=255.0, n_features=4)
    raw = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    out = pre.apply(raw)
    assert out.dtype == np.float32 and out.shape == (1, 4)
    np.testing.assert_array_equal(out, np.array([[0, 1, 0.2, 0.4]], np.float32))
    assert raw.dtype == np.uint8  # not modified
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    _raises(
        "input has 3 features per sample; the preprocessing expects 4", pre.apply, np.zeros((2, 3))
    )
    _raises(
        "preprocessing record lacks n_features; found keys divisor",
        Preprocessing.from_dict,
        {"divisor": 1.0},
    )
    _raises("divisor must be a finite number > 0, got 0", Preprocessing, 0, 4)


# --- integer pixel codes of the test split ------------------------------------------------------


def _bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def test_code_values_are_apply_of_each_pixel():
    for divisor in (16.0, 255.0, 1.0, 3.0):
        pre = Preprocessing(divisor=divisor, n_features=256)
        values = pre.code_values()
        assert values.dtype == np.float32 and values.shape == (256,)
        np.testing.assert_array_equal(_bits(values), _bits(pre.apply(np.arange(256)[None])[0]))


def test_digits_test_codes_are_its_pixels(digits):
    codes = digits.x_test_codes
    assert codes.dtype == np.uint8 and codes.shape == digits.x_test.shape
    assert codes.max() == 16
    np.testing.assert_array_equal(
        _bits(digits.preprocessing.code_values()[codes]), _bits(digits.x_test)
    )


def test_npz_and_csv_test_codes_are_the_stored_pixels(tmp_path):
    path = tmp_path / "small.npz"
    arrays = _write_npz(path)
    np.testing.assert_array_equal(
        load_dataset(str(path)).x_test_codes, arrays["x_test"].reshape(12, 16)
    )
    rows, x, y = _csv_rows()
    _write_csv(tmp_path / "d.csv", rows)
    ds = load_dataset(str(tmp_path / "d.csv"), seed=2)
    assert ds.x_test_codes.dtype == np.uint8
    np.testing.assert_array_equal(
        _bits(ds.preprocessing.code_values()[ds.x_test_codes]), _bits(ds.x_test)
    )


def test_no_codes_for_data_that_are_not_pixels(tmp_path):
    path = tmp_path / "f.npz"
    _write_npz(
        path,
        x_train=RNG.random((30, 6)).astype(np.float32),
        x_test=RNG.random((12, 6)).astype(np.float32),
    )
    assert load_dataset(str(path)).x_test_codes is None
    pre = Preprocessing(divisor=255.0, n_features=3)
    pixels = pre.apply(np.array([[0, 7, 255]]))
    np.testing.assert_array_equal(data.pixel_codes(pixels, pre), [[0, 7, 255]])
    negative_zero, nan = pixels.copy(), pixels.copy()
    negative_zero[0, 0], nan[0, 0] = -0.0, np.nan  # -0.0 == 0.0, but its bits are not pixel 0's
    for x in (
        pixels + np.float32(1e-4),
        negative_zero,
        nan,
        pre.apply(np.array([[0, 7, 256]])),
        pre.apply(np.array([[0, -1, 255]])),
        np.zeros((0, 3), np.float32),
    ):
        assert data.pixel_codes(x, pre) is None, x


# --- mnist: only the cache path; tests never download -----------------------------------------


def test_mnist_read_from_keras_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    assert data.find_cached_mnist() is None
    assert data.mnist_cache_path() == tmp_path / "keras" / "datasets" / "mnist.npz"
    (tmp_path / "keras" / "datasets").mkdir(parents=True)
    arrays = _write_npz(tmp_path / "keras" / "datasets" / "mnist.npz")
    assert data.find_cached_mnist() == data.mnist_cache_path()
    ds = load_dataset("mnist")
    assert ds.name == "mnist" and ds.source == "Keras MNIST (42 samples)"
    np.testing.assert_array_equal(ds.y_test, arrays["y_test"])
    assert ds.preprocessing == Preprocessing(255.0, 16)


def test_mnist_download_failure_says_how_to_supply_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))

    def offline(cache_root):  # stands in for the network, never reached in tests
        assert cache_root == tmp_path / "keras"
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(data, "_download_mnist", offline)
    msg = _raises(
        "the download failed (OSError: Temporary failure in name resolution)", load_dataset, "mnist"
    )
    assert "supply MNIST locally instead: --data PATH.npz" in msg
    assert "train-images-idx3-ubyte[.gz]" in msg
