"""Helpers shared by several test files (fixtures live in conftest.py)."""

import gzip
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.errors import DataError

RNG = np.random.default_rng(1234)


# The tiny recipe: Dense(16) → BN → ReLU → Dense(16) → BN → ReLU → Dense(10), 2 epochs of batch 16
# at learning rate 1e-2. On digits (seed 0) it reaches ≈ 0.94 test accuracy with either BN kind,
# and the ≈ 160 training steps move the BN's moving statistics (momentum 0.99) most of the way to
# the data's, so inference-mode outputs are meaningful.
TINY = dict(hidden=(16, 16), epochs=2, batch_size=16, learning_rate=1e-2, seed=0)


def tiny_cli(epochs: int | None = TINY["epochs"]) -> list[str]:
    """TINY as `bnpipe train` options, for the tests that go through the CLI (`epochs=None`:
    the recipe's default number of epochs, for tests that need a training that lasts)."""
    options = ["--hidden", ",".join(map(str, TINY["hidden"])), "--batch-size"]
    options += [str(TINY["batch_size"]), "--learning-rate", str(TINY["learning_rate"])]
    return options + (["--epochs", str(epochs)] if epochs is not None else [])


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
    from pipeline.models.door import load_model

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


# --- models a user brings: built with Keras 3 in the test, never downloaded ---------------------


def keras3_article(k3):
    """The seed article's network written with Keras 3 (what `tf.keras` is on TensorFlow ≥ 2.16)."""
    L = k3.layers
    return k3.Sequential(
        [
            k3.Input((64,)),
            L.Dense(64),
            L.BatchNormalization(),
            L.ReLU(),
            L.Dense(64),
            L.BatchNormalization(),
            L.ReLU(),
            L.Dense(10, activation="softmax"),
        ]
    )


def keras3_functional(k3):
    """A Keras 3 Functional model with BN in every foldable place of a Dense stack: BN first
    (input standardization), a bias-free Dense, BN without centre, Dropout, and
    Dense(relu) → BN → Dense."""
    L = k3.layers
    x = k3.Input((64,), name="pixels")
    h = L.BatchNormalization(name="bn_in")(x)
    h = L.Dense(64, use_bias=False, name="d1")(h)
    h = L.BatchNormalization(center=False, name="bn1")(h)
    h = L.ReLU(name="relu1")(h)
    h = L.Dropout(0.2, name="drop")(h)
    h = L.Dense(64, activation="relu", name="d2")(h)
    h = L.BatchNormalization(name="bn2")(h)
    return k3.Model(x, L.Dense(10, activation="softmax", name="out")(h))


def train_and_save(k3, model, x, y, path: Path, epochs: int = 6, input_shape=None) -> Path:
    """Fit `model` (Keras 3) on (x, y) and save it at `path`. The recipe of conftest's TINY
    (Adam at 1e-2, batch 16): a few epochs move the BN statistics most of the way to the data's
    and leave few samples near a decision boundary, where an underfit model would make the
    int8 check measure underfitting rather than bnpipe."""
    k3.utils.set_random_seed(0)
    model.compile(optimizer=k3.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    x = x if input_shape is None else x.reshape((len(x), *input_shape))
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0, shuffle=True)
    model.save(path)
    return path


class ProcessResult:
    """A finished `python -m pipeline.cli …` child, shaped like a CliRunner result (exit_code,
    exception, output, stderr) so that assert_one_line_error reads both. A child that had to be
    killed at its deadline has exit_code None and a stderr that says so."""

    def __init__(self, exit_code, stdout: str, stderr: str, seconds: float):
        self.exit_code, self.stdout, self.stderr, self.seconds = exit_code, stdout, stderr, seconds
        self.output = stdout + stderr
        self.exception = SystemExit(exit_code) if exit_code is not None else None


def bnpipe_process(*args, timeout=120.0, env=None, preexec_fn=None, cwd=None) -> ProcessResult:
    """Run `python -m pipeline.cli ARGS` in a real child process, killed at `timeout` seconds
    (a hang is then a test failure, not a hung test run)."""
    import os
    import sys
    import time

    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        preexec_fn=preexec_fn,
        cwd=cwd,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        code, err = None, err + f"\n[killed after {timeout} s: the command hung]\n"
    return ProcessResult(code, out, err, time.monotonic() - t0)


