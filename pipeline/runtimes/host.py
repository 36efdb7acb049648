"""The `host` and `host-ref` targets: LiteRT on this CPU, in a child process.

    host      the default op resolver, which applies the XNNPACK delegate (the fast path a phone
              app gets by default)
    host-ref  OpResolverType.BUILTIN_REF: LiteRT's reference kernels, the numerical truth every
              other target is compared with

A model never runs in bnpipe's own process: a file can be well formed and still crash a kernel
(a SOFTMAX with beta 0 aborts the reference kernels; a damaged shape can send one past its
buffers), so each runtime keeps one child, the standalone runner (`device_runner.py serve`) under
this python, started on the first request (or by start()) and kept for every model until close().
The host runs exactly the code a board runs. A model that crashes the child is that model's
ModelCrashed (exit 2) and the next request gets a fresh child; the child's data memory is capped
(MEMORY_LIMIT) and every request bounded in time (TIMEOUT_S). Inputs and outputs cross as .npy
files in a temporary directory. Every model file is parsed by `pipeline.tflite.file` first: a
malformed flatbuffer is a ModelError in Python and never starts LiteRT.

bench's figures come from the child too: bench() (device_runner.bench, one configuration at a
time), rounds() (device_runner.Rounds, configurations timed in turns, round by round, so that
the caller can time other things between rounds) and cold_start() (a fresh process per model).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from pipeline.core.children import die_with_parent
from pipeline.core.errors import ModelCrashed, ModelError, TargetUnavailable
from pipeline.runtimes import RunResult, check_outputs
from pipeline.runtimes.served import ServedRunner, how_it_ended, last_error_line
from pipeline.tflite.file import TfliteInfo, parse_tflite, read_model_bytes

INSTALL_HINT = "pip install ai-edge-litert"
RUNNER = Path(__file__).with_name("device_runner.py")
COLD_START = Path(__file__).with_name("cold_start.py")
DEFAULT_BATCH = 1024  # rows per invoke (device_runner.DEFAULT_BATCH, not imported: it loads LiteRT)
TIMEOUT_S = 300  # per request, start-up included: verify's 10,000 MNIST rows take seconds
MEMORY_LIMIT = 4 * 1024**3  # the child's data memory; a 1024-row batch of a 784-input MLP: ~10 MB
# Model contents whose check is remembered (by sha256); a verify run has about six candidates.
CHECKED_CACHE_SIZE = 32
_checked: OrderedDict[bytes, TfliteInfo] = OrderedDict()
_ENVIRONMENT = ("litert_version", "numpy_version", "machine", "python")


def checked_tflite(path) -> TfliteInfo:
    """read_tflite(path), remembered by the file's content: the same bytes are parsed only once.

    verify checks each candidate and then runs it on host-ref and host; parsing costs ~0.2 ms per
    model, a visible share of what LiteRT needs to run 10,000 digits samples. The key is the
    sha256 of the bytes read now (not the name or the mtime), so a changed file is always parsed
    again. Returns a copy whose `path` is this path. ModelError as read_tflite.
    """
    data = read_model_bytes(path)
    key = hashlib.sha256(data).digest()
    info = _checked.get(key)
    if info is None:
        info = parse_tflite(data, str(path))
        _checked[key] = info
        while len(_checked) > CHECKED_CACHE_SIZE:
            _checked.popitem(last=False)
    else:
        _checked.move_to_end(key)
    return dataclasses.replace(info, path=str(path))


def forget_checked() -> None:
    """Drop every remembered structural check (the next use parses again)."""
    _checked.clear()


def _serve_command(memory_limit: int) -> tuple[list[str], None, None]:
    argv = [sys.executable, str(RUNNER), "serve", "--memory-limit", str(memory_limit)]
    return argv, None, None


class HostRuntime:
    """LiteRT on the host CPU, in a child process (see the module docstring).

    reference=False: the default kernels (XNNPACK delegate), target name "host".
    reference=True: the builtin reference kernels, target name "host-ref".
    threads=None lets LiteRT choose; batch is the rows per invoke (inputs are run in batches,
    never one Python call per sample). timeout bounds each request (the child's start-up
    included), memory_limit the child's data memory (0: none). Use as a context manager or
    close() it; it is also closed when collected and at interpreter exit.
    """

    def __init__(
        self,
        reference: bool = False,
        threads: int | None = None,
        batch: int | None = None,
        timeout: float = TIMEOUT_S,
        memory_limit: int = MEMORY_LIMIT,
    ):
        if threads is not None and int(threads) < 0:
            raise ValueError(f"threads must be None or >= 0, got {threads}")
        if batch is not None and int(batch) < 1:
            raise ValueError(f"batch must be None or >= 1, got {batch}")
        self.reference = bool(reference)
        self.threads = int(threads) if threads else None
        self.batch = int(batch) if batch is not None else None
        self.name = "host-ref" if self.reference else "host"
        self.server = ServedRunner(
            functools.partial(_serve_command, int(memory_limit)), target=self.name, timeout=timeout
        )

    @property
    def kernels(self) -> str:
        return "builtin_ref" if self.reference else "default (XNNPACK delegate)"

    def available(self) -> tuple[bool, str]:
        """Whether this python has LiteRT: found, not imported (it runs in the child only)."""
        try:
            found = importlib.util.find_spec("ai_edge_litert.interpreter") is not None
        except ImportError:  # no ai_edge_litert package at all
            found = False
        if not found:
            return (
                False,
                f"{self.name}: LiteRT is not installed for {sys.executable}: {INSTALL_HINT}",
            )
        return True, ""

    def start(self) -> None:
        """Start the child now (python, numpy and LiteRT: ≈ 0.25 s) so that its start-up overlaps
        the caller's other work; the first request waits for it to be ready."""
        self.server.start()

    def close(self) -> None:
        """Stop the child, if one runs. Idempotent; a later request starts another."""
        self.server.close()

    def __enter__(self) -> HostRuntime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check(self, model_path) -> tuple[Path, TfliteInfo]:
        """Structural check of the file before any interpreter sees it (ModelError if bad)."""
        ok, why = self.available()
        if not ok:
            raise TargetUnavailable(why)
        path = Path(model_path)
        return path, checked_tflite(path)

    def run(self, model_path: str, inputs: np.ndarray) -> RunResult:
        """Run every row of `inputs` (model input dtype) in batched invokes; mutates nothing.

        outputs: (N, *output features), the raw output tensor values (int8 codes for an int8
        model). ModelError when LiteRT refuses the model or the inputs, or the outputs do not have
        the shape the file declares; ModelCrashed when the model crashes the child.
        """
        path, info = self._check(model_path)
        batch = self.batch or DEFAULT_BATCH
        with tempfile.TemporaryDirectory(prefix="bnpipe-host-") as tmp:
            x_path, y_path = Path(tmp) / "inputs.npy", Path(tmp) / "outputs.npy"
            np.save(x_path, np.asarray(inputs), allow_pickle=False)
            result = self.server.request(
                {
                    "command": "run",
                    "model": str(path.resolve()),
                    "inputs": str(x_path),
                    "outputs": str(y_path),
                    "reference": self.reference,
                    "threads": self.threads,
                    "batch": batch,
                },
                what=str(path),
            )
            outputs = np.load(y_path, allow_pickle=False)
        check_outputs(self.name, path, info, outputs, len(inputs))
        run_info = {
            **{key: result[key] for key in _ENVIRONMENT},
            "kernels": self.kernels,
            "reference": self.reference,
            "threads": self.threads,
            "batch": batch,
            "n": int(outputs.shape[0]),
            "emulated": False,
        }
        return RunResult(
            target=self.name,
            outputs=outputs,
            invoke_seconds=float(result["invoke_seconds"]),
            info=run_info,
        )

    def bench(
        self,
        model_path: str,
        sample: np.ndarray,
        batch_sizes=(1, 32, 1024),
        threads=None,
        warmup: int = 20,
        runs: int = 200,
    ) -> dict:
        """device_runner.bench for this target's kernels, in the child: every (threads, batch size)
        pair timed alone on a fresh interpreter. threads defaults to (self.threads,) when the
        runtime was given a thread count, else (1, None)."""
        path, _ = self._check(model_path)
        if threads is None:
            threads = (self.threads,) if self.threads else (1, None)
        with tempfile.TemporaryDirectory(prefix="bnpipe-host-") as tmp:
            x_path = Path(tmp) / "sample.npy"
            np.save(x_path, np.asarray(sample), allow_pickle=False)
            result = self.server.request(
                {
                    "command": "bench",
                    "model": str(path.resolve()),
                    "inputs": str(x_path),
                    "batch_sizes": [int(b) for b in batch_sizes],
                    "threads": [int(t or 0) for t in threads],
                    "warmup": int(warmup),
                    "runs": int(runs),
                    "reference": self.reference,
                },
                what=str(path),
            )
        result.update(target=self.name, kernels=self.kernels, emulated=False)
        return result

    def rounds(self, configs: list[tuple], warmup: int = 20, budget: float | None = None) -> Rounds:
        """Interleaved timing in the child (device_runner.Rounds): configs is a list of
        (model path, sample, threads, batch size); each gets its own interpreter, allocated for its
        batch, filled with its sample repeated, invoked once and `warmup` more times (fewer once
        they took `budget` seconds). Returns the open Rounds: run() times every configuration in
        turn, close() frees them."""
        samples: dict[int, tuple[np.ndarray, str]] = {}  # one .npy per distinct sample array
        with tempfile.TemporaryDirectory(prefix="bnpipe-host-") as tmp:
            requested = []
            for model_path, sample, threads, batch in configs:
                path, _ = self._check(model_path)
                if id(sample) not in samples:
                    x_path = Path(tmp) / f"sample{len(samples)}.npy"
                    np.save(x_path, np.asarray(sample), allow_pickle=False)
                    samples[id(sample)] = (sample, str(x_path))  # kept: its id stays unique
                requested.append(
                    {
                        "model": str(path.resolve()),
                        "inputs": samples[id(sample)][1],
                        "threads": int(threads) if threads else None,
                        "batch": int(batch),
                    }
                )
            names = sorted({str(Path(c[0])) for c in configs})
            result = self.server.request(
                {
                    "command": "rounds_open",
                    "configs": requested,
                    "warmup": int(warmup),
                    "reference": self.reference,
                    "budget": budget,
                },
                what=", ".join(names),
            )
        return Rounds(self, result["session"], result["setup"], ", ".join(names))


