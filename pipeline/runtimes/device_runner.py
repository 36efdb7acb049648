#!/usr/bin/env python3
"""Run or benchmark one .tflite model with LiteRT: bnpipe's standalone device runner.

This one file is copied as it is to wherever the model runs: the arm64 emulator, a board over
ssh, or run by the host's own python as the host targets' child process (a model never runs in
bnpipe's own process). So it imports only the standard library, numpy and LiteRT
(`ai_edge_litert`, else the older `tflite_runtime`), never `pipeline`, and keeps to Python 3.7
syntax, which older board images still ship.

Inputs are already preprocessed and quantized to the model's input dtype by bnpipe on the host;
outputs are the raw output tensor values (int8 codes for an int8 model), so that every target can
be compared with every other one exactly.

Command line (one JSON line on stdout; errors as one `error: ...` line on stderr):

    python3 device_runner.py run --model M.tflite --inputs X.npy --outputs Y.npy [--reference]
                                 [--threads N] [--batch 1024]
    python3 device_runner.py bench --model M.tflite --inputs X.npy [--batch-sizes 1,32,1024]
                                   [--threads 1,0] [--warmup 20] [--runs 200] [--reference]
    python3 device_runner.py serve [--memory-limit BYTES]

Exit codes: 0 success; 2 bad input (a missing or unreadable file, a dtype or shape that does not
fit the model); 3 LiteRT is not installed for this python.

`serve` answers many `run` and `bench` requests in one process, because starting Python, numpy
and LiteRT is most of the cost of a small model under emulation (≈ 3-4 s per process under
qemu-user against well under a second of work). It prints one `{"ready": true, ...}` line once
LiteRT is imported, then reads one JSON request per line on stdin and answers each with one JSON
line on stdout, until stdin closes (then exit 0):

    {"id": 1, "command": "run", "model": "M.tflite", "inputs": "X.npy", "outputs": "Y.npy",
     "reference": false, "threads": null, "batch": 1024}
    {"id": 2, "command": "bench", "model": "M.tflite", "inputs": "X.npy",
     "batch_sizes": [1, 32, 1024], "threads": [1, 0], "warmup": 20, "runs": 200, "reference": false}
    → {"id": 1, "ok": true, "result": {...the JSON line `run` / `bench` would print...}}
    → {"id": 2, "ok": false, "exit": 2, "error": "...the one line `run` / `bench` would print..."}

Interleaved timing (Rounds) over requests, so that the caller can time other things between
rounds: `rounds_open` builds and warms up one interpreter per configuration and answers a
session number and each one's set-up times; `rounds_run` times `runs` invokes of each, in turn
from configuration `first`; `rounds_close` drops them.

    {"id": 3, "command": "rounds_open", "warmup": 20, "reference": false, "configs":
     [{"model": "M.tflite", "inputs": "X.npy", "threads": 1, "batch": 32}, ...]}
    → {"id": 3, "ok": true, "result": {"session": 1, "setup": [{"init_seconds": ...,
       "first_invoke_seconds": ...}, ...], ...environment...}}
    {"id": 4, "command": "rounds_run", "session": 1, "runs": 40, "first": 0, "warmup": 0}
    → {"id": 4, "ok": true, "result": {"seconds": [[...one list per configuration...]]}}
    {"id": 5, "command": "rounds_close", "session": 1}

Every run and bench request builds its own interpreter, so its result is what the one-shot
command gives. A model that crashes LiteRT takes the whole process down: the caller sees stdout
close mid-request and knows which model did it. --memory-limit caps the process's data memory
(setrlimit), so that a model whose tensors ask for gigabytes fails here, not on the machine.
Native code that writes to stdout would corrupt the answers, so serve keeps the real stdout for
them and points file descriptor 1 at stderr. SIGINT is ignored: Ctrl-C is the caller's to
handle, and the caller closes stdin (or kills the process) itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time

import numpy as np

try:
    import ai_edge_litert as _litert_pkg
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    LITERT_VERSION = "ai-edge-litert " + str(getattr(_litert_pkg, "__version__", "unknown"))
except ImportError:  # a board that only has the older standalone package
    try:
        import tflite_runtime as _litert_pkg
        from tflite_runtime.interpreter import Interpreter

        try:
            from tflite_runtime.interpreter import OpResolverType
        except ImportError:  # tflite_runtime < 2.5: no choice of kernels
            OpResolverType = None
        LITERT_VERSION = "tflite_runtime " + str(getattr(_litert_pkg, "__version__", "unknown"))
    except ImportError:
        Interpreter = None
        OpResolverType = None
        LITERT_VERSION = None

EXIT_BAD_INPUT = 2
EXIT_NO_LITERT = 3
EXIT_INTERNAL = 1  # what Python exits with on an uncaught exception; serve replies it likewise
DEFAULT_BATCH = 1024  # rows per invoke: large enough that per-invoke overhead vanishes


class LiteRtMissing(RuntimeError):
    """Neither ai_edge_litert nor tflite_runtime can be imported by this python."""


def _litert_missing():
    return LiteRtMissing(
        "neither ai_edge_litert nor tflite_runtime is importable by %s "
        "(pip install ai-edge-litert)" % sys.executable
    )


def _one_line(err: BaseException) -> str:
    # LiteRT's messages span lines; the caller shows exactly one.
    return " ".join(str(err).split()) or type(err).__name__


def load_interpreter(model_path, reference=False, threads=None):
    """A new Interpreter for `model_path` (tensors not yet allocated).

    reference=True selects LiteRT's builtin reference kernels (no XNNPACK; the numerical truth);
    otherwise the default resolver, which applies the XNNPACK delegate. threads=None (or 0) lets
    LiteRT choose.
    """
    if Interpreter is None:
        raise _litert_missing()
    model_path = os.fspath(model_path)
    if not os.path.isfile(model_path):
        raise ValueError("model file not found: %r" % model_path)
    kwargs = {"model_path": model_path, "num_threads": threads or None}
    if reference:
        if OpResolverType is None:
            raise ValueError("this tflite_runtime cannot select the reference kernels")
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_REF
    try:
        return Interpreter(**kwargs)
    except (ValueError, RuntimeError) as err:
        raise ValueError(
            "cannot load %r as a TFLite model: %s" % (model_path, _one_line(err))
        ) from None


def _io_details(interp):
    """(input details, output details) of a single-input, single-output model."""
    try:
        inputs, outputs = interp.get_input_details(), interp.get_output_details()
    except UnicodeDecodeError as err:  # LiteRT's Python layer decodes tensor names as UTF-8
        raise ValueError("a tensor name of the model is not UTF-8 (%s)" % err.reason) from None
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            "expected a model with 1 input and 1 output, got %d inputs and %d outputs"
            % (len(inputs), len(outputs))
        )
    return inputs[0], outputs[0]


def _check_inputs(x, inp):
    """Raise ValueError unless x is (N, *feature shape) in the input tensor's dtype."""
    want_dtype = np.dtype(inp["dtype"])
    feature_shape = tuple(int(d) for d in inp["shape"][1:])
    if x.dtype != want_dtype:
        raise ValueError(
            "inputs have dtype %s but the model's input tensor %r is %s "
            "(quantize on the host first)" % (x.dtype, inp["name"], want_dtype)
        )
    if x.ndim < 1 or tuple(x.shape[1:]) != feature_shape:
        raise ValueError(
            "inputs have shape %s but the model's input tensor %r wants (N, %s)"
            % (tuple(x.shape), inp["name"], ", ".join(str(d) for d in feature_shape))
        )
    return feature_shape


