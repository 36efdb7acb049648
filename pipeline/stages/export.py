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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.analysis.tasks import CLASSIFICATION
from pipeline.core.config import AUTO, AUTO_ORDER, INTEGER_MODES, MIXED, ExportConfig
from pipeline.core.errors import ModelError
from pipeline.core.tfenv import native_noise_filtered
from pipeline.models.door import classify, predict
from pipeline.store import artifacts, files
from pipeline.store.files import tflite_name
from pipeline.tflite.convert import convert, qat_fine_tune
from pipeline.tflite.file import TfliteInfo, parse_tflite, quant_params, with_metadata
from pipeline.tflite.opset import (
    EXPORTABLE_LAYERS,
    graph_check,
    implied_ops,
    operators_of,
    unsupported_layers,
)


@dataclass(kw_only=True)
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
    # --c-array: the source and header written beside the file, and the TFLM arena they carry.
    c_array: dict[str, Any] | None = None
    # A task other than classification (analysis/tasks.py): the accuracies above are None and
    # the file's output SQNR against the folded float model on the test split says it instead.
    task: str = CLASSIFICATION
    sqnr_db: float | None = None


@dataclass(kw_only=True)
class ExportResult:
    modes: list[ModeResult]
    record_path: Path
    seconds: float


# --- checks -----------------------------------------------------------------------------------


def check_keras_model(model) -> list:
    """Before conversion: the BNs fold would still remove are refused (export takes the folded
    model); those fold has to keep are returned (SkippedBN: name and reason), and only layers
    the converter exports may be in the model."""
    from pipeline.folding.plan import plan_fold

    plans, kept = plan_fold(model)
    if plans:
        raise ModelError(
            f"BatchNormalization layer(s) {', '.join(p.bn for p in plans)} can still be folded; "
            "run `bnpipe fold` first (export takes the folded model)"
        )
    bad = unsupported_layers(model, EXPORTABLE_LAYERS)
    if bad:
        raise ModelError(
            f"layer(s) {', '.join(bad)} cannot be exported; supported: "
            + ", ".join(sorted(EXPORTABLE_LAYERS))
        )
    return kept


def _keras_accuracy(model, x, y) -> tuple[float, np.ndarray]:
    pred = classify(model, x)
    return float(np.mean(pred == y)), pred


def _tflite_predict(data: bytes, x: np.ndarray, info: TfliteInfo) -> np.ndarray:
    """Top-1 classes of the file on x with LiteRT's reference kernels (x: preprocessed floats)."""
    import tempfile

    from pipeline.core.quantize import to_input
    from pipeline.runtimes.host import shared_runtime

    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(data)
        f.flush()
        rt = shared_runtime(reference=True)  # in a child process, started once
        y = rt.run(f.name, to_input(x, quant_params(info.input_tensor()))).outputs
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
    task: str = CLASSIFICATION  # the output's task (analysis/tasks.py)
    float_out: np.ndarray | None = None  # another task's: the folded model's test outputs


def _export_mode(mode: str, job: _Job, converted: bytes | None = None):
    """(ModeResult, the file's bytes) for one mode: convert (unless `converted` holds the
    converter's bytes already), check the graph, add bnpipe's metadata, and score the file on the
    test split with LiteRT's reference kernels."""
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
            scores = job.task == CLASSIFICATION
            keras_model, history = qat_fine_tune(folded, ds, config, verbose, scores=scores)
            keras_acc = _keras_accuracy(keras_model, ds.x_test, ds.y_test)[0] if scores else None
        else:
            keras_model, keras_acc = folded, float_acc
        blob = converted or convert(keras_model, mode, ds.x_train, config)
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
        "task": job.task,
    }
    blob = with_metadata(blob, meta)
    if job.task != CLASSIFICATION:
        return _task_mode(mode, job, blob, info, io, keras_acc, history, t1)
    with native_noise_filtered():
        pred = _tflite_predict(blob, ds.x_test, info)
    result = ModeResult(
        mode=mode,
        file=tflite_name(mode),
        size_bytes=len(blob),
        sha256=artifacts.sha256_bytes(blob),
        operators=info.op_counts(),
        input=io["input"],
        output=io["output"],
        keras_accuracy=keras_acc,
        tflite_accuracy=float(np.mean(pred == ds.y_test)),
        agreement_with_float=float(np.mean(pred == float_pred)),
        seconds=time.perf_counter() - t1,
        qat_history=history,
        kept_batch_norms={k.bn: operators_of(info, k.bn) for k in job.kept},
    )
    return result, blob


