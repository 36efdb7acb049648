"""The `bnpipe` commands: each parses its options, makes one library call through the stage table
(pipeline/run/table.py, the same call `bnpipe run` makes for each stage), and prints the result.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pipeline.cli.base import (
    ProgressBar,
    artifacts_option,
    c_array_option,
    cli,
    execute,
    ints,
    make_request,
    names,
    note,
    quiet_option,
    task_option,
    task_table,
)
from pipeline.core.errors import GateFailed


@cli.command()
@click.option(
    "--data",
    default="digits",
    show_default=True,
    help="digits | mnist | FILE.npz | IDX directory | FILE.csv (label in column 1).",
)
@click.option("--test-data", default=None, help="A separate test file, for formats with no split.")
@click.option(
    "--arch",
    type=click.Choice(["mlp", "cnn"]),
    default="mlp",
    show_default=True,
    help="mlp: the seed article's BN MLP; cnn: a small MobileNet-style CNN for images.",
)
@click.option("--hidden", default=None, help="mlp: hidden Dense widths, comma-separated [64,64].")
@click.option("--epochs", default=None, type=int, help="[mlp: 10, cnn: 15]")
@click.option("--batch-size", default=None, type=int, help="[mlp: 32, cnn: 128]")
@click.option("--learning-rate", default=None, type=float, help="Adam's [mlp: 0.001, cnn: 0.002]")
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
@quiet_option
@artifacts_option
def train(
    data,
    test_data,
    arch,
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
    """Train a BN classifier and write model.keras and train.json.

    --arch mlp (default): the seed article's Dense(64) → BN → ReLU → Dense(64) → BN → ReLU →
    Dense(10, softmax), 10 epochs of batch 32. --arch cnn: two Conv → BN → ReLU, then
    depthwise → BN → ReLU6 and pointwise → BN → ReLU blocks, pooling, Dense; images (digits as
    8×8×1, MNIST as 28×28×1), 15 epochs of batch 128, images of 16×16 or more shifted by up to
    2 pixels ([train] shift). Adam, sparse categorical cross-entropy. Same seed, same weights.
    After each epoch a checkpoint goes to .resume/train/ in the artifacts dir, so that
    `--resume` can continue a training that was stopped.

    Example: bnpipe train --data digits --arch cnn --seed 0
    """
    from pipeline.core.config import TrainConfig

    config = TrainConfig(
        data=data,
        test_data=test_data,
        arch=arch,
        hidden=None if hidden is None else ints(hidden, "--hidden"),
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        bn=bn,
        seed=seed,
        strategy=strategy,
    )
    if strategy == "multi-worker":
        from pipeline.training.cluster import current_cluster

        cluster = current_cluster()  # exit 2 on a missing or malformed TF_CONFIG, before TF
    # Keras's own progress bar is the progress here; bnpipe's notes go to stderr even when quiet.
    request = make_request(artifacts, quiet, say=note, resume=resume)
    result = execute("train", config, request)
    if strategy == "multi-worker" and not cluster.is_chief:
        click.echo(
            f"{cluster.describe()}: test accuracy {result.test_accuracy:.4f}; the chief, "
            f"{cluster.describe(0)}, writes the artifacts ({result.seconds:.1f} s)"
        )
        return
    click.echo(
        f"test accuracy {result.test_accuracy:.4f} on {result.dataset['sizes']['test']} "
        f"samples; wrote {result.model_path} and {result.record_path.name} "
        f"({result.seconds:.1f} s)"
    )


@cli.command()
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A .keras or .h5 model [default: model.keras in the artifacts dir].",
)
@click.option(
    "--data",
    default=None,
    help="Data to check the fold on [default: the data recorded at training, else random].",
)
@click.option(
    "--strict", is_flag=True, help="Fail (exit 2) if any BatchNormalization cannot be folded."
)
@quiet_option
@artifacts_option
def fold(model_path, data, strict, quiet, artifacts):
    """Fold each BatchNormalization into a neighbouring layer; write folded.keras and fold.json.

    With s = γ/√(σ²+ε): a BN after a Dense scales its outputs, W' = W·s, b' = (b−μ)·s + β; a BN
    before a Dense (first layer, or after an activation) scales its inputs, W' = diag(s)·W,
    b' = b + (β−μ·s)·W. Checked layer by layer and end to end against the original, in the
    Keras that saved it; folded.keras is written in that Keras too.

    Example: bnpipe fold --model artifacts/model.keras --strict
    """
    from pipeline.core.config import FoldConfig

    request = make_request(artifacts, say=note, model=model_path, data=data)  # warnings: stderr
    result = execute("fold", FoldConfig(strict=strict), request)
    r = result.report
    for p in [] if quiet else r.pairs:  # quiet: the summary line alone (warnings stay on stderr)
        where = "into" if p.direction == "after" else "forward into"
        click.echo(f"folded {p.bn} {where} {p.layer}: max relative difference {p.max_rel_diff:.2e}")
    bound = f"tolerance {r.rtol:g}"
    if r.output_max_rel_diff > r.rtol:  # held to the model's own round-off (models/roundoff.py)
        bound = "within the original's own float32 round-off"
    click.echo(
        f"output max relative difference {r.output_max_rel_diff:.2e} ({bound}) on "
        f"{r.sample_source}; wrote {result.folded_path}"
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
    help="int8 (QAT) | float32 | ptq-dynamic | ptq-float16 | ptq-int8 | ptq-int16x8 | all | "
    "auto (the first of int8, ptq-int8, ptq-int16x8, mixed-int8, … that keeps the accuracy). "
    "Repeatable.",
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
    help="distill: fit the float model's probabilities (keeps its predictions); labels: fit the "
    "labels.",
)
@click.option(
    "--calibration-samples",
    default=500,
    show_default=True,
    type=int,
    help="Training samples for the representative dataset (int8, int16x8).",
)
@click.option(
    "--float-io", is_flag=True, help="Keep float32 input and output (QUANTIZE/DEQUANTIZE at edges)."
)
@c_array_option
@click.option("--seed", default=0, show_default=True, type=int)
@quiet_option
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
    c_array,
    seed,
    quiet,
    artifacts,
):
    """Convert the folded model to TFLite: int8 by quantization-aware training, and other modes.

    Writes model_<mode>.tflite and export.json; every file passes a graph check (int8: only the
    integer operators the model's layers imply, on int8 tensors, nothing left of a folded BN).
    With --c-array, each integer model also as C++ (or C) source and header with its TFLM arena.

    Example: bnpipe export --mode int8 --mode ptq-int8 --c-array
    """
    from pipeline.core.config import ExportConfig

    config = ExportConfig(
        modes=tuple(m for text in modes for m in text.split(",") if m),
        qat_epochs=qat_epochs,
        qat_learning_rate=qat_learning_rate,
        qat_target=qat_target,
        calibration_samples=calibration_samples,
        float_io=float_io,
        c_array=c_array,
        seed=seed,
    )
    request = make_request(artifacts, quiet, model=model_path, data=data)
    result = execute("export", config, request)
    click.echo(
        f"{'mode':<12} {'bytes':>8} {'keras acc':>9} {'tflite acc':>10} {'agree':>7}  operators"
    )
    for r in result.modes:
        ops = ", ".join(f"{k}×{v}" for k, v in sorted(r.operators.items()))
        if r.tflite_accuracy is None:  # another task than classification: SQNR vs float
            sqnr = "∞" if r.sqnr_db is None else f"{r.sqnr_db:.1f} dB"
            click.echo(f"{r.mode:<12} {r.size_bytes:>8} {r.task}: SQNR {sqnr}  {ops}")
            continue
        click.echo(
            f"{r.mode:<12} {r.size_bytes:>8} {r.keras_accuracy:>9.4f} {r.tflite_accuracy:>10.4f} "
            f"{r.agreement_with_float:>7.2%}  {ops}"
        )
    c_files = [
        f for r in result.modes if r.c_array for f in (r.c_array["source"], r.c_array["header"])
    ]
    click.echo(
        f"wrote {', '.join([r.file for r in result.modes] + c_files)} and export.json to "
        f"{request.out} ({result.seconds:.1f} s)"
    )


@cli.command()
@click.option(
    "--targets",
    default=None,
    help="Comma-separated: host, host-ref, tflm, arm64, ssh:USER@HOST[:PORT] "
    "[default: every one available].",
)
@click.option(
    "--tflite",
    "tflite",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A .tflite file to verify (repeatable) [default: model_*.tflite in the artifacts dir].",
)
@click.option("--data", default=None, help="Test data [default: the data and split of training].")
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
@task_option
@quiet_option
@artifacts_option
def verify(
    targets, tflite, data, max_drop, min_agreement, max_lsb, max_samples, tasks, quiet, artifacts
):
    """Check that the folded and quantized models match the original, on every target runtime.

    Exit 0 when every gate passes, 1 when one fails (the model is not fit to ship), 2 on bad
    input. Writes verify.json, verify.md and verify_*.png.

    Example: bnpipe verify --targets host,host-ref,tflm,arm64 --max-drop 0.3
    """
    from pipeline.core.config import VerifyConfig
    from pipeline.store.files import VERIFY_REPORT

    config = VerifyConfig(
        targets=names(targets),
        max_drop=max_drop,
        min_agreement=min_agreement,
        max_lsb=max_lsb,
        max_samples=max_samples,
        tasks=task_table(tasks),
    )
    request = make_request(artifacts, quiet, tflite=tuple(tflite), data=data)
    try:
        result = execute("verify", config, request)
    except GateFailed:
        report = request.out / VERIFY_REPORT
        click.echo(report.read_text() if report.is_file() else "")
        raise
    click.echo(result.report_path.read_text())
    click.echo(
        f"PASS: every gate holds on {result.n} samples ({result.seconds:.1f} s); "
        f"wrote {result.record_path.name}, {result.report_path.name}"
    )


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
    "--max-seconds",
    default=1.0,
    show_default=True,
    type=float,
    help="Timed seconds per configuration at most: a large model stops short of --runs.",
)
@click.option(
    "--targets",
    default="host",
    show_default=True,
    help="host, plus arm64 (emulated: functional only, not device timing) or ssh:USER@HOST[:PORT] "
    "(a real board).",
)
@quiet_option
@artifacts_option
def bench(tflite, batch_sizes, threads, warmup, runs, max_seconds, targets, quiet, artifacts):
    """Benchmark latency, throughput, size and memory of every .tflite model against Keras.

    Writes bench.json, bench.md, bench_latency.png and bench_throughput.png.

    Example: bnpipe bench --batch-sizes 1,32,1024 --threads 1,0 --runs 200
    """
    from pipeline.core.config import BenchConfig

    config = BenchConfig(
        batch_sizes=ints(batch_sizes, "--batch-sizes"),
        threads=ints(threads, "--threads"),
        warmup=warmup,
        runs=runs,
        max_seconds=max_seconds,
        targets=names(targets) or (),
    )
    show = not quiet and sys.stderr.isatty()
    with ProgressBar(show, "bench", 64) as bar:
        request = make_request(artifacts, quiet, tflite=tuple(tflite), tick=bar.step)
        result = execute("bench", config, request)
    click.echo(result.report_path.read_text().split("## Every configuration")[0].rstrip())
    click.echo(f"\nwrote bench.json, bench.md and plots to {request.out} ({result.seconds:.1f} s)")


@cli.command("run")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A TOML file with tables [train] [fold] [export] [verify] [bench]; keys are the "
    "options' names.",
)
@click.option("--data", default=None, help="Overrides [train] data.")
@click.option(
    "--arch", type=click.Choice(["mlp", "cnn"]), default=None, help="Overrides [train] arch."
)
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A .keras or .h5 model trained elsewhere (either Keras): imported, not trained.",
)
@c_array_option
@click.option("--force", is_flag=True, help="Rerun every stage, even those that are up to date.")
@task_option
@quiet_option
@artifacts_option
def run_cmd(config_path, data, arch, model_path, c_array, force, tasks, quiet, artifacts):
    """Run train → fold → export → verify → bench (→ fit, with [fit] boards) → report; skip stages
    whose inputs and options are unchanged.

    With --model, your own model (saved by Keras 3 or tf_keras) takes the place of training and
    is the reference every accuracy is measured against. Prints one summary table and the path of
    report.html, and exits with verify's code, or fit's (0 pass, 1 a gate failed).

    Example: bnpipe run --model my_model.keras --data mnist
    """
    from pipeline.core.configfile import load_run_config
    from pipeline.run.runner import run_all

    train = {"data": data} if data else {}
    if arch is not None:
        train["arch"] = arch
    if model_path is not None:
        train["model"] = str(model_path)
    overrides = {"train": train} if train else {}
    if c_array is not None:
        overrides["export"] = {"c_array": c_array}
    if tasks:
        overrides["verify"] = {"tasks": task_table(tasks)}
    config = load_run_config(config_path, overrides or None)
    request = make_request(artifacts, quiet)
    result = run_all(
        request.out, config, force=force, say=request.say, quiet=quiet, wait=request.wait
    )
    click.echo(result.summary)
    if result.exit_code:
        raise GateFailed("a gate failed: " + "; ".join(result.failures), result.failures)