def run_batched(interp, x, batch=DEFAULT_BATCH):
    """Run every row of x through interp, `batch` rows per invoke.

    x: (N, *input feature shape) in the input tensor dtype. Returns (outputs, invoke_seconds):
    outputs is a new (N, *output feature shape) array in the output dtype; invoke_seconds sums
    the wall time of the invoke calls only. The interpreter's input is resized (and its tensors
    re-allocated) only when the chunk size changes, i.e. at most twice.
    """
    batch = int(batch)
    if batch < 1:
        raise ValueError("batch must be >= 1, got %d" % batch)
    x = np.asarray(x)
    inp, out = _io_details(interp)
    feature_shape = _check_inputs(x, inp)
    n = x.shape[0]
    if n == 0:
        out_features = tuple(int(d) for d in out["shape"][1:])
        return np.empty((0, *out_features), dtype=out["dtype"]), 0.0

    outputs = None
    seconds = 0.0
    allocated_rows = None
    try:
        for start in range(0, n, batch):
            chunk = np.ascontiguousarray(x[start : start + batch])
            rows = chunk.shape[0]
            if rows != allocated_rows:
                interp.resize_tensor_input(inp["index"], [rows, *feature_shape])
                interp.allocate_tensors()
                allocated_rows = rows
            interp.set_tensor(inp["index"], chunk)
            t0 = time.perf_counter()
            interp.invoke()
            seconds += time.perf_counter() - t0
            y = interp.get_tensor(out["index"])  # a copy, safe to keep past the next invoke
            if y.shape[:1] != (rows,):
                raise ValueError(
                    "the model gave outputs of shape %s for %d input rows" % (y.shape, rows)
                )
            if outputs is None:
                outputs = np.empty((n, *y.shape[1:]), dtype=y.dtype)
            outputs[start : start + rows] = y
    except RuntimeError as err:  # LiteRT refused to allocate or run the model
        raise ValueError("LiteRT cannot run the model: %s" % _one_line(err)) from None
    return outputs, seconds


