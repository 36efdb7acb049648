"""Stage 4: evidence that what ships is as accurate as what was trained, on the targets it ships to.

Reference: the original float model with BN (`model.keras`) run by TensorFlow on the host, on the
test split. Candidates: `folded.keras` (TensorFlow, host) and every `.tflite` file on every target.
Each candidate × target row gets its accuracy with a 95 % interval, its paired difference from the
reference with a 95 % interval and an exact McNemar p-value, its top-1 agreement with the
reference, and for integer models the distance of its raw outputs from the `host-ref` outputs in
quantization steps. Gates turn these into a verdict (exit 1 when any fails).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.analysis.softmax import softmax_gain, softmax_slack
from pipeline.analysis.stats import compare
from pipeline.analysis.tasks import CLASSIFICATION
from pipeline.core.config import VerifyConfig
from pipeline.core.errors import ArtifactError, DataError, GateFailed, ModelError
from pipeline.core.quantize import to_input
from pipeline.core.safeio import regular_file
from pipeline.models.door import classify, predict
from pipeline.runtimes.registry import in_lanes
from pipeline.store import artifacts, files
from pipeline.tflite.file import check_io, quant_params

REFERENCE_TARGET = "host-ref"


@dataclass(kw_only=True)
class Row:
    candidate: str
    target: str
    n: int
    accuracy: float
    accuracy_ci: tuple[float, float]
    diff_pp: float
    diff_ci_pp: tuple[float, float]
    mcnemar_p: float
    agreement: float
    only_candidate_right: int
    only_reference_right: int
    lsb_max: int | None = None  # largest |raw − raw(host-ref)| in output quantization steps
    lsb_share: float | None = None  # share of output values that differ from host-ref at all
    lsb_allowed: int | None = None  # the max-lsb gate in output steps (see softmax_gain)
    lsb_gated: bool = False  # whether max-lsb applies here (reference kernels, see bit_exact)
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    disagreement_by_class: list[int] = field(default_factory=list)  # indexed by reference class
    failures: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class Skipped:
    candidate: str
    target: str
    reason: str


@dataclass(kw_only=True)
class VerifyResult:
    rows: list[Row]
    skipped: list[Skipped]
    reference_accuracy: float
    n: int
    passed: bool
    failures: list[str]
    record_path: Path
    report_path: Path
    plots: list[Path]
    seconds: float


def _candidate_files(out: Path, tflite: list[Path] | None) -> list[Path]:
    """The .tflite files to verify, each a regular file (a FIFO would block the read)."""
    paths = [Path(p) for p in tflite] if tflite else [out / n for n in files.tflite_files(out)]
    return [regular_file(p, "model file", ModelError) for p in paths]


def _integer(tensor: dict) -> bool:
    return tensor["dtype"] in ("int8", "uint8", "int16")


class ModelInputs:
    """The test inputs as each candidate's input tensor takes them, each form made once.

    x: float32 (N, features), preprocessed. codes, values: optionally the uint8 pixels behind x and
    the float32 (256,) value of each (x == values[codes] bit for bit: Dataset.x_test_codes and
    Preprocessing.code_values), so that integer inputs are made by table lookup. Candidates often
    share an input quantization (QAT and post-training int8 both take pixels ÷ 255 at scale 1/255,
    zero point −128; float models take x itself) and every target of a candidate takes the same
    array, so each distinct (dtype, scale, zero point) is quantized once per run. The arrays
    returned are shared: runtimes only read them.
    """

    def __init__(
        self, x: np.ndarray, codes: np.ndarray | None = None, values: np.ndarray | None = None
    ):
        self.x, self.codes, self.values = x, codes, values
        self._made: dict[tuple, np.ndarray] = {}

    def for_tensor(self, tensor: dict) -> np.ndarray:
        """(N, features) in the dtype of `tensor` (a quant_params dict), quantized as recorded."""
        key = (tensor["dtype"], repr(tensor["scale"]), repr(tensor["zero_point"]))
        if key not in self._made:
            self._made[key] = to_input(self.x, tensor, self.codes, self.values)
        return self._made[key]


@dataclass(kw_only=True)
class Reference:
    """The test split and what the original model (TensorFlow, host) says on it."""

    x: np.ndarray  # float32 (N, features), preprocessed
    y: np.ndarray  # int64 (N,) labels
    pred: np.ndarray  # int64 (N,) the original model's top-1 classes
    n_classes: int
    inputs: ModelInputs  # x as each candidate's input tensor takes it
    dataset: dict  # Dataset.summary()
    preprocessing: dict
    fingerprint: str  # the test data's (Dataset.fingerprint)
    task: Any = None  # the output's Task (analysis/tasks.py)
    raw: Any = None  # float (N, …): the original's outputs
    input_shape: tuple | None = None  # the original model's, without the batch axis

    @property
    def accuracy(self) -> float | None:
        if self.task is not None and self.task.task != CLASSIFICATION:
            return None  # another task's measures are in its rows (analysis/taskverify.py)
        return float(np.mean(self.pred == self.y))


def run_candidate(
    rt, path: Path, info, ref: Reference, raw_ref: np.ndarray | None, config: VerifyConfig
) -> tuple[Row, np.ndarray]:
    """One candidate on one target: its row, and its raw outputs (N, classes).

    Runs the test inputs on `rt` (run_on) and scores them (score). ModelError from the runtime
    passes through.
    """
    return score(rt.name, path, info, ref, run_on(rt, path, info, ref), raw_ref, config)


def run_on(rt, path: Path, info, ref: Reference):
    """The runtime's RunResult for the test inputs, laid out as the file's input tensor takes
    them (e.g. (N, 28, 28, 1): a view)."""
    xin = ref.inputs.for_tensor(quant_params(info.input_tensor()))
    return rt.run(str(path), xin.reshape((len(xin), *info.input_tensor().shape[1:])))


def score(
    target: str, path: Path, info, ref: Reference, res, raw_ref: np.ndarray | None, config
) -> tuple[Row, np.ndarray]:
    """The row of one run (a RunResult) and its raw outputs (N, classes): the top-1 classes
    against the labels and the reference's and, for an integer model, the distance of the raw
    outputs from `raw_ref` (the host-ref outputs; None when host-ref did not run; on host-ref
    itself its own outputs, distance 0) in quantization steps."""
    raw = res.outputs.reshape(len(ref.y), -1)
    if target == REFERENCE_TARGET:
        raw_ref = raw
    row = _row(path.name, target, np.argmax(raw, axis=1), ref, res.invoke_seconds, res.info)
    if _integer(quant_params(info.output_tensor())) and raw_ref is not None:
        # Steps apart, in the narrowest type that holds any difference (int8 codes: int16, 20×
        # faster than int64 on 10,000 × 10 outputs; int16 codes: int32).
        wide = np.int16 if raw.dtype.itemsize == 1 else np.int32
        diff = np.abs(np.subtract(raw, raw_ref, dtype=wide))
        row.lsb_max, row.lsb_share = int(diff.max()), float(np.mean(diff > 0))
        row.lsb_allowed = config.max_lsb * softmax_gain(info) + softmax_slack(info)
        row.lsb_gated = bit_exact(res.info)
    return row, raw


def bit_exact(run_info: dict) -> bool:
    """Whether a target's kernels are meant to compute host-ref's numbers, so that max-lsb gates
    them: LiteRT's reference kernels (anywhere: host-ref, an arm64 or ssh runner told to use
    them) and TFLM's. Optimized kernels (XNNPACK on the host, a phone or a board) requantize in
    their own way at every layer; a deep network's outputs move by more steps than a shallow
    one's without being wrong, so there the distance is reported and accuracy and agreement
    are the gates."""
    return run_info.get("reference") is True or run_info.get("kernels") == "tflm"


def run_verify(
    artifacts_dir: Path,
    *,
    config: VerifyConfig = VerifyConfig(),
    tflite: list[Path] | None = None,
    data: str | None = None,
    progress=None,
) -> VerifyResult:
    """Verify every candidate on every target; write verify.json, verify.md and plots.

    Raises GateFailed (after writing the reports) when a gate fails; ModelError / DataError /
    TargetUnavailable for bad input, before anything is written."""
    from pipeline.runtimes.registry import close_all

    t0 = time.perf_counter()
    say = progress or (lambda m: None)
    out = artifacts_dir
    ref_path = artifacts.require_file(
        out / files.MODEL,
        "reference model",
        "run `bnpipe train` first (verify compares against it)",
    )
    candidates = _candidate_files(out, tflite)
    infos, runtimes, unavailable = _prepare(candidates, config)
    ref = _reference(ref_path, out, data, config, say)
    if _check_fit(infos, ref) != CLASSIFICATION:  # measured by the output's own task
        return _verify_outputs(out, ref, ref_path, candidates, (infos, runtimes), config, say, t0)
    rows: list[Row] = []
    skipped = [Skipped(candidate="*", target=name, reason=reason) for name, reason in unavailable]
    folded_path = out / files.FOLDED
    if folded_path.is_file() and not tflite:
        rows.append(_folded_row(_folded_model(folded_path, ref), ref, say))
    _refuse_none(candidates, runtimes, out)
    try:  # each runtime serves every candidate; arm64 keeps its emulator running until closed
        ran, failed = _run_everywhere(infos, runtimes, ref, config, say)
    finally:
        close_all(runtimes)
    rows += ran
    skipped += failed

    failures = _apply_gates(rows, config) + _run_failures(infos, rows, skipped)
    record = _record(config, ref, rows, skipped, failures, candidates, t0)
    return _conclude(out, record, ref, ref_path, rows, skipped, failures, t0)


def _conclude(out, record, ref, ref_path, rows, skipped, failures, t0) -> VerifyResult:
    """Write the reports (their inputs: the reference, the data, every candidate and the folded
    model), then the result; GateFailed after the reports landed when a gate failed."""
    inputs = {files.MODEL: artifacts.sha256_file(ref_path), "data": ref.fingerprint}
    inputs.update(record["models"])
    folded_path = out / files.FOLDED
    if folded_path.is_file():
        inputs[files.FOLDED] = artifacts.sha256_file(folded_path)
    paths = _write_reports(out, record, inputs)
    return _result(rows, skipped, ref.accuracy, len(ref.y), failures, paths, t0)


def _result(rows, skipped, accuracy, n, failures, paths, t0) -> VerifyResult:
    """The result once the reports landed; GateFailed instead when a gate failed."""
    record_path, report_path, plots = paths
    result = VerifyResult(
        rows=rows,
        skipped=skipped,
        reference_accuracy=accuracy,
        n=n,
        passed=not failures,
        failures=failures,
        record_path=record_path,
        report_path=report_path,
        plots=plots,
        seconds=time.perf_counter() - t0,
    )
    if failures:
        raise GateFailed(f"{len(failures)} gate(s) failed: " + "; ".join(failures), failures)
    return result


def _verify_outputs(out: Path, ref: Reference, ref_path, candidates, prepared, config, say, t0):
    """run_verify for an output that is not a classifier's: the same candidates and targets,
    measured and gated by its task (analysis/taskverify.py)."""
    from pipeline.analysis import taskverify as tv
    from pipeline.runtimes.registry import close_all

    (infos, runtimes), folded_path = prepared, out / files.FOLDED
    task_ref = tv.task_reference(ref.task.output, ref.task.task, ref.x, ref.y, ref.raw)
    folded = (
        _folded_outputs(_folded_model(folded_path, ref), ref) if folded_path.is_file() else None
    )
    _refuse_none(candidates, runtimes, out)
    lanes = sorted(runtimes, key=lambda r: r.name != REFERENCE_TARGET)
    try:
        done = in_lanes(lanes, lambda rt: _lane(rt, infos, ref, say))
    finally:
        close_all(runtimes)
    rows, skipped, failures = tv.rows_and_gates(task_ref, folded, infos, done, lanes, config)
    skipped = [Skipped(candidate=c, target=t, reason=r) for c, t, r in skipped]
    failures += _run_failures(infos, rows, skipped)
    record = _record(config, ref, rows, skipped, failures, candidates, t0)
    record.update(tasks=[ref.task], reference={**record["reference"], **tv.described(task_ref)})
    inputs = {files.MODEL: artifacts.sha256_file(ref_path), "data": ref.fingerprint}
    paths = _write_reports(out, record, {**inputs, **record["models"]})
    return _result(rows, skipped, None, len(ref.y), failures, paths, t0)


def _folded_outputs(model, ref: Reference):
    """(folded.keras's float outputs on the test inputs, the seconds they took)."""
    from pipeline.data.dataset import model_input_shape, shaped

    t1 = time.perf_counter()
    return predict(model, shaped(ref.x, model_input_shape(model))), time.perf_counter() - t1


def _refuse_none(candidates: list[Path], runtimes, out: Path) -> None:
    """No .tflite to verify: a verdict on folded.keras alone would call nothing deployable fit
    to ship. The runtimes' children are stopped first."""
    from pipeline.runtimes.registry import close_all

    if not candidates:
        close_all(runtimes)
        raise ArtifactError(
            f"no .tflite file to verify in {out}; run `bnpipe export` first or pass --tflite"
        )


def _prepare(candidates: list[Path], config: VerifyConfig):
    """(infos, runtimes, unavailable targets): every file checked structurally before any
    interpreter sees one, the targets resolved and their child processes started."""
    from pipeline.runtimes.host import checked_tflite
    from pipeline.runtimes.registry import parse_targets, resolve, start_all

    infos = {p: check_io(checked_tflite(p)) for p in candidates}
    explicit = config.targets is not None
    runtimes, unavailable = resolve(
        parse_targets(",".join(config.targets) if explicit else None), explicit
    )
    # Every model runs in the runtimes' child processes (a crash there is exit 2, never this
    # process's); started now, they start up while the reference model loads and predicts.
    start_all(runtimes)
    return infos, runtimes, unavailable


def _reference(ref_path: Path, out: Path, data: str | None, config: VerifyConfig, say) -> Reference:
    """The test split (the one training held out, or `data`'s) and the original's predictions."""
    from pipeline.analysis.tasks import model_tasks, only_task
    from pipeline.core.tfenv import muted_stderr
    from pipeline.data.dataset import model_input_shape, recorded_dataset, shaped
    from pipeline.models.door import load_reference

    model = load_reference(ref_path)  # in the Keras that saved it
    ds, preprocessing = recorded_dataset([out], data, model)
    x, y, codes = ds.x_test, ds.y_test, ds.x_test_codes
    if config.max_samples:
        x, y = x[: config.max_samples], y[: config.max_samples]
        codes = None if codes is None else codes[: config.max_samples]
    say(f"reference: {files.MODEL} on TensorFlow (host)")
    task = only_task(model_tasks(model, ds, config.tasks))
    if task.task != CLASSIFICATION:
        say(f"task: {task.describe()}")
    with muted_stderr():
        raw = predict(model, shaped(x, model_input_shape(model)))
    pred = raw.reshape(len(raw), -1).argmax(axis=1)
    values = None if codes is None else ds.preprocessing.code_values()
    return Reference(
        x=x,
        y=y,
        pred=pred,
        n_classes=int(model.outputs[0].shape[-1]),
        inputs=ModelInputs(x, codes, values),
        dataset=ds.summary(),
        preprocessing=preprocessing,
        fingerprint=ds.fingerprint(),
        task=task,
        raw=raw,
        input_shape=tuple(model_input_shape(model)),
    )


def _check_fit(infos: dict, ref: Reference) -> str:
    """Every candidate takes the data's samples (reshaped to its input shape), gives the
    reference's classes, and was exported for the data's scaling: DataError / ModelError naming
    the file otherwise. Returns the output's task."""
    for p, info in infos.items():
        _fits(p.name, tuple(info.input_tensor().shape[1:]), info.output_tensor().shape[-1], ref)
        shape = tuple(int(d) for d in info.input_tensor().shape[1:])
        if ref.input_shape is not None and shape != ref.input_shape:
            raise ModelError(  # another model's file: a mismatch, not a failed gate
                f"{p.name} takes input shape {shape} but the reference model takes "
                f"{ref.input_shape}; it was exported from another model"
            )
        pre = info.metadata.get("preprocessing")
        divisor = ref.preprocessing["divisor"]
        if pre and abs(float(pre.get("divisor", 0)) - divisor) > 0:
            raise DataError(
                f"{p.name} was exported for inputs divided by {pre['divisor']} but the "
                f"data is divided by {divisor}"
            )
    return ref.task.task


def _fits(name: str, input_shape: tuple, classes: int, ref: Reference, hint: str = "") -> None:
    features = int(np.prod(input_shape, dtype=np.int64))
    if features != ref.x.shape[1]:
        raise DataError(
            f"{name} takes input shape {tuple(input_shape)} ({features} values) but the data "
            f"has {ref.x.shape[1]} features per sample{hint}"
        )
    if classes != ref.n_classes:
        raise ModelError(
            f"{name} outputs {classes} classes but the reference model outputs "
            f"{ref.n_classes}{hint}"
        )


def _folded_model(folded_path: Path, ref: Reference):
    """folded.keras, in the Keras it was saved in (as its user runs it), if it takes the data
    and gives the reference's classes: ModelError / DataError naming it otherwise (it is not
    the fold of this model)."""
    from pipeline.data.dataset import model_input_shape
    from pipeline.models.door import load_reference

    model = load_reference(folded_path)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(
            f"{folded_path} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
            "the fold of a classifier has one of each"
        )
    hint = f"; fold {files.MODEL} again (bnpipe fold)"
    _fits(str(folded_path), model_input_shape(model), int(model.outputs[0].shape[-1]), ref, hint)
    return model


def _folded_row(model, ref: Reference, say) -> Row:
    from pipeline.data.dataset import model_input_shape, shaped

    say(f"{files.FOLDED} on TensorFlow (host)")
    t1 = time.perf_counter()
    x = shaped(ref.x, model_input_shape(model))
    pred = classify(model, x)
    return _row(files.FOLDED, "tensorflow", pred, ref, time.perf_counter() - t1, {})


def _run_everywhere(infos: dict, runtimes, ref: Reference, config: VerifyConfig, say):
    """Every candidate on every runtime: (rows, skipped) in the order of one runtime after the
    other, host-ref first for each candidate (the others' outputs are measured against it).

    The runtimes work at once, one thread each taking the candidates in turn: each runs in its
    own child process, and the emulator's lane (arm64: float32 kernels are slow under qemu)
    would otherwise add up with the rest. A ModelError on one candidate skips that pair; any
    other failure, and Ctrl-C, kills every runtime's child and passes through."""
    for info in infos.values():  # the inputs each file takes, made here, not in two lanes at once
        ref.inputs.for_tensor(quant_params(info.input_tensor()))
    lanes = sorted(runtimes, key=lambda r: r.name != REFERENCE_TARGET)
    done = in_lanes(lanes, lambda rt: _lane(rt, infos, ref, say))
    rows: list[Row] = []
    skipped: list[Skipped] = []
    for path, info in infos.items():
        raw_ref = None
        for rt in lanes:
            res = done[rt.name][path]
            if isinstance(res, ModelError):
                skipped.append(
                    Skipped(candidate=path.name, target=rt.name, reason=f"failed: {res}")
                )
                continue
            row, raw = score(rt.name, path, info, ref, res, raw_ref, config)
            if rt.name == REFERENCE_TARGET:
                raw_ref = raw
            rows.append(row)
    return rows, skipped


def _lane(rt, infos: dict, ref: Reference, say) -> dict:
    """{path: RunResult, or the ModelError it failed with} for every candidate on one runtime."""
    results: dict = {}
    for path, info in infos.items():
        say(f"{path.name} on {rt.name}")
        try:
            results[path] = run_on(rt, path, info, ref)
        except ModelError as exc:
            results[path] = exc
    return results


def _record(config, ref: Reference, rows, skipped, failures, candidates, t0) -> dict:
    return {
        "stage": "verify",
        "machine": artifacts.machine_info(),
        "config": dataclasses.asdict(config),
        "passed": not failures,
        "failures": failures,
        "reference": {
            "model": files.MODEL,
            "runtime": "tensorflow (host)",
            "accuracy": ref.accuracy,
        },
        "n": len(ref.y),
        "dataset": ref.dataset,
        "preprocessing": ref.preprocessing,
        "rows": rows,
        "skipped": skipped,
        "models": {p.name: artifacts.sha256_file(p) for p in candidates},
        "timings": {"total_s": time.perf_counter() - t0},
    }


def _write_reports(out: Path, record: dict, inputs: dict) -> tuple[Path, Path, list[Path]]:
    from pipeline.report.markdown import verify_markdown, verify_plots

    artifacts.ensure_dir(out)
    with artifacts.transaction():  # the reports land together, gate or no gate
        plots = verify_plots(record, out)
        record_path = artifacts.write_json(out / files.VERIFY_RECORD, record, inputs=inputs)
        report_path = artifacts.write_text(
            out / files.VERIFY_REPORT, verify_markdown(record, plots)
        )
    return record_path, report_path, plots


def _row(
    candidate: str, target: str, pred: np.ndarray, ref: Reference, seconds: float, info: dict
) -> Row:
    c = compare(pred, ref.pred, ref.y)
    dis = np.bincount(ref.pred[pred != ref.pred], minlength=ref.n_classes)
    return Row(
        candidate=candidate,
        target=target,
        n=c.n,
        accuracy=c.accuracy,
        accuracy_ci=c.accuracy_ci,
        diff_pp=c.diff_pp,
        diff_ci_pp=c.diff_ci_pp,
        mcnemar_p=c.mcnemar_p,
        agreement=c.agreement,
        only_candidate_right=c.only_candidate_right,
        only_reference_right=c.only_reference_right,
        seconds=float(seconds),
        info=info,
        disagreement_by_class=[int(v) for v in dis],
    )


def _run_failures(infos: dict, rows: list[Row], skipped: list[Skipped]) -> list[str]:
    """A candidate that ran on no target proves nothing, and an integer model (what goes to a
    phone or a microcontroller) that fails on an available target is not fit to ship there.
    A float or hybrid model that a target does not support (TFLM and float16) is only reported."""
    failures = []
    ran = {r.candidate for r in rows}
    for p, info in infos.items():
        failed = [s for s in skipped if s.candidate == p.name and s.reason.startswith("failed:")]
        if p.name not in ran:
            why = "; ".join(f"{s.target}: {s.reason}" for s in failed) or "no target was available"
            failures.append(f"{p.name} ran on no target ({why})")
        elif _integer(quant_params(info.input_tensor())) and _integer(
            quant_params(info.output_tensor())
        ):
            failures.extend(f"{p.name} on {s.target}: {s.reason}" for s in failed)
    return failures


def _apply_gates(rows: list[Row], config: VerifyConfig) -> list[str]:
    """Every failing row × gate, each as one readable clause (all of them, not only the first)."""
    failures = []
    for r in rows:
        where = f"{r.candidate} on {r.target}"
        if -r.diff_pp > config.max_drop:
            r.failures.append("max-drop")
            failures.append(
                f"{where}: accuracy {-r.diff_pp:.2f} pp below the original "
                f"(allowed {config.max_drop:g})"
            )
        if r.agreement < config.min_agreement:
            r.failures.append("min-agreement")
            failures.append(
                f"{where}: agrees with the original on {r.agreement:.2%} "
                f"(required {config.min_agreement:.2%})"
            )
        if r.lsb_gated and r.lsb_max is not None and r.lsb_max > (r.lsb_allowed or config.max_lsb):
            r.failures.append("max-lsb")
            failures.append(
                f"{where}: outputs differ from {REFERENCE_TARGET} by {r.lsb_max} "
                f"quantization steps (allowed {r.lsb_allowed or config.max_lsb})"
            )
    return failures
