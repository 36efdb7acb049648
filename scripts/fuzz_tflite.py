#!/usr/bin/env python3
"""Fuzz `bnpipe verify` with damaged .tflite files: no file may take bnpipe's process down.

    python scripts/fuzz_tflite.py [--artifacts DIR] [--seeds DIR] [--count 1000] [--seed 0]
                                  [--targets host,host-ref,tflm] [--jobs 2] [--via worker|cli]
                                  [--max-samples 100] [--timeout 900] [--json OUT] [--keep DIR]

Seed files are real exported models: model_*.tflite of --seeds DIR, else of --artifacts DIR, else
of a tiny model trained and exported here (≈ 30 s). Mutant i (i = 0 … count−1) is made from
random.Random(f"{seed}:{i}") alone, so any one can be made again without the others
(`mutant(seeds, seed, i)`): a seed file chosen at random, then either 1–5 bytes each XORed with a
random non-zero byte (each position, with even odds, anywhere in the file or in its structure:
the bytes outside its weight buffers, where a change reaches shapes, indices and options rather
than values) or, one time in five, the file truncated at a random length.

Each mutant goes through the real CLI path, `bnpipe verify --tflite MUTANT --targets TARGETS
--max-samples N -q` against a copy of the artifacts dir (its model.keras is the reference):

    --via worker  (default) one long-lived child process per job imports bnpipe once and runs
                  the command in-process with click's CliRunner; a signal kills that child, which
                  is then that mutant's outcome, and a new child takes the next mutant
    --via cli     a fresh `python -m pipeline.cli verify …` process per mutant (≈ 5 s each: the
                  TensorFlow import), the exact command a user runs

Outcomes: exit 0, exit 1 (a gate failed), exit 2 (bad input) — each non-zero exit must be exactly
one `Error: …` line on stderr — and what must never happen: a signal, a timeout, a traceback (an
uncaught exception, whatever its exit code), a non-zero exit without its one Error line, any
other exit code. Prints a table, writes every mutant's outcome to --json, copies the offending
mutants to --keep, and exits 1 when anything that must never happen happened.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BAD = ("signal", "timeout", "traceback", "no error line", "other")
FLIP_SHARE = 0.8  # the rest are truncations
STRUCTURE_SHARE = 0.5  # flipped positions drawn from outside the weight buffers
MAX_FLIPS = 5


@dataclass
class Mutant:
    index: int
    seed_file: str
    kind: str  # "flip" or "truncate"
    positions: list[int] = field(default_factory=list)  # flips: where; truncate: [new length]
    data: bytes = b""


def seed_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("model_*.tflite")) or sorted(directory.glob("*.tflite"))
    if not files:
        raise SystemExit(f"no .tflite seed files in {directory}")
    return files


def mutant(seeds: list[tuple[str, bytes, list[int]]], seed: int, index: int) -> Mutant:
    """Mutant `index` of run `seed`: seeds are (name, bytes, structure positions)."""
    rng = random.Random(f"{seed}:{index}")
    name, data, structure = seeds[rng.randrange(len(seeds))]
    if rng.random() >= FLIP_SHARE:
        cut = rng.randrange(len(data))
        return Mutant(index, name, "truncate", [cut], data[:cut])
    out = bytearray(data)
    positions = []
    for _ in range(rng.randint(1, MAX_FLIPS)):
        if structure and rng.random() < STRUCTURE_SHARE:
            pos = structure[rng.randrange(len(structure))]
        else:
            pos = rng.randrange(len(data))
        out[pos] ^= rng.randrange(1, 256)
        positions.append(pos)
    return Mutant(index, name, "flip", positions, bytes(out))


def load_seeds(files: list[Path]) -> list[tuple[str, bytes, list[int]]]:
    from pipeline.tflite.file import buffer_spans

    seeds = []
    for path in files:
        data = path.read_bytes()
        inside = bytearray(len(data))
        for start, length in buffer_spans(data):
            inside[start : start + length] = b"\x01" * length
        seeds.append((path.name, data, [p for p in range(len(data)) if not inside[p]]))
    return seeds


def make_artifacts(directory: Path) -> Path:
    """A tiny model trained on digits, folded and exported (int8, float32, post-training int8)."""
    from pipeline.core.config import ExportConfig, TrainConfig
    from pipeline.stages.export import run_export
    from pipeline.stages.fold import run_fold
    from pipeline.stages.train import train

    print(f"training and exporting a tiny model into {directory} …", file=sys.stderr)
    config = TrainConfig(hidden=(16, 16), epochs=2, batch_size=16, learning_rate=1e-2, seed=0)
    train(config, directory, quiet=True)
    run_fold(directory / "model.keras", directory, warn=lambda message: None)
    modes = ("int8", "float32", "ptq-int8")
    run_export(
        directory / "folded.keras", directory, config=ExportConfig(modes=modes, qat_epochs=1)
    )
    return directory


def verify_args(path: Path, artifacts: Path, targets: str, max_samples: int) -> list[str]:
    return [
        "verify",
        "--tflite",
        str(path),
        "--targets",
        targets,
        "--max-samples",
        str(max_samples),
        "-q",
        "--artifacts",
        str(artifacts),
    ]


def classify(code: int | None, stderr: str, traceback: bool) -> tuple[str, str]:
    """(outcome, its one error line or what went wrong) of one finished command."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    if code is None:
        return "timeout", ""
    if code < 0:
        return "signal", f"signal {-code}"
    if traceback or "Traceback (most recent call last)" in stderr:
        return "traceback", (lines or ["no output"])[-1][:300]
    if code == 0:
        return "exit 0", ""
    if code not in (1, 2):
        return "other", f"exit {code}: {(lines or ['no output'])[-1][:300]}"
    if len(errors) != 1 or lines[-1] != errors[0]:
        return "no error line", f"exit {code}: {len(errors)} Error lines"
    return f"exit {code}", errors[0][:300]


