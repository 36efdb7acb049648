"""pipeline.data.readers: every reader on real files written here, and what each refuses."""

import numpy as np
import pytest
from helpers import (
    csv_rows,
    idx_bytes,
    images,
    raises_data_error,
    write_csv,
    write_idx_dir,
    write_npz,
)

from pipeline.data import readers
from pipeline.data.dataset import Preprocessing, load_dataset
from pipeline.data.readers import read_idx

RNG = np.random.default_rng(1234)

# --- npz ---------------------------------------------------------------------------------------


def test_npz_keeps_its_test_split_and_scales_by_255(tmp_path):
    path = tmp_path / "small.npz"
    arrays = write_npz(path)
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
    write_npz(
        path,
        x_train=RNG.random((30, 6)).astype(np.float32),
        x_test=RNG.random((12, 6)).astype(np.float32),
    )
    ds = load_dataset(str(path))
    assert ds.preprocessing.divisor == 1.0 and ds.preprocessing.n_features == 6


def test_npz_missing_keys_named(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.zeros((3, 4)), images=np.zeros((3, 4)))
    msg = raises_data_error(
        "lacks the keys y_train, x_test, y_test; found x_train, images", load_dataset, str(path)
    )
    assert "expected x_train, y_train, x_test, y_test" in msg


def test_npz_object_arrays_refused_without_unpickling(tmp_path):
    path = tmp_path / "obj.npz"
    x, y = images(5)
    np.savez(
        path,
        x_train=np.array([x[0], "not a picture"], dtype=object),
        y_train=y,
        x_test=x,
        y_test=y,
        allow_pickle=True,
    )
    raises_data_error(
        "holds object arrays (x_train); bnpipe never unpickles", load_dataset, str(path)
    )


def test_npz_not_an_archive(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"this is no zip file")
    raises_data_error("is not a readable .npz archive", load_dataset, str(path))


def test_npz_refuses_test_data(tmp_path):
    path = tmp_path / "small.npz"
    write_npz(path)
    other = tmp_path / "t.csv"
    write_csv(other, csv_rows()[0])
    raises_data_error(
        "has its own test split; --test-data is only for a .csv",
        load_dataset,
        str(path),
        str(other),
    )


def test_digits_refuses_test_data(tmp_path):
    other = tmp_path / "t.csv"
    write_csv(other, csv_rows()[0])
    raises_data_error(
        "given with digits, whose test split bnpipe makes itself",
        load_dataset,
        "digits",
        str(other),
    )


# --- IDX ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz,dotted", [(False, False), (True, False), (False, True), (True, True)])
def test_idx_directory_plain_gzipped_and_dotted(tmp_path, gz, dotted):
    _x_train, y_train, x_test, y_test = write_idx_dir(tmp_path / "mnist", gz=gz, dotted=dotted)
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
        (tmp_path / "f").write_bytes(idx_bytes(a))
        out = read_idx(tmp_path / "f")
        assert out.dtype == a.dtype and out.dtype.isnative
        np.testing.assert_array_equal(out, a)


def test_idx_truncated_file(tmp_path):
    write_idx_dir(tmp_path / "m")
    f = tmp_path / "m" / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-7])
    raises_data_error(
        "is truncated: the header declares shape (12, 4, 4) (192 data bytes) "
        "but the file holds 185",
        load_dataset,
        str(tmp_path / "m"),
    )


def test_idx_truncated_gzip(tmp_path):
    write_idx_dir(tmp_path / "m", gz=True)
    f = tmp_path / "m" / "train-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-12])
    raises_data_error(
        "train-labels-idx1-ubyte.gz cannot be read", load_dataset, str(tmp_path / "m")
    )


def test_idx_trailing_bytes_and_bad_magic(tmp_path):
    write_idx_dir(tmp_path / "m")
    f = tmp_path / "m" / "train-labels-idx1-ubyte"
    good = f.read_bytes()
    f.write_bytes(good + b"\0\0")
    raises_data_error(
        "has 2 bytes after the 30 data bytes its header (shape (30,)) declares",
        load_dataset,
        str(tmp_path / "m"),
    )
    f.write_bytes(b"\x01\x02" + good[2:])
    raises_data_error(
        "is not an IDX file: magic number 0x01020801", load_dataset, str(tmp_path / "m")
    )


def test_idx_directory_missing_files(tmp_path):
    write_idx_dir(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").unlink()
    raises_data_error(
        "lacks t10k-labels-idx1-ubyte[.gz]; found train-images-idx3-ubyte",
        load_dataset,
        str(tmp_path / "m"),
    )
    (tmp_path / "empty").mkdir()
    raises_data_error("holds none of the MNIST IDX files", load_dataset, str(tmp_path / "empty"))


def test_idx_label_count_mismatch(tmp_path):
    write_idx_dir(tmp_path / "m")
    (tmp_path / "m" / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(29, np.uint8)))
    raises_data_error("30 train images but 29 train labels", load_dataset, str(tmp_path / "m"))


