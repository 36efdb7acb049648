"""The `bnpipe` command group: exit codes, the options every command shares, progress output.

Nothing here imports TensorFlow at module level (see pipeline/cli/__init__.py).
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import click

from pipeline.core.errors import BUG_EXIT_CODE, DEBUG_ENV, BnpipeError, GateFailed, Terminated
from pipeline.core.interrupts import raise_pending

ARTIFACTS_HELP = "Artifacts directory [default: $BNPIPE_ARTIFACTS or ./artifacts]."
WAIT_HELP = "If another bnpipe is writing the artifacts dir, wait for it [or $BNPIPE_WAIT=1]."


class Fail(click.ClickException):
    """Prints `Error: <message>` on stderr and exits with the code given."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.exit_code = code


# `bnpipe` alone shows the help through a UsageError (Click ≥ 8.2): kept as Click shows it.
NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class BnpipeGroup(click.Group):
    """Maps bnpipe's exceptions to the contract's exit codes: 2 bad input, 1 gate, 130 Ctrl-C,
    BUG_EXIT_CODE for any other exception (a bug). A usage error is one `Error: …` line too
    (Click's own would add the usage and a hint: three lines)."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:  # the group's own options and the command's name
            return super().make_context(info_name, args, parent=parent, **extra)
        except NO_ARGS_IS_HELP:
            raise  # `bnpipe` alone: the help, as Click shows it
        except click.UsageError as exc:
            raise Fail(one_line_usage(exc), exc.exit_code) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (BnpipeError, GateFailed) as exc:
            raise Fail(one_line(exc), exc.exit_code) from None
        except NO_ARGS_IS_HELP:
            raise
        except click.UsageError as exc:  # a command's options and arguments
            raise Fail(one_line_usage(exc), exc.exit_code) from None
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # Click's own: usage errors, --help, --version
        except BrokenPipeError:
            raise  # output piped into `head`: Click ends quietly
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:  # anywhere a path the user gave is looked at
                raise Fail(name_too_long(exc.filename), 2) from None
            if exc.errno in (errno.EACCES, errno.EPERM) and exc.filename is not None:
                raise Fail(permission_denied(exc.filename), 2) from None  # a path under 0700
            raise internal_error(exc, ctx.params.get("debug", False)) from None
        except Exception as exc:
            raise internal_error(exc, ctx.params.get("debug", False)) from None
        except KeyboardInterrupt as exc:
            saved = str(exc)
            what = "Terminated" if isinstance(exc, Terminated) else "Interrupted"
            click.echo(
                f"{what}: {saved}."
                if saved
                else f"{what}: artifacts are as they were before this stage.",
                err=True,
            )
            raise click.exceptions.Exit(getattr(exc, "exit_code", 130)) from None


def one_line_usage(exc: click.UsageError) -> str:
    """Click's message alone, with the help command to try (`bnpipe fold --help`)."""
    ctx = exc.ctx
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return one_line(Exception(exc.format_message())) + hint


def name_too_long(path) -> str:
    shown = str(path)
    shown = shown if len(shown) <= 80 else f"{shown[:40]}…{shown[-30:]}"
    return (
        f"the path {shown!r} ({len(str(path)):,} characters) is too long for the file system "
        "(at most 255 a name)"
    )


def permission_denied(path) -> str:
    shown = repr(str(path)[:120])
    return (
        f"permission denied for {shown}; check that you may read it and enter every directory "
        "above it"
    )


def one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def internal_error(exc: Exception, debug: bool) -> click.exceptions.Exit:
    """An unexpected exception: one line on stderr (the traceback too when debugging)."""
    what = type(exc).__name__ + (f": {one_line(exc)[:300]}" if str(exc).strip() else "")
    if debug:
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        hint = "the traceback is above"
    else:
        hint = f"rerun as `bnpipe --debug …` or with {DEBUG_ENV}=1 for the traceback"
    click.echo(f"Internal error: {what} (a bug in bnpipe: {hint})", err=True)
    return click.exceptions.Exit(BUG_EXIT_CODE)


