"""The `tflm` target: TensorFlow Lite Micro's Python interpreter (microcontroller kernels).

TFLM has no batching and no tensor resizing: a microcontroller runs one sample per `invoke`, with
the batch dimension fixed at 1, so this runtime does exactly that — one set_input / invoke /
get_output per row. It is slower than LiteRT's batched invokes, but it is the honest picture of
the device, and the outputs are those of the kernels that ship in firmware. Both int8 models
(int8 in/out) and float32 models run. TFLM's int8 kernels requantize with gemmlowp's double
rounding, LiteRT 2.3.0's BUILTIN_REF with a single rounding, so tflm and host-ref agree to within
one int8 step, and exactly on all but a small share of outputs (tests/test_tflm.py).

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

Why each candidate arena is tried in a child process: TFLM's Python interpreter does not always
fail cleanly when the arena is too small. Below ~500 bytes, and at some sizes just short of what a
model needs (1672 bytes for the test MLP), its constructor dereferences a failed allocation and
the whole process segfaults. A child (≈ 0.2 s: python + tflite_micro, no TensorFlow) takes that
crash instead of bnpipe; the interpreter that runs the rows is then built in-process with a size
the child proved works (allocation is deterministic for a given model and arena size).

print_allocations() writes from C++ to the process's stderr, bypassing sys.stderr, so it is
captured by pointing file descriptors 1 and 2 at a temporary file for the call (process-wide:
do not run two TFLM captures in parallel threads). The package (checked: tflite_micro
0.dev2026…) has no API that returns the used bytes directly.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.errors import ModelError, TargetUnavailable
from pipeline.runtimes import RunResult
from pipeline.tflite_file import read_tflite

ARENA_START = 16 * 1024  # small MLPs fit in one try (the tests' 16→8→4 MLP needs < 2 KiB)
ARENA_LIMIT = 4 * 1024 * 1024  # more SRAM than any microcontroller TFLM targets; beyond it, give up
ARENA_FLOOR = 1024  # an explicit arena below this crashes the interpreter rather than failing
PROBE_TIMEOUT_S = 120  # one child builds one interpreter: well under a second for any sane model
INSTALL_HINT = "pip install tflite-micro"

# Run in a child by `sys.executable -c`: builds one interpreter with the given arena and exits.
# Exit 0 = it allocated; 1 = TFLM reported a failure (message on stderr); a signal = it crashed.
_PROBE = (
    "import sys\n"
    "from tflite_micro import runtime\n"
    "data = open(sys.argv[1], 'rb').read()\n"
    "try:\n"
    "    runtime.Interpreter.from_bytes(data, arena_size=int(sys.argv[2]))\n"
    "except (RuntimeError, ValueError) as err:\n"
    "    sys.stderr.write('error: %s\\n' % err)\n"
    "    sys.exit(1)\n"
)
_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
_HEAD = re.compile(r"Arena allocation head (\d+) bytes")
_TAIL = re.compile(r"Arena allocation tail (\d+) bytes")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _last_lines(stderr: str, n: int = 3) -> str:
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    return " | ".join(lines[-n:]) or "no message"


def try_arena(model_path: str | os.PathLike, arena_size: int) -> tuple[bool, str]:
    """(True, "") if TFLM can build `model_path` in an arena of `arena_size` bytes, else
    (False, why). Runs in a child process, so a TFLM crash costs nothing but the child."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, os.fspath(model_path), str(int(arena_size))],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return False, f"building the interpreter took more than {PROBE_TIMEOUT_S} s"
    if proc.returncode == 0:
        return True, ""
    if proc.returncode < 0:
        return False, f"the TFLM interpreter crashed (signal {-proc.returncode})"
    return False, _last_lines(proc.stderr)


def find_arena(
    model_path: str | os.PathLike, start: int = ARENA_START, limit: int = ARENA_LIMIT
) -> tuple[int, list[dict]]:
    """The first of start, 2·start, 4·start … ≤ limit in which TFLM can build the model.

    Returns (arena bytes, attempts): attempts lists every size tried and its outcome. ModelError
    if none up to `limit` works, with TFLM's last message.
    """
    attempts: list[dict] = []
    size = int(start)
    tried_limit = False
    while size <= limit:
        ok, why = try_arena(model_path, size)
        attempts.append({"arena_bytes": size, "ok": ok, **({} if ok else {"error": why})})
        if ok:
            return size, attempts
        if "failed to prepare" in why and not tried_limit and size < limit:
            # A kernel refused the model in Prepare: a type TFLM does not support, or a scratch
            # buffer the arena could not hold (int8 at 2 KiB fails so, and runs at 4 KiB). One try
            # at the largest arena tells them apart without walking every size up to it.
            tried_limit = True
            ok_at_limit, why_at_limit = try_arena(model_path, limit)
            attempts.append(
                {
                    "arena_bytes": limit,
                    "ok": ok_at_limit,
                    **({} if ok_at_limit else {"error": why_at_limit}),
                }
            )
            if not ok_at_limit:
                raise ModelError(f"tflm: cannot run {model_path}: {why_at_limit}")
        size *= 2
    last = attempts[-1]["error"] if attempts else "no size tried"
    raise ModelError(
        f"tflm: {model_path} does not fit an arena of up to {limit} bytes "
        f"(tried {start}…{attempts[-1]['arena_bytes'] if attempts else start}): {last}"
    )


