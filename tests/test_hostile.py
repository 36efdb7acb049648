"""Hostile inputs end to end through the CLI: exit 2, one `Error: …` line, bounded time and memory,
and nothing written (pipeline/DESIGN.md, "Untrusted input").

One test (or parametrized family) per class of the reliability issue: special files given as data,
model or config; malformed .npz containers; absurd option values; bnpipe.toml values of the wrong
type; Keras config.json nested too deeply or too large; a manifest.json that is not one; an
artifacts dir that cannot be written (read-only, full, under /proc, or the empty string); a folded
model that does not fit the data in verify. Where the old behaviour was a hang or an out-of-memory
kill, the command runs in a child process with a deadline and an address-space limit, so that a
regression fails the test instead of the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import (
    assert_one_line_error,
    bnpipe_process,
    csv_rows,
    images,
    limited,
    tiny_cli,
    tree,
    write_csv,
    write_npz,
)

from pipeline.cli import cli

# Enough for Python, numpy and bnpipe's modules (≈ 150 MB of address space) before TensorFlow,
# which none of these commands may reach: reading /dev/zero or a bomb whole fails well inside.
SMALL_MEMORY = 448 << 20
DEADLINE = 60  # seconds; each of these commands answers in about one
TINY_TRAIN = tiny_cli()
TINY_TRAIN += ["--learning-rate", "0.01", "--seed", "0", "-q"]


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, prog_name="bnpipe")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """An artifacts dir after `bnpipe train` and `bnpipe fold` (manifest and all). Read-only:
    tests copy it."""
    out = tmp_path_factory.mktemp("recorded") / "a"
    assert invoke("train", *TINY_TRAIN, "--artifacts", out).exit_code == 0
    assert invoke("fold", "--artifacts", out).exit_code == 0
    return out


def _copy(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / "a"
    shutil.copytree(src, out)
    return out


# --- special files given as data, model or config: refused before a byte is read -------------


def _special(tmp_path: Path, kind: str, suffix: str) -> Path:
    path = tmp_path / f"{kind}{suffix}"
    if kind == "device":
        path.symlink_to("/dev/zero")  # reading never ends
    else:
        os.mkfifo(path)  # reading blocks until a writer comes, which never does
    return path


SPECIAL_CASES = {
    "train --data": (
        ".npz",
        "data file",
        lambda p, out: ["train", "--data", p, "--artifacts", out],
    ),
    "fold --model": (
        ".keras",
        "model file",
        lambda p, out: ["fold", "--model", p, "--artifacts", out],
    ),
    "export --model": (
        ".keras",
        "model file",
        lambda p, out: ["export", "--model", p, "--artifacts", out],
    ),
    "run --config": (
        ".toml",
        "config file",
        lambda p, out: ["run", "--config", p, "--artifacts", out],
    ),
    "inspect": (".tflite", "model file", lambda p, out: ["inspect", p]),
    "verify --tflite": (
        ".tflite",
        "model file",
        lambda p, out: ["verify", "--tflite", p, "--artifacts", out],
    ),
    "bench --tflite": (
        ".tflite",
        "model file",
        lambda p, out: ["bench", "--tflite", p, "--artifacts", out],
    ),
}


@pytest.mark.parametrize("kind", ["device", "fifo"])
@pytest.mark.parametrize("case", sorted(SPECIAL_CASES))
def test_special_files_are_refused_in_bounded_time_and_memory(recorded, tmp_path, case, kind):
    suffix, role, args = SPECIAL_CASES[case]
    path = _special(tmp_path, kind, suffix)
    out = _copy(recorded, tmp_path)
    before = tree(out)
    result = bnpipe_process(
        *args(path, out), timeout=DEADLINE, preexec_fn=limited(address_space=SMALL_MEMORY)
    )
    what = "a device" if kind == "device" else "a FIFO"
    assert_one_line_error(result, f"{role} {path} is {what}, not a regular file")
    assert tree(out) == before


def test_a_directory_as_data_or_config_is_refused(tmp_path):
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    out = tmp_path / "a"
    assert_one_line_error(
        invoke("train", "--data", folder, "--artifacts", out),
        f"directory {folder} holds none of the MNIST IDX files (train-images-idx3-ubyte[.gz], "
        "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
        "t10k-labels-idx1-ubyte[.gz]); expected 'digits', 'mnist', a .npz file with x_train, "
        "y_train, x_test, y_test, a directory holding the four MNIST IDX files, or a .csv file "
        "with the label in the first column",
    )
    # Click checks --config and --model paths itself: a usage error, in one line (cli/base.py).
    assert_one_line_error(
        invoke("run", "--config", folder, "--artifacts", out),
        f"Invalid value for '--config': File '{folder}' is a directory. (see `bnpipe run --help`)",
    )
    assert not out.exists()


# --- malformed .npz containers, absurd option values, bnpipe.toml of the wrong type ----------


def _lying_npz(path: Path) -> None:
    """An .npz whose x_train header claims 10**15 × 28 × 28 bytes while holding 16."""
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (10**15, 28, 28)}
    )
    x, y = images(12)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x_train.npy", b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + bytes(16))
        for name, a in (("y_train", y), ("x_test", x), ("y_test", y)):
            member = io.BytesIO()
            np.save(member, a)
            zf.writestr(name + ".npy", member.getvalue())


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:200]), "is not a readable .npz archive"),
        (_lying_npz, "declares shape (1000000000000000, 28, 28)"),
        (
            lambda p: write_npz(p, y_train=np.full(30, 2**40)),
            "has the label 1099511627776; bnpipe trains classifiers of at most 10000 classes",
        ),
    ],
)
def test_malformed_npz_through_the_cli(tmp_path, make, fragment):
    path = tmp_path / "bad.npz"
    write_npz(path)
    make(path)
    result = bnpipe_process(
        "train", "--data", path, "--artifacts", tmp_path / "a", timeout=DEADLINE,
        preexec_fn=limited(address_space=SMALL_MEMORY),
    )  # fmt: skip
    assert_one_line_error(result, fragment=fragment)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--seed", 2**40], "--seed must be an integer from 0 to 4,294,967,295, got "),
        (["train", "--hidden", "1000000000"], "--hidden needs 1 to 64 widths from 1 to 8,192"),
        (["train", "--batch-size", 10**12], "--batch-size must be an integer from 1 to 1,048,576"),
        (["export", "--calibration-samples", 10**12], "--calibration-samples must be an"),
        (["verify", "--max-samples", -5], "--max-samples must be an integer from 1 to"),
        (["bench", "--threads", "100000"], "--threads must be integers from 0 to 1,024"),
    ],
)
def test_absurd_option_values_through_the_cli(tmp_path, args, message):
    out = tmp_path / "a"
    assert_one_line_error(invoke(*args, "--artifacts", out), fragment=message)
    assert not out.exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ('[train]\nepochs = "ten"\n', "[train] epochs must be an integer, got a string 'ten'"),
        ("[train]\nseed = 1099511627776\n", "[train] seed must be an integer from 0 to"),
        ("[verify]\nmax_drop = [1]\n", "[verify] max_drop must be a number, got a list [1]"),
        ("train = 3\n", "[train] must be a table of options, got int 3"),
        ("a = " + "[" * 5000 + "]" * 5000 + "\n", "nests arrays or tables too deeply"),
    ],
)
def test_config_values_of_the_wrong_type_through_the_cli(tmp_path, text, message):
    config = tmp_path / "bnpipe.toml"
    config.write_text(text)
    out = tmp_path / "a"
    assert_one_line_error(invoke("run", "--config", config, "--artifacts", out), fragment=message)
    assert not out.exists()


# --- Keras config.json nested too deeply or too large: refused before any parser recurses -----


def _keras_zip(path: Path, config: bytes) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.json", '{"keras_version": "2.21.0"}')
        zf.writestr("config.json", config)
        zf.writestr("model.weights.h5", b"")
    return path


@pytest.mark.parametrize("command", ["fold", "export"])
def test_a_keras_config_nested_too_deeply_is_one_line(tmp_path, command):
    deep = b'{"class_name": "Sequential", "config": {"layers": ' + b"[" * 5000 + b"]" * 5000
    model = _keras_zip(tmp_path / "deep.keras", deep + b"}}")
    result = invoke(command, "--model", model, "--artifacts", tmp_path / "a")
    assert_one_line_error(
        result, f"{model}: cannot read config.json (nested deeper than 64 levels)"
    )
    assert not (tmp_path / "a").exists()


def test_an_oversized_keras_config_is_refused_before_it_is_read(tmp_path):
    """A 256 MiB config.json (1 MB deflated) is refused by its size, in a process that could not
    hold it in memory twice."""
    model = tmp_path / "huge.keras"
    with zipfile.ZipFile(model, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("metadata.json", '{"keras_version": "2.21.0"}')
        with zf.open("config.json", "w") as f:
            for _ in range(16):
                f.write(b" " * (1 << 24))
    result = bnpipe_process(
        "fold", "--model", model, "--artifacts", tmp_path / "a", timeout=DEADLINE,
        preexec_fn=limited(address_space=SMALL_MEMORY),
    )  # fmt: skip
    assert_one_line_error(result, f"{model}: config.json is 268,435,456 bytes (limit 33,554,432)")
    assert not (tmp_path / "a").exists()


# --- manifest.json that is not a manifest: refused before the stage, nothing written ----------

SHA = "0" * 64


def _manifest_dir(m: Path) -> None:
    m.unlink()
    m.mkdir()


def _manifest_fifo(m: Path) -> None:
    m.unlink()
    os.mkfifo(m)


MANIFESTS = {
    "a directory": (_manifest_dir, "manifest {m} is a directory, not a regular file"),
    "a FIFO": (_manifest_fifo, "manifest {m} is a FIFO, not a regular file"),
    "an array": (
        lambda m: m.write_text("[]"),
        "{m} is not readable JSON: it holds an array, not an object",
    ),
    "not JSON": (
        lambda m: m.write_bytes(b"\xff\xfe\x00garbage"),
        "{m} is not readable JSON: Expecting value: line 1 column 1 (char 0)",
    ),
    "nested too deeply": (
        lambda m: m.write_text(
            '{"stages": {"train": {"params": ' + "[" * 5000 + "]" * 5000 + "}}}"
        ),
        "{m} is not readable JSON: nested deeper than 64 levels",
    ),
    "stages as a list": (
        lambda m: m.write_text('{"stages": []}'),
        '{m} is not a bnpipe manifest: "stages" is not an object; move it away (the stages then '
        "rerun)",
    ),
    "outputs that are not digests": (
        lambda m: m.write_text('{"stages": {"train": {"outputs": {"model.keras": 5}}}}'),
        "{m} is not a bnpipe manifest: the outputs of stage 'train' are not sha256 digests by "
        "name; move it away (the stages then rerun)",
    ),
    "an output outside the directory": (
        lambda m: m.write_text(json.dumps({"stages": {"train": {"outputs": {"../x": SHA}}}})),
        "{m} is not a bnpipe manifest: stage 'train' names the output '../x', not a file name; "
        "move it away (the stages then rerun)",
    ),
}


@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_a_manifest_that_is_not_one_is_refused_before_the_stage(recorded, tmp_path, case):
    make, message = MANIFESTS[case]
    out = _copy(recorded, tmp_path)
    m = out / "manifest.json"
    make(m)
    before = tree(out)
    result = bnpipe_process("fold", "--artifacts", out, timeout=DEADLINE)
    assert_one_line_error(result, message.format(m=m))
    assert tree(out) == before


def test_verify_with_a_manifest_directory_writes_nothing(exported, tmp_path):
    """The issue's example: verify.json and verify.md landed with no manifest entry."""
    out = _copy(exported, tmp_path)
    (out / "manifest.json").mkdir()
    before = tree(out)
    result = invoke(
        "verify", "--targets", "host-ref", "--max-samples", 50, "-q", "--artifacts", out
    )
    assert_one_line_error(
        result, f"manifest {out / 'manifest.json'} is a directory, not a regular file"
    )
    assert tree(out) == before


