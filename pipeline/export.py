"""Stage 3: the folded Keras model → TFLite files, int8 by quantization-aware training.

Mode `int8` (the default) wraps the folded model with tensorflow-model-optimization's
`quantize_model` (fake-quantization of weights and activations), fine-tunes it briefly at a low
learning rate, then converts it with int8 input and output. By default the fine-tune fits the
float model's own output probabilities (distillation), which keeps its predictions; fitting the
labels instead (`qat_target="labels"`) lets QAT move the decision boundaries.

The post-training modes convert the folded float model directly, for comparison and for users who
skip QAT. After every conversion a graph check rejects what a deployable model must not hold.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts
from .config import ExportConfig
from .errors import ModelError
from .tfenv import native_noise_filtered
from .tflite_file import TfliteInfo, parse_tflite, quant_params, with_metadata

RECORD_FILE = "export.json"
FOLDED_FILE = "folded.keras"
INTEGER_ONLY_MODES = ("int8", "ptq-int8", "ptq-int16x8")
# Operators a folded MLP may legitimately contain after conversion.
MLP_OPS = {"FULLY_CONNECTED", "SOFTMAX"}
# What a BatchNormalization that survived folding turns into inside a TFLite graph.
BN_REMNANT_OPS = {"MUL", "ADD", "SUB", "RSQRT", "SQUARED_DIFFERENCE"}
# QAT layers tfmot's default 8-bit scheme quantizes; anything else in the model is refused early.
QAT_LAYERS = {
    "InputLayer",
    "Dense",
    "ReLU",
    "Activation",
    "Softmax",
    "Flatten",
    "Dropout",
    "Reshape",
}


def tflite_name(mode: str) -> str:
    return f"model_{mode}.tflite"


@dataclass
class ModeResult:
    mode: str
    file: str
    size_bytes: int
    sha256: str
    operators: dict[str, int]
    input: dict[str, Any]
    output: dict[str, Any]
    keras_accuracy: (
        float  # the Keras side: the QAT model for int8, the folded float model otherwise
    )
    tflite_accuracy: float  # the written file, run by LiteRT (reference kernels) on the test split
    agreement_with_float: float  # share of test samples whose top-1 matches the folded float model
    seconds: float
    qat_history: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class ExportResult:
    modes: list[ModeResult]
    record_path: Path
    seconds: float


# --- checks -----------------------------------------------------------------------------------


def check_keras_model(model) -> None:
    """Before conversion: no BatchNormalization left, and only layers QAT can quantize."""
    from .model import is_batch_norm

    bns = [layer.name for layer in model.layers if is_batch_norm(layer)]
    if bns:
        raise ModelError(
            f"BatchNormalization layer(s) {', '.join(bns)} are still in the model; "
            "run `bnpipe fold` (a BN that fold cannot remove would become MUL/ADD "
            "operators in the TFLite graph)"
        )


def check_qat_layers(model) -> None:
    bad = [
        f"{layer.name} ({type(layer).__name__})"
        for layer in model.layers
        if type(layer).__name__ not in QAT_LAYERS
    ]
    if bad:
        raise ModelError(
            "quantization-aware training does not support layer(s) "
            + ", ".join(bad)
            + f"; supported: {', '.join(sorted(QAT_LAYERS))}"
        )


def graph_check(info: TfliteInfo, mode: str, float_io: bool) -> list[str]:
    """Every violation of what a deployable `mode` model may hold (empty list: fine)."""
    problems = []
    counts = info.op_counts()
    remnants = sorted(set(counts) & BN_REMNANT_OPS)
    if remnants:
        problems.append(f"operators {', '.join(remnants)} (a BatchNormalization left unfolded?)")
    if mode not in INTEGER_ONLY_MODES:
        return problems
    act = "int8" if mode in ("int8", "ptq-int8") else "int16"
    allowed_types = {act, "int32", "int8", "int64"} if act == "int16" else {"int8", "int32"}
    inp, out = set(info.inputs), set(info.outputs)
    for op in info.operators:
        if op.op in MLP_OPS:
            for t in op.inputs + op.outputs:
                if t < 0:
                    continue
                dt = info.tensors[t].dtype
                if dt not in allowed_types:
                    problems.append(
                        f"{op.op} #{op.index} has a {dt} tensor {info.tensors[t].name!r}"
                    )
        elif (op.op == "QUANTIZE" and float_io and set(op.inputs) <= inp) or (op.op == "DEQUANTIZE" and float_io and set(op.outputs) <= out):
            continue
        else:
            problems.append(f"operator {op.op} #{op.index} does not belong in an integer-only MLP")
    io_dtype = "float32" if float_io else act
    for t in info.inputs + info.outputs:
        if info.tensors[t].dtype != io_dtype:
            problems.append(
                f"input/output tensor {info.tensors[t].name!r} is {info.tensors[t].dtype}, expected {io_dtype}"
            )
    return problems


# --- conversion -------------------------------------------------------------------------------


def _representative(x: np.ndarray, n: int, seed: int):
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))[:n]
    sample = x[np.sort(idx)].astype(np.float32)

    def gen():
        for row in sample:
            yield [row[None, :]]

    return gen


def convert(model, mode: str, x_train: np.ndarray, config: ExportConfig) -> bytes:
    """Keras model → .tflite bytes for `mode` (the QAT-wrapped model for `int8`)."""
    from .tfenv import tf

    t = tf()
    conv = t.lite.TFLiteConverter.from_keras_model(model)
    integer_io = not config.float_io
    if mode in ("int8", "ptq-int8"):
        conv.optimizations = [t.lite.Optimize.DEFAULT]
        conv.representative_dataset = _representative(
            x_train, config.calibration_samples, config.seed
        )
        conv.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if integer_io:
            conv.inference_input_type = t.int8
            conv.inference_output_type = t.int8
    elif mode == "ptq-int16x8":
        conv.optimizations = [t.lite.Optimize.DEFAULT]
        conv.representative_dataset = _representative(
            x_train, config.calibration_samples, config.seed
        )
        conv.target_spec.supported_ops = [
            t.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
        if integer_io:
            conv.inference_input_type = t.int16
            conv.inference_output_type = t.int16
    elif mode == "ptq-dynamic":
        conv.optimizations = [t.lite.Optimize.DEFAULT]
    elif mode == "ptq-float16":
        conv.optimizations = [t.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [t.float16]
    elif mode != "float32":
        raise ModelError(f"unknown mode {mode!r}")
    from .tfenv import muted_stderr

    try:
        # Ctrl-C is held during the conversion (< 1 s a mode): TensorFlow's converter catches
        # Exception around one of its paths and retries another, so an interrupt landing there
        # could be swallowed, and the retry gives other (valid but different) bytes.
        with muted_stderr(), warnings.catch_warnings(), artifacts.interrupts_deferred():
            # The converter prints its settings and TF graph notices on stderr: noise here.
            warnings.simplefilter("ignore")
            return bytes(conv.convert())
    except Exception as exc:
        msg = " ".join(str(exc).split())[:300]
        raise ModelError(f"the TFLite converter failed for mode {mode}: {msg}") from None


def qat_fine_tune(folded, ds, config: ExportConfig, verbose: int = 0):
    """quantize_model(folded), fine-tuned for config.qat_epochs. Returns (qat_model, history)."""
    import tensorflow_model_optimization as tfmot

    from .tfenv import keras, set_determinism

    k = keras()
    check_qat_layers(folded)
    set_determinism(config.seed)
    try:
        qat = tfmot.quantization.keras.quantize_model(folded)
    except Exception as exc:
        msg = " ".join(str(exc).split())[:300]
        raise ModelError(f"quantization-aware training cannot wrap this model: {msg}") from None
    if config.qat_target == "distill":
        # The teacher is the folded float model (= the original within 1e-5); its probabilities
        # (n, classes) are the targets, so QAT learns to reproduce the float model's decisions.
        y_fit = folded.predict(ds.x_train, batch_size=1024, verbose=0)
        loss = k.losses.KLDivergence()
    else:
        y_fit, loss = ds.y_train, "sparse_categorical_crossentropy"
    qat.compile(
        optimizer=k.optimizers.Adam(config.qat_learning_rate),
        loss=loss,
        metrics=[] if config.qat_target == "distill" else ["accuracy"],
    )
    history = {}
    if config.qat_epochs:
        from .tfenv import muted_stderr

        with muted_stderr():
            h = qat.fit(
                ds.x_train,
                y_fit,
                epochs=config.qat_epochs,
                batch_size=config.qat_batch_size,
                shuffle=True,
                verbose=verbose,
            )
        history = {kk: [float(v) for v in vals] for kk, vals in h.history.items()}
    else:
        # No fine-tuning, but the fake-quant ranges are only learnt in training mode: without this
        # pass they keep their initial values and the int8 model predicts one class (10 % on
        # digits). Forward passes only (no optimizer step): the weights stay the folded ones.
        for i in range(0, len(ds.x_train), config.qat_batch_size):
            qat(ds.x_train[i : i + config.qat_batch_size], training=True)
    return qat, history


def _keras_accuracy(model, x, y) -> tuple[float, np.ndarray]:
    pred = np.argmax(model.predict(x, batch_size=1024, verbose=0), axis=1)
    return float(np.mean(pred == y)), pred


def _tflite_predict(data: bytes, x: np.ndarray, info: TfliteInfo) -> np.ndarray:
    """Top-1 classes of the file on x with LiteRT's reference kernels (x: preprocessed floats)."""
    import tempfile

    from .quantize import to_input
    from .runtimes.host import shared_runtime

    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(data)
        f.flush()
        rt = shared_runtime(reference=True)  # in a child process, started once
        y = rt.run(f.name, to_input(x, quant_params(info.input_tensor()))).outputs
    return np.argmax(y, axis=1)


