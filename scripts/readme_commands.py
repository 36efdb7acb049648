#!/usr/bin/env python3
"""The README's command table, generated from the CLI itself so the two cannot drift apart.

    python scripts/readme_commands.py            print the table
    python scripts/readme_commands.py --write    put it into README.md between the markers
    python scripts/readme_commands.py --check    exit 1 if README.md's table is not current

tests/test_readme.py runs the check. Only Click's own introspection is used (no TensorFlow).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START, END = "<!-- commands:start -->", "<!-- commands:end -->"
# Options every writing command takes, described once in the README's prose, not in each row.
COMMON_OPTIONS = ("artifacts", "quiet", "wait")


def _option(param: click.Parameter, ctx: click.Context) -> str:
    """`--epochs 10`, `--bn keras|custom`, `--resume`, `TFLITE`: how the table shows one option."""
    if isinstance(param, click.Argument):
        return param.make_metavar(ctx)
    name = param.opts[0]
    if param.is_flag:
        return f"[{name}]"
    default = param.get_default(ctx, call=False)
    if isinstance(param.type, click.Choice):
        value = "\\|".join(param.type.choices)
    elif default not in (None, ()) and isinstance(default, (str, int, float, tuple, list)):
        value = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else str(default)
    else:
        value = param.make_metavar(ctx)
    return f"[{name} {value}]" + ("…" if param.multiple else "")


def _summary(command: click.Command) -> str:
    """The first sentence of the command's help (its docstring's first paragraph)."""
    text = " ".join((command.help or "").split("\n\n")[0].split())
    return text.replace("|", "\\|")


def table() -> str:
    """The Markdown table of every command: its options with their defaults, what it does."""
    sys.path.insert(0, str(ROOT))
    from pipeline.cli import cli

    ctx = click.Context(cli, info_name="bnpipe")
    lines = ["| command | what it does |", "|---|---|"]
    for name, command in cli.commands.items():
        options = " ".join(_option(p, ctx) for p in command.params if p.name not in COMMON_OPTIONS)
        usage = f"bnpipe {name} {options}".rstrip()
        lines.append(f"| `{usage}` | {_summary(command)} |".replace("  ", " "))
    return "\n".join(lines) + "\n"


def readme_with(text: str, generated: str) -> str:
    before, start, rest = text.partition(START)
    _, end, after = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"README.md lacks the markers {START} … {END}")
    return f"{before}{START}\n{generated}{END}{after}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="update README.md in place")
    mode.add_argument("--check", action="store_true", help="exit 1 if README.md is stale")
    args = parser.parse_args(argv)
    generated = table()
    if not (args.write or args.check):
        print(generated, end="")
        return 0
    current = README.read_text()
    wanted = readme_with(current, generated)
    if args.check:
        if current != wanted:
            print(
                "README.md's command table differs from the CLI; run "
                "`python scripts/readme_commands.py --write`",
                file=sys.stderr,
            )
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
