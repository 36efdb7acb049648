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

from . import artifacts, files
from .config import ExportConfig
from .errors import ModelError
from .files import tflite_name
from .opset import QAT_LAYERS, graph_check, implied_ops, operators_of
from .tfenv import native_noise_filtered
from .tflite_file import TfliteInfo, parse_tflite, quant_params, with_metadata


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
    # A BN fold had to keep → the operators it became in this file (by the tensors' names).
    kept_batch_norms: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class ExportResult:
    modes: list[ModeResult]
    record_path: Path
    seconds: float


# --- checks -----------------------------------------------------------------------------------


def check_keras_model(model) -> list:
    """Before conversion: the BNs fold would still remove are refused (export takes the folded
    model); those fold has to keep are returned (SkippedBN: name and reason), and only layers
    quantization-aware training and the converter support may be in the model."""
    from .foldplan import plan_fold

    plans, kept = plan_fold(model)
    if plans:
        raise ModelError(
            f"BatchNormalization layer(s) {', '.join(p.bn for p in plans)} can still be folded; "
            "run `bnpipe fold` first (export takes the folded model)"
        )
    bad = [
        f"{layer.name!r} ({type(layer).__name__})"
        for layer in model.layers
        if type(layer).__name__ not in QAT_LAYERS and not _is_custom_bn(layer)
    ]
    if bad:
        raise ModelError(
            f"layer(s) {', '.join(bad)} cannot be exported; supported: "
            + ", ".join(sorted(QAT_LAYERS))
        )
    return kept


def _is_custom_bn(layer) -> bool:
    from .model import is_batch_norm

    return is_batch_norm(layer)


# --- conversion -------------------------------------------------------------------------------


def _representative(x: np.ndarray, n: int, seed: int):
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))[:n]
    sample = x[np.sort(idx)].astype(np.float32)

    def gen():
        for row in sample:
            yield [row[None, ...]]

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


def _quantized(folded, tfmot):
    """tfmot's quantize_model; where a BN that fold had to keep remains, every other layer is
    annotated as usual and the BN gets an output quantizer only (tfmot has no BN scheme of its
    own): the converter then makes it an int8 MUL and ADD."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_configs as configs,
    )

    from .model import is_batch_norm
    from .tfenv import keras

    if not any(is_batch_norm(layer) for layer in folded.layers):
        return tfmot.quantization.keras.quantize_model(folded)
    k, q = keras(), tfmot.quantization.keras

    def annotate(layer):
        if isinstance(layer, k.layers.InputLayer):
            return layer
        if is_batch_norm(layer):
            return q.quantize_annotate_layer(layer, configs.Default8BitOutputQuantizeConfig())
        return q.quantize_annotate_layer(layer)

    annotated = k.models.clone_model(folded, clone_function=annotate)
    annotated.set_weights(folded.get_weights())
    from .model import custom_bn_class

    scope = {
        "Default8BitOutputQuantizeConfig": configs.Default8BitOutputQuantizeConfig,
        "CustomBatchNorm": custom_bn_class(),
    }
    with q.quantize_scope(scope):
        return q.quantize_apply(annotated)


# tfmot's activation quantizers start at [-6, 6] and follow the data by an exponential moving
# average with decay 0.999: after the ~120 steps of 3 epochs on digits they are still 88 % the
# initial range, so an activation beyond ±6 is clipped and a narrower one gets coarse steps. They
# are settled first on a fixed calibration sample until the initial range weighs < 1 %:
# 0.999^4603 < 0.01. Forward passes only: the weights stay the folded ones.
SETTLE_STEPS = 4603


def _settle_ranges(qat, x: np.ndarray, config: ExportConfig) -> None:
    """Move every fake-quant range of `qat` (mutated) to the calibration sample's own."""
    from .tfenv import tf

    t = tf()
    rng = np.random.default_rng(config.seed)
    sample = x[np.sort(rng.permutation(len(x))[: config.calibration_samples])]

    @t.function
    def settle(batch):
        for _ in t.range(SETTLE_STEPS):
            qat(batch, training=True)

    settle(t.constant(sample, dtype=t.float32))


def qat_fine_tune(folded, ds, config: ExportConfig, verbose: int = 0):
    """quantize_model(folded), fine-tuned for config.qat_epochs. Returns (qat_model, history)."""
    import tensorflow_model_optimization as tfmot

    from .tfenv import keras, set_determinism

    k = keras()
    set_determinism(config.seed)
    try:
        qat = _quantized(folded, tfmot)
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
    _settle_ranges(qat, ds.x_train, config)
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
    return qat, history


