"""Helpers shared by several test files (fixtures live in conftest.py)."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import DataError

RNG = np.random.default_rng(1234)


def images(n, rows=4, cols=4, classes=3, seed=0):
    """(n, rows, cols) uint8 pixels and (n,) uint8 labels cycling through every class."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, rows, cols), dtype=np.uint8)
    y = (np.arange(n) % classes).astype(np.uint8)
    return x, y


def write_npz(path, n_train=30, n_test=12, **override):
    x_train, y_train = images(n_train, seed=1)
    x_test, y_test = images(n_test, seed=2)
    arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    arrays.update(override)
    np.savez(path, **arrays)
    return arrays


def idx_bytes(a: np.ndarray) -> bytes:
    """The IDX encoding written independently of the reader: magic, dims, big-endian values."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}[a.dtype]
    header = struct.pack(">HBB", 0, code, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_idx_dir(directory, gz=False, dotted=False, n_train=30, n_test=12):
    directory.mkdir(exist_ok=True)
    x_train, y_train = images(n_train, seed=1)
    x_test, y_test = images(n_test, seed=2)
    for base, a in (
        ("train-images-idx3-ubyte", x_train),
        ("train-labels-idx1-ubyte", y_train),
        ("t10k-images-idx3-ubyte", x_test),
        ("t10k-labels-idx1-ubyte", y_test),
    ):
        name = base.replace("-idx", ".idx", 1) if dotted else base
        raw = idx_bytes(a)
        if gz:
            (directory / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (directory / name).write_bytes(raw)
    return x_train, y_train, x_test, y_test


def write_csv(path, rows, header=None):
    lines = ([",".join(header)] if header else []) + [",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def csv_rows(n=40, features=5, classes=2):
    x = RNG.integers(0, 256, size=(n, features))
    y = np.arange(n) % classes
    return [[int(y[i]), *map(int, x[i])] for i in range(n)], x, y


def raises_data_error(fragment, fn, *args, **kwargs):
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert fragment in message, message
    assert "\n" not in message  # one line for the CLI
    return message


def assert_one_line_error(result, message=None, code=2, fragment=None):
    """A CliRunner result: exit `code`, stderr exactly one line `Error: …` (equal to `Error:
    {message}` when given, holding `fragment` when given), no traceback anywhere."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit), result.exception  # not an uncaught error
    assert "Traceback" not in result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
    if message is not None:
        assert result.stderr == f"Error: {message}\n"
    if fragment is not None:
        assert fragment in result.stderr, result.stderr
    return result.stderr.rstrip("\n")


def keras_weights(path: Path) -> list[tuple[str, np.ndarray]]:
    """(name, array) of every weight of the .keras model at `path`, in order."""
    from pipeline.model import load_model

    return [(w.name, w.numpy()) for w in load_model(path).weights]


def write_idx_file(path, array, gzipped):
    data = struct.pack(">HBB", 0, {np.uint8: 0x08, np.int16: 0x0B}[array.dtype.type], array.ndim)
    data += (
        struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(array.dtype.newbyteorder(">")).tobytes()
    )
    if gzipped:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def digits_idx(directory, gzipped=False, dtype=np.uint8):
    """digits as MNIST-layout IDX files: 8-bit pixels (the 0..16 counts × 16, capped at 255),
    the first 1400 samples for training, the other 397 for test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.minimum(d.images * 16, 255).astype(dtype)
    y = d.target.astype(np.uint8)
    directory.mkdir(parents=True, exist_ok=True)
    for name, arr in (
        ("train-images-idx3-ubyte", x[:1400]),
        ("train-labels-idx1-ubyte", y[:1400]),
        ("t10k-images-idx3-ubyte", x[1400:]),
        ("t10k-labels-idx1-ubyte", y[1400:]),
    ):
        write_idx_file(directory / name, arr, gzipped)
    return directory


def free_ports(n):
    """n TCP ports free on 127.0.0.1 right now."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def tf_config_json(workers, index=0, task_type="worker", chief=None):
    """A TF_CONFIG value naming `workers` (HOST:PORT) and this task."""
    import json

    cluster = {"worker": list(workers)}
    if chief:
        cluster["chief"] = [chief]
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def fold_sequential(keras, model):
    """A new Sequential with every BN that directly follows a Dense or convolution folded into it
    by foldmath's arithmetic; a minimal stand-in for fold.py's planner, for the CNN tests."""
    from pipeline.foldmath import after_fold_blocker, bn_affine, fold_after_layer
    from pipeline.model import is_batch_norm

    config = model.get_config()
    entries, layers = config["layers"], model.layers  # entries[0] is the InputLayer
    folded_into, keep = {}, []
    for i, entry in enumerate(entries):
        layer = layers[i - 1] if i else None
        prev = entries[i - 1] if i > 1 else None
        foldable = prev is not None and after_fold_blocker(prev["class_name"], prev["config"])
        if layer is not None and is_batch_norm(layer) and prev is not None and foldable is None:
            folded_into[prev["config"]["name"]] = layer
            keep[-1]["config"]["use_bias"] = True
            continue
        keep.append(entry)
    config["layers"] = keep
    new = keras.Sequential.from_config(config)
    for layer in new.layers:
        weights = model.get_layer(layer.name).get_weights()
        bn = folded_into.get(layer.name)
        if bn is not None:
            gamma = bn.gamma.numpy() if bn.scale else None
            beta = bn.beta.numpy() if bn.center else None
            stats = bn.moving_mean.numpy(), bn.moving_variance.numpy()
            s, t = bn_affine(gamma, beta, *stats, bn.epsilon, len(stats[0]))
            weights = fold_after_layer(type(layer).__name__, weights, s, t)
        layer.set_weights([np.asarray(w, np.float32) for w in weights])
    return new
