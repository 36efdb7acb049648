"""The tasks other than classification where a stage scores one model quickly: the one line an
imported model's test split gets, a file's float outputs on LiteRT's reference kernels, and the
trial `export --mode auto` ranks a mode by (its task's own measure, not top-1 agreement).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.analysis import taskmetrics
from pipeline.analysis.tasks import CLASSIFICATION, RECONSTRUCTION, REGRESSION, anomaly_labels


def summary(task: str, out: np.ndarray, x: np.ndarray, y: np.ndarray) -> str:
    """One line on the original's float outputs `out` for the test split (x, y)."""
    if task == REGRESSION:
        r = taskmetrics.regression(out, y)
        return (
            f"RMSE {', '.join(f'{v:.4g}' for v in r.rmse)}, R² "
            f"{', '.join(f'{v:.4f}' for v in r.r2)} on {len(y)} test samples"
        )
    if task == RECONSTRUCTION:
        score = taskmetrics.anomaly_score(out, x)
        line = f"mean reconstruction error {score.mean():.4g} on {len(x)} test samples"
        marks = anomaly_labels(y)
        if marks is not None:
            auc = taskmetrics.auc_delong(score, marks)
            line += f", anomaly AUC {auc.auc:.4f} [{auc.ci[0]:.4f}, {auc.ci[1]:.4f}]"
        return line
    return f"outputs {tuple(out.shape[1:])} on {len(x)} test samples (judged against itself)"


def tflite_outputs(blob: bytes, x: np.ndarray, info) -> np.ndarray:
    """The file's float outputs (dequantized) on x (preprocessed floats), LiteRT's reference
    kernels in their child process."""
    import tempfile

    from pipeline.core.quantize import from_output, to_input
    from pipeline.runtimes.host import shared_runtime
    from pipeline.tflite.file import quant_params

    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(blob)
        f.flush()
        rt = shared_runtime(reference=True)
        xin = to_input(x, quant_params(info.input_tensor()))
        raw = rt.run(f.name, xin.reshape((len(x), *info.input_tensor().shape[1:]))).outputs
    return from_output(raw, quant_params(info.output_tensor())).reshape(len(x), -1)


@dataclass
class AutoTrial:
    passed: bool
    measure: float | None  # worst RMSE increase (regression), else SQNR in dB (None: ∞)
    reason: str


def auto_trial(task: str, out, ref_out, targets, gates: taskmetrics.TaskGates) -> AutoTrial:
    """A mode's trial on the validation split against the original's outputs `ref_out`:
    regression by every target's RMSE increase, the other tasks by output SQNR (validation data
    holds no anomaly labels: training data has no anomalies)."""
    assert task != CLASSIFICATION
    sqnr = taskmetrics.sqnr_db(ref_out, out)
    if task == REGRESSION:
        ref = taskmetrics.regression(ref_out, targets)
        cand = taskmetrics.regression(out, targets)
        worst = max(c / r - 1.0 if r > 0 else 0.0 for c, r in zip(cand.rmse, ref.rmse, strict=True))
        passed = worst <= gates.max_rmse_increase
        reason = (
            f"RMSE up {worst:.2%} at worst (allowed {gates.max_rmse_increase:.2%}), SQNR "
            f"{sqnr:.1f} dB on {len(out)} validation samples"
        )
        return AutoTrial(passed, worst, reason)
    passed = sqnr >= gates.min_sqnr_db
    reason = f"output SQNR {sqnr:.1f} dB (required {gates.min_sqnr_db:g}) on {len(out)} samples"
    return AutoTrial(passed, taskmetrics.recorded(sqnr), reason)
