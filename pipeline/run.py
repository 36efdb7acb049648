"""`bnpipe run`: train → fold → export → verify → bench, skipping what is already up to date.

Each stage's inputs (sha256 of the files it reads, or the data fingerprint), parameters and outputs
are recorded in manifest.json; a stage reruns only when one of them changed (or with `force`).
The exit code is verify's: 0 every gate holds, 1 a gate failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import artifacts
from .config import BenchConfig, ExportConfig, FoldConfig, TrainConfig, VerifyConfig
from .errors import BnpipeError, GateFailed
from .manifest import Manifest

SECTIONS = {
    "train": TrainConfig,
    "fold": FoldConfig,
    "export": ExportConfig,
    "verify": VerifyConfig,
    "bench": BenchConfig,
}


@dataclass(frozen=True)
class RunConfig:
    train: TrainConfig = TrainConfig()
    fold: FoldConfig = FoldConfig()
    export: ExportConfig = ExportConfig(modes=("all",))  # every mode, so bench can compare
    verify: VerifyConfig = VerifyConfig()
    bench: BenchConfig = BenchConfig()


def load_run_config(
    path: Path | None, overrides: dict[str, dict[str, Any]] | None = None
) -> RunConfig:
    """RunConfig from a TOML file whose tables [train], [fold], … take the options' names as keys."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: tomli is the same parser
        import tomli as tomllib

    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise BnpipeError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise BnpipeError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise BnpipeError(
            f"config file {path}: unknown table(s) {', '.join(sorted(unknown))}; "
            f"expected {', '.join(SECTIONS)}"
        )
    parts = {}
    for name, cls in SECTIONS.items():
        values = dict(getattr(RunConfig(), name).__dict__)
        section = dict(data.get(name, {}))
        section.update((overrides or {}).get(name, {}))
        keys = {f.name for f in dataclasses.fields(cls)}
        bad = set(section) - keys
        if bad:
            raise BnpipeError(
                f"[{name}] has unknown key(s) {', '.join(sorted(bad))}; "
                f"expected some of {', '.join(sorted(keys))}"
            )
        values.update({k: tuple(v) if isinstance(v, list) else v for k, v in section.items()})
        parts[name] = cls(**values)
    return RunConfig(**parts)


@dataclass
class StageOutcome:
    stage: str
    ran: bool
    seconds: float
    note: str = ""


@dataclass
class RunResult:
    stages: list[StageOutcome]
    exit_code: int
    summary: str
    failures: list[str] = field(default_factory=list)


# What each stage writes (verify and bench: with their plots) and reads from the artifacts dir.
OUTPUTS = {
    "train": ["model.keras", "train.json"],
    "fold": ["folded.keras", "fold.json"],
    "verify": ["verify.json", "verify.md", "verify_accuracy.png", "verify_disagreement.png"],
    "bench": ["bench.json", "bench.md", "bench_latency.png", "bench_throughput.png"],
}


def tflite_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("model_*.tflite"))


def stage_reads(stage: str, out: Path) -> list[str]:
    """The artifacts a stage reads by default (their sha256 are its recorded inputs)."""
    return {
        "train": [],
        "fold": ["model.keras"],
        "export": ["folded.keras"],
        "verify": ["model.keras", "folded.keras", *tflite_files(out)],
        "bench": ["model.keras", *tflite_files(out)],
    }[stage]


@contextlib.contextmanager
def recorded_stage(
    out: Path,
    stage: str,
    params: Any,
    outputs: Callable[[], list[str]],
    *,
    reads: list[str] | None,
    inputs: Callable[[], dict[str, str]] = dict,
) -> Iterator[None]:
    """Run the block as one stage: its files and its manifest entry land together, or nothing does.

    `reads`: the artifacts it reads by default; each must still be what the manifest says its
    writer wrote (ArtifactError naming the file otherwise), and their sha256 become the stage's
    recorded inputs with those of `inputs()` (called once the block is done, e.g. for a data set's
    fingerprint). `reads=None`: the user passed files or data explicitly, so nothing is checked
    and the stage's entry is dropped: its outputs have no lineage, and `bnpipe run` reruns it.
    A GateFailed from the block is raised after the commit: a failed gate's report is a result.
    """
    man = Manifest(out)
    read = None if reads is None else {f: man.check_input(f) for f in reads}
    t0 = time.time()
    gate: GateFailed | None = None

    def record():
        m = Manifest(out)  # read again: the stage may have run for minutes
        if read is None:
            if stage in m.stages:
                m.invalidate(stage)
                m.save()
        else:
            m.record(stage, {**read, **inputs()}, params, outputs(), t0)

    def forget():  # before the renames: a crash between them and record() reruns, never refuses
        m = Manifest(out)
        if stage in m.stages:
            m.invalidate(stage)
            m.save()

    with artifacts.transaction():
        try:
            yield
        except GateFailed as exc:
            gate = exc
        artifacts.before_commit(forget)
        artifacts.on_success(record)
    if gate is not None:
        raise gate