def limited(address_space=None, file_size=None):
    """A preexec_fn for bnpipe_process: RLIMIT_AS (so that a read without bound fails with a
    MemoryError instead of calling the machine's OOM killer) and RLIMIT_FSIZE with SIGXFSZ
    ignored (a write past it fails with EFBIG, as on a full disk)."""
    import resource
    import signal

    def apply():
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        if file_size is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    return apply


def tree(d: Path) -> dict[str, str]:
    """sha256 of every file under `d` by relative path ("dir/" for a directory): what a command
    must leave as it was."""
    import hashlib

    if not d.exists():
        return {}
    return {
        str(p.relative_to(d)) + ("/" if p.is_dir() else ""): (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        )
        for p in sorted(d.rglob("*"))
    }


def fold_sequential(keras, model):
    """A new Sequential with every BN that directly follows a Dense or convolution folded into it
    by foldmath's arithmetic; a minimal stand-in for fold.py's planner, for the CNN tests."""
    from pipeline.folding.maths import after_fold_blocker, bn_affine, fold_after_layer
    from pipeline.models.article import is_batch_norm

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


# --- C arrays (carray.py) built with the system compilers ---------------------------------------

CC, CXX = "cc", "g++"
WARNINGS = ["-Wall", "-Wextra", "-Werror", "-pedantic"]

# Prints the array to stdout; exits 3 if it is not 16-byte aligned. With an arena, also sizes
# a static array with the header's macro (so the macro must be a compile-time constant) and
# checks it equals the variable.
MAIN = """
#include <stdint.h>
#include <stdio.h>
#include "{header}"
{arena_decl}
int main(void) {{
  if ((uintptr_t){name} % 16u != 0u) return 3;
{arena_check}
  if (fwrite({name}, 1, {name}_len, stdout) != {name}_len) return 4;
  return 0;
}}
"""


def _main_source(arr) -> str:
    arena_decl = arena_check = ""
    if arr.arena_bytes is not None:
        macro = f"{arr.name.upper()}_ARENA_BYTES"
        arena_decl = f"static unsigned char arena[{macro}];"
        arena_check = (
            f"  if (sizeof arena != {arr.name}_arena_bytes) return 5;\n"
            f'  fprintf(stderr, "arena %u\\n", {arr.name}_arena_bytes);'
        )
    return MAIN.format(
        header=arr.header_name, name=arr.name, arena_decl=arena_decl, arena_check=arena_check
    )


def run_checked(cmd, cwd):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=120)
    assert proc.returncode == 0, (cmd, proc.stderr.decode(errors="replace"))
    return proc


def build_and_run(arr, tmp: Path, main_lang: str = "c") -> subprocess.CompletedProcess:
    """Compile the array's source with its language's compiler, a main in `main_lang` that
    includes the header, link them, run; the process's result (exit code checked by callers)."""
    (tmp / arr.header_name).write_text(arr.header)
    (tmp / arr.source_name).write_text(arr.source)
    main = tmp / ("main.c" if main_lang == "c" else "main.cc")
    main.write_text(_main_source(arr))
    std = {"c": ["-std=c11"], "c++": ["-std=c++11"]}
    data_cc = CC if arr.source_name.endswith(".c") else CXX
    data_std = std["c" if data_cc == CC else "c++"]
    run_checked([data_cc, *data_std, *WARNINGS, "-c", arr.source_name, "-o", "data.o"], tmp)
    main_cc = CC if main_lang == "c" else CXX
    run_checked([main_cc, *std[main_lang], *WARNINGS, "-c", main.name, "-o", "main.o"], tmp)
    # Linked by the C driver even for C++ data: the array needs no C++ runtime.
    run_checked([CC if main_lang == "c" else CXX, "main.o", "data.o", "-o", "prog"], tmp)
    return subprocess.run([str(tmp / "prog")], capture_output=True, timeout=60)


class CliChild:
    """`python -m pipeline.cli ARGS` in a running child process, its stderr collected line by
    line as it comes (lines), for tests that act on it while it runs."""

    def __init__(self, *args, env=None, preexec_fn=None):
        import os
        import sys
        import threading

        self.args = [str(a) for a in args]
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
            preexec_fn=preexec_fn,
        )
        self.pid = self.proc.pid
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def wait(self, timeout: float = 300) -> int:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.wait()


def without_root_privileges():
    """A preexec_fn: the child, even run as root, loses the capabilities that override file
    permissions (dropped from its bounding set, so that its exec does not grant them back), and
    a directory of mode 000 is then closed to it as to any user."""
    import ctypes
    import os

    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop = 24
    for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")