def _peak_rss_kb():
    """Peak resident set size of this process so far, in KiB (None where unknown)."""
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak // 1024) if sys.platform == "darwin" else int(peak)  # macOS counts bytes


def fill(sample, rows):
    """(rows, *features): the rows of `sample` repeated in order until there are `rows`. A copy."""
    return np.ascontiguousarray(np.take(sample, np.arange(rows) % sample.shape[0], axis=0))


def environment():
    """Where this runner runs: JSON-serialisable facts for reports."""
    return {
        "litert_version": LITERT_VERSION,
        "numpy_version": np.__version__,
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


class Rounds(object):
    """One interpreter per configuration (model, sample, threads, batch), timed in turns.

    Each configuration's interpreter is built and allocated for its batch (timed: init_seconds),
    given its sample repeated to the batch (fill), invoked once (timed: first_invoke_seconds) and
    `warmup` more times untimed. run() then times invokes of every configuration in turn. This is
    the one timing loop of bnpipe's LiteRT figures: bench() below times each configuration alone,
    the bench stage takes turns over rounds so that a machine that drifts hits every one alike.
    """

    def __init__(self, configs, warmup=20, reference=False, budget=None):
        if int(warmup) < 0:
            raise ValueError("need warmup >= 0, got %s" % (warmup,))
        budget = _budget(budget)
        self.interpreters = []
        self.setup = []  # per configuration: init_seconds, first_invoke_seconds
        for model_path, sample, threads, rows in configs:
            rows = int(rows)
            if rows < 1:
                raise ValueError("batch sizes must be >= 1, got %s" % rows)
            sample = np.asarray(sample)
            if sample.ndim < 1 or sample.shape[0] == 0:
                raise ValueError("the bench sample is empty (shape %s)" % (tuple(sample.shape),))
            try:
                t0 = time.perf_counter()
                interp = load_interpreter(model_path, reference=reference, threads=threads)
                inp, _ = _io_details(interp)
                feature_shape = _check_inputs(sample, inp)
                interp.resize_tensor_input(inp["index"], [rows, *feature_shape])
                interp.allocate_tensors()
                init_seconds = time.perf_counter() - t0

                interp.set_tensor(inp["index"], fill(sample, rows))
                t0 = time.perf_counter()
                interp.invoke()
                first_seconds = time.perf_counter() - t0
                _invoke_for(interp, int(warmup), budget)
            except RuntimeError as err:  # LiteRT refused to allocate or run the model
                raise ValueError(
                    "LiteRT cannot run %s: %s" % (model_path, _one_line(err))
                ) from None
            self.interpreters.append(interp)
            self.setup.append({"init_seconds": init_seconds, "first_invoke_seconds": first_seconds})

    def run(self, runs, first=0, warmup=0, budget=None):
        """Time `runs` invokes of each configuration, in turn from configuration `first` (then
        first + 1, ... wrapping round), each turn after `warmup` untimed invokes. With a budget
        (seconds), a turn also ends once its timed invokes took that long, after one at least: a
        large model at a large batch gets fewer invokes, not minutes. Returns one list of
        seconds per configuration, in configuration order."""
        runs, warmup, budget = int(runs), int(warmup), _budget(budget)
        if runs < 1 or warmup < 0:
            raise ValueError(
                "need runs >= 1 and warmup >= 0, got runs=%s warmup=%s" % (runs, warmup)
            )
        n = len(self.interpreters)
        seconds = [None] * n
        for k in range(n):
            i = (int(first) + k) % n
            interp = self.interpreters[i]
            _invoke_for(interp, warmup, budget)
            timed = []
            spent = 0.0
            while len(timed) < runs and (budget is None or spent < budget):
                t0 = time.perf_counter()
                interp.invoke()
                timed.append(time.perf_counter() - t0)
                spent += timed[-1]
            seconds[i] = timed
        return seconds


def _budget(budget):
    """A time budget in seconds (None: none); ValueError unless it is a positive number."""
    if budget is None:
        return None
    if not _is_seconds(budget):
        raise ValueError("a time budget must be a positive number of seconds, got %r" % (budget,))
    return float(budget)


def _invoke_for(interp, count, budget):
    """`count` untimed invokes, or fewer once `budget` seconds (if any) have passed."""
    t0 = time.perf_counter()
    for _ in range(count):
        if budget is not None and time.perf_counter() - t0 >= budget:
            break
        interp.invoke()


def bench(
    model_path,
    sample,
    batch_sizes=(1, 32, 1024),
    threads=(1, None),
    warmup=20,
    runs=200,
    reference=False,
):
    """Latency and throughput of `model_path` for every (threads, batch size) pair.

    sample: (M, *input feature shape) in the input dtype, repeated to fill each batch. Each pair
    gets a fresh interpreter (timed: construct + allocate), one timed first invoke, `warmup`
    untimed invokes, then `runs` timed invokes (Rounds, one configuration at a time). Returns a
    JSON-serialisable dict; latencies are per invoke (one whole batch) in microseconds.
    """
    batch_sizes, threads, sample = _bench_args(batch_sizes, threads, sample, warmup, runs)
    rss_before = _peak_rss_kb()
    results = [
        _bench_one(model_path, sample, n_threads, rows, warmup, int(runs), reference)
        for n_threads in threads
        for rows in batch_sizes
    ]
    report = {
        "model": os.path.basename(os.fspath(model_path)),
        "model_bytes": os.path.getsize(model_path),
        "reference": bool(reference),
        "warmup": int(warmup),
        "runs": int(runs),
        "peak_rss_kb_before": rss_before,
        "peak_rss_kb_after": _peak_rss_kb(),
        "results": results,
    }
    report.update(environment())
    return report


def _bench_args(batch_sizes, threads, sample, warmup, runs):
    """bench's arguments checked (ValueError) and normalised: (batch sizes, threads, sample)."""
    if int(warmup) < 0 or int(runs) < 1:
        raise ValueError("need warmup >= 0 and runs >= 1, got warmup=%s runs=%s" % (warmup, runs))
    batch_sizes = [int(b) for b in batch_sizes]
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError("batch sizes must be >= 1, got %s" % (batch_sizes,))
    threads = [int(t) if t else None for t in threads] or [None]
    sample = np.asarray(sample)
    if sample.ndim < 1 or sample.shape[0] == 0:
        raise ValueError("the bench sample is empty (shape %s)" % (tuple(sample.shape),))
    return batch_sizes, threads, sample


def _bench_one(model_path, sample, n_threads, rows, warmup, runs, reference):
    """One (threads, batch size) configuration on a fresh interpreter: bench's result row."""
    rounds = Rounds([(model_path, sample, n_threads, rows)], warmup=0, reference=reference)
    latencies = np.asarray(rounds.run(runs, warmup=warmup)[0])
    median, p90, p99 = np.percentile(latencies, [50, 90, 99]) * 1e6
    return {
        "threads": n_threads,  # None: LiteRT's default
        "batch": rows,
        "init_seconds": rounds.setup[0]["init_seconds"],
        "first_invoke_seconds": rounds.setup[0]["first_invoke_seconds"],
        "latency_us": {
            "median": float(median),
            "p90": float(p90),
            "p99": float(p99),
            "mean": float(latencies.mean() * 1e6),
            "min": float(latencies.min() * 1e6),
        },
        "throughput_per_s": rows * runs / float(latencies.sum()),
    }


# ---------------------------------------------------------------------------------------------
# Command line


def _load_npy(path, what):
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError("%s file not found: %r" % (what, path)) from None
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(
            "cannot read %s %r as a .npy array: %s" % (what, path, _one_line(err))
        ) from None


def _int_list(text):
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected comma-separated integers, got %r" % text
        ) from None