def _task_mode(mode: str, job: _Job, blob: bytes, info, io: dict, keras_acc, history, t1):
    """_export_mode's result for an output that is not a classifier's: its SQNR against the
    folded float model's outputs on the test split, LiteRT's reference kernels."""
    from pipeline.analysis.taskmetrics import recorded, sqnr_db
    from pipeline.analysis.taskrun import tflite_outputs

    with native_noise_filtered():
        out = tflite_outputs(blob, job.ds.x_test, info)
    result = ModeResult(
        mode=mode,
        file=tflite_name(mode),
        size_bytes=len(blob),
        sha256=artifacts.sha256_bytes(blob),
        operators=info.op_counts(),
        input=io["input"],
        output=io["output"],
        keras_accuracy=keras_acc,
        tflite_accuracy=None,
        agreement_with_float=None,
        seconds=time.perf_counter() - t1,
        qat_history=history,
        kept_batch_norms={k.bn: operators_of(info, k.bn) for k in job.kept},
        task=job.task,
        sqnr_db=recorded(sqnr_db(job.float_out, out)),
    )
    return result, blob


# --- --mode auto: the first mode that keeps the model's accuracy ------------------------------


@dataclass(kw_only=True)
class Trial:
    """One candidate of --mode auto, scored on the validation split with verify's gates."""

    mode: str
    passed: bool
    accuracy: float
    drop_pp: float  # the original's accuracy − this file's, percentage points
    agreement: float  # share of samples with the original's top-1 class
    reason: str
    keep_float: list[str] = field(default_factory=list)  # mixed-int8: the layer kept in float


def choose(job: _Job, model_path: Path, say) -> tuple[list[tuple[ModeResult, bytes]], dict]:
    """Try AUTO_ORDER's modes in turn; keep the first that passes on the validation split.

    Returns [(ModeResult, bytes)] of the chosen file and the float32 twin (what `bnpipe layers`
    and bench compare it with), and the record of every trial and why the chosen one was kept.
    The test split is never looked at here: it stays verify's, the honest final judge."""
    val = _validation(job, model_path)
    trials, tried = [], {}
    for mode in AUTO_ORDER:
        if mode == MIXED and ("ptq-int8" not in tried or job.task != CLASSIFICATION):
            continue  # mixed-int8 keeps the layer that costs top-1 agreement, a classifier's
        say(f"auto: {mode}")
        try:
            if mode == MIXED:
                tried[mode], keep = _mixed(job, val, tried["ptq-int8"][1], tried)
            else:
                tried[mode], keep = _export_mode(mode, job), []
        except ModelError as exc:  # e.g. QAT cannot wrap a Conv1D: the next mode may do
            trials.append(
                Trial(
                    mode=mode,
                    passed=False,
                    accuracy=0.0,
                    drop_pp=0.0,
                    agreement=0.0,
                    reason=f"cannot be made: {exc}",
                )
            )
            say(f"auto: {mode}: {trials[-1].reason}")
            continue
        trials.append(_score(mode, tried[mode][1], val, job, keep))
        say(f"auto: {mode}: {trials[-1].reason}")
        if trials[-1].passed:
            break
    chosen = trials[-1].mode if trials[-1].passed else None
    if chosen is None:
        raise ModelError(
            "--mode auto: no mode keeps the model's accuracy on the validation "
            "split: " + "; ".join(f"{t.mode} {t.reason}" for t in trials)
        )
    twin = tried.get("float32") or _export_mode("float32", job)
    files_ = [tried[chosen]] + ([twin] if chosen != "float32" else [])
    record = {
        "chosen": chosen,
        "reason": f"{chosen} is the first of {', '.join(AUTO_ORDER)} to pass: {trials[-1].reason}",
        "split": "validation",
        "n": len(val[1]),
        "gates": {
            "max_drop_pp": job.config.auto_max_drop,
            "min_agreement": job.config.auto_min_agreement,
        },
        "trials": trials,
    }
    return files_, record


