#!/usr/bin/env python3
"""Cost of verifying N samples on the host against the interpreter's own batched invoke time.

    python scripts/measure_verify_overhead.py ARTIFACTS_DIR [--samples 10000] [--repeats 5]
                                              [--model model_int8.tflite] [--float-path]

For one model of ARTIFACTS_DIR on the `host` target (LiteRT, XNNPACK), it times verify's own code
for one candidate × target, the functions run_verify calls, on the test split recorded at
training, repeated to --samples rows:

    check    verify's structural check of the .tflite (checked_tflite: parsed once per run)
    inputs   the inputs in the model's input dtype (ModelInputs.for_tensor: table lookup when the
             data are integer pixels, as Dataset.x_test_codes allows; else, or with --float-path,
             the float path that data which are not pixels take)
    run      verify.run_row on HostRuntime: the interpreter made and allocated, set_tensor and
             get_tensor copies, the batched invokes, top-1, the paired statistics and the LSB
             distance from the host-ref outputs (computed once beforehand, as host-ref runs first)

against "the interpreter's own batched time": the wall time of the invoke() calls alone on the
very same batches (the RunResult.invoke_seconds of that run: ≤ 1024 rows per invoke; no
set_tensor / get_tensor copies, no resize or allocation, no interpreter construction). The verify
path counts all of those. Loading the data set (including the integer pixel codes recovered at
load) and the reference model's predictions happen once per verify run for every candidate and
are not counted. Each round starts with an empty check cache, so the .tflite is parsed once per
round, as in a verify run. The first round warms up; medians of --repeats rounds, both sides
measured in the same call.

A verify run checks each candidate once and quantizes each distinct input quantization once, for
all its targets; so the last line, run alone against the invokes, is what each further target of
a candidate costs there.
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
    ap.add_argument("--model", default="model_int8.tflite")
    ap.add_argument("--float-path", action="store_true",
                    help="quantize the floats, as for data that are not integer pixels")
    args = ap.parse_args()
    from pipeline.config import VerifyConfig
    from pipeline.runtimes.host import HostRuntime, checked_tflite, forget_checked
    from pipeline.tflite_file import quant_params
    from pipeline.train import recorded_dataset
    from pipeline.verify import ModelInputs, run_row

    path = args.artifacts / args.model
    ds, _ = recorded_dataset([args.artifacts])
    idx = np.arange(args.samples) % len(ds.x_test)
    x, y = ds.x_test[idx], ds.y_test[idx]
    codes = None if ds.x_test_codes is None or args.float_path else ds.x_test_codes[idx]
    values = None if codes is None else ds.preprocessing.code_values()
    ref_pred = y  # stands in for the reference's top-1 classes: the statistics cost the same
    n_classes = int(ds.num_classes)
    config = VerifyConfig()
    info = checked_tflite(path)
    xin = ModelInputs(x, codes, values).for_tensor(quant_params(info.input_tensor()))
    _, raw_ref = run_row(HostRuntime(reference=True), path, info, xin, ref_pred, y, n_classes, None, config)
    rt = HostRuntime()

    parts: dict[str, list[float]] = {"check": [], "inputs": [], "run": [], "total": [], "invoke": []}
    for _ in range(args.repeats + 1):  # the first round warms up
        forget_checked()
        t0 = time.perf_counter()
        info = checked_tflite(path)
        t1 = time.perf_counter()
        xin = ModelInputs(x, codes, values).for_tensor(quant_params(info.input_tensor()))
        t2 = time.perf_counter()
        row, _ = run_row(rt, path, info, xin, ref_pred, y, n_classes, raw_ref, config)
        t3 = time.perf_counter()
        for key, value in (("check", t1 - t0), ("inputs", t2 - t1), ("run", t3 - t2),
                           ("total", t3 - t0), ("invoke", row.seconds)):
            parts[key].append(value)
    ms = {key: 1e3 * statistics.median(v[1:]) for key, v in parts.items()}
    lookup = "table lookup of pixel codes" if codes is not None else "the float path"
    print(f"{args.model} on host, {args.samples} samples × {x.shape[1]} features, inputs "
          f"{xin.dtype} by {lookup}; medians of {args.repeats} rounds:")
    print(f"  verify path   {ms['total']:8.2f} ms = check {ms['check']:.2f} + inputs "
          f"{ms['inputs']:.2f} + run {ms['run']:.2f} (of which invokes {ms['invoke']:.2f})")
    batch = row.info["batch"]
    print(f"  invokes alone {ms['invoke']:8.2f} ms ({-(-args.samples // batch)} invokes of ≤ {batch} "
          "rows; no copies)")
    print(f"  ratio         {ms['total'] / ms['invoke']:8.2f}")
    print(f"  run alone     {ms['run']:8.2f} ms, ratio {ms['run'] / ms['invoke']:.2f} (a further target "
          "of the candidate: check and inputs shared)")


if __name__ == "__main__":
    main()