# --- an artifacts dir that cannot be written: exit 2 naming it, nothing half-written ----------


def test_an_empty_artifacts_option_is_refused_not_taken_as_the_current_directory(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    result = invoke("train", *TINY_TRAIN, "--artifacts", "")
    assert_one_line_error(
        result,
        "--artifacts is empty; give a directory, or leave the option out for $BNPIPE_ARTIFACTS "
        "or ./artifacts",
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["/proc/self", "/proc/self/bnpipe-artifacts"])
def test_an_artifacts_dir_under_proc_is_refused_before_any_work(where):
    result = invoke("train", *TINY_TRAIN, "--artifacts", where)
    verb = "write in" if where == "/proc/self" else "create"
    assert_one_line_error(result, fragment=f"cannot {verb} the artifacts directory {where}: ")


def _without_root_privileges():
    """root writes anywhere: a child run as root loses the capabilities that override file
    permissions (dropped from its bounding set, so that its exec does not grant them), and a
    read-only directory is then read-only to it too."""
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop = 24
    for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


@pytest.fixture
def read_only(recorded, tmp_path):
    """A read-only copy of `recorded` (made writable again afterwards, for the cleanup)."""
    out = _copy(recorded, tmp_path)
    paths = [out, *out.rglob("*")]
    for p in paths:
        p.chmod(0o555 if p.is_dir() else 0o444)
    yield out
    for p in paths:
        p.chmod(0o755 if p.is_dir() else 0o644)


@pytest.mark.parametrize("command", [["train", *TINY_TRAIN], ["fold"]])
def test_a_read_only_artifacts_dir_is_refused_before_any_work(read_only, command):
    out = read_only
    before = tree(out)
    result = bnpipe_process(
        *command, "--artifacts", out, timeout=DEADLINE, preexec_fn=_without_root_privileges
    )
    assert_one_line_error(
        result, f"cannot write in the artifacts directory {out}: Permission denied"
    )
    assert result.seconds < 20  # refused at once, not after training
    assert tree(out) == before


def test_a_full_disk_during_a_checkpoint_leaves_nothing(tmp_path):
    """A write past RLIMIT_FSIZE fails with EFBIG, as a full disk fails with ENOSPC: the first
    epoch's checkpoint (tens of KB) cannot be written."""
    out = tmp_path / "a"
    out.mkdir()
    result = bnpipe_process(
        "train", *TINY_TRAIN, "--artifacts", out, timeout=300,
        preexec_fn=limited(file_size=4000),
    )  # fmt: skip
    assert_one_line_error(
        result, f"cannot write {out / '.resume' / 'train' / 'epoch-0001'}: File too large"
    )
    assert tree(out) == {}


def test_a_full_disk_while_saving_the_model_leaves_the_dir_as_it_was(recorded, tmp_path):
    """The checkpoint of epoch 1 fits under the limit, model.keras (≈ 60 KB) does not: the
    checkpoint, the temporary files and the old artifacts are as before."""
    out = _copy(recorded, tmp_path)
    before = tree(out)
    result = bnpipe_process(
        "train", *TINY_TRAIN, "--artifacts", out, timeout=300,
        preexec_fn=limited(file_size=30000),
    )  # fmt: skip
    assert_one_line_error(result, f"cannot write {out / 'model.keras'}: File too large")
    assert tree(out) == before


# --- verify: a folded model that does not fit the data is bad input, as in export -------------


def _replace_folded(keras, out: Path, n_in: int, n_out: int) -> Path:
    model = keras.Sequential(
        [keras.Input((n_in,)), keras.layers.Dense(n_out, activation="softmax")]
    )
    path = out / "folded.keras"
    path.unlink()
    model.save(path)
    return path


@pytest.mark.parametrize(
    "n_in, n_out, message",
    [
        (
            32,
            10,
            "{p} takes input shape (32,) (32 values) but the data has 64 features per sample; "
            "fold model.keras again (bnpipe fold)",
        ),
        (
            64,
            5,
            "{p} outputs 5 classes but the reference model outputs 10; fold model.keras again "
            "(bnpipe fold)",
        ),
    ],
)
def test_verify_refuses_a_folded_model_that_does_not_fit(
    exported, keras, tmp_path, n_in, n_out, message
):
    out = _copy(exported, tmp_path)
    folded = _replace_folded(keras, out, n_in, n_out)
    before = tree(out)
    result = invoke(
        "verify", "--targets", "host-ref", "--max-samples", 50, "-q", "--artifacts", out
    )
    assert_one_line_error(result, message.format(p=folded))
    assert tree(out) == before


# --- a second hostile pass: what still became an internal error (exit 70) ---------------------


def _keras_zip(path: Path, config: str, compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr("metadata.json", '{"keras_version": "3.10.0"}')
        zf.writestr("config.json", config)
    return path


def _garbled_lzma_config(tmp_path: Path) -> Path:
    config = '{"class_name": "Sequential", "module": "keras", "config": {"layers": []}}' * 20
    path = _keras_zip(tmp_path / "lzma.keras", config, zipfile.ZIP_LZMA)
    data = bytearray(path.read_bytes())
    start = data.find(b"config.json") + len("config.json") + 20
    data[start : start + 40] = bytes(b ^ 0x55 for b in data[start : start + 40])
    path.write_bytes(bytes(data))
    return path


def _input_alone(tmp_path: Path) -> Path:
    layer = {"class_name": "InputLayer", "module": "keras.layers", "config": {"name": "x"}}
    config = {"class_name": "Sequential", "module": "keras", "config": {"layers": [layer]}}
    return _keras_zip(tmp_path / "input_alone.keras", json.dumps(config))


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (_garbled_lzma_config, "cannot read config.json (Corrupt input data)"),
        (_input_alone, "holds a model without layers (an input alone); nothing to fold"),
    ],
    ids=["lzma-config", "input-alone"],
)
def test_keras_files_that_were_internal_errors(tmp_path, make, fragment):
    out = tmp_path / "a"
    result = invoke("fold", "--model", make(tmp_path), "--artifacts", out)
    assert_one_line_error(result, fragment=fragment)
    assert not out.exists() or tree(out) == {}