def _parser():
    parser = argparse.ArgumentParser(
        prog="device_runner.py",
        description="Run or benchmark a .tflite model with LiteRT (bnpipe's device runner).",
    )
    sub = parser.add_subparsers(dest="command")
    sub.required = True

    run = sub.add_parser("run", help="run every row of an .npy file through the model")
    run.add_argument("--model", required=True, help=".tflite file")
    run.add_argument("--inputs", required=True, help=".npy, (N, *features) in the input dtype")
    run.add_argument("--outputs", required=True, help=".npy to write the raw outputs to")
    run.add_argument("--reference", action="store_true", help="builtin reference kernels")
    run.add_argument("--threads", type=int, default=None, help="0 or absent: LiteRT's default")
    run.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="rows per invoke")

    bench_p = sub.add_parser("bench", help="latency and throughput per (threads, batch size)")
    bench_p.add_argument("--model", required=True, help=".tflite file")
    bench_p.add_argument("--inputs", required=True, help=".npy sample in the input dtype")
    bench_p.add_argument("--batch-sizes", type=_int_list, default=[1, 32, 1024])
    bench_p.add_argument(
        "--threads",
        type=_int_list,
        default=[1, 0],
        help="comma-separated; 0 means LiteRT's default",
    )
    bench_p.add_argument("--warmup", type=int, default=20)
    bench_p.add_argument("--runs", type=int, default=200)
    bench_p.add_argument("--reference", action="store_true", help="builtin reference kernels")

    serve_p = sub.add_parser("serve", help="answer JSON requests, one per stdin line, until EOF")
    serve_p.add_argument(
        "--memory-limit",
        type=int,
        default=0,
        help="cap this process's data memory at BYTES (0: no cap)",
    )
    return parser


