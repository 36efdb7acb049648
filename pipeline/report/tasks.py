"""verify.md for an output that is not a classifier's (analysis/tasks.py): the verdict, the
output's task and why, the original's own measures, the gates, and one row per candidate × target
with SQNR, the largest error in output steps and the task's measures.
"""

from __future__ import annotations

import math

from pipeline.store.artifacts import jsonable


def task_markdown(record: dict, md_table) -> str:
    """verify.md of a task record; `md_table` is markdown.md_table (markdown calls this)."""
    rec = jsonable(record)
    verdict = "PASS — fit to ship" if rec["passed"] else "FAIL — not fit to ship"
    ref, cfg = rec["reference"], rec["config"]
    lines = [f"# bnpipe verify: **{verdict}**", ""]
    if rec["failures"]:
        lines += ["Failed gates:", ""] + [f"- {f}" for f in rec["failures"]] + [""]
    for t in rec.get("tasks", []):
        lines.append(f"Output `{t['output']}`: task **{t['task']}** ({t['why']}).")
    lines += [
        "",
        f"Reference: `model.keras` (float, with BN) on TensorFlow, host CPU — {ref['summary']} "
        f"on {rec['n']} test samples of {rec['dataset']['name']}.",
        f"Gates: regression RMSE increase ≤ {cfg['max_rmse_increase']:.2%} on every target; "
        f"reconstruction AUC drop ≤ {cfg['max_auc_drop']:g}; reconstruction and output SQNR ≥ "
        f"{cfg['min_sqnr_db']:g} dB against the original.",
        "",
        _table(rec["rows"], md_table),
    ]
    if rec.get("skipped"):
        lines += ["", "Not run:", ""]
        lines += [f"- {s['candidate']} on {s['target']}: {s['reason']}" for s in rec["skipped"]]
    return "\n".join(lines) + "\n"


def _table(rows: list[dict], md_table) -> str:
    body = []
    for r in rows:
        extra = []
        if r.get("rmse") is not None:
            extra.append("RMSE " + ", ".join(f"{v:.4g}" for v in r["rmse"]))
            extra.append("MAE " + ", ".join(f"{v:.4g}" for v in r["mae"]))
            extra.append("R² " + ", ".join(f"{v:.4f}" for v in r["r2"]))
            if r.get("rmse_increase"):
                extra.append("RMSE change " + ", ".join(f"{v:+.2%}" for v in r["rmse_increase"]))
        if r.get("auc") is not None:
            lo, hi = r["auc_ci"]
            extra.append(f"AUC {r['auc']:.4f} [{lo:.4f}, {hi:.4f}]")
        if r.get("score_correlation") is not None:
            extra.append(f"score r {r['score_correlation']:.4f}")
        body.append(
            [
                r["candidate"],
                r["target"],
                r["output"],
                _db(r["sqnr_db"]),
                "—" if r.get("max_steps") is None else f"{r['max_steps']:.1f}",
                "; ".join(extra) or "—",
                ", ".join(r["failures"]) or "pass",
            ]
        )
    headers = ["candidate", "target", "output", "SQNR", "max error (steps)", "measures", "gates"]
    return md_table(headers, body, "lllrrll")


def _db(v) -> str:
    if v is None or (isinstance(v, float) and math.isinf(v)) or v == "Infinity":
        return "∞"
    return f"{float(v):.1f} dB"
