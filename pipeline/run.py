"""`bnpipe run`: train → fold → export → verify → bench, skipping what is already up to date.

Each stage's inputs (sha256 of the files it reads, or the data fingerprint), parameters and outputs
are recorded in manifest.json; a stage reruns only when one of them changed (or with `force`).
The exit code is verify's: 0 every gate holds, 1 a gate failed.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import artifacts
from .config import BenchConfig, ExportConfig, FoldConfig, TrainConfig, VerifyConfig
from .errors import BnpipeError, GateFailed
from .manifest import Manifest

SECTIONS = {"train": TrainConfig, "fold": FoldConfig, "export": ExportConfig,
            "verify": VerifyConfig, "bench": BenchConfig}


@dataclass(frozen=True)
class RunConfig:
    train: TrainConfig = TrainConfig()
    fold: FoldConfig = FoldConfig()
    export: ExportConfig = ExportConfig(modes=("all",))  # every mode, so bench can compare
    verify: VerifyConfig = VerifyConfig()
    bench: BenchConfig = BenchConfig()


def load_run_config(path: Path | None, overrides: dict[str, dict[str, Any]] | None = None) -> RunConfig:
    """RunConfig from a TOML file whose tables [train], [fold], … take the options' names as keys."""
    import tomllib

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
        raise BnpipeError(f"config file {path}: unknown table(s) {', '.join(sorted(unknown))}; "
                          f"expected {', '.join(SECTIONS)}")
    parts = {}
    for name, cls in SECTIONS.items():
        values = dict(getattr(RunConfig(), name).__dict__)
        section = dict(data.get(name, {}))
        section.update((overrides or {}).get(name, {}))
        keys = {f.name for f in dataclasses.fields(cls)}
        bad = set(section) - keys
        if bad:
            raise BnpipeError(f"[{name}] has unknown key(s) {', '.join(sorted(bad))}; "
                              f"expected some of {', '.join(sorted(keys))}")
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


def run_all(out: Path, config: RunConfig = RunConfig(), *, force: bool = False,
            say: Callable[[str], None] = print, quiet: bool = True) -> RunResult:
    from .data import load_dataset

    out = artifacts.ensure_dir(out)
    man = Manifest(out)
    if not force:
        man.check_outputs()  # a file a stage wrote and someone changed since: refuse, name it
    outcomes: list[StageOutcome] = []

    def stage(name, inputs, params, outputs_of, body):
        if not force and man.up_to_date(name, inputs, params):
            outcomes.append(StageOutcome(name, False, 0.0, "up to date"))
            say(f"{name}: up to date, skipped")
            return
        say(f"{name}: running")
        t0 = time.time()
        man.invalidate(name)
        note = body()
        note = note if isinstance(note, str) else ""
        man.record(name, inputs, params, outputs_of(), t0)
        outcomes.append(StageOutcome(name, True, time.time() - t0, note))

    tc = config.train
    ds = load_dataset(tc.data, tc.test_data, seed=tc.seed, val_fraction=tc.val_fraction,
                      test_fraction=tc.test_fraction)
    from .train import train as do_train

    stage("train", {"data": ds.fingerprint()}, tc, lambda: ["model.keras", "train.json"],
          lambda: do_train(tc, out, quiet=quiet))

    from .fold import run_fold

    stage("fold", {"model.keras": man.check_input("model.keras")}, config.fold,
          lambda: ["folded.keras", "fold.json"],
          lambda: run_fold(out / "model.keras", out, config=config.fold, warn=say))

    from .export import run_export, tflite_name

    ec = config.export
    stage("export", {"folded.keras": man.check_input("folded.keras"), "data": ds.fingerprint()}, ec,
          lambda: [tflite_name(m) for m in ec.modes] + ["export.json"],
          lambda: run_export(out / "folded.keras", out, config=ec, progress=say))

    from .verify import run_verify

    tflites = sorted(p.name for p in out.glob("model_*.tflite"))
    v_inputs = {f: man.check_input(f) for f in ["model.keras", "folded.keras", *tflites]}
    gate_failures: list[str] = []

    def verify_body():
        try:
            run_verify(out, config=config.verify, progress=say)
        except GateFailed as exc:
            gate_failures.extend(exc.failures)
            return "gate failed"
        return "passed"

    stage("verify", v_inputs, config.verify,
          lambda: ["verify.json", "verify.md", "verify_accuracy.png", "verify_disagreement.png"], verify_body)

    from .bench import run_bench

    stage("bench", {f: v_inputs[f] for f in ["model.keras", *tflites]}, config.bench,
          lambda: ["bench.json", "bench.md", "bench_latency.png", "bench_throughput.png"],
          lambda: run_bench(out, config=config.bench))

    record = artifacts.read_json(out / "verify.json")
    failures = gate_failures or record.get("failures", [])
    code = 0 if record.get("passed") else 1
    return RunResult(outcomes, code, summarize(out, outcomes), failures)


def summarize(out: Path, outcomes: list[StageOutcome]) -> str:
    """One table: accuracy per model and target, size, latency and throughput ratios, the verdict."""
    from .report import md_table

    v = artifacts.read_json(out / "verify.json")
    b = artifacts.read_json(out / "bench.json") if (out / "bench.json").is_file() else {"rows": [], "models": {}}
    models = b.get("models", {})
    lat = {r["model"]: r for r in b["rows"] if r.get("threads") == 1 and r["batch"] == 1}
    bmax = max((r["batch"] for r in b["rows"]), default=1)
    thr = {r["model"]: r for r in b["rows"] if r["batch"] == bmax and r.get("threads") == max(b.get("threads_used", [1]))}
    by_model: dict[str, list[str]] = {}
    for r in v["rows"]:
        mark = "" if not r["failures"] else "✗"
        by_model.setdefault(r["candidate"], []).append(f"{r['target']} {100 * r['accuracy']:.2f}{mark}")
    rows = []
    for name, accs in by_model.items():
        m = models.get(name, {})
        rows.append([name, m.get("bytes", "—"),
                     f"{lat[name]['latency_ratio']:.2f}×" if name in lat and "latency_ratio" in lat[name] else "—",
                     f"{thr[name]['throughput_ratio']:.2f}×" if name in thr and "throughput_ratio" in thr[name] else "—",
                     ", ".join(accs)])
    verdict = "PASS: fit to ship" if v.get("passed") else "FAIL: not fit to ship"
    stages = ", ".join(f"{o.stage} {'%.1f s' % o.seconds if o.ran else 'skipped'}" for o in outcomes)
    text = (f"original model.keras: {100 * v['reference']['accuracy']:.2f} % on {v['n']} test samples\n"
            + md_table(["model", "bytes", "batch-1 latency ÷ float32", f"throughput ÷ float32 (batch {bmax})",
                        "accuracy % per target"], rows, "lrrrl")
            + f"\nverdict: {verdict}\nstages: {stages}\n")
    return text
