#!/usr/bin/env python3
"""Run .tflite models on LiteRT's reference kernels and save chosen tensors: bnpipe's child runner
for `bnpipe layers`.

It runs in a child process of bnpipe, so that a model that crashes LiteRT ends this process and
not bnpipe's (runtimes/tensors.py starts it and turns a crash into an error naming the model).
It imports only the standard library, numpy and LiteRT, never `pipeline`. With `-` it starts
(Python, numpy, LiteRT: about half a second) before its jobs are written, while bnpipe loads the
data, and reads where they are from stdin; empty stdin: exit 0 without work.

    python tensor_runner.py JOBS.json
    python tensor_runner.py -          (the path of JOBS.json on stdin, one line, when it is ready)

JOBS.json: {"jobs": [{"model": "M.tflite", "inputs": "X.npy", "out": "T.npz",
                      "tensors": [7, 8, 9], "reference": true}, ...]}

For each job in order: load the model (with `experimental_preserve_all_tensors`, so intermediate
tensors keep their values after `invoke`), run every row of the inputs in batched invokes
(`resize_tensor_input`, BATCH rows at a time, never one call per sample), and write to `out` an
.npz with one (N, *shape) array per tensor index asked for, named "t<index>" (tensor indices are
the file's own). Then print `ok <job number>` and flush, so that the caller knows which jobs
finished if a later one crashes the process.

Exit codes: 0 every job done; 2 bad input (one `error: ...` line on stderr: a file that cannot
be read, a model LiteRT refuses cleanly, inputs of the wrong dtype or shape, a tensor index the
model lacks); 3 LiteRT is not installed for this python. A crash inside LiteRT shows as a signal.
"""

import json
import os
import sys

import numpy as np

EXIT_BAD_INPUT = 2
EXIT_NO_LITERT = 3
BATCH = 1024  # rows per invoke: per-invoke overhead vanishes, and the arena stays small


def _one_line(err):
    return " ".join(str(err).split()) or type(err).__name__


def load(model_path, reference=True):
    """An Interpreter for `model_path` that keeps every tensor's value after invoke."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if not os.path.isfile(model_path):
        raise ValueError(f"model file not found: {model_path!r}")
    kinds = (
        OpResolverType.BUILTIN_REF
        if reference
        else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    try:
        return Interpreter(
            model_path=model_path,
            experimental_op_resolver_type=kinds,
            experimental_preserve_all_tensors=True,
        )
    except (ValueError, RuntimeError) as err:
        raise ValueError(
            f"cannot load {model_path!r} as a TFLite model: {_one_line(err)}"
        ) from None


def run(interp, x, tensors, batch=BATCH):
    """{tensor index: (N, *shape) array} of every row of x through interp, `batch` rows at once."""
    inputs = interp.get_input_details()
    if len(inputs) != 1:
        raise ValueError(f"expected a model with 1 input, got {len(inputs)}")
    inp = inputs[0]
    features = [int(d) for d in inp["shape"][1:]]
    if x.dtype != np.dtype(inp["dtype"]) or list(x.shape[1:]) != features:
        raise ValueError(
            f"inputs are {x.dtype} {tuple(x.shape)} but the model's input {inp['name']!r} "
            f"takes {np.dtype(inp['dtype'])} (N, {', '.join(map(str, features))})"
        )
    known = {d["index"] for d in interp.get_tensor_details()}
    missing = [t for t in tensors if t not in known]
    if missing:
        raise ValueError(f"the model has no tensor {missing[0]}")
    saved, rows_allocated = {}, None
    for start in range(0, x.shape[0], batch):
        chunk = np.ascontiguousarray(x[start : start + batch])
        if chunk.shape[0] != rows_allocated:
            interp.resize_tensor_input(inp["index"], [chunk.shape[0], *features])
            interp.allocate_tensors()
            rows_allocated = chunk.shape[0]
        interp.set_tensor(inp["index"], chunk)
        interp.invoke()
        for t in tensors:
            value = interp.get_tensor(t)  # a copy
            if t not in saved:
                saved[t] = np.empty((x.shape[0], *value.shape[1:]), value.dtype)
            saved[t][start : start + chunk.shape[0]] = value
    return saved


def do_job(job):
    try:
        x = np.load(job["inputs"], allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"cannot read inputs {job['inputs']!r}: {_one_line(err)}") from None
    interp = load(job["model"], reference=job.get("reference", True))
    saved = run(interp, x, [int(t) for t in job["tensors"]])
    with open(job["out"], "wb") as f:  # exactly this path (np.savez would append .npz)
        np.savez(f, **{f"t{t}": a for t, a in saved.items()})


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError as err:
        print(f"error: LiteRT is not importable by {sys.executable}: {err}", file=sys.stderr)
        return EXIT_NO_LITERT
    try:
        if len(argv) != 1:
            raise ValueError("usage: tensor_runner.py JOBS.json | -")
        path = sys.stdin.readline().strip() if argv[0] == "-" else argv[0]
        if not path:
            return 0  # started ahead and not needed after all
        with open(path) as f:
            jobs = json.load(f)["jobs"]
        for number, job in enumerate(jobs):
            do_job(job)
            print(f"ok {number}", flush=True)
    except (ValueError, OSError, KeyError, TypeError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
