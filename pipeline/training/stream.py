"""Training data as tf.data batches: held in memory, or streamed from IDX files.

`open_source(config)` gives what distribute.fit trains on:

    MemorySource  a data set read whole by data.load_dataset; batches in train's per-epoch order
                  (data.epoch_order)
    IdxStream     an IDX directory of 8-bit images (the MNIST layout) read record by record with
                  tf.data (FixedLengthRecordDataset, GZIP for .gz): only the labels (one byte per
                  sample, needed for the seeded stratified split, which is therefore
                  data.load_dataset's very split) are held in memory, never the images

A streamed source is shuffled by a seeded buffer of SHUFFLE_BUFFER samples, not by a
permutation of the whole set, so it sees another order than an in-memory one and ends with
other (equally trained) weights. Every other source (digits, mnist, .npz, .csv, IDX files of
other types) is read whole: an .npz holds compressed arrays numpy reads whole, and a .csv needs a
pass over every cell to check it and to infer its scaling. Preprocessing is data.py's in both
cases: pixels / divisor in float32. TensorFlow is imported only when batches are made.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from pipeline.core.errors import DataError
from pipeline.data.dataset import PIXEL_DIVISOR, Preprocessing, load_dataset
from pipeline.data.readers import IDX_FILES, IdxHeader, idx_candidates, idx_header, read_idx
from pipeline.data.splits import epoch_order, seeded_split

# Samples in the shuffle buffer of a streamed source: 10,000 raw MNIST images are 7.8 MB, and a
# sample can then move by up to 10,000 places (a sixth of MNIST) from its place in the file.
SHUFFLE_BUFFER = 10_000
EVAL_BATCH = 1024  # as train.py's model.evaluate


class MemorySource:
    """A data set read whole by data.load_dataset; batches in train.py's per-epoch order."""

    streamed = False

    def __init__(self, ds):
        self.ds = ds
        self.preprocessing = ds.preprocessing
        self.num_classes = ds.num_classes
        self.n_train = len(ds.y_train)
        self._x = self._y = None

    def summary(self) -> dict:
        return {**self.ds.summary(), "streamed": False}

    def train_batches(self, seed: int, epoch: int, batch_size: int):
        """tf.data of global (x, y) batches: epoch_order(seed, epoch) cut into batch_size pieces."""
        from pipeline.core.tfenv import tf

        t = tf()
        if self._x is None:
            self._x, self._y = t.constant(self.ds.x_train), t.constant(self.ds.y_train)
        x, y = self._x, self._y
        order = epoch_order(seed, epoch, self.n_train)
        return (
            t.data.Dataset.from_tensor_slices(order)
            .batch(batch_size)
            .map(lambda i: (t.gather(x, i), t.gather(y, i)))
        )

    def eval_batches(self, part: str):
        """tf.data of (x, y) batches of "val" or "test" (None if that part is empty)."""
        from pipeline.core.tfenv import tf

        x, y = getattr(self.ds, f"x_{part}"), getattr(self.ds, f"y_{part}")
        if not len(y):
            return None
        return tf().data.Dataset.from_tensor_slices((x, y)).batch(EVAL_BATCH)


_TRAIN, _VAL = 1, 2  # a streamed training file's sample roles