# --- CSV ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, ["label"] + [f"px{i}" for i in range(5)]])
def test_csv_with_and_without_header(tmp_path, header):
    rows, x, y = csv_rows()
    path = tmp_path / "d.csv"
    write_csv(path, rows, header)
    ds = load_dataset(str(path), seed=2, test_fraction=0.25)
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 40 and len(ds.y_test) == 10
    assert ds.preprocessing == Preprocessing(255.0, 5)
    assert ds.split["test_from"] == "split" and ds.split["test_fraction"] == 0.25
    # every test sample is one of the file's rows, scaled
    expected = {(int(y[i]), *(x[i] / 255).astype(np.float32).tolist()) for i in range(40)}
    for xi, yi in zip(ds.x_test, ds.y_test, strict=True):
        assert (int(yi), *xi.tolist()) in expected


def test_csv_separate_test_file(tmp_path):
    rows, _, _ = csv_rows()
    write_csv(tmp_path / "train.csv", rows)
    test_rows, _, _ = csv_rows(n=8)
    write_csv(tmp_path / "test.csv", test_rows, header=["y", "a", "b", "c", "d", "e"])
    ds = load_dataset(str(tmp_path / "train.csv"), str(tmp_path / "test.csv"))
    assert len(ds.y_test) == 8 and len(ds.y_train) + len(ds.y_val) == 40
    np.testing.assert_array_equal(ds.y_test, [r[0] for r in test_rows])
    assert ds.split["test_from"] == "test_data" and ds.split["test_data"] == str(
        tmp_path / "test.csv"
    )
    assert ds.source.endswith(f"+ test file {tmp_path / 'test.csv'} (8 samples)")


def test_csv_non_numeric_cell_named_by_row_and_column(tmp_path):
    rows, _, _ = csv_rows(n=6)
    rows[3][4] = "oops"
    path = tmp_path / "d.csv"
    write_csv(path, rows, header=["label", "a", "b", "c", "d", "e"])
    raises_data_error("row 5, column 5: 'oops' is not a number", load_dataset, str(path))


def test_csv_ragged_row(tmp_path):
    rows, _, _ = csv_rows(n=6)
    rows[2] = rows[2][:-1]
    path = tmp_path / "d.csv"
    write_csv(path, rows)
    raises_data_error("row 3: 5 columns; expected 6", load_dataset, str(path))


def test_csv_feature_count_differs_from_test_file(tmp_path):
    write_csv(tmp_path / "train.csv", csv_rows()[0])
    write_csv(tmp_path / "test.csv", csv_rows(features=4)[0])
    raises_data_error(
        "the training data has 5 features per sample but the test data (CSV file",
        load_dataset,
        str(tmp_path / "train.csv"),
        str(tmp_path / "test.csv"),
    )


def test_csv_label_problems_point_at_the_row(tmp_path):
    rows, _, _ = csv_rows(n=10)
    path = tmp_path / "d.csv"
    rows[6][0] = 1.5
    write_csv(path, rows, header=["l", "a", "b", "c", "d", "e"])
    raises_data_error(
        "1 train labels are not integers, the first 1.5 at row 8", load_dataset, str(path)
    )
    rows[6][0] = -1
    write_csv(path, rows)
    raises_data_error("1 train labels are negative, the first -1 at row 7", load_dataset, str(path))
    rows[6][0] = 7
    write_csv(path, rows)
    raises_data_error(
        "1 train labels are >= num_classes 3, the first 7 at row 7; expected 0 to 2",
        load_dataset,
        str(path),
        num_classes=3,
    )


def test_csv_nan_counted_and_located(tmp_path):
    rows, _, _ = csv_rows(n=10)
    rows[2][3] = "nan"
    rows[5][1] = "inf"
    path = tmp_path / "d.csv"
    write_csv(path, rows)
    raises_data_error(
        "2 NaN or infinite values in the train images, the first at row 3, column 4",
        load_dataset,
        str(path),
    )


