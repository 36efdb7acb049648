"""stream.py: an MNIST-layout IDX directory streamed with tf.data gives load_dataset's split and
scaling; anything else is read whole."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import digits_idx

from pipeline.core.config import TrainConfig


def _collect(dataset):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in dataset], strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def _rows(x, y):
    """The samples as a sorted list of bytes: equal lists ⇔ the same samples, in any order."""
    return sorted(x[i].tobytes() + bytes([int(y[i])]) for i in range(len(y)))


@pytest.mark.parametrize("gzipped", [False, True])
def test_idx_directory_streams_the_split_and_scaling_of_load_dataset(tf, tmp_path, gzipped):
    from pipeline.data.dataset import load_dataset
    from pipeline.training.stream import IdxStream, open_source

    spec = str(digits_idx(tmp_path / "idx", gzipped))
    source = open_source(TrainConfig(data=spec, seed=3))
    assert isinstance(source, IdxStream)
    ds = load_dataset(spec, seed=3)
    summary, reference = source.summary(), ds.summary()
    for key in ("name", "sizes", "n_features", "num_classes", "preprocessing", "split"):
        assert summary[key] == reference[key], key
    assert summary["streamed"] is True

    # Validation and test: load_dataset's samples, bit for bit (÷255 in float32 both ways). The
    # stream keeps file order; load_dataset's validation set is in its split's order.
    x_val, y_val = _collect(source.eval_batches("val"))
    assert _rows(x_val, y_val) == _rows(ds.x_val, ds.y_val)
    x_test, y_test = _collect(source.eval_batches("test"))
    assert np.array_equal(x_test.view(np.uint32), ds.x_test.view(np.uint32))
    assert np.array_equal(y_test, ds.y_test)

    # Training: every training sample exactly once per epoch, in an order fixed by (seed, epoch).
    x0, y0 = _collect(source.train_batches(3, 0, 32))
    assert _rows(x0, y0) == _rows(ds.x_train, ds.y_train)
    assert np.array_equal(_collect(source.train_batches(3, 0, 32))[0], x0)
    x1, y1 = _collect(source.train_batches(3, 1, 32))
    assert _rows(x1, y1) == _rows(x0, y0) and not np.array_equal(x1, x0)
    assert [len(y) for _, y in source.train_batches(3, 0, 32)] == [32] * 39 + [12]  # 1260 samples


def test_streamed_fingerprint_is_the_data_not_the_compression(tf, tmp_path):
    from pipeline.training.stream import open_source

    plain = open_source(TrainConfig(data=str(digits_idx(tmp_path / "a"))))
    packed = open_source(TrainConfig(data=str(digits_idx(tmp_path / "b", gzipped=True))))
    other_seed = open_source(TrainConfig(data=str(tmp_path / "a"), seed=1))
    assert plain.fingerprint() == packed.fingerprint() != other_seed.fingerprint()


def test_idx_files_of_other_types_or_damaged_are_read_whole_by_data_py(tf, tmp_path):
    from pipeline.core.errors import DataError
    from pipeline.data.dataset import load_dataset
    from pipeline.training.stream import MemorySource, open_source

    wide = str(digits_idx(tmp_path / "int16", dtype=np.int16))
    source = open_source(TrainConfig(data=wide))
    assert isinstance(source, MemorySource)
    assert source.summary()["fingerprint"] == load_dataset(wide).fingerprint()

    damaged = digits_idx(tmp_path / "damaged")
    images = damaged / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5])
    with pytest.raises(DataError) as info:
        open_source(TrainConfig(data=str(damaged)))
    assert "is truncated" in str(info.value)  # data.py's own message
