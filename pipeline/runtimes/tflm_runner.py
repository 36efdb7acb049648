#!/usr/bin/env python3
"""Run .tflite models with TensorFlow Lite Micro in a child process: bnpipe's TFLM runner.

The `tflm` target never runs a model in bnpipe's own process. TFLM trusts the file: a tensor's
declared shape sizes the memory its kernels write, so a damaged model can crash the interpreter
when it is built, at its first invoke or only at a later one. This script is that process, run
by the host's python; it imports only the standard library, numpy and tflite_micro.

    python tflm_runner.py arena MODEL BYTES    build the interpreter once and exit: 0 it fits,
                                               1 TFLM refused (its message on stderr), a signal
                                               it crashed
    python tflm_runner.py serve [--memory-limit BYTES]

serve speaks device_runner.py's protocol: a `{"ready": true, ...}` line, then one JSON request
per stdin line answered by one JSON line on stdout, until stdin closes.

    {"id": 1, "command": "load", "model": "M.tflite", "arena_size": 16384}
    → {"id": 1, "ok": true, "result": {"built": false, "error": "...TFLM's last lines..."}}
    {"id": 2, "command": "run", "model": "M.tflite", "arena_size": 16384,
     "inputs": "X.npy", "outputs": "Y.npy"}
    → {"id": 2, "ok": true, "result": {"n": 360, "invoke_seconds": ..., "arena_bytes_used": ...}}
    → {"id": 2, "ok": false, "exit": 2, "error": "inputs have dtype float32 but ..."}

`load` builds an interpreter with that arena and keeps it; `run` uses the one kept when it was
built from the same model and arena size, else builds it. So the caller can tell a crash while
building (some arena sizes just short of what a model needs make TFLM's constructor dereference a
failed allocation: try another size in a fresh process) from a crash while running (the model's).

`run` is a microcontroller's loop: one set_input / invoke / get_output per row, the batch
dimension fixed at 1, then print_allocations() (TFLM's RecordingMicroAllocator) for the bytes the
model occupies in the arena. TFLM prints from C++ straight to file descriptors 1 and 2, so they
are pointed at a temporary file while it builds and reports.
"""

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import time

import numpy as np

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1
_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
_HEAD = re.compile(r"Arena allocation head (\d+) bytes")
_TAIL = re.compile(r"Arena allocation tail (\d+) bytes")


def _one_line(text):
    return " ".join(str(text).split())


@contextlib.contextmanager
def _captured_fds():
    """Point file descriptors 1 and 2 at a temporary file for the block; yields a list that holds
    the text written there once the block ends. C's and Python's buffers are flushed both ways."""
    try:
        import ctypes

        libc_fflush = ctypes.CDLL(None).fflush
    except (OSError, AttributeError):  # no C library handle: rely on the writer not buffering
        libc_fflush = None
    text = []
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield text
        finally:
            if libc_fflush is not None:
                libc_fflush(None)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            text.append(sink.read().decode("utf-8", "replace"))


def _last_lines(text, n=3):
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-n:]) or "no message"


def build(model_path, arena_size):
    """(interpreter, "") when TFLM builds the model in `arena_size` bytes, else (None, why): TFLM's
    last printed lines and its error. A crash here ends the process."""
    from tflite_micro import runtime

    with open(model_path, "rb") as f:
        data = f.read()
    with _captured_fds() as printed:
        try:
            interp = runtime.Interpreter.from_bytes(data, arena_size=int(arena_size))
            error = None
        except (RuntimeError, ValueError) as err:
            interp, error = None, f"error: {_one_line(err)}"
    if interp is None:
        return None, _last_lines(printed[0] + "\n" + error)
    return interp, ""


def arena_report(interpreter):
    """{"arena_bytes_used", "arena_bytes_head", "arena_bytes_tail"} from print_allocations();
    call after an invoke. Values are None if TFLM printed nothing recognisable."""
    with _captured_fds() as printed:
        interpreter.print_allocations()

    def grab(pattern):
        match = pattern.search(printed[0])
        return int(match.group(1)) if match else None

    return {
        "arena_bytes_used": grab(_TOTAL),
        "arena_bytes_head": grab(_HEAD),
        "arena_bytes_tail": grab(_TAIL),
    }


def run_rows(interp, model_path, x):
    """Every row of x (N, *features; the input dtype) through interp, one invoke each.

    Returns (outputs (N, *output features) in the output dtype, seconds of the invokes alone).
    ValueError for inputs that do not fit the model or an invoke TFLM refuses.
    """
    inp, out = interp.get_input_details(0), interp.get_output_details(0)
    in_shape = tuple(int(d) for d in inp["shape"])
    out_shape = tuple(int(d) for d in out["shape"])
    if not in_shape or in_shape[0] != 1:
        raise ValueError(f"{model_path} has input shape {in_shape}; TFLM runs batch 1 (1, …)")
    want = np.dtype(inp["dtype"])
    if x.dtype != want:
        raise ValueError(
            f"inputs have dtype {x.dtype} but {model_path}'s input tensor is {want} "
            "(quantize on the host first)"
        )
    if x.ndim < 1 or tuple(x.shape[1:]) != in_shape[1:]:
        raise ValueError(
            f"inputs have shape {tuple(x.shape)} but {model_path}'s input tensor wants "
            f"(N, {', '.join(str(d) for d in in_shape[1:])})"
        )
    n = x.shape[0]
    outputs = np.empty((n, *out_shape[1:]), dtype=np.dtype(out["dtype"]))
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
        raise ValueError(f"invoke failed on {model_path}: {_one_line(err)}") from None
    return outputs, seconds