class Rounds:
    """Configurations open in a host runtime's child for interleaved timing (HostRuntime.rounds).

    setup: per configuration, {"init_seconds", "first_invoke_seconds"} of its interpreter.
    """

    def __init__(self, runtime: HostRuntime, session: int, setup: list[dict], what: str):
        self.runtime, self.session, self.setup, self.what = runtime, session, setup, what

    def run(
        self, runs: int, first: int = 0, warmup: int = 0, budget: float | None = None
    ) -> list[list[float]]:
        """Time `runs` invokes of each configuration (fewer once a turn's took `budget`
        seconds, one at least), in turn from configuration `first`, each turn after `warmup`
        untimed invokes: one list of seconds per configuration, in order."""
        return self.runtime.server.request(
            {
                "command": "rounds_run",
                "session": self.session,
                "runs": int(runs),
                "first": int(first),
                "warmup": int(warmup),
                "budget": budget,
            },
            what=self.what,
        )["seconds"]

    def close(self) -> None:
        """Free the interpreters in the child (the runtime's close() frees them too)."""
        self.runtime.server.request(
            {"command": "rounds_close", "session": self.session}, what=self.what
        )

    def __enter__(self) -> Rounds:
        return self

    def __exit__(self, *exc) -> None:
        if self.runtime.server.process is not None:
            self.close()


