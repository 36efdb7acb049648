"""The README cannot drift from the code: its command table is the CLI's own, regenerated here."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location(
        "readme_commands", ROOT / "scripts" / "readme_commands.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_command_table_is_what_the_cli_says():
    gen = _generator()
    current = (ROOT / "README.md").read_text()
    assert current == gen.readme_with(current, gen.table()), (
        "README.md's command table differs from the CLI: run "
        "`python scripts/readme_commands.py --write`"
    )


def test_every_command_and_option_is_in_the_table():
    from pipeline.cli import cli

    gen = _generator()
    table = gen.table()
    for name, command in cli.commands.items():
        heads = (f"| `bnpipe {name} ", f"| `bnpipe {name}`")  # with options, or none
        row = next(line for line in table.splitlines() if line.startswith(heads))
        for param in command.params:
            if param.name not in gen.COMMON_OPTIONS and hasattr(param, "opts"):
                assert any(opt in row for opt in param.opts) or param.human_readable_name in row
