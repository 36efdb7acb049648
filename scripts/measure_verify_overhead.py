#!/usr/bin/env python3
"""Cost of verifying N samples on the host against the interpreter's own batched invoke time.

    python scripts/measure_verify_overhead.py ARTIFACTS_DIR [--samples 10000] [--repeats 5]

For model_int8.tflite in ARTIFACTS_DIR: the verify path for one target (quantize the inputs as
recorded, HostRuntime.run in batches, top-1, the paired statistics against a reference) versus
the invoke calls alone; medians of --repeats, measured side by side in one process.
"""
import argparse
import statistics
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", type=Path)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from pipeline.quantize import to_input
    from pipeline.runtimes.host import HostRuntime
    from pipeline.stats import compare
    from pipeline.tflite_file import quant_params, read_tflite
    from pipeline.train import recorded_dataset

    path = args.artifacts / "model_int8.tflite"
    ds, _ = recorded_dataset([args.artifacts])
    idx = np.arange(args.samples) % len(ds.x_test)
    x, y = ds.x_test[idx], ds.y_test[idx]
    rt = HostRuntime()
    full, invoke = [], []
    for _ in range(args.repeats + 1):  # the first round warms up
        t0 = time.perf_counter()
        info = read_tflite(path)
        xin = to_input(x, quant_params(info.input_tensor()))
        res = rt.run(str(path), xin)
        pred = np.argmax(res.outputs, axis=1)
        compare(pred, y, y)
        full.append(time.perf_counter() - t0)
        invoke.append(res.invoke_seconds)
    f, i = statistics.median(full[1:]), statistics.median(invoke[1:])
    print(f"{args.samples} samples: verify path {1e3 * f:.1f} ms, invokes alone {1e3 * i:.1f} ms, "
          f"ratio {f / i:.2f}")


if __name__ == "__main__":
    main()
