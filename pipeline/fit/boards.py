"""Boards as data: the shipped table (boards.toml beside this file) and a user's own profiles
([fit.profiles.NAME] in bnpipe.toml), both checked key by key into `Board`s."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import BnpipeError

SHIPPED = Path(__file__).with_name("boards.toml")
KINDS = ("mcu", "ethos-u")
# Vela's --accelerator-config choices (ethos-u-vela 5).
ACCELERATORS = (
    "ethos-u55-32",
    "ethos-u55-64",
    "ethos-u55-128",
    "ethos-u55-256",
    "ethos-u65-256",
    "ethos-u65-512",
    "ethos-u85-128",
    "ethos-u85-256",
    "ethos-u85-512",
    "ethos-u85-1024",
    "ethos-u85-2048",
)
NPU_KEYS = ("accelerator", "system_config", "memory_mode")
TEXT_KEYS = ("title", "cpu", "source")
MAX_KIB = 1 << 30  # a terabyte: far beyond any board, so a typo is refused, not believed


@dataclass(frozen=True, kw_only=True)
class Board:
    name: str
    kind: str  # "mcu" or "ethos-u"
    ram_kib: int
    flash_kib: int
    title: str = ""
    cpu: str = ""
    source: str = ""
    accelerator: str = ""  # ethos-u only: Vela's options
    system_config: str = ""
    memory_mode: str = ""

    @property
    def npu(self) -> bool:
        return self.kind == "ethos-u"

    @property
    def ram_bytes(self) -> int:
        return self.ram_kib * 1024

    @property
    def flash_bytes(self) -> int:
        return self.flash_kib * 1024


def board(name: str, entry: Any, where: str) -> Board:
    """One table of boards.toml (or a user profile) as a Board; BnpipeError naming the key."""
    if not isinstance(entry, dict):
        raise BnpipeError(f"{where}: board {name} must be a table of keys, got {entry!r}")
    kind = entry.get("kind")
    if kind not in KINDS:
        raise BnpipeError(
            f"{where}: board {name} kind must be one of {', '.join(KINDS)}, got {kind!r}"
        )
    allowed = {"kind", "ram_kib", "flash_kib", *TEXT_KEYS, *(NPU_KEYS if kind == "ethos-u" else ())}
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise BnpipeError(
            f"{where}: board {name} has unknown key(s) {', '.join(unknown)}; "
            f"expected some of {', '.join(sorted(allowed))}"
        )
    for key in ("ram_kib", "flash_kib"):
        value = entry.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_KIB):
            raise BnpipeError(
                f"{where}: board {name} {key} must be an integer from 1 to {MAX_KIB}, got {value!r}"
            )
    needed = NPU_KEYS if kind == "ethos-u" else ()
    for key in (*TEXT_KEYS, *needed):
        value = entry.get(key, "")
        if not isinstance(value, str) or (key in needed and not value):
            raise BnpipeError(f"{where}: board {name} {key} must be a string, got {value!r}")
    if kind == "ethos-u" and entry["accelerator"] not in ACCELERATORS:
        raise BnpipeError(
            f"{where}: board {name} accelerator must be one of {', '.join(ACCELERATORS)}, "
            f"got {entry['accelerator']!r}"
        )
    return Board(name=name, **{k: v for k, v in entry.items()})


def shipped_boards() -> dict[str, Board]:
    """The boards of boards.toml, by name, in the file's order."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    table = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))
    return {name: board(name, entry, "boards.toml") for name, entry in table.items()}


def known_boards(profiles: dict[str, Any] | None = None) -> dict[str, Board]:
    """The shipped boards and the user's profiles (a profile of a shipped name replaces it)."""
    boards = shipped_boards()
    for name, entry in (profiles or {}).items():
        boards[name] = board(name, entry, f"[fit.profiles.{name}]")
    return boards


def resolve(names: tuple[str, ...], profiles: dict[str, Any] | None = None) -> list[Board]:
    """The boards asked for, in order, without repeats; BnpipeError (exit 2) for a name bnpipe
    does not know, listing the names it does."""
    boards = known_boards(profiles)
    unknown = [n for n in names if n not in boards]
    if unknown:
        raise BnpipeError(
            f"unknown board(s) {', '.join(unknown)}; known: {', '.join(boards)} "
            "(or add your own as [fit.profiles.NAME] in bnpipe.toml)"
        )
    return [boards[n] for n in dict.fromkeys(names)]