def _keras_accuracy(model, x, y) -> tuple[float, np.ndarray]:
    pred = np.argmax(model.predict(x, batch_size=1024, verbose=0), axis=1)
    return float(np.mean(pred == y)), pred


def _tflite_predict(data: bytes, x: np.ndarray, info: TfliteInfo) -> np.ndarray:
    """Top-1 classes of the file on x with LiteRT's reference kernels (x: preprocessed floats)."""
    import tempfile

    from .quantize import to_input
    from .runtimes import device_runner

    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(data)
        f.flush()
        interp = device_runner.load_interpreter(f.name, reference=True)
        y, _ = device_runner.run_batched(interp, to_input(x, quant_params(info.input_tensor())))
    return np.argmax(y, axis=1)


@dataclass
class _Job:
    """What every mode of one export shares."""

    folded: Any  # the folded tf_keras model
    ds: Any  # the data set, laid out as the model takes it (data.as_model_input)
    preprocessing: dict
    float_acc: float
    float_pred: np.ndarray
    config: ExportConfig
    allowed_ops: set[str]  # operators the model's layers imply (opset.implied_ops)
    kept: list  # SkippedBN: the BNs fold had to keep
    verbose: int = 0


def _export_mode(mode: str, job: _Job):
    """(ModeResult, the file's bytes) for one mode: convert, check the graph, add bnpipe's
    metadata, and score the file on the test split with LiteRT's reference kernels."""
    folded, ds, config = job.folded, job.ds, job.config
    preprocessing, float_acc, float_pred, verbose = (
        job.preprocessing,
        job.float_acc,
        job.float_pred,
        job.verbose,
    )
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
    problems = graph_check(info, mode, config.float_io, job.allowed_ops)
    if problems:
        raise ModelError(f"{tflite_name(mode)} fails the graph check: " + "; ".join(problems))
    io = {"input": quant_params(info.input_tensor()), "output": quant_params(info.output_tensor())}
    meta = {
        "bnpipe_version": artifacts.tool_versions()["bnpipe"],
        "mode": mode,
        "preprocessing": preprocessing,
        **io,
        "num_classes": int(info.output_tensor().shape[-1]),
    }
    blob = with_metadata(blob, meta)
    with native_noise_filtered():
        pred = _tflite_predict(blob, ds.x_test, info)
    result = ModeResult(
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
        {k.bn: operators_of(info, k.bn) for k in job.kept},
    )
    return result, blob


def _keep_earlier_modes(out: Path, record: dict) -> None:
    """Carry into `record` (mutated) the modes an earlier export wrote that this one did not
    redo, as long as their files are still there."""
    previous = out / files.EXPORT_RECORD
    if not previous.is_file():
        return
    old = artifacts.read_json(previous)
    for m, r in old.get("modes", {}).items():
        if m not in record["modes"] and (out / r.get("file", "")).is_file():
            record["modes"][m] = r
            record["outputs"][r["file"]] = r.get("sha256")


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
    from .data import as_model_input, model_input_shape, recorded_dataset
    from .model import load_model

    t0 = time.perf_counter()
    folded = load_model(model_path)
    kept = check_keras_model(folded)
    ds, preprocessing = recorded_dataset(model_path.parent, data, folded)
    fingerprint, summary = ds.fingerprint(), ds.summary()
    ds = as_model_input(ds, model_input_shape(folded))
    float_acc, float_pred = _keras_accuracy(folded, ds.x_test, ds.y_test)
    job = _Job(
        folded, ds, preprocessing, float_acc, float_pred, config, implied_ops(folded), kept, verbose
    )
    results, blobs = [], {}
    for mode in config.modes:
        if progress:
            progress(f"export {mode}")
        result, blobs[mode] = _export_mode(mode, job)
        results.append(result)
    out = artifacts.ensure_dir(artifacts_dir)
    for mode, blob in blobs.items():
        artifacts.write_bytes(out / tflite_name(mode), blob)
    record = {
        "stage": "export",
        "config": dataclasses.asdict(config),
        "model": str(model_path),
        "float_accuracy": float_acc,
        "preprocessing": preprocessing,
        "dataset": summary,
        "kept_batch_norms": [dataclasses.asdict(k) for k in kept],
        "modes": {r.mode: r for r in results},
        "outputs": {r.file: r.sha256 for r in results},
        "timings": {"total_s": time.perf_counter() - t0},
    }
    _keep_earlier_modes(out, record)
    record_path = artifacts.write_json(
        out / files.EXPORT_RECORD,
        record,
        inputs={"model": artifacts.sha256_file(model_path), "data": fingerprint},
    )
    return ExportResult(results, record_path, time.perf_counter() - t0)
