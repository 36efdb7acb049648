#!/usr/bin/env python3
"""Size of report.html, its render time in headless Chromium, and the wall time of `bnpipe report`.

    python scripts/measure_report.py ARTIFACTS_DIR [--repeats 5]

ARTIFACTS_DIR is one `bnpipe run` has filled (and, for the layers section, `bnpipe layers`). The
issue's case is the MNIST-sized CNN; offline, scikit-learn's digits enlarged to 28×28 stand in:

    python scripts/make_digits28.py d28.npz
    bnpipe run --arch cnn --data d28.npz --artifacts cnn28 && bnpipe layers --artifacts cnn28
    python scripts/measure_report.py cnn28

Each repeat times `bnpipe report --artifacts DIR -q` from outside (process start, imports and
exit included: what a user waits for), after one untimed warm-up run. Then one headless Chromium
(tests/browser.py, the tests' driver) opens the page `--repeats` times, each in a fresh tab after
one untimed warm-up visit, and times from Page.navigate until two animation frames have been
drawn after the load event (the page is laid out and painted), as the page's own clock says it
(performance.now(), from the navigation's start). Every visit also counts console errors and
network requests. Prints every repeat and the medians; exit 1 when a goal of issue 22 is missed
(report.html ≤ 2 MB, render ≤ 2 s, `bnpipe report` ≤ 3 s, no console error, no request).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the browser driver the tests use

from browser import Browser  # noqa: E402

MAX_BYTES = 2 * 1024 * 1024  # issue 22: report.html of the MNIST CNN run ≤ 2 MB
MAX_RENDER_S = 2.0  # issue 22: opens and finishes rendering in ≤ 2 s
MAX_REPORT_S = 3.0  # issue 22: `bnpipe report` on an existing dir ≤ 3 s
# Resolves once two frames were drawn after load: layout and paint are done.
PAINTED = (
    "new Promise(r => requestAnimationFrame("
    "() => requestAnimationFrame(() => r(performance.now()))))"
)


def time_report(out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "report", "--artifacts", str(out), "-q"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    time_report(args.artifacts)  # warm-up: page cache, .pyc files
    walls = [time_report(args.artifacts) for _ in range(args.repeats)]
    page = args.artifacts / "report.html"
    size = page.stat().st_size
    renders, errors, requests = [], 0, 0
    with Browser() as browser:
        browser.visit(page, PAINTED)  # warm-up: the browser's own first-page costs
        for i in range(args.repeats):
            shot = args.artifacts / "report.png" if i == 0 else None
            visit = browser.visit(page, PAINTED, screenshot=shot)
            renders.append(float(visit.result) / 1000)
            errors += len(visit.console)
            requests += len(visit.requests)
    print(f"bnpipe report wall time, s: {', '.join(f'{w:.2f}' for w in walls)}")
    print(f"render in headless Chromium, s: {', '.join(f'{r:.3f}' for r in renders)}")
    wall, render = statistics.median(walls), statistics.median(renders)
    print(
        f"median: bnpipe report {wall:.2f} s (goal ≤ {MAX_REPORT_S:g}); report.html {size:,} B "
        f"(goal ≤ {MAX_BYTES:,}); render {render:.3f} s (goal ≤ {MAX_RENDER_S:g}); "
        f"{errors} console errors, {requests} requests over {args.repeats} visits"
    )
    met = (
        wall <= MAX_REPORT_S
        and size <= MAX_BYTES
        and render <= MAX_RENDER_S
        and errors == 0
        and requests == 0
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