def run_file(model, inputs, outputs, reference=False, threads=None, batch=DEFAULT_BATCH):
    """Run every row of the .npy `inputs` through `model`; write the raw outputs to `outputs`.

    Returns what `run` prints: counts, timings and options, and this runner's environment().
    """
    x = _load_npy(inputs, "inputs")
    interp = load_interpreter(model, reference=reference, threads=threads)
    result, seconds = run_batched(interp, x, batch=batch)
    with open(outputs, "wb") as f:  # exactly this path (np.save would append .npy)
        np.save(f, result, allow_pickle=False)
    info = {
        "n": int(x.shape[0]),
        "invoke_seconds": seconds,
        "reference": bool(reference),
        "threads": threads or None,
        "batch": batch,
        "output_dtype": str(result.dtype),
        "output_shape": list(result.shape),
    }
    info.update(environment())
    return info


def bench_file(
    model, inputs, batch_sizes=(1, 32, 1024), threads=(1, 0), warmup=20, runs=200, reference=False
):
    """bench() on the sample in the .npy `inputs`: what `bench` prints."""
    return bench(
        model,
        _load_npy(inputs, "inputs"),
        batch_sizes=batch_sizes,
        threads=threads,
        warmup=warmup,
        runs=runs,
        reference=reference,
    )


def _cmd_run(args):
    return run_file(
        args.model,
        args.inputs,
        args.outputs,
        reference=args.reference,
        threads=args.threads,
        batch=args.batch,
    )


def _cmd_bench(args):
    return bench_file(
        args.model,
        args.inputs,
        batch_sizes=args.batch_sizes,
        threads=args.threads,
        warmup=args.warmup,
        runs=args.runs,
        reference=args.reference,
    )


# ---------------------------------------------------------------------------------------------
# serve: many requests in one process (see the module docstring for the protocol)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_thread_list(value):
    return isinstance(value, list) and all(v is None or _is_int(v) for v in value)


