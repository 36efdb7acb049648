"""The `bnpipe` commands that look at what the stages made: `inspect` a file, `layers` (where an
integer model loses accuracy), `fit` (will it fit a board) and `report` (one page from every
record). Each parses its options, makes one library call and prints the result.
"""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.base import (
    artifacts_option,
    cli,
    execute,
    make_request,
    note,
    progress,
    quiet_option,
)
from pipeline.core.errors import GateFailed


@cli.command()
@click.argument("tflite", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(tflite, as_json):
    """Show a .tflite file's operators, tensors (shape, dtype, quantization) and size.

    The file is parsed and checked structurally in Python; no interpreter loads it.

    Example: bnpipe inspect artifacts/model_int8.tflite --json
    """
    from pipeline.core.errors import ModelError
    from pipeline.core.safeio import regular_file
    from pipeline.report.markdown import tflite_json, tflite_text
    from pipeline.tflite.file import read_tflite

    info = read_tflite(regular_file(tflite, "model file", ModelError))  # a FIFO would block
    click.echo(tflite_json(info) if as_json else tflite_text(info))


@cli.command()
@click.option(
    "--tflite",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The integer .tflite [default: model_int8.tflite in the artifacts dir].",
)
@click.option(
    "--reference",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Its float twin [default: model_float32.tflite in the artifacts dir].",
)
@click.option("--data", default=None, help="Test data [default: the data and split of training].")
@click.option("--max-samples", default=None, type=int, help="Use at most this many test samples.")
@click.option("--json", "as_json", is_flag=True, help="Print only layers.json on stdout.")
@quiet_option
@artifacts_option
def layers(tflite, reference, data, max_samples, as_json, quiet, artifacts):
    """Find where an integer model loses accuracy: a per-layer report against its float twin.

    For every operator output: SQNR, error in quantization steps, share of the int8 range used.
    Then each layer quantized alone (the others float), ranked by the agreement and accuracy it
    costs: the first is the culprit. Writes layers.json, layers.md and layers.png; not a stage
    of `bnpipe run`.

    Example: bnpipe layers --tflite artifacts/model_ptq-int8.tflite
    """
    from pipeline.core.config import LayersConfig
    from pipeline.stages.layers import run_layers
    from pipeline.store.artifacts import artifacts_dir

    result = run_layers(
        artifacts_dir(artifacts),
        config=LayersConfig(max_samples=max_samples),
        tflite=tflite,
        reference=reference,
        data=data,
        progress=None if quiet else progress,
        wait=click.get_current_context().meta.get("bnpipe.wait", False),
    )
    if as_json:
        click.echo(result.record_path.read_text(), nl=False)
        return
    click.echo(result.report_path.read_text())
    click.echo(f"wrote layers.json, layers.md and layers.png ({result.seconds:.1f} s)")


@cli.command()
@click.option(
    "--board",
    "boards",
    multiple=True,
    help="A board to fit (repeatable): nrf52840, stm32h743, rp2040, esp32-s3, corstone-300, "
    "alif-e7, imx93, corstone-320, or one of [fit.profiles] [default: [fit] boards].",
)
@click.option(
    "--tflite",
    "tflite",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A .tflite file (repeatable) [default: the integer model_*.tflite in the artifacts dir].",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A bnpipe.toml whose [fit] table gives boards, firmware allowances and profiles.",
)
@quiet_option
@artifacts_option
def fit(boards, tflite, config_path, quiet, artifacts):
    """Check that every integer model fits each board's flash and RAM, and how fast it runs on
    an Ethos-U NPU (Vela's estimate).

    Exit 0 when every model fits every board, 1 when one does not (saying by how much), 2 on
    bad input or an unknown board. Writes fit.json, fit.md and fit.png.

    Example: bnpipe fit --board nrf52840 --board corstone-300
    """
    import dataclasses

    from pipeline.core.configfile import load_run_config
    from pipeline.store.files import FIT_REPORT

    config = load_run_config(config_path).fit
    if boards:
        config = dataclasses.replace(config, boards=tuple(boards))
    request = make_request(artifacts, quiet, tflite=tuple(tflite))
    try:
        result = execute("fit", config, request)
    except GateFailed:
        report = request.out / FIT_REPORT
        click.echo(report.read_text() if report.is_file() else "")
        raise
    click.echo(result.report_path.read_text())
    click.echo(f"PASS: every model fits ({result.seconds:.1f} s); wrote fit.json, fit.md, fit.png")


@cli.command()
@quiet_option
@artifacts_option
def report(quiet, artifacts):
    """Write report.html: one self-contained page from the records in the artifacts dir.

    The verdict (ship or not, and why) first, then lineage, fold, export, verify, layers, bench
    and fit, each where its record exists. Reads records only: no model runs, nothing is
    downloaded, the page loads nothing from outside itself. Exit 2 if no record is readable.

    Example: bnpipe report --artifacts artifacts && xdg-open artifacts/report.html
    """
    from pipeline.core.config import ReportConfig

    request = make_request(artifacts, quiet)
    result = execute("report", ReportConfig(), request)
    for line in result.notes:
        note(f"note: {line}")
    click.echo(f"wrote {result.path} ({', '.join(result.sections)}; {result.seconds:.2f} s)")