class Runner:
    """The serve process's state: the interpreter last built, and for which (model, arena)."""

    def __init__(self):
        self.key, self.interp = None, None

    def load(self, model, arena_size):
        self.key, self.interp = None, None  # the old one goes first: TFLM holds its arena
        interp, why = build(model, arena_size)
        if interp is None:
            return {"built": False, "error": why}
        self.key, self.interp = (model, arena_size), interp
        return {"built": True, "arena_size": arena_size}

    def run(self, model, arena_size, inputs, outputs):
        if self.key != (model, arena_size):
            built = self.load(model, arena_size)
            if not built["built"]:
                raise ValueError(f"cannot load {model}: {built['error']}")
        x = _load_npy(inputs)
        y, seconds = run_rows(self.interp, model, x)
        with open(outputs, "wb") as f:  # exactly this path (np.save would append .npy)
            np.save(f, y, allow_pickle=False)
        from tflite_micro import __version__

        result = {
            "n": int(x.shape[0]),
            "invoke_seconds": seconds,
            "tflm_version": f"tflite-micro {__version__}",
        }
        result.update(arena_report(self.interp))
        return result


def _load_npy(path):
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"cannot read inputs {path!r} as a .npy array: {_one_line(err)}") from None


def _checked(request, names):
    """The request's fields `names` (paths are strings, sizes positive integers); ValueError
    naming the first one missing or wrong."""
    unknown = sorted(set(request) - set(names) - {"id", "command"})
    if unknown:
        raise ValueError(f"bad request: unknown field(s) {', '.join(unknown)}")
    args = {}
    for name in names:
        value = request.get(name)
        ok = (
            isinstance(value, int) and not isinstance(value, bool) and value > 0
            if name == "arena_size"
            else isinstance(value, str)
        )
        if not ok:
            raise ValueError(f"bad request: {name!r} must be {_WANTED[name]}, got {value!r}")
        args[name] = value
    return args


_WANTED = {
    "model": "a path",
    "inputs": "a path",
    "outputs": "a path",
    "arena_size": "an integer > 0",
}
_COMMANDS = {
    "load": ("model", "arena_size"),
    "run": ("model", "arena_size", "inputs", "outputs"),
}


def answer(runner, request):
    """The reply to one parsed request: bad input an exit-2 reply, a bug an exit-1 reply."""
    reply = {"id": request.get("id") if isinstance(request, dict) else None}
    try:
        if not isinstance(request, dict):
            raise ValueError(f"bad request: expected a JSON object, got {type(request).__name__}")
        command = request.get("command")
        if command not in _COMMANDS:
            raise ValueError(f"bad request: command must be 'load' or 'run', got {command!r}")
        args = _checked(request, _COMMANDS[command])
        result = getattr(runner, command)(**args)
    except MemoryError:
        reply.update(
            ok=False, exit=EXIT_BAD_INPUT, error="the model needs more memory than it may use"
        )
    except (ValueError, OSError) as err:
        reply.update(ok=False, exit=EXIT_BAD_INPUT, error=_one_line(err))
    except Exception as err:  # a bug here or in TFLM's Python layer: report it, keep serving
        import traceback

        traceback.print_exc(file=sys.stderr)
        reply.update(ok=False, exit=EXIT_INTERNAL, error=f"{type(err).__name__}: {_one_line(err)}")
    else:
        reply.update(ok=True, result=result)
    return reply


def limit_memory(nbytes):
    """Cap this process's data memory at `nbytes` (RLIMIT_DATA; as device_runner.limit_memory)."""
    if nbytes <= 0:
        return
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            nbytes = min(nbytes, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (nbytes, hard))
    except (ImportError, AttributeError, ValueError, OSError):
        pass


def serve(memory_limit=0):
    """Answer requests on stdin until it closes; stdout carries only the answers (file descriptor
    1 points at stderr, so native writes cannot corrupt them). Returns the exit code."""
    import tflite_micro

    limit_memory(memory_limit)
    sys.stdout.flush()
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    except ValueError:
        pass

    def say(obj):
        answers.write(json.dumps(obj, sort_keys=True) + "\n")
        answers.flush()

    say(
        {
            "ready": True,
            "pid": os.getpid(),
            "tflm_version": f"tflite-micro {tflite_micro.__version__}",
        }
    )
    runner = Runner()
    for line in iter(sys.stdin.readline, ""):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError as err:
            say(
                {
                    "id": None,
                    "ok": False,
                    "exit": EXIT_BAD_INPUT,
                    "error": f"bad request: not JSON: {_one_line(err)}",
                }
            )
            continue
        say(answer(runner, request))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tflm_runner.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    arena = sub.add_parser("arena", help="build MODEL in an arena of BYTES and exit")
    arena.add_argument("model")
    arena.add_argument("bytes", type=int)
    serve_p = sub.add_parser("serve", help="answer JSON requests, one per stdin line, until EOF")
    serve_p.add_argument("--memory-limit", type=int, default=0, help="0: no cap")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.memory_limit)
    interp, why = build(args.model, args.bytes)
    if interp is None:
        print(why, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