@contextlib.contextmanager
def _captured_fds(sink):
    """Point file descriptors 1 and 2 at `sink` (a real file) for the block.

    C++ writes go straight to the descriptors, so sys.stdout/sys.stderr redirection would miss
    them. Python's and C's buffers are flushed on the way in and out so nothing crosses over.
    """
    try:
        import ctypes

        libc_fflush = ctypes.CDLL(None).fflush
    except (OSError, AttributeError):  # no C library handle: rely on the writer not buffering
        libc_fflush = None
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        yield
    finally:
        if libc_fflush is not None:
            libc_fflush(None)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def arena_report(interpreter) -> dict:
    """{"arena_bytes_used", "arena_bytes_head", "arena_bytes_tail"} from print_allocations().

    Call after an invoke. Values are None if TFLM printed nothing recognisable.
    """
    with tempfile.TemporaryFile() as sink:
        with _captured_fds(sink):
            interpreter.print_allocations()
        sink.seek(0)
        text = sink.read().decode("utf-8", "replace")

    def grab(pattern):
        match = pattern.search(text)
        return int(match.group(1)) if match else None

    return {
        "arena_bytes_used": grab(_TOTAL),
        "arena_bytes_head": grab(_HEAD),
        "arena_bytes_tail": grab(_TAIL),
    }


class TflmRuntime:
    """Runs a .tflite model with TFLM, one sample per invoke. See the module docstring.

    arena_size=None sizes the arena automatically (ARENA_START doubling up to ARENA_LIMIT);
    an explicit size is used as given, and a model that does not fit it is a ModelError.
    """

    name = "tflm"

    def __init__(self, arena_size: int | None = None):
        if arena_size is not None and int(arena_size) < ARENA_FLOOR:
            raise ValueError(f"arena_size must be None or >= {ARENA_FLOOR} bytes, got {arena_size}")
        self.arena_size = int(arena_size) if arena_size is not None else None

    def available(self) -> tuple[bool, str]:
        try:
            import tflite_micro  # noqa: F401
        except ImportError as err:
            return False, f"tflm: TensorFlow Lite Micro is not importable ({err}): {INSTALL_HINT}"
        return True, ""

    def _arena(self, path: Path) -> tuple[int, list[dict]]:
        if self.arena_size is None:
            return find_arena(path)
        ok, why = try_arena(path, self.arena_size)
        if not ok:
            raise ModelError(
                f"tflm: {path} does not fit the given arena of {self.arena_size} bytes ({why}); "
                f"leave the arena size unset to size it automatically"
            )
        return self.arena_size, [{"arena_bytes": self.arena_size, "ok": True}]

    def run(self, model_path: str, inputs: np.ndarray) -> RunResult:
        """Run every row of `inputs` (N, *input features; model input dtype), one invoke each.

        Returns the raw outputs, (N, *output features) in the output dtype. Copies; mutates nothing.
        """
        ok, why = self.available()
        if not ok:
            raise TargetUnavailable(why)
        from tflite_micro import __version__ as tflm_version
        from tflite_micro import runtime

        path = Path(model_path)
        read_tflite(path)  # structural check: a malformed flatbuffer never reaches C++
        arena, attempts = self._arena(path)
        try:
            interp = runtime.Interpreter.from_bytes(path.read_bytes(), arena_size=arena)
            inp, out = interp.get_input_details(0), interp.get_output_details(0)
        except (RuntimeError, ValueError, IndexError) as err:
            raise ModelError(f"tflm: cannot load {path}: {_one_line(err)}") from None

        in_shape = tuple(int(d) for d in inp["shape"])
        out_shape = tuple(int(d) for d in out["shape"])
        if not in_shape or in_shape[0] != 1:
            raise ModelError(f"tflm: {path} has input shape {in_shape}; TFLM runs batch 1 (1, …)")
        x = np.ascontiguousarray(inputs)
        want = np.dtype(inp["dtype"])
        if x.dtype != want:
            raise ModelError(
                f"tflm: inputs have dtype {x.dtype} but {path}'s input tensor is {want} "
                f"(quantize on the host first)"
            )
        if x.ndim < 1 or tuple(x.shape[1:]) != in_shape[1:]:
            raise ModelError(
                f"tflm: inputs have shape {tuple(x.shape)} but {path}'s input tensor wants "
                f"(N, {', '.join(str(d) for d in in_shape[1:])})"
            )

        n = x.shape[0]
        outputs = np.empty((n,) + out_shape[1:], dtype=np.dtype(out["dtype"]))
        seconds = 0.0
        try:
            for i in range(n):  # one sample per invoke: the microcontroller's way
                interp.set_input(x[i : i + 1], 0)  # (1, *features), copied into the arena
                t0 = time.perf_counter()
                interp.invoke()
                seconds += time.perf_counter() - t0
                outputs[i] = interp.get_output(0)[0]
            if n == 0:  # print_allocations wants an invoke first; any valid input will do
                interp.set_input(np.zeros(in_shape, dtype=want), 0)
                interp.invoke()
        except (RuntimeError, ValueError, IndexError) as err:
            raise ModelError(f"tflm: invoke failed on {path}: {_one_line(err)}") from None
        arena_info = arena_report(interp)

        info = {
            "tflm_version": f"tflite-micro {tflm_version}",
            "kernels": "tflm",
            "batch": 1,
            "n": int(n),
            "arena_bytes_given": arena,
            **arena_info,
            "arena_attempts": attempts,
            "emulated": False,
        }
        return RunResult(target=self.name, outputs=outputs, invoke_seconds=seconds, info=info)
