"""Small HTML pieces for report.html: tables whose every cell is escaped, and number formats.

A cell is escaped unless it is `Raw` (markup this package wrote, such as a pass/fail mark), so
a string from a record can never become markup by accident.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.report.svg import esc


class Raw(str):
    """Markup written by the report itself: put in a cell as is."""


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], numeric: str = "") -> str:
    """An HTML table; `numeric` holds one letter per column, "r" for right-aligned numbers."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = ' class="n"' if i < len(numeric) and numeric[i] == "r" else ""
            cells.append(f"<td{cls}>{cell if isinstance(cell, Raw) else esc(cell)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""
    return f"<table>{thead}<tbody>{''.join(body)}</tbody></table>"


def mark(ok: bool, yes: str = "pass", no: str = "FAIL") -> Raw:
    return Raw(
        f'<span class="pass">{esc(yes)}</span>' if ok else f'<span class="fail">{esc(no)}</span>'
    )


def pct(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{100 * float(value):.{digits}f} %"


def num(value: float | None, fmt: str = ".3g", unit: str = "") -> str:
    return "—" if value is None else f"{float(value):{fmt}}{unit}"


def nbytes(value: int | None) -> str:
    return "—" if value is None else f"{int(value):,} B"


def sha(value: object) -> str:
    """A sha256 as its first 12 hex digits (enough to tell files apart by eye)."""
    return f"{str(value)[:12]}…" if value else "—"


def section(ident: str, title: str, body: str, created: object = None) -> str:
    when = f' <span class="note">record of {esc(created)}</span>' if created else ""
    return f'<section id="{esc(ident)}"><h2>{esc(title)}{when}</h2>{body}</section>'


def para(text: str) -> str:
    return f"<p>{esc(text)}</p>"