@artifacts.transactional
def run_export(
    model_path: Path,
    artifacts_dir: Path,
    *,
    config: ExportConfig = ExportConfig(),
    data: str | None = None,
    progress=None,
    verbose: int = 0,
) -> ExportResult:
    """Write model_<mode>.tflite for each mode and export.json. Nothing is written on failure.

    `progress(message)` is called before each mode. All files of a call are checked before any
    is renamed into place, so a failing mode leaves the previous files as they were.
    """
    from .model import load_model
    from .train import recorded_dataset

    t0 = time.perf_counter()
    folded = load_model(model_path)
    check_keras_model(folded)
    ds, preprocessing = recorded_dataset(model_path.parent, data, folded)
    float_acc, float_pred = _keras_accuracy(folded, ds.x_test, ds.y_test)
    results, blobs = [], {}
    for mode in config.modes:
        if progress:
            progress(f"export {mode}")
        t1 = time.perf_counter()
        history: dict = {}
        with native_noise_filtered():
            if mode == "int8":
                keras_model, history = qat_fine_tune(folded, ds, config, verbose)
                keras_acc, _ = _keras_accuracy(keras_model, ds.x_test, ds.y_test)
            else:
                keras_model, keras_acc = folded, float_acc
            blob = convert(keras_model, mode, ds.x_train, config)
        info = parse_tflite(blob, tflite_name(mode))
        problems = graph_check(info, mode, config.float_io)
        if problems:
            raise ModelError(f"{tflite_name(mode)} fails the graph check: " + "; ".join(problems))
        io = {
            "input": quant_params(info.input_tensor()),
            "output": quant_params(info.output_tensor()),
        }
        blob = with_metadata(
            blob,
            {
                "bnpipe_version": artifacts.tool_versions()["bnpipe"],
                "mode": mode,
                "preprocessing": preprocessing,
                **io,
                "num_classes": int(info.output_tensor().shape[-1]),
            },
        )
        with native_noise_filtered():
            pred = _tflite_predict(blob, ds.x_test, info)
        blobs[mode] = blob
        results.append(
            ModeResult(
                mode,
                tflite_name(mode),
                len(blob),
                artifacts.sha256_bytes(blob),
                info.op_counts(),
                io["input"],
                io["output"],
                keras_acc,
                float(np.mean(pred == ds.y_test)),
                float(np.mean(pred == float_pred)),
                time.perf_counter() - t1,
                history,
            )
        )
    out = artifacts.ensure_dir(artifacts_dir)
    for mode, blob in blobs.items():
        artifacts.write_bytes(out / tflite_name(mode), blob)
    record = {
        "stage": "export",
        "config": dataclasses.asdict(config),
        "model": str(model_path),
        "float_accuracy": float_acc,
        "preprocessing": preprocessing,
        "dataset": ds.summary(),
        "modes": {r.mode: r for r in results},
        "outputs": {r.file: r.sha256 for r in results},
        "timings": {"total_s": time.perf_counter() - t0},
    }
    previous = out / RECORD_FILE
    if previous.is_file():  # keep modes exported earlier that this call did not redo
        old = artifacts.read_json(previous)
        for m, r in old.get("modes", {}).items():
            if m not in record["modes"] and (out / r.get("file", "")).is_file():
                record["modes"][m] = r
                record["outputs"][r["file"]] = r.get("sha256")
    record_path = artifacts.write_json(
        out / RECORD_FILE,
        record,
        inputs={"model": artifacts.sha256_file(model_path), "data": ds.fingerprint()},
    )
    return ExportResult(results, record_path, time.perf_counter() - t0)
