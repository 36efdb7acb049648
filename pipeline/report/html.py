"""report.html: one self-contained page that tells an artifacts dir's whole story.

The page is built from the records the stages left (train.json … bench.json, layers.json,
fit.json, manifest.json) and nothing else: no model runs, and TensorFlow is never imported, so
it takes well under a second. Its first screen answers "does it ship, and why" (verify's
verdict in one sentence, with the four numbers behind it); then the lineage, then one section
per record, newest record first.

Every string taken from a record passes through `svg.esc` (a layer may be named
`<script>…`); the page also carries a Content-Security-Policy that allows no script and no
request at all, so even a missed escape could neither run nor reach the network. A record a
user edited into another shape loses its section, with a note saying which and why; the page
is still written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.errors import ArtifactError
from pipeline.report import sections, summary
from pipeline.report.svg import CHART_CSS, esc
from pipeline.store import files
from pipeline.store.artifacts import read_json, sha256_file

# The records a section is drawn from, in the order of the pipeline (fit: another stage's).
RECORDS = {
    "train": files.TRAIN_RECORD,
    "fold": files.FOLD_RECORD,
    "export": files.EXPORT_RECORD,
    "verify": files.VERIFY_RECORD,
    "bench": files.BENCH_RECORD,
    "layers": files.LAYERS_RECORD,
    "fit": files.FIT_RECORD,
    "manifest": files.MANIFEST,
}
# A record edited into another shape raises one of these while its section is drawn.
SHAPE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, ArithmeticError)
# Allow nothing but the page's own styles and inline images: no script, no font, no request.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


@dataclass
class Page:
    html: str
    sections: list[str]  # the ids of the sections drawn, in page order
    notes: list[str] = field(default_factory=list)  # records left out, and why


def load_records(out: Path) -> tuple[dict[str, dict], list[str]]:
    """{name: record} of the records in `out` that read as JSON objects, and a note for each
    one present that does not (ArtifactError's one line)."""
    records, notes = {}, []
    for name, file in RECORDS.items():
        path = Path(out) / file
        if not os.path.lexists(path):
            continue
        try:
            records[name] = read_json(path, file)
        except ArtifactError as exc:
            notes.append(f"{file} was left out: {' '.join(str(exc).split())}")
    return records, notes


def record_digests(out: Path) -> dict[str, str]:
    """{file: sha256} of the records the page is drawn from (manifest.json aside: it changes when
    the report itself is recorded), as they are: the report stage's recorded inputs."""
    present = [f for n, f in RECORDS.items() if n != "manifest" and (Path(out) / f).is_file()]
    return {f: sha256_file(Path(out) / f) for f in present}


def build_page(out: Path) -> Page:
    """The page for the artifacts dir `out`. ArtifactError if no record in it can be read."""
    records, notes = load_records(out)
    if not any(name != "manifest" for name in records):
        why = f" ({notes[0]})" if notes else ""
        raise ArtifactError(
            f"{out} holds no bnpipe record to report on{why}; run `bnpipe run` (or a stage) first"
        )
    notes += edited_records(out, records.get("manifest"))
    drawn: list[tuple[str, str, str]] = []  # (created, id, html)
    for name, draw in sections.SECTIONS.items():
        if name not in records:
            continue
        body = guarded(name, draw, records[name], notes)
        if body:
            drawn.append((str(records[name].get("created", "")), name, body))
    drawn.sort(key=lambda d: d[0], reverse=True)  # newest record first
    head = guarded("verify", summary.verdict, records, notes, "banner") or summary.no_verdict()
    lineage = guarded("train", summary.lineage, records, notes, "lineage") or ""
    if notes:  # on the first screen: an edited verify.json changes what the banner means
        head += (
            f'<p class="fail">{len(notes)} record(s) left out or edited since their stage wrote '
            'them: see <a href="#notes">Left out</a>.</p>'
        )
    ids = (["lineage"] if lineage else []) + [d[1] for d in drawn]
    body = head + _contents(ids) + lineage + "".join(d[2] for d in drawn) + _notes(notes)
    title = summary.verdict_word(records.get("verify"))
    return Page(_document(title, out, body), ids, notes)


def guarded(name: str, draw: Callable, record, notes: list[str], part: str = "") -> str:
    """draw(record), or "" and a note when the record is not of the shape bnpipe writes."""
    try:
        return draw(record)
    except SHAPE_ERRORS as exc:
        what = f"{type(exc).__name__}: {str(exc)[:80]}"
        notes.append(
            f"{RECORDS[name]} is not of the shape bnpipe writes ({what}); its "
            f"{part or 'section'} was left out"
        )
        return ""


def edited_records(out: Path, manifest: dict | None) -> list[str]:
    """A note for each record whose bytes are no longer what its stage wrote (manifest.json)."""
    stages = manifest.get("stages") if isinstance(manifest, dict) else None
    if not isinstance(stages, dict):
        return []
    notes = []
    for stage, entry in stages.items():
        outputs = entry.get("outputs") if isinstance(entry, dict) else None
        for file, sha in (outputs if isinstance(outputs, dict) else {}).items():
            path = Path(out) / file
            if file in RECORDS.values() and path.is_file() and sha256_file(path) != sha:
                notes.append(
                    f"{file} is not the file `bnpipe {stage}` wrote (manifest.json holds "
                    "another sha256): it was edited or copied from another run"
                )
    return notes


def _contents(ids: list[str]) -> str:
    links = "".join(f'<a href="#{i}">{esc(sections.TITLES[i])}</a>' for i in ids)
    return f'<nav aria-label="sections">{links}</nav>'


def _notes(notes: list[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return f'<section id="notes"><h2>Left out</h2><ul>{items}</ul></section>'


def _document(title: str, out: Path, body: str) -> str:
    made = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>bnpipe report: {esc(title)} ({esc(Path(out).name)})</title>"
        f"<style>{PAGE_CSS}{CHART_CSS}</style></head><body><main>"
        f"{body}"
        f"<footer>Written by <code>bnpipe report</code> from the records in "
        f"<code>{esc(Path(out).name)}</code> on {esc(made)}. This file loads nothing from "
        "outside itself and runs no script.</footer></main></body></html>\n"
    )


PAGE_CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1b1b1b;
background:#fafafa}
main{max-width:1000px;margin:0 auto;padding:0 18px 30px;background:#fff}
h1{margin:0;font-size:30px}h2{font-size:20px;margin:0 0 .4em;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:1em 0 .3em}
.banner{padding:16px 20px;margin:0 -18px;color:#fff}
.banner.ship{background:#1e7e34}.banner.noship{background:#b52a1c}.banner.none{background:#555}
.banner p{margin:.35em 0 0;font-size:16px;max-width:900px}.banner .sub{font-size:12px;opacity:.9}
.facts{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.fact{flex:1 1 200px;border:1px solid #ddd;border-radius:6px;padding:8px 12px}
.fact b{display:block;font-size:20px}.fact span{color:#555;font-size:12px}
nav{display:flex;flex-wrap:wrap;gap:4px 14px;padding:6px 0;border-bottom:1px solid #eee}
section{margin:18px 0}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:12.5px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#1e7e34;font-weight:600}.fail{color:#b52a1c;font-weight:600}
code{font-size:12px;background:#f3f3f3;padding:0 3px;word-break:break-all}
.note{color:#555;font-size:12.5px}
footer{margin-top:26px;color:#666;font-size:12px;border-top:1px solid #ddd;padding-top:8px}
@media print{
body,main{background:#fff}nav{display:none}
.banner{-webkit-print-color-adjust:exact;print-color-adjust:exact}
section{break-inside:avoid-page}svg.chart{break-inside:avoid}a{color:inherit}
}
"""
