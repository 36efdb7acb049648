"""verify's rows for an output that is not a classifier's: every candidate on every target measured
by its task (taskmetrics) against the original's outputs and the data, and held to the task's
gates. verify runs the candidates; this turns their float outputs into rows and verdicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.analysis import taskmetrics
from pipeline.analysis.tasks import RECONSTRUCTION, REGRESSION, anomaly_labels


@dataclass
class TaskRow:
    candidate: str
    target: str
    n: int
    output: str  # the Keras output's name (the signature's key)
    task: str
    sqnr_db: float | None  # against the original's outputs (None: equal to them)
    max_steps: float | None  # largest |error| vs the original, in output quantization steps
    mae: list[float] | None = None  # regression, per target column
    rmse: list[float] | None = None
    r2: list[float] | None = None
    rmse_increase: list[float] | None = None  # relative to the original's RMSE
    auc: float | None = None  # reconstruction with 0/1 anomaly labels
    auc_ci: tuple[float, float] | None = None
    score_correlation: float | None = None  # the anomaly score's with the original's
    summary: str = ""  # what `bnpipe run` prints for the row
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # the gates' names
    accuracy: None = None  # a classifier's rows have one; these do not


@dataclass
class TaskReference:
    """The original's outputs and measures, and what the data says, for one output."""

    output: str
    task: str
    x: np.ndarray  # (N, features) preprocessed inputs
    y: np.ndarray  # targets (regression) or labels
    out: np.ndarray  # (N, values) the original's float outputs
    anomaly: np.ndarray | None  # 0/1 marks (reconstruction), None when the data has none
    measures: taskmetrics.Measures


def task_reference(output: str, task: str, x, y, out) -> TaskReference:
    out = np.asarray(out, np.float32).reshape(len(x), -1)
    anomaly = anomaly_labels(y) if task == RECONSTRUCTION else None
    m = taskmetrics.measure(task, out, out, x, y, anomaly, None)
    return TaskReference(output, task, x, y, out, anomaly, m)


def reference_summary(ref: TaskReference) -> str:
    return _summary(ref.task, ref.measures, None)


def task_row(candidate: str, target: str, ref: TaskReference, out, scale, seconds, info):
    """The row of one candidate's float outputs on one target, before the gates."""
    out = np.asarray(out, np.float32).reshape(len(ref.x), -1)
    m = taskmetrics.measure(
        ref.task, out, ref.out, ref.x, ref.y, ref.anomaly, scale, ref_measures=ref.measures
    )
    sqnr = taskmetrics.recorded(m.sqnr_db)  # None: equal to the original's outputs
    row = TaskRow(candidate, target, len(ref.x), ref.output, ref.task, sqnr, m.max_steps)
    if m.regression is not None:
        row.mae, row.rmse, row.r2 = m.regression.mae, m.regression.rmse, m.regression.r2
        row.rmse_increase = m.rmse_increase
    if m.auc is not None:
        row.auc, row.auc_ci = m.auc.auc, m.auc.ci
    row.score_correlation = m.score_correlation
    row.summary = _summary(ref.task, m, m.sqnr_db)
    row.seconds, row.info = float(seconds), dict(info)
    row.measures = m  # kept for the gates, not recorded (see gate)
    return row


def gate(rows: list, ref: TaskReference, gates: taskmetrics.TaskGates) -> list[str]:
    """Every failing row × gate, each one readable clause; the rows' failures are filled in."""
    failures = []
    for r in rows:
        m = r.__dict__.pop("measures", None)
        if m is None:
            continue
        for name, clause in taskmetrics.failures(ref.task, m, ref.measures, gates):
            r.failures.append(name)
            failures.append(f"{r.candidate} on {r.target} ({r.output}): {clause}")
    return failures


def _summary(task: str, m: taskmetrics.Measures, sqnr: float | None) -> str:
    parts = []
    if task == REGRESSION and m.regression is not None:
        parts.append("RMSE " + ", ".join(f"{v:.4g}" for v in m.regression.rmse))
    if task == RECONSTRUCTION and m.auc is not None:
        parts.append(f"AUC {m.auc.auc:.4f}")
    if sqnr is not None:
        parts.append("SQNR " + ("∞" if math.isinf(sqnr) else f"{sqnr:.1f}") + " dB")
    return ", ".join(parts) or task


def rows_and_gates(ref: TaskReference, folded, infos: dict, done: dict, lanes: list, config):
    """(rows, skipped [(candidate, target, reason)], failures) of every candidate: folded.keras
    on TensorFlow (`folded`: (outputs, seconds) or None) and each file on each lane (`done`:
    {target: {path: RunResult or the ModelError it failed with}}). Each file's output is found
    by the Keras output's name in its signature (tflite/signature.py), never by position."""
    from pipeline.core.errors import ModelError
    from pipeline.core.quantize import from_output
    from pipeline.tflite.file import quant_params
    from pipeline.tflite.signature import output_positions

    rows, skipped = [], []
    if folded is not None:
        rows.append(task_row("folded.keras", "tensorflow", ref, folded[0], None, folded[1], {}))
    for path, info in infos.items():
        output_positions(info, [ref.output])  # ModelError when the file names no such output
        tensor = quant_params(info.output_tensor())
        for rt in lanes:
            res = done[rt.name][path]
            if isinstance(res, ModelError):
                skipped.append((path.name, rt.name, f"failed: {res}"))
                continue
            out = from_output(res.outputs, tensor)
            rows.append(
                task_row(
                    path.name, rt.name, ref, out, tensor["scale"], res.invoke_seconds, res.info
                )
            )
    gates = taskmetrics.TaskGates(config.max_rmse_increase, config.max_auc_drop, config.min_sqnr_db)
    return rows, skipped, gate(rows, ref, gates)


def described(ref: TaskReference) -> dict:
    """What verify.json's "reference" adds for the output: its task, and its own measures."""
    m = ref.measures
    extra: dict[str, Any] = {"output": ref.output, "task": ref.task}
    if m.regression is not None:
        extra.update(mae=m.regression.mae, rmse=m.regression.rmse, r2=m.regression.r2)
    if m.auc is not None:
        extra.update(auc=m.auc.auc, auc_ci=m.auc.ci, anomalies=m.auc.positives)
    extra["summary"] = reference_summary(ref)
    return extra
