"""The table of stages: what each one is configured by, reads, writes and calls.

    train ─▶ fold ─▶ export ─▶ verify ─▶ bench ─▶ fit ─▶ report

The CLI's stage commands and `bnpipe run` both go through `execute`, so a stage is checked,
run and recorded the same way whichever asked for it (lineage.recorded_stage). A `Request`
carries what a command line adds to a stage's config: explicit input files, progress output.
Stage modules are imported when their stage runs, so the table costs nothing at start-up.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.store import files
from pipeline.store.artifacts import require_file
from pipeline.store.lineage import current_inputs, recorded_stage
from pipeline.store.lock import writer_lock


def _silent(message: str) -> None:
    pass


@dataclass(frozen=True)
class Request:
    """What a stage is asked for besides its config (the same shape for every stage).

    Explicit inputs (`model`, `data`, `tflite`) are taken as the user asked: no lineage is
    checked for them, and the stage's outputs then have no manifest entry (`bnpipe run` reruns
    it). Stages ignore the fields that do not concern them.
    """

    out: Path  # the artifacts dir
    model: Path | None = None  # fold, export: the .keras model to read
    data: str | None = None  # fold, export, verify: the data set (train's is in its config)
    tflite: tuple[Path, ...] = ()  # verify, bench, fit: the .tflite files to read
    resume: bool | str = False  # train: True (--resume), False, or "auto" (bnpipe run)
    quiet: bool = False
    wait: bool = False  # another process writing `out`: wait for it (else ArtifactError)
    say: Callable[[str], None] = field(default=_silent)  # progress lines, for a person
    tick: Callable[..., None] | None = None  # bench: progress-bar steps (label, n)

    @property
    def explicit(self) -> bool:
        return self.model is not None or self.data is not None or bool(self.tflite)


@dataclass(frozen=True)
class Stage:
    name: str
    call: str  # "module:function" taking (config, request), imported when the stage runs
    writes_here: Callable[[Any], bool] = lambda config: True  # False: no files, no record

    def reads(self, out: Path) -> list[str]:
        """Default inputs whose sha256 the manifest records (those that exist: verify and
        bench run without folded.keras or model.keras)."""
        return files.stage_reads(self.name, out)

    def outputs(self, config: Any, out: Path) -> list[str]:
        """The files the stage wrote (called before its transaction commits): export's are the
        ones its record names (with --mode auto only the run knows which), read from where the
        record is pending."""
        if self.name == "export":
            from pipeline.store.artifacts import current, read_json

            record = read_json(current(out / files.EXPORT_RECORD))
            return [*record.get("written", []), files.EXPORT_RECORD]
        return files.stage_outputs(self.name, getattr(config, "modes", ()))

    def extra_inputs(self, config: Any, out: Path) -> dict[str, str]:
        """Inputs that are not artifacts: the data source train reads, and the model it imports
        (`run --model`) as its file's sha256; for report, the records it draws (unchecked)."""
        if self.name == "report":
            from pipeline.report.html import record_digests

            return record_digests(out)
        if self.name != "train":
            return {}
        from pipeline.data.fingerprint import source_fingerprint

        inputs = {"data": source_fingerprint(config.data, config.test_data)}
        if config.model is not None:
            from pipeline.core.errors import BnpipeError
            from pipeline.core.safeio import regular_file
            from pipeline.store.artifacts import sha256_file

            try:  # a path that is no model file is refused, with its reason, when train runs
                inputs["model"] = sha256_file(regular_file(config.model, "model file"))
            except BnpipeError:
                inputs["model"] = "unreadable"
        return inputs

    def inputs(self, config: Any, out: Path) -> dict[str, str]:
        """Everything the stage's manifest entry records as read (checked: ArtifactError)."""
        return current_inputs(out, self.reads(out), self.extra_inputs(config, out))

    def function(self) -> Callable[[Any, Request], Any]:
        module, name = self.call.split(":")
        return getattr(importlib.import_module(module), name)


def _chief_or_alone(config: Any) -> bool:
    """Only the chief of a multi-worker training writes artifacts (the others train along)."""
    if config.strategy != "multi-worker":
        return True
    from pipeline.training.cluster import current_cluster

    return current_cluster().is_chief


STAGES: dict[str, Stage] = {
    "train": Stage("train", "pipeline.run.table:_train", writes_here=_chief_or_alone),
    "fold": Stage("fold", "pipeline.run.table:_fold"),
    "export": Stage("export", "pipeline.run.table:_export"),
    "verify": Stage("verify", "pipeline.run.table:_verify"),
    "bench": Stage("bench", "pipeline.run.table:_bench"),
    "fit": Stage("fit", "pipeline.run.table:_fit"),
    "report": Stage("report", "pipeline.run.table:_report"),
}
assert tuple(STAGES) == files.STAGES


def execute(name: str, config: Any, request: Request) -> Any:
    """Run stage `name` as one transaction with its manifest entry; return its result.

    The artifacts dir is locked for the stage (lock.writer_lock: ArtifactError if another process
    writes it, unless request.wait). Its default inputs must still be what the manifest says
    (ArtifactError otherwise); explicit ones are taken as given. GateFailed (verify) is raised
    after its reports have landed.
    """
    stage = STAGES[name]
    if not stage.writes_here(config):
        return stage.function()(config, request)
    with writer_lock(request.out, wait=request.wait, say=request.say):
        reads = None if request.explicit else stage.reads(request.out)
        with recorded_stage(
            request.out,
            name,
            config,
            lambda: stage.outputs(config, request.out),
            reads=reads,
            extra_inputs=stage.extra_inputs(config, request.out),
        ):
            return stage.function()(config, request)


# --- each stage's library call, from a Request -------------------------------------------------


def _train(config, request: Request):
    from pipeline.stages.train import train

    if not _chief_or_alone(config):  # a worker trains in lockstep; the chief alone writes
        import tempfile

        with tempfile.TemporaryDirectory(prefix="bnpipe-worker-") as scratch:
            return train(
                config, Path(scratch), quiet=request.quiet, resume=request.resume, say=request.say
            )
    return train(config, request.out, quiet=request.quiet, resume=request.resume, say=request.say)


def _fold(config, request: Request):
    from pipeline.stages.fold import run_fold

    model = request.model or require_file(
        request.out / files.MODEL, "model", "run `bnpipe train` first or pass --model"
    )
    return run_fold(model, request.out, data=request.data, config=config, warn=request.say)


def _export(config, request: Request):
    from pipeline.stages.export import run_export

    model = request.model or require_file(
        request.out / files.FOLDED, "folded model", "run `bnpipe fold` first or pass --model"
    )
    progress = None if request.quiet else request.say
    return run_export(model, request.out, config=config, data=request.data, progress=progress)


def _verify(config, request: Request):
    from pipeline.stages.verify import run_verify

    return run_verify(
        request.out,
        config=config,
        tflite=list(request.tflite) or None,
        data=request.data,
        progress=None if request.quiet else request.say,
    )


def _bench(config, request: Request):
    from pipeline.stages.bench import run_bench

    return run_bench(
        request.out, config=config, tflite=list(request.tflite) or None, progress=request.tick
    )


def _fit(config, request: Request):
    from pipeline.stages.fit import run_fit

    return run_fit(request.out, config=config, tflite=list(request.tflite) or None, say=request.say)


def _report(config, request: Request):
    from pipeline.stages.report import run_report

    return run_report(request.out, config)