def _is_config_list(value):
    """[{"model": str, "inputs": str, "threads": int or null, "batch": int}, ...], not empty."""
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(
            isinstance(c, dict)
            and set(c) == {"model", "inputs", "threads", "batch"}
            and isinstance(c["model"], str)
            and isinstance(c["inputs"], str)
            and (c["threads"] is None or _is_int(c["threads"]))
            and _is_int(c["batch"])
            for c in value
        )
    )


_REQUIRED = object()
# Request fields: name -> (check, what the check wants, default or _REQUIRED). Defaults are the
# command line's; a null is accepted where the default is null.
_RUN_FIELDS = {
    "model": (lambda v: isinstance(v, str), "a path", _REQUIRED),
    "inputs": (lambda v: isinstance(v, str), "a path", _REQUIRED),
    "outputs": (lambda v: isinstance(v, str), "a path", _REQUIRED),
    "reference": (lambda v: isinstance(v, bool), "true or false", False),
    "threads": (_is_int, "an integer or null", None),
    "batch": (_is_int, "an integer", DEFAULT_BATCH),
}
_BENCH_FIELDS = {
    "model": _RUN_FIELDS["model"],
    "inputs": _RUN_FIELDS["inputs"],
    "batch_sizes": (
        lambda v: isinstance(v, list) and all(_is_int(b) for b in v),
        "a list of integers",
        [1, 32, 1024],
    ),
    "threads": (_is_thread_list, "a list of integers (0 or null: LiteRT's default)", [1, 0]),
    "warmup": (_is_int, "an integer", 20),
    "runs": (_is_int, "an integer", 200),
    "reference": _RUN_FIELDS["reference"],
}


def _is_seconds(v):
    return not isinstance(v, bool) and isinstance(v, (int, float)) and v > 0


_ROUNDS_OPEN_FIELDS = {
    "configs": (
        _is_config_list,
        'a non-empty list of {"model", "inputs", "threads", "batch"} objects',
        _REQUIRED,
    ),
    "warmup": (_is_int, "an integer", 20),
    "reference": _RUN_FIELDS["reference"],
    "budget": (_is_seconds, "a positive number of seconds or null", None),
}
_ROUNDS_RUN_FIELDS = {
    "session": (_is_int, "an integer", _REQUIRED),
    "runs": (_is_int, "an integer", _REQUIRED),
    "first": (_is_int, "an integer", 0),
    "warmup": (_is_int, "an integer", 0),
    "budget": _ROUNDS_OPEN_FIELDS["budget"],
}
_ROUNDS_CLOSE_FIELDS = {"session": _ROUNDS_RUN_FIELDS["session"]}
_COMMANDS = ("run", "bench", "rounds_open", "rounds_run", "rounds_close")


def _request_args(request, fields):
    """The keyword arguments of one request, checked against `fields` (ValueError names the
    first bad field)."""
    unknown = sorted(set(request) - set(fields) - {"id", "command"})
    if unknown:
        raise ValueError("bad request: unknown field(s) %s" % ", ".join(unknown))
    kwargs = {}
    for name, (check, wanted, default) in fields.items():
        value = request.get(name, default)
        if value is _REQUIRED:
            raise ValueError("bad request: %r is missing" % name)
        if not (check(value) or (value is None and default is None)):
            raise ValueError("bad request: %r must be %s, got %r" % (name, wanted, value))
        kwargs[name] = value
    return kwargs


def _open_rounds(sessions, configs, warmup, reference, budget):
    """A new Rounds over `configs` (each sample loaded from its .npy once), kept in `sessions`."""
    samples = {}
    for c in configs:
        if c["inputs"] not in samples:
            samples[c["inputs"]] = _load_npy(c["inputs"], "inputs")
    rounds = Rounds(
        [(c["model"], samples[c["inputs"]], c["threads"], c["batch"]) for c in configs],
        warmup=warmup,
        reference=reference,
        budget=budget,
    )
    session = max(sessions, default=0) + 1
    sessions[session] = rounds
    result = {"session": session, "setup": rounds.setup}
    result.update(environment())
    return result


def _session(sessions, session):
    if session not in sessions:
        raise ValueError("bad request: no open rounds session %r" % (session,))
    return sessions[session]


