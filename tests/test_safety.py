"""Safe loading, end to end through the CLI: files that could run code or crash an interpreter are
refused with exit 2 and one `Error: …` line, and the code in them never runs.

Every hostile file here carries a live payload: a Lambda layer or a pickled object that, if it
were ever deserialized, would create a marker file. The tests assert the exact error line and
that the marker is absent; the `*_payload_is_live` tests load the same files unsafely, on purpose,
to show that the marker would appear if bnpipe's guard were missing (so the absence means
something). The models are tiny and untrained (built in a second, no training): what is checked
here happens before any number is computed.
"""

import os
import pickle
import shutil
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
from pipeline.cli import cli

N_FEATURES, N_CLASSES = 64, 10  # the shape of the default `digits` data, so --data digits fits
LAMBDA_MSG = (
    "{path} holds Lambda layer(s) {names}, which carry Python code; bnpipe refuses them "
    "(replace them with built-in layers)"
)
H5_MSG = (
    "{path} is legacy HDF5, which bypasses Keras's safe mode; re-save the model as .keras "
    "(model.save('model.keras'))"
)
NOT_KERAS_MSG = (
    "{path} does not end in .keras; bnpipe loads only .keras files (Keras's safe "
    "format), so rename it if it is one"
)
OBJECT_NPZ_MSG = (
    "{path} holds object arrays (x_train); bnpipe never unpickles; "
    "save plain numeric arrays instead"
)
# Fast bench settings: the tests check what bench refuses, not how fast anything runs.
BENCH_ARGS = ["--batch-sizes", "1", "--threads", "1", "--warmup", "0", "--runs", "5", "-q"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="bnpipe")


def _marking(marker):
    """A layer function that creates `marker` when called: proof that code from a file ran."""
    return lambda t: (open(marker, "w").close(), t)[1]