def _remember_wait(ctx, param, value):
    ctx.meta["bnpipe.wait"] = value


def artifacts_option(f):
    """--artifacts DIR (a str: an empty one is refused, not taken as the current directory), and
    --wait, which every command that writes the artifacts dir takes (kept in ctx.meta)."""
    f = click.option(
        "--wait",
        is_flag=True,
        envvar="BNPIPE_WAIT",
        expose_value=False,
        callback=_remember_wait,
        help=WAIT_HELP,
    )(f)
    return click.option(
        "--artifacts",
        "artifacts",
        type=click.Path(file_okay=False),
        default=None,
        help=ARTIFACTS_HELP,
    )(f)


def c_array_option(f):
    return click.option(
        "--c-array",
        type=click.Choice(["c++", "c"]),
        is_flag=False,
        flag_value="c++",
        default=None,
        help="Also write each integer model as a C++ (or, with `--c-array c`, C) source and "
        "header for a microcontroller's build, with the TFLM tensor arena it needs.",
    )(f)


def quiet_option(f):
    return click.option("--quiet", "-q", is_flag=True, help="No progress output.")(f)


def task_option(f):
    return click.option(
        "--task",
        "tasks",
        multiple=True,
        metavar="OUTPUT=TASK",
        help="An output's task where inference should not decide it (repeatable): "
        "classification, regression, reconstruction or output [or [verify] tasks].",
    )(f)


def task_table(items) -> dict[str, str]:
    """--task OUTPUT=TASK … → {output: task}; a malformed item or unknown task is exit 2."""
    from pipeline.analysis.tasks import parse_overrides

    return parse_overrides(items)


def progress(message: str) -> None:
    raise_pending()  # a Ctrl-C a finalizer swallowed stops the stage here, not at its commit
    click.echo(f"… {message}", err=True)


def note(message: str) -> None:
    click.echo(message, err=True)


def make_request(artifacts: Path | None, quiet: bool = False, say=None, **fields):
    """A table.Request for the artifacts dir (resolved as pipeline/DESIGN.md, "The CLI
    contract", says) and these fields.

    `say` defaults to progress lines on stderr, none when quiet."""
    from pipeline.run.table import Request
    from pipeline.store.artifacts import artifacts_dir

    say = say or ((lambda m: None) if quiet else progress)
    wait = click.get_current_context().meta.get("bnpipe.wait", False)
    return Request(out=artifacts_dir(artifacts), quiet=quiet, wait=wait, say=say, **fields)


def execute(name: str, config, request):
    from pipeline.run import table

    return table.execute(name, config, request)


def ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise BnpipeError(f"{option} takes comma-separated integers; got {text!r}") from None


def names(text: str | None) -> tuple[str, ...] | None:
    return tuple(t for t in text.split(",") if t) if text else None


@click.group(cls=BnpipeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bnpipe", prog_name="bnpipe")
@click.option(
    "--debug",
    is_flag=True,
    envvar=DEBUG_ENV,
    help=f"Show the traceback of an internal error (a bug) [or ${DEBUG_ENV}=1].",
)
def cli(debug):
    """bnpipe: train a Keras classifier with batch normalization, fold the BN into its Dense
    layers, quantize it to int8 TFLite, and verify it on the runtimes it will ship to.

    Stages: train → fold → export → verify → bench (`bnpipe run` does all of them).

    Example: bnpipe train --data digits && bnpipe fold
    """


class ProgressBar:
    """A click progress bar on stderr, or nothing; `step(label, n)` advances it."""

    def __init__(self, show: bool, label: str, total: int):
        self.label = label
        self.bar = (
            click.progressbar(length=total, label=label, file=sys.stderr, show_pos=False)
            if show
            else None
        )

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False

    def step(self, label: str, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.label = f"{self.label}: {label}"
            self.bar.update(n)