def _validation(job: _Job, model_path: Path):
    """(x_val, y_val, the original's top-1 on it, its accuracy): the original is model.keras
    beside the folded model, in its own Keras (else the folded model, equal to it within the
    fold's tolerance)."""
    from pipeline.data.dataset import model_input_shape, shaped
    from pipeline.models.door import load_reference

    x, y = job.ds.x_val, job.ds.y_val
    original = model_path.parent / files.MODEL
    model = load_reference(original) if original.is_file() else job.folded
    flat = x.reshape(len(x), -1)
    if job.task != CLASSIFICATION:  # the original's outputs, which the task's measure compares
        return x, y, predict(model, shaped(flat, model_input_shape(model))), None
    pred = classify(model, shaped(flat, model_input_shape(model)))
    return x, y, pred, float(np.mean(pred == y))


def _score(mode: str, blob: bytes, val, job: _Job, keep: list[str]) -> Trial:
    from pipeline.analysis.stats import wilson_interval

    x, y, ref_pred, ref_acc = val
    config = job.config
    if job.task != CLASSIFICATION:
        return _task_score(mode, blob, val, job, keep)
    with native_noise_filtered():
        pred = _tflite_predict(blob, x, parse_tflite(blob, tflite_name(mode)))
    accuracy, agreement = float(np.mean(pred == y)), float(np.mean(pred == ref_pred))
    drop = 100 * (ref_acc - accuracy)
    failed = []
    if drop > config.auto_max_drop:
        failed.append(f"accuracy {drop:.2f} pp below the original > {config.auto_max_drop:g}")
    # Agreement fails on evidence, not on one sample of a small split: only when its 95 % Wilson
    # interval lies wholly below the gate (2 disagreements in 144 is 98.6 %, and the interval
    # reaches 99.6 %: a point gate would decide on one sample; a broken file is far below it).
    upper = wilson_interval(int(np.sum(pred == ref_pred)), len(y))[1]
    if upper < config.auto_min_agreement:
        failed.append(
            f"agreement {agreement:.2%} < {config.auto_min_agreement:.2%} (95 % interval up to "
            f"{upper:.2%})"
        )
    reason = "; ".join(failed) or (
        f"accuracy {accuracy:.2%} (the original's {ref_acc:.2%}), agreement {agreement:.2%} "
        f"on {len(y)} validation samples"
    )
    return Trial(
        mode=mode,
        passed=not failed,
        accuracy=accuracy,
        drop_pp=drop,
        agreement=agreement,
        reason=reason,
        keep_float=keep,
    )


def _task_score(mode: str, blob: bytes, val, job: _Job, keep: list[str]) -> Trial:
    """An output that is not a classifier's is ranked by its task's own measure (taskrun)."""
    from pipeline.analysis.taskmetrics import TaskGates
    from pipeline.analysis.taskrun import auto_trial, tflite_outputs
    from pipeline.core.config import MAX_AUC_DROP, MAX_RMSE_INCREASE, MIN_SQNR_DB

    x, y, ref_out, _ = val
    with native_noise_filtered():
        out = tflite_outputs(blob, x, parse_tflite(blob, tflite_name(mode)))
    gates = TaskGates(MAX_RMSE_INCREASE, MAX_AUC_DROP, MIN_SQNR_DB)
    t = auto_trial(job.task, out, ref_out.reshape(len(x), -1), y, gates)
    return Trial(
        mode=mode,
        passed=t.passed,
        accuracy=t.measure,
        drop_pp=0.0,
        agreement=0.0,
        reason=t.reason,
        keep_float=keep,
    )