class _MarksWhenUnpickled:
    """Pickles to `open(marker, "w")`: unpickling it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny good and hostile model files, and the marker path their payloads would create."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    from pipeline.core.config import ExportConfig
    from pipeline.core.tfenv import keras, set_determinism
    from pipeline.tflite.convert import convert

    k = keras()
    d = tmp_path_factory.mktemp("safety")
    marker = d / "MARKER"
    set_determinism(0)
    good = k.Sequential(
        [
            k.Input((N_FEATURES,), name="pixels"),
            k.layers.Dense(8, activation="relu"),
            k.layers.Dense(N_CLASSES, activation="softmax"),
        ]
    )
    good.save(d / "good.keras")
    x = np.random.default_rng(0).random((64, N_FEATURES), dtype=np.float32)
    for mode in ("int8", "float32"):
        (d / f"good_{mode}.tflite").write_bytes(
            convert(good, mode, x, ExportConfig(calibration_samples=64))
        )

    evil = k.Sequential(
        [
            k.Input((N_FEATURES,)),
            k.layers.Lambda(_marking(str(marker)), name="mark"),
            k.layers.Dense(N_CLASSES, activation="softmax"),
        ]
    )
    evil.save(d / "lambda.keras")
    inner = k.Sequential(
        [k.Input((N_FEATURES,)), k.layers.Lambda(_marking(str(marker)), name="deep")], name="inner"
    )
    i = k.Input((N_FEATURES,))
    k.Model(i, k.layers.Dense(N_CLASSES, activation="softmax")(inner(i))).save(
        d / "nested_lambda.keras"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "You are saving your model as an HDF5 file"
        good.save(d / "legacy.h5")
        evil.save(d / "lambda.h5")
    shutil.copy(d / "legacy.h5", d / "h5_named.keras")  # HDF5 bytes under a .keras name

    # HDF5 with a Lambda, followed by a harmless zip: one file that is both a zip (with a
    # config.json free of Lambda layers) and HDF5 (which Keras reads with no safe mode).
    with zipfile.ZipFile(d / "decoy.zip", "w") as zf:
        zf.writestr("config.json", '{"class_name": "Sequential", "config": {"layers": []}}')
    (d / "polyglot.model").write_bytes(
        (d / "lambda.h5").read_bytes() + (d / "decoy.zip").read_bytes()
    )

    # A softmax with beta 0: well-formed and in range everywhere, so the structural check passes,
    # but LiteRT's reference SOFTMAX kernel aborts the process on it.
    model = fb.ModelT.InitFromPackedBuf(bytearray((d / "good_int8.tflite").read_bytes()), 0)
    for op in model.subgraphs[0].operators:
        if isinstance(op.builtinOptions, fb.SoftmaxOptionsT):
            op.builtinOptions.beta = 0.0
    (d / "beta0.tflite").write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))

    # Objects that unpickle into open(marker, "w"), in an .npz and as a bare pickle named .npz.
    obj = np.zeros((8, N_FEATURES), dtype=object)
    obj[0, 0] = _MarksWhenUnpickled(marker)
    y = np.arange(8) % N_CLASSES
    np.savez(d / "objects.npz", x_train=obj, y_train=y, x_test=np.zeros((8, N_FEATURES)), y_test=y)
    (d / "pickle.npz").write_bytes(pickle.dumps(_MarksWhenUnpickled(marker)))
    if marker.exists():  # building the Lambda models called their function once
        marker.unlink()
    return d, marker


@pytest.fixture
def marker(files):
    """The marker path, absent when the test starts."""
    _, path = files
    if path.exists():
        path.unlink()
    return path


def assert_no_code_ran(marker):
    assert not marker.exists(), "code from a hostile file ran"


def _artifacts(tmp_path, files, members):
    """An artifacts dir holding copies of fixture files: {name bnpipe reads: fixture file}."""
    d, _ = files
    out = tmp_path / "art"
    out.mkdir()
    for name, source in members.items():
        shutil.copy(d / source, out / name)
    return out


# --- the payloads are live: loading them unsafely runs them ----------------------------------


def test_lambda_payload_is_live(files, marker):
    from pipeline.core.tfenv import keras

    d, _ = files
    keras().models.load_model(d / "lambda.keras", safe_mode=False, compile=False)
    assert marker.exists()
    marker.unlink()


def test_hdf5_and_polyglot_payloads_are_live(files, marker):
    from pipeline.core.tfenv import keras

    d, _ = files
    for name in ("lambda.h5", "polyglot.model"):
        keras().models.load_model(
            d / name, compile=False
        )  # safe_mode defaults to True; HDF5 ignores it
        assert marker.exists(), name
        marker.unlink()


def test_pickle_payload_is_live(files, marker):
    d, _ = files
    np.load(d / "objects.npz", allow_pickle=True)["x_train"]
    assert marker.exists()
    marker.unlink()


# --- Lambda layers: refused by fold, export, verify and bench ---------------------------------


@pytest.mark.parametrize(
    "name, layers", [("lambda.keras", "mark"), ("nested_lambda.keras", "deep")]
)
def test_fold_refuses_lambda_layers(files, marker, tmp_path, name, layers):
    path = files[0] / name
    out = tmp_path / "art"
    assert_one_line_error(
        invoke("fold", "--model", path, "--artifacts", out),
        LAMBDA_MSG.format(path=path, names=layers),
    )
    assert not (out / "folded.keras").exists()
    assert_no_code_ran(marker)


def test_export_refuses_lambda_layers(files, marker, tmp_path):
    path = files[0] / "lambda.keras"
    out = tmp_path / "art"
    assert_one_line_error(
        invoke(
            "export",
            "--model",
            path,
            "--data",
            "digits",
            "--qat-epochs",
            "0",
            "-q",
            "--artifacts",
            out,
        ),
        LAMBDA_MSG.format(path=path, names="mark"),
    )
    assert not out.exists() or not list(out.glob("*.tflite"))
    assert_no_code_ran(marker)


def test_verify_refuses_a_lambda_reference_model(files, marker, tmp_path):
    out = _artifacts(tmp_path, files, {"model.keras": "lambda.keras"})
    assert_one_line_error(
        invoke("verify", "--targets", "host-ref", "--data", "digits", "-q", "--artifacts", out),
        LAMBDA_MSG.format(path=out / "model.keras", names="mark"),
    )
    assert not (out / "verify.json").exists()
    assert_no_code_ran(marker)


def test_verify_refuses_a_lambda_folded_model(files, marker, tmp_path):
    out = _artifacts(tmp_path, files, {"model.keras": "good.keras", "folded.keras": "lambda.keras"})
    assert_one_line_error(
        invoke("verify", "--targets", "host-ref", "--data", "digits", "-q", "--artifacts", out),
        LAMBDA_MSG.format(path=out / "folded.keras", names="mark"),
    )
    assert not (out / "verify.json").exists()
    assert_no_code_ran(marker)


def test_bench_refuses_a_lambda_keras_baseline(files, marker, tmp_path):
    out = _artifacts(
        tmp_path,
        files,
        {"model.keras": "lambda.keras", "model_float32.tflite": "good_float32.tflite"},
    )
    assert_one_line_error(
        invoke("bench", *BENCH_ARGS, "--artifacts", out),
        LAMBDA_MSG.format(path=out / "model.keras", names="mark"),
    )
    assert not (out / "bench.json").exists()
    assert_no_code_ran(marker)


# --- legacy HDF5: an .h5 through the safe path (its config checked); refused under other names --


@pytest.mark.parametrize("command", ["fold", "export"])
def test_an_hdf5_model_with_a_lambda_is_refused(files, marker, tmp_path, command):
    path = files[0] / "lambda.h5"
    out = tmp_path / "art"
    extra = ["--data", "digits", "-q"] if command == "export" else []
    assert_one_line_error(
        invoke(command, "--model", path, *extra, "--artifacts", out),
        LAMBDA_MSG.format(path=path, names="mark"),
    )
    assert not out.exists() or not [p for p in out.iterdir() if p.suffix in (".keras", ".tflite")]
    assert_no_code_ran(marker)


def test_hdf5_under_a_keras_name_is_refused_by_verify(files, marker, tmp_path):
    out = _artifacts(tmp_path, files, {"model.keras": "h5_named.keras"})
    assert_one_line_error(
        invoke("verify", "--targets", "host-ref", "--data", "digits", "-q", "--artifacts", out),
        H5_MSG.format(path=out / "model.keras"),
    )
    assert_no_code_ran(marker)


def test_hdf5_disguised_as_a_zip_is_refused(files, marker, tmp_path):
    path = files[0] / "polyglot.model"
    result = invoke("fold", "--model", path, "--artifacts", tmp_path / "art")
    assert_no_code_ran(marker)
    assert result.exit_code == 2, result.output
    assert result.stderr == f"Error: {H5_MSG.format(path=path)}\n"


def test_a_keras_file_under_another_name_is_refused(files, marker, tmp_path):
    # tf_keras would hand any name not ending in .keras to its legacy (unsafe) loader.
    import shutil

    path = tmp_path / "good.KERAS"
    shutil.copy(files[0] / "good.keras", path)
    assert_one_line_error(
        invoke("fold", "--model", path, "--artifacts", tmp_path / "art"),
        NOT_KERAS_MSG.format(path=path),
    )


# --- .npz data: never unpickled ---------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "run", "export"])
def test_object_arrays_in_npz_are_refused(files, marker, tmp_path, command):
    d, _ = files
    path = d / "objects.npz"
    out = tmp_path / "art"
    extra = {
        "train": ["--epochs", "1", "-q"],
        "run": ["-q"],
        "export": ["--model", d / "good.keras", "-q"],
    }[command]
    assert_one_line_error(
        invoke(command, "--data", path, *extra, "--artifacts", out),
        OBJECT_NPZ_MSG.format(path=path),
    )
    assert not out.exists() or not [p for p in out.iterdir() if p.suffix in (".keras", ".tflite")]
    assert_no_code_ran(marker)


def test_a_pickle_named_npz_is_refused(files, marker, tmp_path):
    path = files[0] / "pickle.npz"
    first = path.read_bytes()[:4]
    assert_one_line_error(
        invoke("train", "--data", path, "--epochs", "1", "-q", "--artifacts", tmp_path / "art"),
        f"{path} is not a readable .npz archive: it does not start like a zip file "
        f"(first bytes {first!r})",
    )
    assert not (tmp_path / "art" / "model.keras").exists()
    assert_no_code_ran(marker)


# --- corrupted .tflite files: refused before an interpreter sees them --------------------------


def _rewrite(data: bytes, change) -> bytes:
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    change(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _first_op_input(model, value):
    model.subgraphs[0].operators[0].inputs[0] = value


def _first_tensor_buffer(model, value):
    model.subgraphs[0].tensors[0].buffer = value


def _first_op_code(model, value):
    model.subgraphs[0].operators[0].opcodeIndex = value


def _corrupted(files, tmp_path):
    """{file: the message after its path}; None where the message hangs on the parser's details."""
    from ai_edge_litert import schema_py_generated as fb

    d, _ = files
    good = (d / "good_int8.tflite").read_bytes()
    model = fb.ModelT.InitFromPackedBuf(bytearray(good), 0)
    n_tensors, n_buffers = len(model.subgraphs[0].tensors), len(model.buffers)
    n_codes = len(model.operatorCodes)
    cases = {
        "op-input.tflite": (
            _rewrite(good, lambda m: _first_op_input(m, 999)),
            f"is damaged: operator 0 refers to tensor 999 of {n_tensors}",
        ),
        "buffer-index.tflite": (
            _rewrite(good, lambda m: _first_tensor_buffer(m, 9999)),
            f"is damaged: tensor 0 points at buffer 9999 of {n_buffers}",
        ),
        "opcode.tflite": (
            _rewrite(good, lambda m: _first_op_code(m, 7)),
            f"is damaged: operator 0 has opcode 7 of {n_codes}",
        ),
        "identifier.tflite": (
            good[:4] + b"XXXX" + good[8:],
            "is not a TFLite model: no TFL3 identifier (found b'XXXX')",
        ),
        "truncated.tflite": (good[: len(good) // 2], None),
    }
    paths = {}
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        paths[tmp_path / name] = message
    return paths


def _assert_refused(result, path, message):
    if message is not None:
        assert_one_line_error(result, f"{path} {message}")
    else:
        assert result.exit_code == 2, (path.name, result.output)
        assert "Traceback" not in result.output
        assert result.stderr.startswith(f"Error: {path} is ") and result.stderr.count("\n") == 1, (
            result.stderr
        )


@pytest.mark.parametrize("command", ["inspect", "verify", "bench"])
def test_corrupted_tflite_files_are_refused(files, tmp_path, command):
    out = _artifacts(tmp_path, files, {"model.keras": "good.keras"})
    for path, message in _corrupted(files, tmp_path).items():
        args = {
            "inspect": ["inspect", path],
            "verify": [
                "verify",
                "--tflite",
                path,
                "--targets",
                "host-ref",
                "--data",
                "digits",
                "-q",
                "--artifacts",
                out,
            ],
            "bench": ["bench", "--tflite", path, *BENCH_ARGS, "--artifacts", out],
        }[command]
        _assert_refused(invoke(*args), path, message)
    assert sorted(p.name for p in out.iterdir()) == ["model.keras"]  # no report of any kind


def test_beta0_softmax_passes_the_structural_check(files):
    """The file the next test feeds to verify is well-formed: only an interpreter can object."""
    from pipeline.tflite.file import read_tflite

    info = read_tflite(files[0] / "beta0.tflite")
    assert [o.op for o in info.operators] == ["FULLY_CONNECTED", "FULLY_CONNECTED", "SOFTMAX"]


def test_a_model_that_aborts_the_reference_kernels_is_exit_2(files, tmp_path):
    # A subprocess: in-process, the abort would take pytest down with it.
    out = _artifacts(tmp_path, files, {"model.keras": "good.keras"})
    path = files[0] / "beta0.tflite"
    env = {k: v for k, v in os.environ.items() if k != "BNPIPE_ARTIFACTS"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "verify",
            "--tflite",
            str(path),
            "--targets",
            "host-ref",
            "--data",
            "digits",
            "-q",
            "--artifacts",
            str(out),
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-500:])
    assert f"Error: host-ref: the device runner crashed on {path} (signal 6 (SIGABRT)" in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_the_abort_is_a_model_crashed_in_process(files):
    """In this very process: the reference kernels would abort pytest, the runtime's child dies
    instead; the XNNPACK kernels accept the file and run it."""
    from pipeline.core.errors import ModelCrashed
    from pipeline.runtimes import host

    path = files[0] / "beta0.tflite"
    with pytest.raises(ModelCrashed) as info:
        host.HostRuntime(reference=True).run(str(path), np.zeros((4, N_FEATURES), np.int8))
    assert str(info.value).startswith(
        f"host-ref: the device runner crashed on {path} (signal 6 (SIGABRT): "
    )
    result = host.HostRuntime().run(str(path), np.zeros((4, N_FEATURES), np.int8))
    assert result.outputs.shape == (4, N_CLASSES)


def test_a_model_that_crashes_tflm_is_exit_2_not_a_failed_gate(files, tmp_path):
    """TFLM's constructor aborts on the beta-0 softmax (in its child process) at any arena size:
    the file is bad input, exit 2 with one line, never a failed gate and never a PASS."""
    out = _artifacts(tmp_path, files, {"model.keras": "good.keras"})
    path = files[0] / "beta0.tflite"
    result = invoke(
        "verify", "--tflite", path, "--targets", "tflm", "--data", "digits", "-q",
        "--artifacts", out,
    )  # fmt: skip
    assert_one_line_error(
        result,
        f"tflm: {path} crashes TFLM when its interpreter is built, even in an arena of 4194304 "
        "bytes (the TFLM interpreter crashed (signal 6 (SIGABRT): no message on stderr))",
    )
    assert sorted(p.name for p in out.iterdir()) == ["model.keras"]


def test_a_model_that_ran_on_no_target_fails_the_gate(files, tmp_path):
    """TFLM refuses float16 weights (their DEQUANTIZE) in Prepare, cleanly; with no other target
    the file ran nowhere, which is no evidence of anything: exit 1 naming it, never a PASS."""
    from pipeline.core.config import ExportConfig
    from pipeline.models.door import load_model
    from pipeline.stages.export import convert

    out = _artifacts(tmp_path, files, {"model.keras": "good.keras"})
    path = tmp_path / "float16.tflite"
    x = np.random.default_rng(0).random((64, N_FEATURES), dtype=np.float32)
    good = load_model(files[0] / "good.keras")
    path.write_bytes(convert(good, "ptq-float16", x, ExportConfig(calibration_samples=64)))
    result = invoke(
        "verify", "--tflite", path, "--targets", "tflm", "--data", "digits", "-q",
        "--artifacts", out,
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "float16.tflite ran on no target (tflm: failed: tflm: cannot run " in result.stderr
    assert "FAIL" in result.stdout


def test_io_quantization_bnpipe_cannot_feed_is_exit_2(files, tmp_path):
    """An int8 input with two scales (per-channel) or no zero point: one clear line, exit 2,
    never a NumPy traceback read as a failed gate (exit 1)."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    out = _artifacts(tmp_path, files, {"model.keras": "good.keras"})
    for case in ("two scales", "no zero point"):
        model = fb.ModelT.InitFromPackedBuf(
            bytearray((files[0] / "good_int8.tflite").read_bytes()), 0
        )
        sg = model.subgraphs[0]
        q = sg.tensors[sg.inputs[0]].quantization
        if case == "two scales":
            q.scale, q.zeroPoint = [0.1, 0.2], [0, 0]
        else:
            q.zeroPoint = []
        path = tmp_path / f"{case.replace(' ', '_')}.tflite"
        path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
        result = invoke(
            "verify",
            "--tflite",
            path,
            "--targets",
            "host-ref",
            "--data",
            "digits",
            "-q",
            "--artifacts",
            out,
        )
        assert result.exit_code == 2, (case, result.output)
        assert (
            result.stderr.startswith(f"Error: {path}: its input tensor ")
            and "Traceback" not in result.output
        )
        assert "bnpipe needs one finite scale > 0 and one zero point" in result.stderr