@pytest.mark.parametrize("option", ["--data", "--test-data", "--model"])
def test_a_name_longer_than_the_file_system_takes_is_one_line(tmp_path, option):
    long = tmp_path / ("a" * 300 + (".keras" if option == "--model" else ".csv"))
    command = ["fold"] if option == "--model" else ["train", *TINY_TRAIN]
    if option == "--test-data":
        rows, _, _ = csv_rows(n=12, features=4)
        write_csv(tmp_path / "d.csv", rows)
        command += ["--data", tmp_path / "d.csv"]
    result = invoke(*command, option, long, "--artifacts", tmp_path / "a")
    assert_one_line_error(result, fragment="characters) is too long for the file system")


def test_a_toml_integer_python_will_not_convert_is_one_line(tmp_path):
    config = tmp_path / "bnpipe.toml"
    config.write_text("[train]\nseed = 1" + "0" * 5000 + "\n")
    result = invoke("run", "--config", config, "--artifacts", tmp_path / "a")
    assert_one_line_error(result, fragment="cannot be read: Exceeds the limit (4300 digits)")


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda record: {**record, "config": []}, "holds no table of options under 'config'"),
        (
            lambda record: {**record, "config": {**record["config"], "seed": 2**40}},
            "seed must be an integer from 0 to 2**32 - 1, got 1099511627776",
        ),
    ],
    ids=["config-a-list", "seed-2**40"],
)
def test_a_hand_edited_train_record_is_one_line(recorded, tmp_path, edit, fragment):
    out = _copy(recorded, tmp_path)
    (out / "manifest.json").unlink()  # edited by hand, beyond the manifest's reach
    record = json.loads((out / "train.json").read_text())
    (out / "train.json").write_text(json.dumps(edit(record)))
    result = invoke("export", "--artifacts", out, "--mode", "float32")
    assert_one_line_error(result, fragment=fragment)