def _mixed(job: _Job, val, ptq_int8: bytes, tried: dict):
    """mixed-int8: post-training int8 with the layer bnpipe layers names as the culprit (on the
    validation split, against the float twin) kept in float."""
    from pipeline.analysis.layerwise import rank_layers
    from pipeline.tflite.convert import convert_mixed

    twin = tried.get("float32") or _export_mode("float32", job)
    tried["float32"] = twin
    culprit = rank_layers(ptq_int8, twin[1], val[0], val[1]).culprit
    with native_noise_filtered():
        blob = convert_mixed(job.folded, job.ds.x_train, job.config, [culprit.tensor])
    return _export_mode(MIXED, job, converted=blob), [culprit.tensor]


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


GOLDEN_SAMPLES = 3  # test samples whose TFLM outputs a C array's header carries (firmware.py)


def _tflm_arena(path: Path, x: np.ndarray, tensor: dict) -> tuple[int | None, str, tuple]:
    """(the tensor arena TFLM needed to run the file's first test samples, "", (their quantized
    inputs, TFLM's outputs)), or (None, why not, ())."""
    from pipeline.core.errors import BnpipeError
    from pipeline.core.quantize import to_input

    try:
        from pipeline.runtimes.tflm import TflmRuntime

        inputs = to_input(x[:GOLDEN_SAMPLES], tensor)
        with TflmRuntime() as rt:  # its own child process, closed here
            result = rt.run(str(path), inputs)
    except (ImportError, BnpipeError) as exc:
        return None, " ".join(str(exc).split())[:300], ()
    used = result.info.get("arena_bytes_used")
    if not used:
        return None, "TFLM did not report the arena it used", ()
    return int(used), "", (inputs, result.outputs)


def _write_c_arrays(out: Path, results: list[ModeResult], blobs: dict, job: _Job, say) -> list:
    """Beside each integer model, its C/C++ source and header (carray.py) with the TFLM arena
    and golden vectors of its first test samples (firmware.py), its batch axis fixed at 1
    (fixed_batch.py); the names written. Each result's c_array says what it got."""
    from pipeline.tflite.carray import c_array
    from pipeline.tflite.firmware import firmware_kit
    from pipeline.tflite.fixed_batch import fixed_batch

    written = []
    for r in results:
        if r.mode not in INTEGER_MODES:
            continue
        say(f"C array of {r.file}")
        arena, why, golden = _tflm_arena(artifacts.current(out / r.file), job.ds.x_test, r.input)
        data = fixed_batch(blobs[r.mode])  # firmware runs one sample: no dynamic batch axis
        kit = firmware_kit(data, *golden)
        arr = c_array(data, r.file, arena_bytes=arena, language=job.config.c_array, kit=kit)
        artifacts.write_text(out / arr.header_name, arr.header)
        artifacts.write_text(out / arr.source_name, arr.source)
        r.c_array = {
            "source": arr.source_name,
            "header": arr.header_name,
            "array": arr.name,
            "bytes": arr.length,
            "arena_bytes": arena,
            **({"arena_error": why} if why else {}),
        }
        written += [arr.source_name, arr.header_name]
    return written


def _drop_stale_c_arrays(out: Path, results: list[ModeResult]) -> None:
    """Once the stage commits: remove the C arrays an earlier export wrote for a mode this one
    rewrote, but not as those (they would hold the old model's bytes)."""
    from pipeline.tflite.carray import LANGUAGES

    stale = [
        out / name
        for r in results
        for name in {f"{Path(r.file).stem}{s}" for s in (".h", *LANGUAGES.values())}
        - {(r.c_array or {}).get("source"), (r.c_array or {}).get("header")}
    ]
    for path in stale:
        if path.is_file():
            artifacts.remove_at_commit(path)


