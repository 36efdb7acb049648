"""bnpipe.toml: read with bounds, each table checked against its stage's config dataclass
(core/config.py), every mistake one line naming the table, the key, what it holds and what was
expected.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from pipeline.core.config import STAGE_CONFIGS, ConfigError, RunConfig
from pipeline.core.errors import BnpipeError
from pipeline.core.safeio import read_bytes

# bnpipe.toml holds a few dozen options; a megabyte is thousands of times that.
CONFIG_FILE_MAX_BYTES = 1 << 20


def load_run_config(
    path: Path | None, overrides: dict[str, dict[str, Any]] | None = None
) -> RunConfig:
    """RunConfig from a TOML file whose tables [train], [fold], … take the options' names as keys.

    Every value is checked against its option's type before any stage runs: ConfigError naming
    the file, the table and the key.
    """
    data = _read_toml(path) if path is not None else {}
    where = f"config file {path}" if path is not None else "the options"
    unknown = sorted(set(data) - set(STAGE_CONFIGS))
    if unknown:
        raise BnpipeError(
            f"{where}: unknown table(s) {', '.join(unknown)}; expected {', '.join(STAGE_CONFIGS)}"
        )
    defaults = RunConfig()
    parts = {}
    for name in STAGE_CONFIGS:
        section = data.get(name, {})
        if not isinstance(section, dict):
            raise BnpipeError(
                f"{where}: [{name}] must be a table of options, got {type(section).__name__} "
                f"{section!r}"
            )
        section = {**section, **(overrides or {}).get(name, {})}
        parts[name] = _section(where, name, getattr(defaults, name), section)
    return RunConfig(**parts)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    # A FIFO, a device or a directory is refused before reading; a real config is a few lines.
    text = read_bytes(path, "config file", BnpipeError, max_bytes=CONFIG_FILE_MAX_BYTES)
    try:
        return tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BnpipeError(
            f"config file {path} is not UTF-8 text: {exc.reason} at byte {exc.start}"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise BnpipeError(f"config file {path} is not valid TOML: {exc}") from None
    except ValueError as exc:  # an integer of more digits than Python converts (4,300)
        reason = " ".join(str(exc).split())[:200]
        raise BnpipeError(f"config file {path} cannot be read: {reason}") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise BnpipeError(f"config file {path} nests arrays or tables too deeply") from None


def _section(where: str, table: str, default: Any, section: dict[str, Any]) -> Any:
    cls = type(default)
    hints = typing.get_type_hints(cls)
    keys = [f.name for f in dataclasses.fields(cls)]
    bad = sorted(set(section) - set(keys))
    if bad:
        raise BnpipeError(
            f"{where}: [{table}] has unknown key(s) {', '.join(bad)}; "
            f"expected some of {', '.join(sorted(keys))}"
        )
    values = {}
    for key, value in section.items():
        problem = _type_problem(hints[key], value)
        if problem:
            raise ConfigError(key, problem).in_file(where, table) from None
        values[key] = tuple(value) if isinstance(value, list) else value
    # The stage's own defaults (RunConfig's, where they differ from the class's), then the
    # file's values, given to the class: options a file leaves out that depend on another
    # (train's recipe on its arch) are then resolved from what the file says.
    base = cls()
    given = {
        f.name: getattr(default, f.name)
        for f in dataclasses.fields(cls)
        if getattr(default, f.name) != getattr(base, f.name)
    }
    try:
        return cls(**{**given, **values})
    except ConfigError as exc:
        raise exc.in_file(where, table) from None


def _type_problem(hint: Any, value: Any) -> str:
    """Why `value` (as TOML gives it) cannot be an option of type `hint` ("" if it can)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]  # TOML has no null: the inner type
        return _type_problem(inner[0], value)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list):
            return f"must be a list, got {_toml_kind(value)} {value!r}"
        for item in value:
            if _type_problem(args[0], item):
                return f"must be a list of {_kind_name(args[0], plural=True)}, got {value!r}"
        return ""
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    return "" if ok else f"must be {_kind_name(hint)}, got {_toml_kind(value)} {value!r}"


def _kind_name(hint: Any, plural: bool = False) -> str:
    if plural:
        return {int: "integers", float: "numbers", str: "strings"}.get(hint, str(hint))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, str(hint)
    )


def _toml_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)