def _answer(request, served_before, sessions=None):
    """The reply to one parsed request. Bad input becomes an exit-2 reply and an unexpected error
    an exit-1 reply (what the one-shot command would exit with), so one request never ends the
    server; only a crash of LiteRT itself does. `sessions` holds the open Rounds by number."""
    reply = {"id": request.get("id") if isinstance(request, dict) else None}
    sessions = {} if sessions is None else sessions
    try:
        if not isinstance(request, dict):
            raise ValueError("bad request: expected a JSON object, got %s" % type(request).__name__)
        command = request.get("command")
        if command == "run":
            result = run_file(**_request_args(request, _RUN_FIELDS))
        elif command == "bench":
            result = bench_file(**_request_args(request, _BENCH_FIELDS))
            # Peak RSS is this process's, which earlier requests may have raised: say how many.
            result["served_before"] = served_before
        elif command == "rounds_open":
            result = _open_rounds(sessions, **_request_args(request, _ROUNDS_OPEN_FIELDS))
        elif command == "rounds_run":
            args = _request_args(request, _ROUNDS_RUN_FIELDS)
            rounds = _session(sessions, args.pop("session"))
            result = {"seconds": rounds.run(**args)}
        elif command == "rounds_close":
            session = _request_args(request, _ROUNDS_CLOSE_FIELDS)["session"]
            _session(sessions, session)
            del sessions[session]
            result = {"session": session}
        else:
            raise ValueError(
                "bad request: command must be one of %s, got %r" % (", ".join(_COMMANDS), command)
            )
    except LiteRtMissing as err:
        reply.update(ok=False, exit=EXIT_NO_LITERT, error=str(err))
    except MemoryError:  # numpy's or LiteRT's allocation refused under --memory-limit
        reply.update(
            ok=False,
            exit=EXIT_BAD_INPUT,
            error="the model needs more memory than this runner may use",
        )
    except (ValueError, OSError) as err:
        reply.update(ok=False, exit=EXIT_BAD_INPUT, error=_one_line(err))
    except Exception as err:  # a bug here or in LiteRT's Python layer: report it, keep serving
        import traceback

        traceback.print_exc(file=sys.stderr)
        reply.update(
            ok=False, exit=EXIT_INTERNAL, error="%s: %s" % (type(err).__name__, _one_line(err))
        )
    else:
        reply.update(ok=True, result=result)
    return reply


def limit_memory(nbytes):
    """Cap this process's data memory (RLIMIT_DATA: heap and private writable mappings, which is
    what tensors take, not the address space reserved for libraries and thread stacks) at
    `nbytes`. Allocations past it fail: numpy raises MemoryError, LiteRT refuses or aborts. No-op
    for nbytes <= 0 or where the platform has no such limit."""
    if nbytes <= 0:
        return
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            nbytes = min(nbytes, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (nbytes, hard))
    except (ImportError, AttributeError, ValueError, OSError):  # not a Unix, or not allowed
        pass


def serve(stdin=None, stdout=None, memory_limit=0):
    """Answer requests from `stdin` on `stdout` until stdin closes; returns the exit code.

    stdin/stdout default to this process's own, with file descriptor 1 pointed at stderr so that
    nothing but the answers reaches the caller's pipe. memory_limit: limit_memory(), applied
    before the ready line.
    """
    if Interpreter is None:
        print("error: %s" % _litert_missing(), file=sys.stderr)
        return EXIT_NO_LITERT
    limit_memory(memory_limit)
    if stdout is None:
        sys.stdout.flush()
        stdout = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        sys.stdout = sys.stderr
    if stdin is None:
        stdin = sys.stdin
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread (serve called from a test): leave it
        pass

    def say(obj):
        stdout.write(json.dumps(obj, sort_keys=True) + "\n")
        stdout.flush()

    ready = {"ready": True, "pid": os.getpid()}
    ready.update(environment())
    say(ready)
    served = 0
    sessions = {}
    for line in iter(stdin.readline, ""):
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
                    "error": "bad request: not JSON: %s" % _one_line(err),
                }
            )
            continue
        say(_answer(request, served, sessions))
        served += 1
    return 0


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(memory_limit=args.memory_limit)
    try:
        result = _cmd_run(args) if args.command == "run" else _cmd_bench(args)
    except LiteRtMissing as err:
        print("error: %s" % err, file=sys.stderr)
        return EXIT_NO_LITERT
    except (ValueError, OSError) as err:
        print("error: %s" % _one_line(err), file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(result, sort_keys=True))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
