#!/usr/bin/env python3
"""Wall time of `bnpipe run` on a fresh artifacts dir, and of an unchanged second run after it.

    python scripts/measure_run.py [--repeats 3] [--data digits] [--config bnpipe.toml]
                                  [--workdir DIR] [--keep]

Each repeat makes a new, empty artifacts dir, runs `bnpipe run --artifacts DIR -q` there (every
stage runs), then the same command again (every stage should be up to date and skipped). Both are
timed from outside, as a user waits for them: process start, the TensorFlow import and the exit
included. The `bnpipe` next to this Python is used (else `python -m pipeline.cli`).

Before the first repeat, one untimed `import tensorflow` in a child process warms the page cache,
so the first repeat is not the only one that reads TensorFlow's libraries from disk.

Prints every repeat, the per-stage seconds of the first runs (from run's `stages:` line), the
medians, and the ratio second / first (the median of the per-repeat ratios, each measured side by
side). Targets (issue 6): first run < 90 s on a 2-core machine; unchanged second run < 25 % of
the first. Exit 0 when both medians meet them, 1 when one does not, 2 when a run fails.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIRST_RUN_LIMIT_S = 90.0  # issue 6: `bnpipe run` on the default data within 90 s (2 cores)
SECOND_RUN_MAX_RATIO = 0.25  # issue 6: an unchanged second run under 25 % of the first
STAGES = ("train", "fold", "export", "verify", "bench")
ALL_SKIPPED = "stages: " + ", ".join(f"{s} skipped" for s in STAGES)


def bnpipe_command() -> list[str]:
    script = Path(sys.executable).parent / "bnpipe"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "pipeline.cli"]


def timed_run(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    return time.perf_counter() - t0, proc


def stage_seconds(stdout: str) -> dict[str, float]:
    """{stage: seconds} from run's summary line `stages: train 4.5 s, fold skipped, …`."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith("stages: ")), "")
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"(\w+) ([\d.]+) s", line)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--data", default=None, help="Passed to `bnpipe run --data` [default: run's own, digits]."
    )
    ap.add_argument("--config", type=Path, default=None, help="Passed to `bnpipe run --config`.")
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="Where the artifacts dirs go [default: a new temporary directory].",
    )
    ap.add_argument("--keep", action="store_true", help="Keep the artifacts dirs.")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"--repeats must be ≥ 1, got {args.repeats}")

    env = {k: v for k, v in os.environ.items() if k != "BNPIPE_ARTIFACTS"}
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="bnpipe-measure-run-", dir=args.workdir))
    extra = (["--data", args.data] if args.data else []) + (
        ["--config", str(args.config)] if args.config else []
    )
    subprocess.run(
        [sys.executable, "-c", "import pipeline, tensorflow"],
        env=env,
        capture_output=True,
        check=False,
    )

    firsts, seconds, ratios, stages = [], [], [], {s: [] for s in STAGES}
    try:
        for r in range(1, args.repeats + 1):
            out = base / f"run{r}"
            cmd = [*bnpipe_command(), "run", *extra, "--artifacts", str(out), "-q"]
            t1, p1 = timed_run(cmd, env)
            t2, p2 = timed_run(cmd, env)
            for label, p in (("first", p1), ("second", p2)):
                if p.returncode != 0:
                    print(
                        f"repeat {r}: the {label} run exited {p.returncode}:\n"
                        f"{p.stdout[-1500:]}{p.stderr[-1500:]}",
                        file=sys.stderr,
                    )
                    return 2
            if ALL_SKIPPED not in p2.stdout:
                print(
                    f"repeat {r}: the second run reran a stage:\n{p2.stdout[-1500:]}",
                    file=sys.stderr,
                )
                return 2
            per_stage = stage_seconds(p1.stdout)
            for s in STAGES:
                stages[s].append(per_stage.get(s, float("nan")))
            firsts.append(t1)
            seconds.append(t2)
            ratios.append(t2 / t1)
            times = ", ".join(f"{s} {v:.1f}" for s, v in per_stage.items())
            print(
                f"repeat {r}: first {t1:6.1f} s ({times}); "
                f"second {t2:5.2f} s ({100 * t2 / t1:.1f} % of the first)",
                flush=True,
            )
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"artifacts kept in {base}")

    first, second, ratio = (
        statistics.median(firsts),
        statistics.median(seconds),
        statistics.median(ratios),
    )
    cores = os.cpu_count()
    print(f"\nmedians of {args.repeats} repeat(s) on {cores} core(s):")
    print(
        f"  first run   {first:6.1f} s   (stages: "
        + ", ".join(f"{s} {statistics.median(v):.1f} s" for s, v in stages.items())
        + ")"
    )
    print(f"  second run  {second:6.2f} s")
    print(f"  second / first {100 * ratio:.1f} %")
    ok_first, ok_ratio = first < FIRST_RUN_LIMIT_S, ratio < SECOND_RUN_MAX_RATIO
    print(
        f"target first run < {FIRST_RUN_LIMIT_S:.0f} s: {'met' if ok_first else 'MISSED'}; "
        f"second < {100 * SECOND_RUN_MAX_RATIO:.0f} % of first: {'met' if ok_ratio else 'MISSED'}"
    )
    return 0 if ok_first and ok_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
