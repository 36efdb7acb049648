"""The report stage: report.html from the records in the artifacts dir (report/html.py).

It reads records only (JSON, never a model), so it runs in well under a second and imports no
TensorFlow; `bnpipe run` runs it last. Its recorded inputs are the sha256 of the records present,
taken as they are: an edited record is named on the page, not refused (run/table.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.config import ReportConfig
from pipeline.report.html import build_page
from pipeline.store import files
from pipeline.store.artifacts import write_text


@dataclass
class ReportResult:
    path: Path
    sections: list[str]  # ids of the sections drawn, in page order
    notes: list[str] = field(default_factory=list)  # records left out, and why
    seconds: float = 0.0


def run_report(out: Path, config: ReportConfig | None = None) -> ReportResult:
    """Write out/report.html (atomically); ArtifactError if no record in `out` is readable."""
    t0 = time.perf_counter()
    page = build_page(Path(out))
    write_text(Path(out) / files.REPORT, page.html)
    return ReportResult(
        Path(out) / files.REPORT, page.sections, page.notes, time.perf_counter() - t0
    )
