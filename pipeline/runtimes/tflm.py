"""The `tflm` target: TensorFlow Lite Micro's Python interpreter (microcontroller kernels).

TFLM has no batching and no tensor resizing: a microcontroller runs one sample per `invoke`, with
the batch dimension fixed at 1, so this runtime does exactly that — one set_input / invoke /
get_output per row. It is slower than LiteRT's batched invokes, but it is the honest picture of
the device, and the outputs are those of the kernels that ship in firmware. Both int8 models
(int8 in/out) and float32 models run. TFLM's int8 kernels requantize with gemmlowp's double
rounding, LiteRT 2.3.0's BUILTIN_REF with a single rounding, so tflm and host-ref agree to within
one int8 step, and exactly on all but a small share of outputs (tests/test_tflm.py).

Every model runs in a child process, `tflm_runner.py serve` under this python (started on the
first run, kept for the next models until close(); see served.py). TFLM trusts the file — a
tensor's declared shape sizes what its kernels write — so a damaged model can crash it, when it
is built or only at a later invoke; then that model is a ModelCrashed (exit 2) and the next one
gets a fresh process. The child's data memory is capped (MEMORY_LIMIT).

The arena. A microcontroller gives TFLM one fixed buffer (the tensor arena) for every tensor,
the interpreter's bookkeeping and the kernels' scratch. Its size is chosen here automatically:
start at ARENA_START and double while TFLM cannot allocate the model's tensors, up to
ARENA_LIMIT. After the run, `print_allocations()` (TFLM's RecordingMicroAllocator) reports the
bytes the model actually occupies; RunResult.info carries both:

    arena_bytes_given   the arena the interpreter was built with
    arena_bytes_used    TFLM's "Arena allocation total" (head: the planned activations; tail:
                        persistent tensors, node structs, kernel buffers)

`arena_bytes_used` is what stays allocated after set-up. Set-up itself briefly needs a little more
(temporary tensors while the kernels are prepared): for the 16→8→4 int8 MLP of the tests TFLM
reports 1488 bytes used, while the smallest arena that builds is about 1800 bytes. Size a
firmware arena from `arena_bytes_used` with a margin, then confirm it on the device.

TFLM's Python interpreter does not always fail cleanly when the arena is too small: below ~500
bytes, and at some sizes just short of what a model needs (1672 bytes for the test MLP), its
constructor dereferences a failed allocation and the process segfaults. So a crash while building
at one size means "try the largest arena once": a model that crashes TFLM even there is the
model's fault (ModelCrashed); otherwise the search goes on, in a fresh process. The interpreter
that runs the rows is the one built at the size found (allocation is deterministic).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.core.children import die_with_parent
from pipeline.core.errors import ModelCrashed, ModelError, TargetUnavailable
from pipeline.runtimes import RunResult, check_outputs
from pipeline.runtimes.served import ServedRunner, last_error_line
from pipeline.tflite.file import read_tflite

ARENA_START = 16 * 1024  # small MLPs fit in one try (the tests' 16→8→4 MLP needs < 2 KiB)
ARENA_LIMIT = 4 * 1024 * 1024  # more SRAM than any microcontroller TFLM targets; beyond it, give up
ARENA_FLOOR = 1024  # an explicit arena below this crashes the interpreter rather than failing
TIMEOUT_S = 300  # per request, start-up included: one model's rows take well under a second
MEMORY_LIMIT = 2 * 1024**3  # the child's data memory: the arena ≤ 4 MiB, outputs N × classes
INSTALL_HINT = "pip install tflite-micro"
RUNNER = Path(__file__).with_name("tflm_runner.py")
CRASHED = "the TFLM interpreter crashed"


def _serve_command(memory_limit: int) -> tuple[list[str], None, None]:
    return [sys.executable, str(RUNNER), "serve", "--memory-limit", str(memory_limit)], None, None


def try_arena(model_path: str | os.PathLike, arena_size: int) -> tuple[bool, str]:
    """(True, "") if TFLM can build `model_path` in an arena of `arena_size` bytes, else
    (False, why). Runs `tflm_runner.py arena` in a fresh child, so a crash costs only the child."""
    try:
        proc = subprocess.run(
            [sys.executable, str(RUNNER), "arena", os.fspath(model_path), str(int(arena_size))],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent(),  # killed with bnpipe, even by kill -9
        )
    except subprocess.TimeoutExpired:
        return False, f"building the interpreter took more than {TIMEOUT_S} s"
    if proc.returncode == 0:
        return True, ""
    if proc.returncode < 0:
        return False, f"{CRASHED} (signal {-proc.returncode})"
    return False, last_error_line(proc.stderr)


_MISSING_KERNEL = re.compile(r"Didn't find op for builtin opcode '(\w+)'")


def find_arena(
    model_path: str | os.PathLike,
    start: int = ARENA_START,
    limit: int = ARENA_LIMIT,
    attempt: Callable[[str | os.PathLike, int], tuple[bool, str]] | None = None,
) -> tuple[int, list[dict]]:
    """The first of start, 2·start, 4·start … ≤ limit in which TFLM can build the model.

    attempt(model_path, size) → (built?, why not) tries one size (default: try_arena, a fresh
    child each). Returns (arena bytes, attempts): attempts lists every size tried and its outcome.
    A size that TFLM refuses in Prepare, or that crashes it, is followed by one try at `limit`:
    a kernel that refuses the model, or a model that crashes TFLM, does so there too, and the
    search stops without walking every size. ModelError when nothing up to `limit` works,
    ModelCrashed when the model crashes TFLM at `limit` too; both with TFLM's last message.
    """
    attempt = attempt or try_arena
    attempts: list[dict] = []

    def tried(size: int) -> tuple[bool, str]:
        ok, why = attempt(model_path, size)
        attempts.append({"arena_bytes": size, "ok": ok, **({} if ok else {"error": why})})
        return ok, why

    size = int(start)
    tried_limit = False
    while size <= limit:
        ok, why = tried(size)
        if ok:
            return size, attempts
        missing = _MISSING_KERNEL.search(why)
        if missing:  # no arena helps: TFLM has no kernel for one of the operators
            raise ModelError(
                f"tflm: TFLite Micro has no kernel for the operator {missing.group(1)} of "
                f"{model_path} (it runs on the other targets; TFLM builds only its own set)"
            )
        if ("failed to prepare" in why or why.startswith(CRASHED)) and not tried_limit:
            # A kernel refused the model in Prepare: a type TFLM does not support, or a scratch
            # buffer the arena could not hold (int8 at 2 KiB fails so, and runs at 4 KiB). Or
            # the constructor crashed: a size just short of what the model needs, or the model.
            # One try at the largest arena tells them apart without walking every size up to it.
            tried_limit = True
            ok_at_limit, why_at_limit = tried(limit) if size < limit else (ok, why)
            if not ok_at_limit and why_at_limit.startswith(CRASHED):
                raise ModelCrashed(
                    f"tflm: {model_path} crashes TFLM when its interpreter is built, even in an "
                    f"arena of {limit} bytes ({why_at_limit})"
                )
            if not ok_at_limit:
                raise ModelError(f"tflm: cannot run {model_path}: {why_at_limit}")
        size *= 2
    last = attempts[-1]["error"] if attempts else "no size tried"
    raise ModelError(
        f"tflm: {model_path} does not fit an arena of up to {limit} bytes "
        f"(tried {start}…{attempts[-1]['arena_bytes'] if attempts else start}): {last}"
    )


class TflmRuntime:
    """Runs a .tflite model with TFLM in a child process, one sample per invoke. See the module
    docstring.

    arena_size=None sizes the arena automatically (ARENA_START doubling up to ARENA_LIMIT); an
    explicit size is used as given, and a model that does not fit it is a ModelError. timeout
    bounds each request to the child (its start-up included), memory_limit its data memory (0:
    none). Use as a context manager or close() it; it is also closed when collected.
    """

    name = "tflm"

    def __init__(
        self,
        arena_size: int | None = None,
        timeout: float = TIMEOUT_S,
        memory_limit: int = MEMORY_LIMIT,
    ):
        if arena_size is not None and int(arena_size) < ARENA_FLOOR:
            raise ValueError(f"arena_size must be None or >= {ARENA_FLOOR} bytes, got {arena_size}")
        self.arena_size = int(arena_size) if arena_size is not None else None
        self.server = ServedRunner(
            functools.partial(_serve_command, int(memory_limit)),
            target=self.name,
            timeout=timeout,
            runner="the TFLM runner",
        )

    def available(self) -> tuple[bool, str]:
        """Whether this python has TFLM: found, not imported (it runs in the child only)."""
        if importlib.util.find_spec("tflite_micro") is None:
            return False, (
                f"tflm: TensorFlow Lite Micro is not installed for {sys.executable}: {INSTALL_HINT}"
            )
        return True, ""

    def start(self) -> None:
        """Start the child now (it imports numpy and TFLM, ≈ 0.3 s), to overlap other work."""
        self.server.start()

    def close(self) -> None:
        """Stop the child, if one runs. Idempotent; a later run() starts another."""
        self.server.close()

    def __enter__(self) -> TflmRuntime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _load(self, path: Path, size: int) -> tuple[bool, str]:
        """One arena size tried in the serving child: (built?, why not). A crash while building
        is an answer here (that size crashed the constructor), not an error."""
        try:
            result = self.server.request(
                {"command": "load", "model": str(path), "arena_size": int(size)}, what=str(path)
            )
        except ModelCrashed:
            return False, f"{CRASHED} ({self.server.last_crash})"
        return (True, "") if result["built"] else (False, result["error"])

    def _arena(self, path: Path) -> tuple[int, list[dict]]:
        if self.arena_size is None:
            return find_arena(path, attempt=self._load)
        ok, why = self._load(path, self.arena_size)
        if not ok:
            raise ModelError(
                f"tflm: {path} does not fit the given arena of {self.arena_size} bytes ({why}); "
                f"leave the arena size unset to size it automatically"
            )
        return self.arena_size, [{"arena_bytes": self.arena_size, "ok": True}]

    def run(self, model_path: str, inputs: np.ndarray) -> RunResult:
        """Run every row of `inputs` (N, *input features; model input dtype), one invoke each.

        Returns the raw outputs, (N, *output features) in the output dtype. Copies; mutates
        nothing. ModelError for a model or inputs TFLM refuses, ModelCrashed for one that crashes
        it, TargetUnavailable when the child cannot start or does not answer in time.
        """
        ok, why = self.available()
        if not ok:
            raise TargetUnavailable(why)
        path = Path(model_path)
        model = read_tflite(path)  # structural check: a malformed flatbuffer never reaches TFLM
        arena, attempts = self._arena(path)
        with tempfile.TemporaryDirectory(prefix="bnpipe-tflm-") as tmp:
            x_path, y_path = Path(tmp) / "inputs.npy", Path(tmp) / "outputs.npy"
            np.save(x_path, np.ascontiguousarray(inputs), allow_pickle=False)
            result = self.server.request(
                {
                    "command": "run",
                    "model": str(path),
                    "arena_size": arena,
                    "inputs": str(x_path),
                    "outputs": str(y_path),
                },
                what=str(path),
            )
            outputs = np.load(y_path, allow_pickle=False)
        check_outputs(self.name, path, model, outputs, len(inputs))
        info = {
            "tflm_version": result["tflm_version"],
            "kernels": "tflm",
            "batch": 1,
            "n": int(result["n"]),
            "arena_bytes_given": arena,
            "arena_bytes_used": result["arena_bytes_used"],
            "arena_bytes_head": result["arena_bytes_head"],
            "arena_bytes_tail": result["arena_bytes_tail"],
            "arena_attempts": attempts,
            "emulated": False,
        }
        return RunResult(
            target=self.name,
            outputs=outputs,
            invoke_seconds=float(result["invoke_seconds"]),
            info=info,
        )