class IdxStream:
    """An MNIST-layout IDX directory read record by record: the images never sit in memory.

    Only the canonical layout streams: 8-bit images (type 0x08, 3-D) and 8-bit labels (1-D)
    whose counts agree and whose files are as long as their headers say. Anything else is left
    to data.load_dataset (open_source falls back), whose checks and messages are the reference.
    The split is data.py's (its seeded_split on the label column), so the train, validation and test
    samples are load_dataset's; the preprocessing (÷255 in float32) too.
    """

    streamed = True

    def __init__(
        self,
        spec: str,
        files: dict[str, IdxHeader],
        labels: dict[str, np.ndarray],
        seed: int,
        val_fraction: float,
    ):
        self.spec, self.files, self.labels = spec, files, labels
        rows_cols = files["x_train"].dims[1:]
        self.record_bytes = int(np.prod(rows_cols))
        self.preprocessing = Preprocessing(divisor=PIXEL_DIVISOR, n_features=self.record_bytes)
        y_train = labels["y_train"].astype(np.int64)
        self.num_classes = int(max(y_train.max(), labels["y_test"].max())) + 1
        if self.num_classes < 2:
            raise DataError(f"{spec} holds only the label 0; a classifier needs at least 2 classes")
        # data.load_dataset splits (x, y) with train_test_split, whose choice depends on the
        # labels, the count and the seed only: splitting the sample numbers picks the same samples.
        keep, held, _, _, stratified = seeded_split(
            np.arange(len(y_train)), y_train, val_fraction, seed, "the training part", "validation"
        )
        self.role = np.zeros(len(y_train), np.int8)
        self.role[keep], self.role[held] = _TRAIN, _VAL
        self.n_train, self.n_val = len(keep), len(held)
        self.split = {
            "seed": seed,
            "val_fraction": val_fraction,
            "source_has_test_split": True,
            "test_from": "source",
            "test_fraction": None,
            "test_stratified": None,
            "val_stratified": stratified,
        }

    def fingerprint(self) -> str:
        """sha256 over the four files' contents (decompressed) and the split, read in chunks.

        Not Dataset.fingerprint, which hashes the arrays in split order and so needs them in
        memory; the same data and split give the same value, gzipped or not.
        """
        h = hashlib.sha256(b"idx-stream|")
        for role in ("x_train", "y_train", "x_test", "y_test"):
            f = self.files[role]
            h.update(f"{role}|".encode())
            with f.open() as stream:
                while chunk := stream.read(1 << 20):
                    h.update(chunk)
        h.update(json.dumps(self.split, sort_keys=True).encode())
        return h.hexdigest()

    def summary(self) -> dict:
        n_test = len(self.labels["y_test"])
        names = ", ".join(f.path.name for f in self.files.values())
        return {
            "name": self.spec,
            "source": f"MNIST IDX files in {self.spec} ({self.n_train + self.n_val + n_test} "
            f"samples), streamed: {names}",
            "sizes": {"train": self.n_train, "val": self.n_val, "test": n_test},
            "n_features": self.preprocessing.n_features,
            "sample_shape": list(self.files["x_train"].dims[1:]),
            "num_classes": self.num_classes,
            "preprocessing": self.preprocessing.to_dict(),
            "split": dict(self.split),
            "fingerprint": self.fingerprint(),
            "streamed": True,
        }

    def _records(self, role: str):
        """tf.data of (raw image bytes, label) in file order, read record by record."""
        from pipeline.core.tfenv import tf

        t = tf()
        f = self.files[role]
        images = t.data.FixedLengthRecordDataset(
            str(f.path),
            record_bytes=self.record_bytes,
            header_bytes=f.header_bytes,
            compression_type="GZIP" if f.gzipped else "",
        )
        labels = t.data.Dataset.from_tensor_slices(
            self.labels[role.replace("x_", "y_")].astype(np.int64)
        )
        return t.data.Dataset.zip((images, labels))

    def _decode(self, raw, y):
        from pipeline.core.tfenv import tf

        t = tf()
        pixels = t.io.decode_raw(raw, t.uint8)  # (batch, features)
        # data.py's arithmetic: float32 pixels / float32 divisor (one IEEE division each)
        return t.cast(pixels, t.float32) / t.constant(self.preprocessing.divisor, t.float32), y

    def _train_part(self, wanted: int):
        from pipeline.core.tfenv import tf

        t = tf()
        roles = t.data.Dataset.from_tensor_slices(self.role)
        return (
            t.data.Dataset.zip((self._records("x_train"), roles))
            .filter(lambda record, role: t.equal(role, wanted))
            .map(lambda record, role: record)
        )

    def train_batches(self, seed: int, epoch: int, batch_size: int):
        # The buffer holds raw bytes (1 per pixel); decoding comes after batching.
        shuffled = self._train_part(_TRAIN).shuffle(
            SHUFFLE_BUFFER, seed=shuffle_seed(seed, epoch), reshuffle_each_iteration=False
        )
        return shuffled.batch(batch_size).map(self._decode)

    def eval_batches(self, part: str):
        if part == "val":
            if not self.n_val:
                return None
            return self._train_part(_VAL).batch(EVAL_BATCH).map(self._decode)
        return self._records("x_test").batch(EVAL_BATCH).map(self._decode)


def shuffle_seed(seed: int, epoch: int) -> int:
    """The streamed shuffle's seed for (seed, epoch): a function of both alone, as epoch_order."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint32)[0])


def _streamable(path: Path | None) -> IdxHeader | None:
    """The header of an IDX file of 8-bit values whose length matches it, else None."""
    if path is None:
        return None
    try:
        header = idx_header(path)
        return header if header.code == 0x08 and header.length_ok() else None
    except (DataError, OSError, EOFError):
        return None


def _open_idx_stream(spec: str, seed: int, val_fraction: float) -> IdxStream | None:
    """An IdxStream for the directory `spec`, or None when it is not the canonical layout."""
    directory = Path(spec)
    files: dict[str, IdxHeader] = {}
    for role, base in IDX_FILES.items():
        path = next(
            (directory / n for n in idx_candidates(base) if (directory / n).is_file()), None
        )
        header = _streamable(path)
        if header is None:
            return None
        files[role] = header
    ok = (
        len(files["x_train"].dims) == 3
        and len(files["x_test"].dims) == 3
        and files["x_train"].dims[1:] == files["x_test"].dims[1:]
        and files["y_train"].dims == files["x_train"].dims[:1]
        and files["y_test"].dims == files["x_test"].dims[:1]
        and files["x_train"].dims[0] > 0
        and files["x_test"].dims[0] > 0
    )
    if not ok:
        return None
    labels = {role: read_idx(files[role].path) for role in ("y_train", "y_test")}  # 1 B a sample
    return IdxStream(spec, files, labels, seed, val_fraction)


def open_source(config):
    """The training data for `config` (a TrainConfig): an IdxStream when the data is an IDX
    directory in the MNIST layout, else a MemorySource over data.load_dataset."""
    if config.test_data is None and Path(config.data).is_dir():
        stream = _open_idx_stream(config.data, config.seed, config.val_fraction)
        if stream is not None:
            return stream
    return MemorySource(
        load_dataset(
            config.data,
            config.test_data,
            seed=config.seed,
            val_fraction=config.val_fraction,
            test_fraction=config.test_fraction,
        )
    )