def test_csv_header_only_and_empty(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("label,a,b\n")
    raises_data_error("has a header row but no data rows", load_dataset, str(path))
    path.write_text("\n")
    raises_data_error("is empty", load_dataset, str(path))


# --- mnist: only the cache path; tests never download -----------------------------------------


def test_mnist_read_from_keras_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    assert readers.find_cached_mnist() is None
    assert readers.mnist_cache_path() == tmp_path / "keras" / "datasets" / "mnist.npz"
    (tmp_path / "keras" / "datasets").mkdir(parents=True)
    arrays = write_npz(tmp_path / "keras" / "datasets" / "mnist.npz")
    assert readers.find_cached_mnist() == readers.mnist_cache_path()
    ds = load_dataset("mnist")
    assert ds.name == "mnist" and ds.source == "Keras MNIST (42 samples)"
    np.testing.assert_array_equal(ds.y_test, arrays["y_test"])
    assert ds.preprocessing == Preprocessing(255.0, 16)


def test_mnist_download_failure_says_how_to_supply_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))

    def offline(cache_root):  # stands in for the network, never reached in tests
        assert cache_root == tmp_path / "keras"
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(readers, "_download_mnist", offline)
    msg = raises_data_error(
        "the download failed (OSError: Temporary failure in name resolution)", load_dataset, "mnist"
    )
    assert "supply MNIST locally instead: --data PATH.npz" in msg
    assert "train-images-idx3-ubyte[.gz]" in msg


# --- hostile files: one line, bounded time and memory -----------------------------------------


def _npz_bytes(**arrays) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _claiming(shape) -> bytes:
    """An .npz whose x_train header claims `shape` (uint8) while holding 16 bytes."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": shape}
    )
    good = write_npz_arrays()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, a in good.items():
            member = io.BytesIO()
            np.save(member, a)
            data = (
                member.getvalue()
                if k != "x_train"
                else b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + bytes(16)
            )
            zf.writestr(k + ".npy", data)
    return buf.getvalue()


def write_npz_arrays():
    x, y = images(12, seed=3)
    return dict(x_train=x, y_train=y, x_test=x[:4], y_test=y[:4])


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: _npz_bytes(**write_npz_arrays())[:200], "is not a readable .npz archive"),
        (lambda: _npz_bytes(**write_npz_arrays())[:-30], "is not a readable .npz archive"),
        (lambda: _claiming((10**15, 28, 28)), "declares shape (1000000000000000, 28, 28)"),
        (lambda: _claiming((100, 28, 28)), "but its member holds"),
        (
            lambda: _npz_bytes(**{**write_npz_arrays(), "y_train": np.array(3)}),
            "labels have shape ()",
        ),
        (
            lambda: _npz_bytes(**{**write_npz_arrays(), "x_train": np.array(3)}),
            "images have shape ()",
        ),
        (
            lambda: _npz_bytes(**{**write_npz_arrays(), "y_train": np.full(12, 2**40)}),
            "has the label 1099511627776; bnpipe trains classifiers of at most 10000 classes",
        ),
    ],
)
def test_malformed_npz_is_one_line(tmp_path, make, fragment):
    path = tmp_path / "bad.npz"
    path.write_bytes(make())
    raises_data_error(fragment, load_dataset, str(path))


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_special_files_are_refused_before_reading(tmp_path, suffix):
    import os

    link = tmp_path / f"zero{suffix}"
    link.symlink_to("/dev/zero")
    raises_data_error("is a device, not a regular file", load_dataset, str(link))
    fifo = tmp_path / f"fifo{suffix}"
    os.mkfifo(fifo)
    raises_data_error("is a FIFO, not a regular file", load_dataset, str(fifo))
    folder = tmp_path / f"folder{suffix}"
    folder.mkdir()
    raises_data_error(
        f"directory {folder} holds none of the MNIST IDX files", load_dataset, str(folder)
    )


def test_idx_header_claiming_petabytes_is_refused_before_allocating(tmp_path):
    import struct

    directory = tmp_path / "idx"
    write_idx_dir(directory)
    lying = struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", 2**31, 2**20, 2**20) + bytes(64)
    (directory / "train-images-idx3-ubyte").write_bytes(lying)
    raises_data_error("more than bnpipe reads into memory", load_dataset, str(directory))


def test_idx_file_that_is_a_device_is_refused(tmp_path):
    directory = tmp_path / "idx"
    write_idx_dir(directory)
    (directory / "train-images-idx3-ubyte").unlink()
    (directory / "train-images-idx3-ubyte").symlink_to("/dev/zero")
    raises_data_error("is a device, not a regular file", load_dataset, str(directory))


def _zip_flags_patched(data: bytes, flag: int = 0, method: int | None = None) -> bytes:
    """A zip's general-purpose flag bits OR-ed with `flag` and its compression method set to
    `method`, in every local header and every central directory entry."""
    import struct

    out = bytearray(data)
    for signature, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        i = out.find(signature)
        while i != -1:
            out[i + flag_at] |= flag
            if method is not None:
                out[i + method_at : i + method_at + 2] = struct.pack("<H", method)
            i = out.find(signature, i + 4)
    return bytes(out)


def _compressed_then_garbled(compression: int) -> bytes:
    """An .npz whose members are compressed by `compression` and whose first member's
    compressed bytes are garbled (the local header, 30 bytes and the name, stays intact)."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for k, a in write_npz_arrays().items():
            member = io.BytesIO()
            np.save(member, a)
            zf.writestr(k + ".npy", member.getvalue())
    out = bytearray(buf.getvalue())
    for j in range(50, 120):
        out[j] ^= 0x5A
    return bytes(out)


