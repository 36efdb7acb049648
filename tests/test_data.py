"""pipeline.data.dataset: the checks, scaling and splits every source goes through, and
fingerprints."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from helpers import csv_rows, raises_data_error, write_csv, write_npz
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.data import dataset as data
from pipeline.data.dataset import Dataset, Preprocessing, load_dataset

RNG = np.random.default_rng(1234)


# --- digits -----------------------------------------------------------------------------------


# `digits`: the session fixture of conftest.py (load_dataset("digits") with the defaults).


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


# --- the split: scikit-learn's rows, without importing scikit-learn -----------------------------


@st.composite
def _split_case(draw):
    """Labels of 2-300 samples over 1-14 classes (often imbalanced, sometimes with gaps in the
    class numbers), a held-out fraction and a seed."""
    n = draw(st.integers(2, 300))
    classes = draw(st.integers(1, 14))
    weights = draw(st.lists(st.integers(1, 50), min_size=classes, max_size=classes))
    rows = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    labels = rows.choice(classes, size=n, p=np.asarray(weights) / sum(weights))
    labels = labels * draw(st.sampled_from([1, 3])) + draw(st.sampled_from([0, 5]))
    y = labels.astype(draw(st.sampled_from([np.int64, np.uint8, np.int32])))
    fraction = draw(st.one_of(st.sampled_from([0.1, 0.2, 0.25, 1 / 3, 0.5]), st.floats(0.01, 0.99)))
    return y, fraction, draw(st.integers(0, 2**31 - 1))


def _sklearn_split(x, y, fraction, seed, stratified):
    from sklearn.model_selection import train_test_split

    return train_test_split(
        x,
        y,
        test_size=fraction,
        random_state=seed,
        shuffle=True,
        stratify=y if stratified else None,
    )


@settings(max_examples=400, deadline=None)
@given(_split_case())
def test_split_picks_scikit_learns_rows_in_its_order(case):
    """data._split draws what train_test_split draws, stratified or not: same rows, same order,
    same dtypes, so every split bnpipe made while it called scikit-learn is made again."""
    y, fraction, seed = case
    n = len(y)
    if not 1 <= math.ceil(fraction * n) < n:
        return  # refused by _split (test_too_few_samples_to_split)
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    *ours, stratified = data.seeded_split(x, y, fraction, seed, "the data", "test")
    theirs = _sklearn_split(x, y, fraction, seed, stratified)
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_digits_splits_are_scikit_learns(seed):
    """Both splits of the default data (test off the whole, validation off the rest)."""
    from sklearn.datasets import load_digits

    ds = load_dataset("digits", seed=seed)
    raw = load_digits()
    x, y = Preprocessing(16.0, 64).apply(raw.images), raw.target.astype(np.int64)
    x_pool, x_test, y_pool, y_test = _sklearn_split(x, y, 0.2, seed, True)
    x_train, x_val, y_train, y_val = _sklearn_split(x_pool, y_pool, 0.1, seed, True)
    expected = dict(x_train=x_train, x_val=x_val, x_test=x_test, y_train=y_train, y_val=y_val)
    for key, ref in {**expected, "y_test": y_test}.items():
        np.testing.assert_array_equal(getattr(ds, key), ref, err_msg=key)


def test_loading_a_npz_does_not_import_scikit_learn(tmp_path):
    """The split costs no scikit-learn import (about 1.5 s and 60 MiB with scipy.stats)."""
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (200, 28, 28), dtype=np.uint8),
        y_train=np.arange(200) % 10,
        x_test=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        y_test=np.arange(20) % 10,
    )
    code = (
        "import sys; from pipeline.data.dataset import load_dataset; "
        f"ds = load_dataset({str(path)!r}); "
        "assert ds.split['val_stratified']; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


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


def test_loading_digits_imports_neither_tensorflow_nor_scikit_learn():
    code = (
        "import sys, pipeline.data.dataset as d; d.load_dataset('digits'); "
        "assert not {'tensorflow', 'tf_keras', 'sklearn'} & set(sys.modules), "
        "sorted({'tensorflow', 'tf_keras', 'sklearn'} & set(sys.modules))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_digits_are_scikit_learns_load_digits_exactly():
    from sklearn.datasets import load_digits

    from pipeline.data.readers import read_source

    bunch = load_digits()
    part, test, _, kind = read_source("digits")
    assert test is None and kind == "digits"
    assert part.x.dtype == bunch.data.dtype and np.array_equal(part.x, bunch.data)
    assert np.array_equal(part.y, bunch.target)


# --- checks common to all formats ----------------------------------------------------------------


def test_missing_path_and_unknown_formats(tmp_path):
    raises_data_error(
        f"data path {tmp_path / 'nope.npz'} does not exist",
        load_dataset,
        str(tmp_path / "nope.npz"),
    )
    msg = raises_data_error(
        "unknown data set 'fashion': it is neither a keyword nor an existing path",
        load_dataset,
        "fashion",
    )
    assert "'digits', 'mnist', a .npz file" in msg
    (tmp_path / "d.txt").write_text("1,2\n")
    raises_data_error("unknown data format", load_dataset, str(tmp_path / "d.txt"))
    write_csv(tmp_path / "d.csv", csv_rows()[0])
    raises_data_error(
        f"--test-data path {tmp_path / 'none.csv'} does not exist",
        load_dataset,
        str(tmp_path / "d.csv"),
        str(tmp_path / "none.csv"),
    )


def test_count_mismatch_named_with_both_numbers(tmp_path):
    path = tmp_path / "m.npz"
    write_npz(path, y_test=np.zeros(11, np.uint8))
    raises_data_error("12 test images but 11 test labels", load_dataset, str(path))


def test_labels_out_of_range_in_arrays(tmp_path):
    path = tmp_path / "m.npz"
    y = np.array([0, 1, 2] * 10)
    y[17] = 9
    write_npz(path, y_train=y)
    raises_data_error(
        "1 train labels are >= num_classes 3, the first 9 at index 17",
        load_dataset,
        str(path),
        num_classes=3,
    )
    write_npz(path, y_train=np.full(30, 0.5))
    raises_data_error(
        "30 train labels are not integers, the first 0.5 at index 0", load_dataset, str(path)
    )


def test_nan_in_arrays(tmp_path):
    path = tmp_path / "m.npz"
    x = RNG.random((30, 3, 2))
    x[4, 1, 0] = np.nan
    write_npz(path, x_train=x)
    raises_data_error(
        "1 NaN or infinite values in the train images, the first at sample 4, feature 2",
        load_dataset,
        str(path),
    )


def test_empty_split(tmp_path):
    path = tmp_path / "m.npz"
    write_npz(path, x_test=np.zeros((0, 4, 4), np.uint8), y_test=np.zeros(0, np.uint8))
    raises_data_error("the test set is empty", load_dataset, str(path))


def test_too_few_samples_to_split(tmp_path):
    path = tmp_path / "d.csv"
    write_csv(path, [[0, 1, 2], [1, 3, 4]])
    raises_data_error(
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
    write_npz(path, x_train=x, x_test=x_test)
    msg = raises_data_error(fragment, load_dataset, str(path))
    assert "expected 8-bit pixels (integers 0 to 255) or floats already in [0, 1]" in msg


def test_unstratified_when_a_class_has_one_member(tmp_path):
    rows, _, _ = csv_rows(n=30)
    rows.append([2, 1, 2, 3, 4, 5])  # class 2: one sample only
    path = tmp_path / "d.csv"
    write_csv(path, rows)
    ds = load_dataset(str(path))
    assert ds.split["test_stratified"] is False and ds.num_classes == 3


def test_argument_checks():
    raises_data_error(
        "val_fraction must be a number between 0 and 1", load_dataset, "digits", val_fraction=0
    )
    raises_data_error(
        "test_fraction must be a number between 0 and 1", load_dataset, "digits", test_fraction=1.5
    )
    raises_data_error(
        "num_classes must be an integer from 2 to 10000, got 1",
        load_dataset,
        "digits",
        num_classes=1,
    )
    raises_data_error(
        "seed must be an integer from 0 to 2**32 - 1, got -1", load_dataset, "digits", seed=-1
    )
    raises_data_error("got 1099511627776", load_dataset, "digits", seed=2**40)


# --- Preprocessing -------------------------------------------------------------------------------


def test_preprocessing_apply_and_round_trip():
    pre = Preprocessing(divisor=255.0, n_features=4)
    raw = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    out = pre.apply(raw)
    assert out.dtype == np.float32 and out.shape == (1, 4)
    np.testing.assert_array_equal(out, np.array([[0, 1, 0.2, 0.4]], np.float32))
    assert raw.dtype == np.uint8  # not modified
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    raises_data_error(
        "input has 3 features per sample; the preprocessing expects 4", pre.apply, np.zeros((2, 3))
    )
    raises_data_error(
        "preprocessing record lacks n_features; found keys divisor",
        Preprocessing.from_dict,
        {"divisor": 1.0},
    )
    raises_data_error("divisor must be a finite number > 0, got 0", Preprocessing, 0, 4)


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
    arrays = write_npz(path)
    np.testing.assert_array_equal(
        load_dataset(str(path)).x_test_codes, arrays["x_test"].reshape(12, 16)
    )
    rows, _x, _y = csv_rows()
    write_csv(tmp_path / "d.csv", rows)
    ds = load_dataset(str(tmp_path / "d.csv"), seed=2)
    assert ds.x_test_codes.dtype == np.uint8
    np.testing.assert_array_equal(
        _bits(ds.preprocessing.code_values()[ds.x_test_codes]), _bits(ds.x_test)
    )


def test_no_codes_for_data_that_are_not_pixels(tmp_path):
    path = tmp_path / "f.npz"
    write_npz(
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


def test_samples_of_more_values_than_a_small_classifier_takes_are_refused(tmp_path):
    """A 70 KB compressed .npz of zeros can declare 2,000,000 values a sample: trained, it took
    7.5 GB. Refused from its shape, before any float copy."""
    from pipeline.data.dataset import MAX_FEATURES

    x = np.zeros((4, MAX_FEATURES + 1), np.uint8)
    path = tmp_path / "wide.npz"
    np.savez_compressed(path, x_train=x, y_train=np.arange(4) % 2, x_test=x[:2], y_test=[0, 1])
    assert path.stat().st_size < 100_000
    raises_data_error(
        "1,048,577 values a sample; bnpipe's small classifiers take at most 1,048,576",
        load_dataset,
        str(path),
    )


def test_labels_of_one_class_only_are_refused_naming_it(tmp_path):
    """Every label 3: the count of classes would be 4 (the largest label + 1), three of them
    never seen; refused by name rather than trained without a word."""
    write_npz(
        tmp_path / "threes.npz", y_train=np.full(30, 3, np.uint8), y_test=np.full(12, 3, np.uint8)
    )
    raises_data_error(
        "holds only the label 3; a classifier needs at least 2 classes (it would train 4 "
        "outputs, 3 of them never seen)",
        data.load_dataset,
        str(tmp_path / "threes.npz"),
    )
