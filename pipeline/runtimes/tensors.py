"""Intermediate tensors of .tflite models, computed by LiteRT in a child process.

`run_jobs` hands every job to one child (runtimes/tensor_runner.py: numpy and LiteRT only), so
Python, numpy and LiteRT start once, and a model that crashes LiteRT ends the child, not bnpipe:
the crash becomes a ModelError naming that model (the CLI's one-line exit 2). The models and
inputs go to the child as files in a temporary directory, the tensors come back as .npz files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.children import die_with_parent
from pipeline.core.errors import ModelError, TargetUnavailable

RUNNER = Path(__file__).resolve().parent / "tensor_runner.py"
# A run of bnpipe's models takes seconds; a child still busy after this long is stuck.
RUN_TIMEOUT_S = 600
_EXIT_NO_LITERT = 3  # tensor_runner.EXIT_NO_LITERT


@dataclass(frozen=True)
class TensorJob:
    """One model run on one set of inputs, saving the tensors named by index."""

    model: Path | bytes  # a .tflite file, or the bytes of a model built in bnpipe
    inputs: np.ndarray  # (N, *features) in the model's input dtype; jobs may share one array
    tensors: tuple[int, ...]  # tensor indices of the model to save, each as (N, *shape)
    label: str  # what an error calls the model: its file, or what it was built from
    reference: bool = True  # LiteRT's reference kernels; False: its optimized builtin kernels


class TensorRunner:
    """The child process, started at once and given its jobs later: Python, numpy and LiteRT
    start (about half a second) while the caller prepares the jobs. `run` once; `close` (or the
    `with` block's end) ends a child that was never given work, and reaps it."""

    def __init__(self):
        self._proc = subprocess.Popen(
            [sys.executable, str(RUNNER), "-"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent(),  # killed with bnpipe, even by kill -9
        )
        self._waited = False

    def __enter__(self) -> TensorRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._waited:
            return
        self._waited = True
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.communicate()

    def run(self, jobs: list[TensorJob]) -> list[dict[int, np.ndarray]]:
        """For each job, {tensor index: (N, *shape) array}, in the order of `jobs`.

        ModelError naming the job's label when LiteRT refuses or crashes on it (or takes more
        than RUN_TIMEOUT_S); TargetUnavailable when LiteRT is not installed for this python."""
        with tempfile.TemporaryDirectory(prefix="bnpipe-tensors-") as tmp:
            spec = _write_jobs(Path(tmp), jobs)
            if self._waited:
                raise RuntimeError("a TensorRunner runs one list of jobs")
            self._waited = True
            done = _wait(self._proc, f"{spec}\n", jobs)
            results = []
            for k in range(done):
                with np.load(Path(tmp) / f"out{k}.npz", allow_pickle=False) as npz:
                    results.append({int(key[1:]): npz[key] for key in npz.files})
            return results


def run_jobs(jobs: list[TensorJob]) -> list[dict[int, np.ndarray]]:
    """TensorRunner().run(jobs) in a child started now (see TensorRunner.run)."""
    if not jobs:
        return []
    with TensorRunner() as runner:
        return runner.run(jobs)


def _write_jobs(tmp: Path, jobs: list[TensorJob]) -> Path:
    """The job list for the child, with every model and distinct input array written to tmp."""
    arrays: dict[int, str] = {}  # id(inputs) → its .npy: jobs on the same inputs share one file
    spec = []
    for k, job in enumerate(jobs):
        if isinstance(job.model, bytes):
            model = tmp / f"model{k}.tflite"
            model.write_bytes(job.model)
        else:
            model = Path(job.model)
        if id(job.inputs) not in arrays:
            arrays[id(job.inputs)] = str(tmp / f"inputs{len(arrays)}.npy")
            np.save(arrays[id(job.inputs)], np.ascontiguousarray(job.inputs), allow_pickle=False)
        spec.append({"model": str(model), "inputs": arrays[id(job.inputs)],
                     "out": str(tmp / f"out{k}.npz"), "tensors": [int(t) for t in job.tensors],
                     "reference": bool(job.reference)})  # fmt: skip
    path = tmp / "jobs.json"
    path.write_text(json.dumps({"jobs": spec}))
    return path


def _wait(proc: subprocess.Popen, request: str, jobs: list[TensorJob]) -> int:
    """Send the child its job list and wait; the number of jobs done (all of them, or raise)."""
    try:
        out, err = proc.communicate(request, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        done = out.split().count("ok")
        label = jobs[min(done, len(jobs) - 1)].label
        raise ModelError(f"LiteRT took more than {RUN_TIMEOUT_S} s on {label}") from None
    finally:
        if proc.poll() is None:  # interrupted: do not leave the child running
            proc.kill()
            proc.communicate()
    done = out.split().count("ok")
    if proc.returncode == 0 and done == len(jobs):
        return done
    message = (err.strip().splitlines() or ["no message"])[-1].removeprefix("error: ")
    if proc.returncode == _EXIT_NO_LITERT:
        raise TargetUnavailable(f"{message} (pip install ai-edge-litert)")
    label = jobs[min(done, len(jobs) - 1)].label
    if proc.returncode < 0:
        raise ModelError(
            f"{label} crashes LiteRT's kernels (signal {-proc.returncode}); the file is "
            "malformed or uses an operator in a way the kernels do not accept"
        )
    raise ModelError(f"{label}: {message}")