def run_all(
    out: Path,
    config: RunConfig = RunConfig(),
    *,
    force: bool = False,
    say: Callable[[str], None] = print,
    quiet: bool = True,
) -> RunResult:
    """Every stage in turn, each skipped when up to date, each committed as a whole (see
    `recorded_stage`): Ctrl-C keeps the stages that finished and drops the one that was running."""
    from .data import load_dataset

    out = artifacts.ensure_dir(out)
    if not force:
        Manifest(
            out
        ).check_outputs()  # a file a stage wrote and someone changed since: refuse, name it
    outcomes: list[StageOutcome] = []

    def stage(name, extra_inputs, params, outputs_of, body):
        man = Manifest(out)
        inputs = {**{f: man.check_input(f) for f in stage_reads(name, out)}, **extra_inputs}
        if not force and man.up_to_date(name, inputs, params):
            outcomes.append(StageOutcome(name, False, 0.0, "up to date"))
            say(f"{name}: up to date, skipped")
            return
        if name == "train" and tc.strategy == "multi-worker":
            # One `run` cannot start the other workers; it takes the training they did together.
            raise BnpipeError(
                "[train] strategy is multi-worker but this artifacts dir holds no "
                "training with these options; run `bnpipe train --strategy "
                "multi-worker` (same options) on every worker first, then `bnpipe "
                "run` on the chief's artifacts dir"
            )
        say(f"{name}: running")
        t0 = time.time()
        with recorded_stage(
            out, name, params, outputs_of, reads=stage_reads(name, out), inputs=lambda: extra_inputs
        ):
            note = body()
        outcomes.append(
            StageOutcome(name, True, time.time() - t0, note if isinstance(note, str) else "")
        )

    tc = config.train
    ds = load_dataset(
        tc.data,
        tc.test_data,
        seed=tc.seed,
        val_fraction=tc.val_fraction,
        test_fraction=tc.test_fraction,
    )
    from .train import train as do_train

    fingerprint = ds.fingerprint()
    if tc.strategy != "none" and Path(tc.data).is_dir():
        # What a distributed `bnpipe train` records: an IDX directory it streams is
        # fingerprinted from its files (the arrays are never all in memory there).
        from .distribute import open_source

        fingerprint = open_source(tc).summary()["fingerprint"]
    # resume="auto": a run interrupted in training continues from its last epoch (same weights).
    stage(
        "train",
        {"data": fingerprint},
        tc,
        lambda: OUTPUTS["train"],
        lambda: do_train(tc, out, quiet=quiet, resume="auto", say=say),
    )

    from .fold import run_fold

    stage(
        "fold",
        {},
        config.fold,
        lambda: OUTPUTS["fold"],
        lambda: run_fold(out / "model.keras", out, config=config.fold, warn=say),
    )

    from .export import run_export, tflite_name

    ec = config.export
    stage(
        "export",
        {},
        ec,
        lambda: [tflite_name(m) for m in ec.modes] + ["export.json"],
        lambda: run_export(out / "folded.keras", out, config=ec, progress=say),
    )

    from .verify import run_verify

    gate_failures: list[str] = []

    def verify_body():
        try:
            run_verify(out, config=config.verify, progress=say)
        except GateFailed as exc:
            gate_failures.extend(exc.failures)
            return "gate failed"
        return "passed"

    stage("verify", {}, config.verify, lambda: OUTPUTS["verify"], verify_body)

    from .bench import run_bench

    stage(
        "bench",
        {},
        config.bench,
        lambda: OUTPUTS["bench"],
        lambda: run_bench(out, config=config.bench),
    )

    record = artifacts.read_json(out / "verify.json")
    failures = gate_failures or record.get("failures", [])
    code = 0 if record.get("passed") else 1
    return RunResult(outcomes, code, summarize(out, outcomes), failures)


def summarize(out: Path, outcomes: list[StageOutcome]) -> str:
    """One table: accuracy per model and target, size, latency and throughput ratios, the verdict."""
    from .report import md_table

    v = artifacts.read_json(out / "verify.json")
    b = (
        artifacts.read_json(out / "bench.json")
        if (out / "bench.json").is_file()
        else {"rows": [], "models": {}}
    )
    models = b.get("models", {})
    lat = {r["model"]: r for r in b["rows"] if r.get("threads") == 1 and r["batch"] == 1}
    bmax = max((r["batch"] for r in b["rows"]), default=1)
    thr = {
        r["model"]: r
        for r in b["rows"]
        if r["batch"] == bmax and r.get("threads") == max(b.get("threads_used", [1]))
    }
    by_model: dict[str, list[str]] = {}
    for r in v["rows"]:
        mark = "" if not r["failures"] else "✗"
        by_model.setdefault(r["candidate"], []).append(
            f"{r['target']} {100 * r['accuracy']:.2f}{mark}"
        )
    rows = []
    for name, accs in by_model.items():
        m = models.get(name, {})
        rows.append(
            [
                name,
                m.get("bytes", "—"),
                f"{lat[name]['latency_ratio']:.2f}×"
                if name in lat and "latency_ratio" in lat[name]
                else "—",
                f"{thr[name]['throughput_ratio']:.2f}×"
                if name in thr and "throughput_ratio" in thr[name]
                else "—",
                ", ".join(accs),
            ]
        )
    verdict = "PASS: fit to ship" if v.get("passed") else "FAIL: not fit to ship"
    stages = ", ".join(
        f"{o.stage} {'%.1f s' % o.seconds if o.ran else 'skipped'}" for o in outcomes
    )
    text = (
        f"original model.keras: {100 * v['reference']['accuracy']:.2f} % on {v['n']} test samples\n"
        + md_table(
            [
                "model",
                "bytes",
                "batch-1 latency ÷ float32",
                f"throughput ÷ float32 (batch {bmax})",
                "accuracy % per target",
            ],
            rows,
            "lrrrl",
        )
        + f"\nverdict: {verdict}\nstages: {stages}\n"
    )
    return text