def _header_of_x_train(header: bytes) -> bytes:
    """An .npz whose x_train member carries the raw .npy `header` text (version 1.0)."""
    import io
    import struct
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, a in write_npz_arrays().items():
            member = io.BytesIO()
            np.save(member, a)
            data = member.getvalue()
            if k == "x_train":
                data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(64)
            zf.writestr(k + ".npy", data)
    return buf.getvalue()


@pytest.mark.parametrize(
    "make, fragment",
    [
        (  # the zip's "encrypted" bit: zipfile raises RuntimeError
            lambda: _zip_flags_patched(_npz_bytes(**write_npz_arrays()), flag=0x1),
            "array x_train is unreadable: File <ZipInfo",
        ),
        (  # a compression method zipfile does not know: NotImplementedError
            lambda: _zip_flags_patched(_npz_bytes(**write_npz_arrays()), method=99),
            "array x_train is unreadable: That compression method is not supported",
        ),
        (lambda: _compressed_then_garbled(14), "array x_train is unreadable"),  # LZMAError
        (lambda: _compressed_then_garbled(8), "array x_train is unreadable"),  # deflate
        (lambda: _compressed_then_garbled(12), "array x_train is unreadable"),  # bzip2
        (  # a header numpy's tokenizer cannot close: tokenize.TokenError
            lambda: _header_of_x_train(b"{'descr': '|u1', 'shape': (12, 8, 8\n"),
            "array x_train is unreadable",
        ),
        (
            lambda: _npz_bytes(
                **{**write_npz_arrays(), "x_train": np.zeros((12, 8, 8), "timedelta64[s]")}
            ),
            "images have dtype timedelta64[s]; expected real numbers",
        ),
        (
            lambda: _npz_bytes(**{**write_npz_arrays(), "x_test": np.ones((4, 8, 8), "c8")}),
            "images have dtype complex64; expected real numbers",
        ),
        (
            lambda: _npz_bytes(**{**write_npz_arrays(), "y_train": np.ones(12, "m8[D]")}),
            "labels have dtype timedelta64[D]; expected integers",
        ),
    ],
    ids=[
        "encrypted",
        "method-99",
        "lzma",
        "deflate",
        "bzip2",
        "header-unclosed",
        "timedelta-x",
        "complex-x",
        "timedelta-y",
    ],
)
def test_npz_that_zipfile_or_numpy_cannot_read_is_one_line(tmp_path, make, fragment):
    path = tmp_path / "bad.npz"
    path.write_bytes(make())
    raises_data_error(fragment, load_dataset, str(path))


def test_csv_cell_over_the_csv_modules_limit_names_the_row(tmp_path):
    path = tmp_path / "big.csv"
    rows, _, _ = csv_rows(n=6, features=2)
    rows[3] = [1, '"' + "a" * 200_000 + '"', 3]  # a quoted cell of 200,000 letters
    write_csv(path, rows)
    raises_data_error(f"CSV file {path}, row 4: field larger than field limit", load_dataset, path)


def test_idx_headers_with_many_dimensions_or_a_corrupt_gzip_stream(tmp_path):
    import gzip
    import struct

    directory = tmp_path / "idx"
    write_idx_dir(directory)
    images_file = directory / "train-images-idx3-ubyte"
    images_file.write_bytes(struct.pack(">HBB", 0, 0x08, 65) + struct.pack(">65I", *[1] * 65))
    raises_data_error("declares 65 dimensions", load_dataset, str(directory))
    packed = bytearray(gzip.compress(idx_bytes(np.zeros((12, 8, 8), np.uint8))))
    packed[12:40] = bytes(b ^ 0x5A for b in packed[12:40])  # the deflate stream, not the header
    images_file.unlink()
    (directory / "train-images-idx3-ubyte.gz").write_bytes(bytes(packed))
    raises_data_error("cannot be read", load_dataset, str(directory))


def test_csv_with_a_byte_order_mark_keeps_its_first_row(tmp_path):
    """Excel writes UTF-8 CSV files with a byte-order mark; the first row is data, not a
    header, and must not be dropped."""
    rows, _, _ = csv_rows(n=12, features=3)
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(",".join(map(str, r)) for r in rows).encode())
    part = readers.read_csv(path, "train")
    assert len(part.y) == 12 and part.y[0] == rows[0][0]
    assert np.array_equal(part.x[0], rows[0][1:])
