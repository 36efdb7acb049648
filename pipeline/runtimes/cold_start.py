#!/usr/bin/env python3
"""A model's cold start in a fresh process: bnpipe bench's time to load and the memory it adds.

    python cold_start.py MODEL X.npy [--memory-limit BYTES]

Prints one JSON line: init_ms (construct and allocate the interpreter, batch = the rows of X, one
thread), first_invoke_us, and peak_rss_added_kb: the kernel's peak-RSS mark is reset after the
imports, so VmHWM − VmRSS(before) is what loading and running the model added (None where
/proc/self/clear_refs is not writable). 20 invokes follow the first one, so the peak includes
steady running. Errors: exit 2 with one `error: ...` line on stderr (device_runner's code).
"""

import argparse
import json
import sys
import time

import device_runner as dr  # beside this file: a script's own directory is first on sys.path
import numpy as np

STEADY_INVOKES = 20


def _status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return None


def cold_start(model_path, x):
    """The JSON-serialisable figures of the module docstring, for `model_path` on rows x."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS mark to the current RSS
        rss0 = _status_kb("VmRSS:")
    except OSError:
        rss0 = None
    t0 = time.perf_counter()
    interp = dr.load_interpreter(model_path, threads=1)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], list(x.shape))
    interp.allocate_tensors()
    t1 = time.perf_counter()
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    t2 = time.perf_counter()
    for _ in range(STEADY_INVOKES):
        interp.invoke()
    peak = _status_kb("VmHWM:") if rss0 is not None else None
    return {
        "init_ms": 1e3 * (t1 - t0),
        "first_invoke_us": 1e6 * (t2 - t1),
        "peak_rss_added_kb": None if peak is None else peak - rss0,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="cold_start.py", description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("inputs", help=".npy, (rows, *features) in the input dtype")
    parser.add_argument("--memory-limit", type=int, default=0, help="0: no cap")
    args = parser.parse_args(argv)
    dr.limit_memory(args.memory_limit)
    try:
        x = np.ascontiguousarray(np.load(args.inputs, allow_pickle=False))
        result = cold_start(args.model, x)
    except dr.LiteRtMissing as err:
        print(f"error: {err}", file=sys.stderr)
        return dr.EXIT_NO_LITERT
    except MemoryError:
        print("error: the model needs more memory than it may use", file=sys.stderr)
        return dr.EXIT_BAD_INPUT
    except (ValueError, RuntimeError, OSError) as err:  # LiteRT refuses with either
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return dr.EXIT_BAD_INPUT
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
