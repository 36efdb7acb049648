#!/usr/bin/env python3
"""Time `bnpipe layers` end to end, as a user runs it: a fresh process each time.

    python scripts/measure_layers.py ARTIFACTS [--tflite F] [--data D] [--runs 5]

One untimed warm-up run (the OS file cache), then `--runs` timed ones; prints the median wall
time, the median CPU time of the process and its children (LiteRT's child included), and the
load average, because on a shared machine the wall time says as much about the neighbours.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", type=Path)
    ap.add_argument("--tflite", type=Path, default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    cmd = [sys.executable, "-m", "pipeline.cli", "layers", "--artifacts", str(args.artifacts), "-q"]
    cmd += ["--tflite", str(args.tflite)] if args.tflite else []
    cmd += ["--data", args.data] if args.data else []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    walls, cpus = [], []
    for k in range(args.runs + 1):
        cpu0, t0 = _children_cpu(), time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
        if k:  # the first run warms the file cache
            walls.append(wall)
            cpus.append(cpu)
    print(f"{' '.join(cmd[1:])}")
    print(f"wall median {statistics.median(walls):.2f} s (min {min(walls):.2f}, max "
          f"{max(walls):.2f}); CPU median {statistics.median(cpus):.2f} s; {args.runs} runs; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
