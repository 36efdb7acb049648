"""`bnpipe run`: train → fold → export → verify → bench (→ fit, when [fit] boards names some)
→ report, skipping what is already up to date.

Each stage's inputs (sha256 of the files it reads, or the data source's fingerprint),
parameters and outputs are recorded in manifest.json; a stage reruns only when one of them
changed (or with `force`). The stages run through the same table and transaction as the single
stage commands (stages.execute). The exit code is 0 when every gate holds (verify's, and fit's
when it runs), 1 when a gate failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.config import RunConfig
from pipeline.core.errors import BnpipeError, GateFailed
from pipeline.run.table import STAGES, Request, execute
from pipeline.runtimes.registry import check_name
from pipeline.store import artifacts, files
from pipeline.store.lock import writer_lock
from pipeline.store.manifest import Manifest


@dataclass(kw_only=True)
class StageOutcome:
    stage: str
    ran: bool
    seconds: float
    note: str = ""


@dataclass(kw_only=True)
class RunResult:
    stages: list[StageOutcome]
    exit_code: int
    summary: str
    failures: list[str] = field(default_factory=list)


def run_all(
    out: Path,
    config: RunConfig = RunConfig(),
    *,
    force: bool = False,
    say: Callable[[str], None] = print,
    quiet: bool = True,
    wait: bool = False,
) -> RunResult:
    """Every stage in turn, each skipped when up to date, each committed as a whole: Ctrl-C
    keeps the stages that finished and drops the one that was running. The artifacts dir is
    locked for the whole run (`wait`: see lock.writer_lock), so no other writer slips in
    between two stages."""
    with writer_lock(out, wait=wait, say=say):
        return _run_locked(out, config, force, say, quiet)


def _run_locked(
    out: Path, config: RunConfig, force: bool, say: Callable[[str], None], quiet: bool
) -> RunResult:
    if not force:
        Manifest(out).check_outputs()  # a file a stage wrote and someone changed since: refuse
    for target in (*(config.verify.targets or ()), *config.bench.targets):
        check_name(target)  # a typo in [verify] or [bench] is refused before train runs
    if config.fit.boards:
        from pipeline.fit.boards import resolve

        resolve(config.fit.boards, config.fit.profiles)  # so is an unknown board
    # resume="auto": a run interrupted in training continues from its last epoch (same weights).
    request = Request(out=out, resume="auto", quiet=quiet, say=say)
    outcomes: list[StageOutcome] = []
    failures: list[str] = []
    fit_failed = False
    for name, stage in STAGES.items():
        stage_config = getattr(config, name)
        if name == "fit" and not stage_config.boards:
            continue  # no board to fit: the run ends with bench
        inputs = stage.inputs(stage_config, out)
        why = "--force" if force else Manifest(out).why_stale(name, inputs, stage_config)
        if why is None:
            outcomes.append(StageOutcome(stage=name, ran=False, seconds=0.0, note="up to date"))
            say(f"{name}: up to date, skipped")
            continue
        _refuse_multi_worker(name, stage_config)
        imported = name == "train" and getattr(stage_config, "model", None)
        say(f"{'import' if imported else name}: running ({why})")  # --model: nothing is trained
        t0 = time.time()
        try:
            execute(name, stage_config, request)
            note = "passed" if name == "verify" else ""
        except GateFailed as exc:  # the reports landed; bench still runs
            failures.extend(exc.failures)
            fit_failed = fit_failed or name == "fit"
            note = "gate failed"
        outcomes.append(StageOutcome(stage=name, ran=True, seconds=time.time() - t0, note=note))
    record = artifacts.read_json(out / files.VERIFY_RECORD)
    failures = failures or record.get("failures", [])
    code = 0 if record.get("passed") and not fit_failed else 1
    summary = summarize(out, outcomes)
    if config.fit.boards:
        from pipeline.fit.report import fit_table

        summary += "\nwill it fit (fit.md):\n" + fit_table(
            artifacts.read_json(out / files.FIT_RECORD)
        )
    return RunResult(stages=outcomes, exit_code=code, summary=summary, failures=failures)


def _refuse_multi_worker(name: str, config) -> None:
    """One `run` cannot start the other workers; it takes the training they did together."""
    if name == "train" and config.strategy == "multi-worker":
        raise BnpipeError(
            "[train] strategy is multi-worker but this artifacts dir holds no training with "
            "these options; run `bnpipe train --strategy multi-worker` (same options) on every "
            "worker first, then `bnpipe run` on the chief's artifacts dir"
        )


def summarize(out: Path, outcomes: list[StageOutcome]) -> str:
    """One table: accuracy per model and target, size, latency and throughput ratios, verdict."""
    from pipeline.report.markdown import md_table

    v = artifacts.read_json(out / files.VERIFY_RECORD)
    bench_path = out / files.BENCH_RECORD
    b = artifacts.read_json(bench_path) if bench_path.is_file() else {"rows": [], "models": {}}
    models = b.get("models", {})
    lat = {r["model"]: r for r in b["rows"] if r.get("threads") == 1 and r["batch"] == 1}
    bmax = max((r["batch"] for r in b["rows"]), default=1)
    tmax = max(b.get("threads_used", [1]))
    thr = {r["model"]: r for r in b["rows"] if r["batch"] == bmax and r.get("threads") == tmax}
    by_model: dict[str, list[str]] = {}
    for r in v["rows"]:
        mark = "" if not r["failures"] else "✗"
        score = f"{100 * r['accuracy']:.2f}" if r.get("accuracy") is not None else r["summary"]
        by_model.setdefault(r["candidate"], []).append(f"{r['target']} {score}{mark}")
    rows = [
        [
            name,
            models.get(name, {}).get("bytes", "—"),
            _ratio(lat.get(name), "latency_ratio"),
            _ratio(thr.get(name), "throughput_ratio"),
            ", ".join(accs),
        ]
        for name, accs in by_model.items()
    ]
    verdict = "PASS: fit to ship" if v.get("passed") else "FAIL: not fit to ship"
    stages = ", ".join(
        f"{o.stage} {f'{o.seconds:.1f} s' if o.ran else 'skipped'}" for o in outcomes
    )
    headers = [
        "model",
        "bytes",
        "batch-1 latency ÷ float32",
        f"throughput ÷ float32 (batch {bmax})",
        "accuracy % per target",
    ]
    ref = v["reference"]
    said = ref.get("summary") or f"{100 * ref['accuracy']:.2f} %"
    if ref.get("summary"):
        headers[-1] = f"{ref['task']} of {ref['output']} per target"
    report = out / files.REPORT
    return (
        f"original {files.MODEL}: {said} on {v['n']} test samples\n"
        + md_table(headers, rows, "lrrrl")
        + f"\nverdict: {verdict}\nstages: {stages}\n"
    ) + (f"report: {report}\n" if report.is_file() else "")


def _ratio(row: dict | None, key: str) -> str:
    return f"{row[key]:.2f}×" if row and key in row else "—"
