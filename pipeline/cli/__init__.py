"""The `bnpipe` command line: parse, call one library function, print its result.

Nothing here imports TensorFlow at module level: `bnpipe --help` and `bnpipe CMD --help` stay
fast. Library exceptions become exit codes here and only here (pipeline/core/errors.py): `base`
holds the group that maps them, `commands` the stage commands, `checks` the commands that look
at what they made.

May import: every floor below it (it is the top).
"""

from __future__ import annotations

import os
import sys
import warnings

from pipeline.cli import checks, commands  # noqa: F401  (they register the commands on the group)
from pipeline.cli.base import cli
from pipeline.core.interrupts import install

__all__ = ["cli", "main"]


def main():
    """The `bnpipe` command. Ctrl-C, SIGTERM and SIGHUP discard the running stage's files (see
    interrupts.py). An interrupted run ends without the interpreter's shutdown, which tears
    TensorFlow down: a late signal or finalizer there could turn exit 130 into death by SIGINT
    (seen once in CI) or hang a user who pressed Ctrl-C."""
    install()
    # NumPy's "invalid value encountered" and the like, raised in bnpipe's own arithmetic on a
    # hostile model's values (weights near float32's limit): the one-line error says what failed.
    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"pipeline\.")
    try:
        cli(prog_name="bnpipe")
    except SystemExit as exc:
        if exc.code in (130, 143):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.code)
        raise