_shared: dict[bool, HostRuntime] = {}


def shared_runtime(reference: bool = False) -> HostRuntime:
    """This process's one HostRuntime for these kernels, for callers that run a model now and then
    (export checks each converted file): its child starts once (≈ 0.3 s) and serves every later
    call until the process exits. Its requests are answered one at a time (thread-safe)."""
    runtime = _shared.get(bool(reference))
    if runtime is None:
        runtime = _shared.setdefault(bool(reference), HostRuntime(reference=reference))
    return runtime


def cold_start(model_path, sample: np.ndarray, memory_limit: int = MEMORY_LIMIT) -> dict:
    """A model's cold start in a fresh process on sample[:1] (runtimes/cold_start.py): init_ms,
    first_invoke_us and peak_rss_added_kb. After the structural check; ModelError when LiteRT
    refuses the model or it takes too long, ModelCrashed when it crashes the process."""
    path = Path(model_path)
    checked_tflite(path)
    with tempfile.TemporaryDirectory(prefix="bnpipe-bench-") as tmp:
        x_path = Path(tmp) / "x.npy"
        np.save(x_path, np.ascontiguousarray(sample[:1]), allow_pickle=False)
        argv = [sys.executable, str(COLD_START), str(path), str(x_path)]
        try:
            proc = subprocess.run(
                [*argv, "--memory-limit", str(memory_limit)],
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent(),  # killed with bnpipe, even by kill -9
            )
        except subprocess.TimeoutExpired:
            raise ModelError(
                f"{path} did not load and run in a fresh process within {TIMEOUT_S} s"
            ) from None
    if proc.returncode < 0:
        raise ModelCrashed(
            f"{path} crashed LiteRT when loaded and run in a fresh process "
            f"({how_it_ended(proc.returncode)}: {last_error_line(proc.stderr)})"
        )
    if proc.returncode != 0:
        raise ModelError(f"{path} failed to run in a fresh process: {last_error_line(proc.stderr)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