def _export_modes(job: _Job, model_path: Path, say):
    """([ModeResult], {mode: bytes}, the auto record or None) for every mode asked for."""
    results, blobs, auto = [], {}, None
    for mode in job.config.modes:
        if mode == AUTO:
            chosen, auto = choose(job, model_path, say)
        else:
            say(f"export {mode}")
            chosen = [_export_mode(mode, job)]
        for result, blob in chosen:
            blobs[result.mode] = blob
            results.append(result)
    return results, blobs, auto


def _new_job(folded, ds, preprocessing, config, kept, verbose, task) -> _Job:
    """The _Job of one export: a classifier's accuracy and top-1 on the test split, or another
    task's float outputs there."""
    float_acc, float_pred, float_out = None, None, None
    if task == CLASSIFICATION:
        float_acc, float_pred = _keras_accuracy(folded, ds.x_test, ds.y_test)
    else:
        float_out = predict(folded, ds.x_test).reshape(len(ds.x_test), -1)
    ops = implied_ops(folded)
    job = _Job(folded, ds, preprocessing, float_acc, float_pred, config, ops, kept, verbose)
    job.task, job.float_out = task, float_out
    return job


def _task(folded, ds, say) -> str:
    """The output's task as analysis/tasks.py infers it; where it cannot, `output` (judged by
    SQNR against the float model): verify, which takes --task, then decides or asks."""
    from pipeline.analysis.tasks import OUTPUT, model_tasks, only_task

    try:
        task = only_task(model_tasks(folded, ds))
    except ModelError:
        say("task: not inferred; exported as an output judged by SQNR (verify takes --task)")
        return OUTPUT
    if task.task != CLASSIFICATION:
        say(f"task: {task.describe()}")
    return task.task


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
    from pipeline.data.dataset import as_model_input, model_input_shape, recorded_dataset
    from pipeline.models.door import load_model, one_output

    t0 = time.perf_counter()
    folded = one_output(load_model(model_path), model_path)
    kept = check_keras_model(folded)
    ds, preprocessing = recorded_dataset(model_path.parent, data, folded)
    fingerprint, summary = ds.fingerprint(), ds.summary()
    task = _task(folded, ds, progress or (lambda m: None))
    ds = as_model_input(ds, model_input_shape(folded))
    job = _new_job(folded, ds, preprocessing, config, kept, verbose, task)
    float_acc = job.float_acc
    results, blobs, auto = _export_modes(job, model_path, progress or (lambda m: None))
    out = artifacts.ensure_dir(artifacts_dir)
    for mode, blob in blobs.items():
        artifacts.write_bytes(out / tflite_name(mode), blob)
    say = progress or (lambda m: None)
    c_files = _write_c_arrays(out, results, blobs, job, say) if config.c_array else []
    _drop_stale_c_arrays(out, results)
    record = {
        "stage": "export",
        "config": dataclasses.asdict(config),
        "model": str(model_path),
        "float_accuracy": float_acc,
        "preprocessing": preprocessing,
        "dataset": summary,
        "kept_batch_norms": [dataclasses.asdict(k) for k in kept],
        "modes": {r.mode: r for r in results},
        **({"auto": auto} if auto else {}),
        "outputs": {r.file: r.sha256 for r in results},
        # by this call (outputs keeps earlier modes too)
        "written": [r.file for r in results] + c_files,
        "timings": {"total_s": time.perf_counter() - t0},
    }
    _keep_earlier_modes(out, record)
    record_path = artifacts.write_json(
        out / files.EXPORT_RECORD,
        record,
        inputs={"model": artifacts.sha256_file(model_path), "data": fingerprint},
    )
    return ExportResult(modes=results, record_path=record_path, seconds=time.perf_counter() - t0)