# -- the worker: one child per job, verify in-process through click, many mutants in turn -------

WORKER_READY = "fuzz worker ready"


def worker() -> int:
    """Read one JSON list of CLI arguments per stdin line; answer one JSON line per command."""
    import io

    from click.testing import CliRunner

    from pipeline.cli import cli

    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # native writes to stdout must not reach the answers
    print(WORKER_READY, file=answers, flush=True)
    for line in sys.stdin:
        args = json.loads(line)
        result = CliRunner().invoke(cli, args, prog_name="bnpipe")
        uncaught = result.exception is not None and not isinstance(result.exception, SystemExit)
        trace = ""
        if uncaught:
            import traceback

            buf = io.StringIO()
            traceback.print_exception(result.exception, file=buf)
            trace = buf.getvalue()
        reply = {"exit": result.exit_code, "stderr": result.stderr + trace, "uncaught": uncaught}
        print(json.dumps(reply), file=answers, flush=True)
    return 0


class Worker:
    """The fuzz harness's end of one worker child."""

    def __init__(self, timeout: float):
        self.timeout, self.proc, self.starts = timeout, None, 0
        self.lines: collections.deque[str | None] = collections.deque()
        self.ready = threading.Condition()

    def _start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.starts += 1
        self.lines.clear()
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        if self._next(600) != WORKER_READY:
            raise SystemExit("the fuzz worker did not start")

    def _read(self, proc) -> None:
        for line in proc.stdout:
            with self.ready:
                self.lines.append(line.rstrip("\n"))
                self.ready.notify()
        with self.ready:
            self.lines.append(None)
            self.ready.notify()

    def _next(self, timeout: float) -> str | bool | None:
        """The next line; None when the child's stdout closed; False past the timeout."""
        deadline = time.monotonic() + timeout
        with self.ready:
            while not self.lines:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.ready.wait(left)
            return self.lines.popleft()

    def run(self, args: list[str]) -> tuple[int | None, str, bool]:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps(args) + "\n")
        self.proc.stdin.flush()
        line = self._next(self.timeout)
        if line is False:  # hung: kill it, the next mutant gets a new one
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            return None, "", False
        if line is None:  # died on this mutant
            code = self.proc.wait()
            self.proc = None
            return (code if code < 0 else 1000 + code), "", False
        reply = json.loads(line)
        return reply["exit"], reply["stderr"], reply["uncaught"]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_cli(args: list[str], timeout: float) -> tuple[int | None, str, bool]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("BNPIPE_ARTIFACTS", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return None, "", False
    return proc.returncode, proc.stderr, False


def fuzz(
    seeds: list[tuple[str, bytes, list[int]]],
    artifacts: Path,
    args: argparse.Namespace,
    work: Path,
) -> list[dict]:
    """Every mutant through verify, on args.jobs parallel jobs; one record per mutant, in order."""
    records: list[dict | None] = [None] * args.count
    todo = iter(range(args.first, args.first + args.count))
    lock = threading.Lock()

    def job(k: int) -> None:
        job_dir = work / f"job{k}"
        shutil.copytree(artifacts, job_dir / "artifacts")
        runner = Worker(args.timeout) if args.via == "worker" else None
        try:
            while True:
                with lock:
                    index = next(todo, None)
                if index is None:
                    return
                m = mutant(seeds, args.seed, index)
                path = job_dir / f"mutant{index}.tflite"
                path.write_bytes(m.data)
                cmd = verify_args(path, job_dir / "artifacts", args.targets, args.max_samples)
                t0 = time.perf_counter()
                if runner is not None:
                    code, stderr, uncaught = runner.run(cmd)
                else:
                    code, stderr, uncaught = run_cli(cmd, args.timeout)
                seconds = time.perf_counter() - t0
                outcome, line = classify(code, stderr, uncaught)
                record = {**asdict(m), "outcome": outcome, "line": line, "seconds": seconds}
                del record["data"]
                if outcome in BAD and args.keep:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, args.keep / f"mutant{index}.tflite")
                    (args.keep / f"mutant{index}.txt").write_text(stderr)
                path.unlink()
                with lock:
                    records[index - args.first] = record
                    done = sum(r is not None for r in records)
                    if outcome in BAD or done % 50 == 0:
                        print(f"{done}/{args.count} … mutant {index}: {outcome} {line}",
                              file=sys.stderr, flush=True)  # fmt: skip
        finally:
            if runner is not None:
                runner.close()

    threads = [threading.Thread(target=job, args=(k,)) for k in range(args.jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [r for r in records if r is not None]


def table(records: list[dict], seconds: float) -> str:
    counts = collections.Counter(r["outcome"] for r in records)
    order = ["exit 0", "exit 1", "exit 2", *BAD]
    rows = ["| outcome | files |", "| :--- | ---: |"]
    rows += [f"| {o} | {counts.get(o, 0)} |" for o in order]
    rows.append(f"| **files tried** | **{len(records)}** |")
    kinds = collections.Counter(r["kind"] for r in records)
    return "\n".join(rows) + (
        f"\n\n{kinds.get('flip', 0)} with 1–{MAX_FLIPS} flipped bytes, "
        f"{kinds.get('truncate', 0)} truncated; wall time {seconds:.0f} s"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, help="model.keras (+ train.json) of the seeds")
    ap.add_argument("--seeds", type=Path, help="dir of seed .tflite files [default: --artifacts]")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--first", type=int, default=0, help="index of the first mutant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", default="host,host-ref,tflm")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--via", choices=("worker", "cli"), default="worker")
    ap.add_argument("--max-samples", type=int, default=100)
    # above the runtimes' own 300 s per request, which bnpipe reports as exit 2
    ap.add_argument("--timeout", type=float, default=900, help="seconds per mutant")
    ap.add_argument("--json", type=Path, help="write every mutant's outcome here")
    ap.add_argument("--keep", type=Path, help="copy mutants with a bad outcome here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.worker:
        return worker()

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bnpipe-fuzz-") as tmp:
        artifacts = args.artifacts or make_artifacts(Path(tmp) / "artifacts")
        seeds = load_seeds(seed_files(args.seeds or artifacts))
        print(
            f"{args.count} mutants of {', '.join(name for name, _, _ in seeds)} (seed {args.seed}) "
            f"through verify --targets {args.targets}, {args.jobs} jobs via {args.via}",
            file=sys.stderr,
        )
        t1 = time.perf_counter()
        records = fuzz(seeds, artifacts, args, Path(tmp))
        seconds = time.perf_counter() - t1
    print(table(records, seconds))
    bad = [r for r in records if r["outcome"] in BAD]
    for r in bad:
        print(f"  mutant {r['index']} ({r['seed_file']}, {r['kind']} {r['positions']}): "
              f"{r['outcome']} {r['line']}")  # fmt: skip
    if args.json:
        summary = {
            "seed": args.seed,
            "count": args.count,
            "first": args.first,
            "targets": args.targets,
            "via": args.via,
            "seeds": [name for name, _, _ in seeds],
            "counts": collections.Counter(r["outcome"] for r in records),
            "wall_seconds": seconds,
            "total_seconds": time.perf_counter() - t0,
            "mutants": records,
        }
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
