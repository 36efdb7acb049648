"""The `bnpipe` command line: parse, call one library function, print its result.

Nothing here imports TensorFlow at module level: `bnpipe --help` and `bnpipe CMD --help` stay fast.
Library exceptions become exit codes here and only here (see errors.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import BnpipeError, GateFailed

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
        except KeyboardInterrupt:
            click.echo("Interrupted: artifacts are as they were before this stage.", err=True)
            raise click.exceptions.Exit(130) from None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def artifacts_option(f):
    return click.option("--artifacts", "artifacts", type=click.Path(file_okay=False, path_type=Path),
                        default=None, help=ARTIFACTS_HELP)(f)


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
@click.option("--data", default="digits", show_default=True,
              help="digits | mnist | FILE.npz | IDX directory | FILE.csv (label in column 1).")
@click.option("--test-data", default=None, help="A separate test file, for formats with no split.")
@click.option("--hidden", default="64,64", show_default=True, help="Hidden Dense widths, comma-separated.")
@click.option("--epochs", default=10, show_default=True, type=int)
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--learning-rate", default=1e-3, show_default=True, type=float)
@click.option("--bn", type=click.Choice(["keras", "custom"]), default="keras", show_default=True,
              help="keras: tf.keras BatchNormalization; custom: the article's layer, made correct.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@artifacts_option
def train(data, test_data, hidden, epochs, batch_size, learning_rate, bn, seed, quiet, artifacts):
    """Train the BN MLP and write model.keras and train.json.

    Dense(64) → BN → ReLU → Dense(64) → BN → ReLU → Dense(10, softmax), Adam, sparse categorical
    cross-entropy, 10 epochs of batch 32 by default. Same seed, same weights.

    Example: bnpipe train --data digits --epochs 10 --seed 0
    """
    from .config import TrainConfig
    from .train import train as run_train

    config = TrainConfig(data=data, test_data=test_data, hidden=_widths(hidden), epochs=epochs,
                         batch_size=batch_size, learning_rate=learning_rate, bn=bn, seed=seed)
    result = run_train(config, _artifacts(artifacts), quiet=quiet)
    click.echo(f"test accuracy {result.test_accuracy:.4f} on {result.dataset['sizes']['test']} "
               f"samples; wrote {result.model_path} and {result.record_path.name} "
               f"({result.seconds:.1f} s)")


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise BnpipeError(f"--hidden takes comma-separated integers such as 64,64; got {text!r}") from None
    return widths


@cli.command()
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A .keras model [default: model.keras in the artifacts dir].")
@click.option("--data", default=None,
              help="Data to check the fold on [default: the data recorded at training, else random inputs].")
@click.option("--strict", is_flag=True, help="Fail (exit 2) if any BatchNormalization cannot be folded exactly.")
@artifacts_option
def fold(model_path, data, strict, artifacts):
    """Fold each BatchNormalization into the Dense before it; write folded.keras and fold.json.

    W' = W·γ/√(σ²+ε), b' = (b−μ)·γ/√(σ²+ε) + β, checked layer by layer against the original.

    Example: bnpipe fold --model artifacts/model.keras --strict
    """
    from .artifacts import require_file
    from .config import FoldConfig
    from .fold import run_fold

    out = _artifacts(artifacts)
    src = model_path or require_file(out / "model.keras", "model", "run `bnpipe train` first or pass --model")
    result = run_fold(src, out, data=data, config=FoldConfig(strict=strict),
                      warn=lambda m: click.echo(m, err=True))
    r = result.report
    for p in r.pairs:
        click.echo(f"folded {p.bn} into {p.dense}: max relative difference {p.max_rel_diff:.2e}")
    click.echo(f"output max relative difference {r.output_max_rel_diff:.2e} (tolerance "
               f"{r.rtol:g}) on {r.sample_source}; wrote {result.folded_path}")


def main():
    cli(prog_name="bnpipe")


if __name__ == "__main__":
    sys.exit(main())
