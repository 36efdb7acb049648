#!/usr/bin/env python3
"""Wall time and peak memory of `bnpipe train` against the seed article's own `fit`, side by side.

    python scripts/measure_train.py [--repeats 5] [--shifted-copies 5] [--workdir DIR]
                                    [--json PATH] [--keep]

The data are MNIST-sized and made offline: scikit-learn's digits enlarged to 28×28 with
`scripts/make_digits28.py --shifted-copies K` (K = 5: 8,622 training and 2,160 test images of
784 pixels; augmented digits, not MNIST). Each repeat then runs, as whole processes and in
alternating order,

    bnpipe   python -m pipeline.cli train --data DATA.npz --quiet --artifacts NEW_DIR
    article  python scripts/article_fit.py DATA.npz NEW_DIR/model.keras

(the same recipe: same Keras, split sizes, model, optimizer, epochs and batch size; see
article_fit.py). Each child is timed from its start to its exit, TensorFlow's import included,
and its peak RSS and CPU time come from the kernel (os.wait4). Before the first repeat one
untimed run of each warms the page cache.

Prints every repeat, the medians, and the ratios bnpipe / article (the median of the per-repeat
ratios, each measured side by side; a shared machine moves single runs by ±30 %). Writes all of
it as JSON. Target (issue 3): both ratios ≤ 1.05. Exit 0 when the median ratios of wall time and
peak RSS meet it, 1 when one does not, 2 when a run fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.05  # issue 3: bnpipe train within 5 % of the article's fit, in time and memory
REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
KINDS = ("bnpipe", "article")


def run_child(cmd: list[str], env: dict[str, str], logs: Path) -> dict:
    """Run `cmd` in the repository to its exit; its wall seconds, peak RSS (MiB) and CPU seconds.

    Its output goes to files beside its outputs (`logs`.out / .err), not through pipes that
    this process would have to drain while it waits.
    """
    with open(f"{logs}.out", "wb") as out, open(f"{logs}.err", "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)  # Popen.wait would drop the rusage
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall_s": wall,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux reports KiB
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "exit_code": proc.returncode,
    }


def die(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(2)


def command(kind: str, data: str, out: str) -> list[str]:
    """The arguments after `python` of one run (`out`: the artifacts dir or the model's dir)."""
    if kind == "bnpipe":
        return ["-m", "pipeline.cli", "train", "--data", data, "--quiet", "--artifacts", out]
    return [str(Path("scripts") / "article_fit.py"), data, str(Path(out) / "model.keras")]


def measure(kind: str, data: Path, out: Path, env: dict[str, str]) -> dict:
    out.mkdir(parents=True)
    r = run_child([sys.executable, *command(kind, str(data), str(out))], env, out / "log")
    if r["exit_code"]:
        err = Path(f"{out / 'log'}.err").read_text(errors="replace")
        die(f"{kind} failed with exit {r['exit_code']}:\n{err[-3000:]}")
    return r


def make_data(dest: Path, copies: int, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "make_digits28.py"),
            "--shifted-copies",
            str(copies),
            str(dest),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        die(f"make_digits28.py failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--shifted-copies",
        type=int,
        default=5,
        metavar="K",
        help="make_digits28.py --shifted-copies (5: 8,622 training images)",
    )
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="Where the data and outputs go [default: a new temporary directory].",
    )
    ap.add_argument(
        "--json",
        type=Path,
        default=None,
        help="Where the results go [default: WORKDIR/measure_train.json].",
    )
    ap.add_argument("--keep", action="store_true", help="Keep the data and outputs.")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"--repeats must be ≥ 1, got {args.repeats}")

    env = {k: v for k, v in os.environ.items() if k != "BNPIPE_ARTIFACTS"}
    # `python -m pipeline.cli` must be this checkout's package, whatever is installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="bnpipe-measure-train-", dir=args.workdir))
    json_path = args.json or (args.workdir or Path.cwd()) / "measure_train.json"
    try:
        data = base / "digits28.npz"
        made = make_data(data, args.shifted_copies, env)
        print(made, flush=True)

        for kind in KINDS:  # warm-up: the page cache holds TensorFlow's libraries afterwards
            measure(kind, data, base / f"warm-{kind}", env)
        runs: dict[str, list[dict]] = {k: [] for k in KINDS}
        print(f"{'repeat':>6} {'run':<8} {'wall s':>7} {'peak RSS MiB':>12} {'CPU s':>6}")
        for rep in range(1, args.repeats + 1):
            order = KINDS if rep % 2 else KINDS[::-1]  # alternate who goes first
            for kind in order:
                r = measure(kind, data, base / f"{kind}-{rep}", env)
                runs[kind].append(r)
                print(
                    f"{rep:>6} {kind:<8} {r['wall_s']:>7.2f} {r['peak_rss_mib']:>12.1f} "
                    f"{r['cpu_s']:>6.2f}",
                    flush=True,
                )
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    metrics = ("wall_s", "peak_rss_mib", "cpu_s")
    medians = {k: {m: statistics.median(r[m] for r in runs[k]) for m in metrics} for k in KINDS}
    ratios = {
        m: statistics.median(
            b[m] / a[m] for b, a in zip(runs["bnpipe"], runs["article"], strict=True)
        )
        for m in metrics
    }
    met = ratios["wall_s"] <= TARGET_RATIO and ratios["peak_rss_mib"] <= TARGET_RATIO
    print(f"\nmedians of {args.repeats} ({made.split(':', 1)[-1].strip()})")
    print(f"| {'':<8} | {'wall s':>7} | {'peak RSS MiB':>12} | {'CPU s':>6} |")
    print(f"| {':--':<8} | {'--:':>7} | {'--:':>12} | {'--:':>6} |")
    for k in KINDS:
        print(
            f"| {k:<8} | {medians[k]['wall_s']:>7.2f} | {medians[k]['peak_rss_mib']:>12.1f} | "
            f"{medians[k]['cpu_s']:>6.2f} |"
        )
    print(
        f"| {'ratio':<8} | {ratios['wall_s']:>6.3f}× | {ratios['peak_rss_mib']:>11.3f}× | "
        f"{ratios['cpu_s']:>5.3f}× |"
    )
    print(f"target ≤ {TARGET_RATIO}× in wall time and peak RSS: {'met' if met else 'NOT met'}")

    result = {
        "data": made,
        "repeats": args.repeats,
        "commands": {k: "python " + " ".join(command(k, "DATA.npz", "OUT")) for k in KINDS},
        "runs": runs,
        "medians": medians,
        "ratios": ratios,
        "target_ratio": TARGET_RATIO,
        "target_met": met,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "python": platform.python_version(),
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {json_path}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