def test_weights_near_float32s_limit_are_one_line_without_numpys_warnings(tmp_path, k3):
    """Exactly one line on stderr from the real CLI process: numpy's RuntimeWarning about inf −
    inf (two more lines) is not shown."""
    L = k3.layers
    model = k3.Sequential(
        [k3.Input((64,)), L.Dense(16), L.BatchNormalization(), L.Dense(10, activation="softmax")]
    )
    kernel, bias = model.layers[0].get_weights()
    model.layers[0].set_weights([np.full_like(kernel, 1e38), bias])
    model.save(tmp_path / "huge.keras")
    result = bnpipe_process(
        "fold", "--model", tmp_path / "huge.keras", "--artifacts", tmp_path / "a", timeout=300
    )
    assert result.exit_code == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[verify]\ntargets = ["host", "nowhere"]\n', "unknown target 'nowhere'"),
        ('[bench]\ntargets = ["ssh:board"]\n', "board"),
    ],
    ids=["verify-typo", "bench-bad-address"],
)
def test_run_refuses_a_bad_target_before_train_writes_anything(tmp_path, text, fragment):
    config = tmp_path / "bnpipe.toml"
    config.write_text(text)
    out = tmp_path / "a"
    result = bnpipe_process("run", "--config", config, "--artifacts", out, timeout=DEADLINE)
    assert result.exit_code == 2 and fragment in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1
    assert not out.exists() or not [p for p in out.rglob("*") if p.suffix in (".keras", ".json")]


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (
            lambda layers: layers[1]["config"].update(units=4_000_000),
            "declares units = 4,000,000 (at most 65,536)",
        ),
        (
            lambda layers: layers[1]["build_config"].update(input_shape=[None, 2_000_000]),
            "a shape with 2,000,000 in one axis",
        ),
        (
            lambda layers: (
                layers[1]["config"].update(units=60_000),
                layers[1]["build_config"].update(input_shape=[None, 60_000]),
            ),
            "declares 60,000 inputs × 60,000 outputs × 1 taps",
        ),
        (
            lambda layers: layers[1]["config"].update(kernel_size=[100, 100]),
            "declares a kernel of 10,000 taps (at most 4,096)",
        ),
    ],
    ids=["units", "input-axis", "inputs-times-units", "kernel-taps"],
)
def test_a_keras_file_declaring_huge_layers_is_refused_before_keras_builds_them(
    tmp_path, k3, edit, fragment
):
    """Keras would allocate the declared variables (gigabytes) before it read a weight: the
    declared sizes are checked in config.json first, so the refusal costs no memory."""
    L = k3.layers
    model = k3.Sequential([k3.Input((64,)), L.Dense(16), L.BatchNormalization(), L.Dense(10)])
    model.save(tmp_path / "small.keras")
    with zipfile.ZipFile(tmp_path / "small.keras") as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    config = json.loads(members["config.json"])
    layers = config["config"]["layers"]
    assert layers[1]["class_name"] == "Dense"
    edit(layers)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(tmp_path / "huge.keras", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    result = bnpipe_process(
        "fold", "--model", tmp_path / "huge.keras", "--artifacts", tmp_path / "a",
        timeout=DEADLINE, preexec_fn=limited(address_space=SMALL_MEMORY),
    )  # fmt: skip
    assert result.exit_code == 2, result.stderr
    assert fragment in result.stderr and result.stderr.count("\n") == 1, result.stderr


# --- C arrays land with the rest or not at all -----------------------------------------------


def _unwritable(path: Path) -> str:
    """Make `path` a file no rename can replace nor unlink remove: chattr +i where the file
    system allows it (ext4 as root), else a non-empty directory in its place. Which one."""
    import subprocess

    path.write_text("// an earlier run's array\n")
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
        return "immutable"
    path.unlink()
    (path / "keep").mkdir(parents=True)
    return "directory"


@pytest.mark.slow
def test_an_unwritable_c_array_changes_nothing(exported, tmp_path):
    """A C++ array that cannot be replaced, then a stale C array that cannot be removed: each is
    exit 2 in one line, and the dir (models, header, export.json, manifest) is as it was."""
    import subprocess

    out = _copy(exported, tmp_path)
    args = ["export", "--mode", "ptq-int8", "-q", "--artifacts", out]
    stale = out / "model_ptq-int8.cc"
    kind = _unwritable(stale)
    try:
        # C++: the array itself cannot be replaced. C: the stale C++ pair cannot be removed (a
        # directory is no stale array: export leaves it be, so only the immutable file counts).
        for language in ("c++", "c") if kind == "immutable" else ("c++",):
            before = tree(out)
            result = invoke(*args, "--c-array", language)
            assert_one_line_error(result, fragment=f"cannot write {stale}: it is")
            assert tree(out) == before, kind
    finally:
        subprocess.run(["chattr", "-i", str(stale)], capture_output=True)


def test_verify_refuses_another_models_tflite(exported, keras, tf, tmp_path):
    """A CNN's file (8, 8, 1) given to verify in an MLP's dir (64,): the same 64 values a sample,
    but another model, so a mismatch (exit 2), not a failed gate (exit 1)."""
    L = keras.layers
    cnn = keras.Sequential(
        [keras.Input((8, 8, 1)), L.Conv2D(2, 3), L.Flatten(), L.Dense(10, activation="softmax")]
    )
    path = tmp_path / "cnn.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(cnn).convert())
    out = _copy(exported, tmp_path)
    before = tree(out)
    result = invoke(
        "verify", "--tflite", path, "--targets", "host-ref", "--max-samples", 50, "-q",
        "--artifacts", out,
    )  # fmt: skip
    assert_one_line_error(
        result,
        "cnn.tflite takes input shape (8, 8, 1) but the reference model takes (64,); it was "
        "exported from another model",
    )
    assert tree(out) == before
