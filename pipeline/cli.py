"""The `bnpipe` command line: parse, call one library function, print its result.

Nothing here imports TensorFlow at module level: `bnpipe --help` and `bnpipe CMD --help` stay fast.
Library exceptions become exit codes here and only here (see errors.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import BnpipeError, GateFailed, Terminated

ARTIFACTS_HELP = "Artifacts directory [default: $BNPIPE_ARTIFACTS or ./artifacts]."


class _Fail(click.ClickException):
    """Prints `Error: <message>` on stderr and exits with the code given."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.exit_code = code


class BnpipeGroup(click.Group):
    """Maps bnpipe's exceptions to the contract's exit codes: 2 bad input, 1 gate, 130 Ctrl-C."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BnpipeError as exc:
            raise _Fail(_one_line(exc), exc.exit_code) from None
        except GateFailed as exc:
            raise _Fail(_one_line(exc), exc.exit_code) from None
        except KeyboardInterrupt as exc:
            saved = str(exc) if isinstance(exc, KeyboardInterrupt) and str(exc) else ""
            what = "Terminated" if isinstance(exc, Terminated) else "Interrupted"
            click.echo(
                f"{what}: {saved}."
                if saved
                else f"{what}: artifacts are as they were before this stage.",
                err=True,
            )
            raise click.exceptions.Exit(getattr(exc, "exit_code", 130)) from None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def artifacts_option(f):
    return click.option(
        "--artifacts",
        "artifacts",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help=ARTIFACTS_HELP,
    )(f)


def _artifacts(path: Path | None) -> Path:
    from .artifacts import artifacts_dir

    return artifacts_dir(path)


@click.group(cls=BnpipeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bnpipe", prog_name="bnpipe")
def cli():
    """bnpipe: train a Keras classifier with batch normalization, fold the BN into its Dense
    layers, quantize it to int8 TFLite, and verify it on the runtimes it will ship to.

    Stages: train → fold → export → verify → bench (`bnpipe run` does all of them).

    Example: bnpipe train --data digits && bnpipe fold
    """


@cli.command()
@click.option(
    "--data",
    default="digits",
    show_default=True,
    help="digits | mnist | FILE.npz | IDX directory | FILE.csv (label in column 1).",
)
@click.option("--test-data", default=None, help="A separate test file, for formats with no split.")
@click.option(
    "--hidden", default="64,64", show_default=True, help="Hidden Dense widths, comma-separated."
)
@click.option("--epochs", default=10, show_default=True, type=int)
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--learning-rate", default=1e-3, show_default=True, type=float)
@click.option(
    "--bn",
    type=click.Choice(["keras", "custom"]),
    default="keras",
    show_default=True,
    help="keras: tf.keras BatchNormalization; custom: the article's layer, made correct.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted training from its last completed epoch (same final weights).",
)
@click.option(
    "--strategy",
    type=click.Choice(["none", "mirrored", "multi-worker"]),
    default="none",
    show_default=True,
    help="none: one process; mirrored: this machine's devices; multi-worker: one process "
    "per worker, as $TF_CONFIG lists them (only the chief writes artifacts).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@artifacts_option
def train(
    data,
    test_data,
    hidden,
    epochs,
    batch_size,
    learning_rate,
    bn,
    seed,
    resume,
    strategy,
    quiet,
    artifacts,
):
    """Train the BN MLP and write model.keras and train.json.

    Dense(64) → BN → ReLU → Dense(64) → BN → ReLU → Dense(10, softmax), Adam, sparse categorical
    cross-entropy, 10 epochs of batch 32 by default. Same seed, same weights. After each epoch
    a checkpoint goes to .resume/train/ in the artifacts dir, so that `--resume` can continue
    a training that was stopped; it is removed when training ends.

    Example: bnpipe train --data digits --epochs 10 --seed 0
    """
    from .config import TrainConfig
    from .run import OUTPUTS, recorded_stage
    from .train import train as run_train

    config = TrainConfig(
        data=data,
        test_data=test_data,
        hidden=_widths(hidden),
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        bn=bn,
        seed=seed,
        strategy=strategy,
    )
    out = _artifacts(artifacts)
    if strategy == "multi-worker":
        from .distribute import current_cluster

        cluster = current_cluster()  # exit 2 on a missing or malformed TF_CONFIG, before TensorFlow
        if not cluster.is_chief:  # trains in lockstep with the chief, which alone writes artifacts
            import tempfile

            with tempfile.TemporaryDirectory(prefix="bnpipe-worker-") as scratch:
                result = run_train(
                    config,
                    Path(scratch),
                    quiet=quiet,
                    resume=resume,
                    say=lambda m: click.echo(m, err=True),
                )
            click.echo(
                f"{cluster.describe()}: test accuracy {result.test_accuracy:.4f}; the chief, "
                f"{cluster.describe(0)}, writes the artifacts ({result.seconds:.1f} s)"
            )
            return
    done = {}
    with recorded_stage(
        out,
        "train",
        config,
        lambda: OUTPUTS["train"],
        reads=[],
        inputs=lambda: {"data": done["result"].dataset["fingerprint"]},
    ):
        result = done["result"] = run_train(
            config, out, quiet=quiet, resume=resume, say=lambda m: click.echo(m, err=True)
        )
    click.echo(
        f"test accuracy {result.test_accuracy:.4f} on {result.dataset['sizes']['test']} "
        f"samples; wrote {result.model_path} and {result.record_path.name} "
        f"({result.seconds:.1f} s)"
    )


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise BnpipeError(
            f"--hidden takes comma-separated integers such as 64,64; got {text!r}"
        ) from None
    return widths


@cli.command()
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A .keras model [default: model.keras in the artifacts dir].",
)
@click.option(
    "--data",
    default=None,
    help="Data to check the fold on [default: the data recorded at training, else random inputs].",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Fail (exit 2) if any BatchNormalization cannot be folded exactly.",
)
@artifacts_option
def fold(model_path, data, strict, artifacts):
    """Fold each BatchNormalization into the Dense before it; write folded.keras and fold.json.

    W' = W·γ/√(σ²+ε), b' = (b−μ)·γ/√(σ²+ε) + β, checked layer by layer against the original.

    Example: bnpipe fold --model artifacts/model.keras --strict
    """
    from .artifacts import require_file
    from .config import FoldConfig
    from .fold import run_fold
    from .run import OUTPUTS, recorded_stage, stage_reads

    out = _artifacts(artifacts)
    src = model_path or require_file(
        out / "model.keras", "model", "run `bnpipe train` first or pass --model"
    )
    config = FoldConfig(strict=strict)
    explicit = model_path is not None or data is not None
    with recorded_stage(
        out,
        "fold",
        config,
        lambda: OUTPUTS["fold"],
        reads=None if explicit else stage_reads("fold", out),
    ):
        result = run_fold(
            src, out, data=data, config=config, warn=lambda m: click.echo(m, err=True)
        )
    r = result.report
    for p in r.pairs:
        click.echo(f"folded {p.bn} into {p.dense}: max relative difference {p.max_rel_diff:.2e}")
    click.echo(
        f"output max relative difference {r.output_max_rel_diff:.2e} (tolerance "
        f"{r.rtol:g}) on {r.sample_source}; wrote {result.folded_path}"
    )


@cli.command()
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The folded .keras model [default: folded.keras in the artifacts dir].",
)
@click.option(
    "--mode",
    "modes",
    multiple=True,
    default=("int8",),
    show_default=True,
    help="int8 (QAT) | float32 | ptq-dynamic | ptq-float16 | ptq-int8 | ptq-int16x8 | all. Repeatable.",
)
@click.option(
    "--data", default=None, help="Training data [default: the data recorded at training]."
)
@click.option("--qat-epochs", default=3, show_default=True, type=int)
@click.option("--qat-learning-rate", default=1e-5, show_default=True, type=float)
@click.option(
    "--qat-target",
    type=click.Choice(["distill", "labels"]),
    default="distill",
    show_default=True,
    help="distill: fit the float model's probabilities (keeps its predictions); labels: fit the labels.",
)
@click.option(
    "--calibration-samples",
    default=500,
    show_default=True,
    type=int,
    help="Training samples for the representative dataset (int8, int16x8).",
)
@click.option(
    "--float-io",
    is_flag=True,
    help="Keep float32 input and output (QUANTIZE/DEQUANTIZE at the edges).",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--quiet", "-q", is_flag=True)
@artifacts_option
def export(
    model_path,
    modes,
    data,
    qat_epochs,
    qat_learning_rate,
    qat_target,
    calibration_samples,
    float_io,
    seed,
    quiet,
    artifacts,
):
    """Convert the folded model to TFLite: int8 by quantization-aware training, and other modes.

    Writes model_<mode>.tflite and export.json; every file passes a graph check (int8: only
    FULLY_CONNECTED and SOFTMAX on int8 tensors, nothing left of a BatchNormalization).

    Example: bnpipe export --mode int8 --mode ptq-int8
    """
    from .artifacts import require_file
    from .config import ExportConfig
    from .export import run_export, tflite_name
    from .run import recorded_stage, stage_reads

    out = _artifacts(artifacts)
    modes = tuple(m for text in modes for m in text.split(",") if m)
    config = ExportConfig(
        modes=modes,
        qat_epochs=qat_epochs,
        qat_learning_rate=qat_learning_rate,
        qat_target=qat_target,
        calibration_samples=calibration_samples,
        float_io=float_io,
        seed=seed,
    )
    src = model_path or require_file(
        out / "folded.keras", "folded model", "run `bnpipe fold` first or pass --model"
    )
    say = (lambda m: None) if quiet else (lambda m: click.echo(f"… {m}", err=True))
    explicit = model_path is not None or data is not None
    with recorded_stage(
        out,
        "export",
        config,
        lambda: [tflite_name(m) for m in config.modes] + ["export.json"],
        reads=None if explicit else stage_reads("export", out),
    ):
        result = run_export(src, out, config=config, data=data, progress=say)
    click.echo(
        f"{'mode':<12} {'bytes':>8} {'keras acc':>9} {'tflite acc':>10} {'agree':>7}  operators"
    )
    for r in result.modes:
        ops = ", ".join(f"{k}×{v}" for k, v in sorted(r.operators.items()))
        click.echo(
            f"{r.mode:<12} {r.size_bytes:>8} {r.keras_accuracy:>9.4f} {r.tflite_accuracy:>10.4f} "
            f"{r.agreement_with_float:>7.2%}  {ops}"
        )
    click.echo(
        f"wrote {', '.join(r.file for r in result.modes)} and export.json to {out} "
        f"({result.seconds:.1f} s)"
    )


@cli.command()
@click.argument("tflite", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(tflite, as_json):
    """Show a .tflite file's operators, tensors (shape, dtype, quantization) and size.

    The file is parsed and checked structurally in Python; no interpreter loads it.

    Example: bnpipe inspect artifacts/model_int8.tflite --json
    """
    import dataclasses
    import json

    from .tflite_file import read_tflite

    info = read_tflite(tflite)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(info) | {"op_counts": info.op_counts()}, indent=2))
        return
    click.echo(
        f"{tflite}: {info.size_bytes} bytes, schema v{info.version}, "
        f"{len(info.operators)} operators, {len(info.tensors)} tensors"
    )
    if info.metadata:
        pre = info.metadata.get("preprocessing", {})
        click.echo(
            f"bnpipe metadata: mode {info.metadata.get('mode')}, inputs divided by "
            f"{pre.get('divisor')}, {info.metadata.get('num_classes')} classes"
        )
    click.echo("operators: " + ", ".join(f"{o.index}:{o.op}" for o in info.operators))
    click.echo(f"{'#':>3} {'name':<44} {'shape':<12} {'dtype':<8} quantization")
    for t in info.tensors:
        role = (
            " (input)" if t.index in info.inputs else " (output)" if t.index in info.outputs else ""
        )
        q = ""
        if t.scale:
            q = (
                f"scale={t.scale[0]:.6g} zp={t.zero_point[0]}"
                if len(t.scale) == 1
                else f"per-channel ×{len(t.scale)}"
            )
        name = (t.name[:40] + "…") if len(t.name) > 41 else t.name
        click.echo(f"{t.index:>3} {name + role:<44} {t.shape!s:<12} {t.dtype:<8} {q}")


@cli.command()
@click.option(
    "--targets",
    default=None,
    help="Comma-separated: host, host-ref, tflm, arm64, ssh:USER@HOST[:PORT] [default: every one available].",
)
@click.option(
    "--tflite",
    "tflite",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A .tflite file to verify (repeatable) [default: model_*.tflite in the artifacts dir].",
)
@click.option(
    "--data", default=None, help="Test data [default: the data and split recorded at training]."
)
@click.option(
    "--max-drop",
    default=0.5,
    show_default=True,
    type=float,
    help="Gate: largest accuracy drop vs the original, percentage points.",
)
@click.option(
    "--min-agreement",
    default=0.99,
    show_default=True,
    type=float,
    help="Gate: least share of test samples with the original's top-1 class.",
)
@click.option(
    "--max-lsb",
    default=1,
    show_default=True,
    type=int,
    help="Gate: largest difference of integer outputs from host-ref, in quantization steps.",
)
@click.option("--max-samples", default=None, type=int, help="Use at most this many test samples.")
@click.option("--quiet", "-q", is_flag=True)
@artifacts_option
def verify(targets, tflite, data, max_drop, min_agreement, max_lsb, max_samples, quiet, artifacts):
    """Check that the folded and quantized models match the original, on every target runtime.

    Exit 0 when every gate passes, 1 when one fails (the model is not fit to ship), 2 on bad input.
    Writes verify.json, verify.md and verify_*.png.

    Example: bnpipe verify --targets host,host-ref,tflm,arm64 --max-drop 0.3
    """
    from .config import VerifyConfig
    from .errors import GateFailed
    from .run import OUTPUTS, recorded_stage, stage_reads
    from .verify import run_verify

    out = _artifacts(artifacts)
    config = VerifyConfig(
        targets=tuple(t for t in targets.split(",") if t) if targets else None,
        max_drop=max_drop,
        min_agreement=min_agreement,
        max_lsb=max_lsb,
        max_samples=max_samples,
    )
    say = (lambda m: None) if quiet else (lambda m: click.echo(f"… {m}", err=True))
    explicit = bool(tflite) or data is not None
    try:
        with recorded_stage(
            out,
            "verify",
            config,
            lambda: OUTPUTS["verify"],
            reads=None if explicit else _existing(out, stage_reads("verify", out)),
        ):
            result = run_verify(
                out, config=config, tflite=list(tflite) or None, data=data, progress=say
            )
    except GateFailed:
        click.echo(
            (out / "verify.md").read_text() if (out / "verify.md").is_file() else "", err=False
        )
        raise
    click.echo(result.report_path.read_text())
    click.echo(
        f"PASS: every gate holds on {result.n} samples ({result.seconds:.1f} s); "
        f"wrote {result.record_path.name}, {result.report_path.name}"
    )


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise BnpipeError(f"{option} takes comma-separated integers; got {text!r}") from None


@cli.command()
@click.option(
    "--tflite",
    "tflite",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A .tflite file (repeatable) [default: model_*.tflite in the artifacts dir].",
)
@click.option("--batch-sizes", default="1,32,1024", show_default=True)
@click.option("--threads", default="1,0", show_default=True, help="0 means every core.")
@click.option("--warmup", default=20, show_default=True, type=int)
@click.option("--runs", default=200, show_default=True, type=int)
@click.option(
    "--targets",
    default="host",
    show_default=True,
    help="host, plus arm64 (emulated: functional only, not device timing) or ssh:USER@HOST[:PORT] (a real board).",
)
@click.option("--quiet", "-q", is_flag=True)
@artifacts_option
def bench(tflite, batch_sizes, threads, warmup, runs, targets, quiet, artifacts):
    """Benchmark latency, throughput, size and memory of every .tflite model against Keras.

    Writes bench.json, bench.md, bench_latency.png and bench_throughput.png.

    Example: bnpipe bench --batch-sizes 1,32,1024 --threads 1,0 --runs 200
    """
    from .bench import run_bench
    from .config import BenchConfig
    from .run import OUTPUTS, recorded_stage, stage_reads

    out = _artifacts(artifacts)
    config = BenchConfig(
        batch_sizes=_ints(batch_sizes, "--batch-sizes"),
        threads=_ints(threads, "--threads"),
        warmup=warmup,
        runs=runs,
        targets=tuple(t for t in targets.split(",") if t),
    )
    show = not quiet and sys.stderr.isatty()
    total = 64
    with (
        click.progressbar(length=total, label="bench", file=sys.stderr, show_pos=False)
        if show
        else _NoBar() as bar
    ):

        def progress(label, n=1):
            bar.label = f"bench: {label}"
            bar.update(n)

        with recorded_stage(
            out,
            "bench",
            config,
            lambda: OUTPUTS["bench"],
            reads=None if tflite else _existing(out, stage_reads("bench", out)),
        ):
            result = run_bench(out, config=config, tflite=list(tflite) or None, progress=progress)
    click.echo(result.report_path.read_text().split("## Every configuration")[0].rstrip())
    click.echo(f"\nwrote bench.json, bench.md and plots to {out} ({result.seconds:.1f} s)")


def _existing(out: Path, names: list[str]) -> list[str]:
    """The names of files that exist: verify and bench run without folded.keras or model.keras."""
    return [n for n in names if (out / n).is_file()]


class _NoBar:
    label = ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        pass


@cli.command("run")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A TOML file with tables [train] [fold] [export] [verify] [bench]; keys are the options' names.",
)
@click.option("--data", default=None, help="Overrides [train] data.")
@click.option("--force", is_flag=True, help="Rerun every stage, even those that are up to date.")
@click.option("--quiet", "-q", is_flag=True)
@artifacts_option
def run_cmd(config_path, data, force, quiet, artifacts):
    """Run train → fold → export → verify → bench; skip stages whose inputs and options are unchanged.

    Prints one summary table and exits with verify's code (0 pass, 1 a gate failed).

    Example: bnpipe run --config bnpipe.toml
    """
    from .run import load_run_config, run_all

    config = load_run_config(config_path, {"train": {"data": data}} if data else None)
    say = (lambda m: None) if quiet else (lambda m: click.echo(f"… {m}", err=True))
    result = run_all(_artifacts(artifacts), config, force=force, say=say, quiet=quiet)
    click.echo(result.summary)
    if result.exit_code:
        raise GateFailed("verification failed: " + "; ".join(result.failures), result.failures)


def main():
    import signal

    def terminate(signum, frame):
        raise Terminated()

    for name in ("SIGTERM", "SIGHUP"):  # like Ctrl-C: the running stage's files are discarded
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) is signal.SIG_DFL:
            signal.signal(number, terminate)
    cli(prog_name="bnpipe")


if __name__ == "__main__":
    sys.exit(main())
