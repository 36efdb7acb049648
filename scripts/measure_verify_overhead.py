#!/usr/bin/env python3
"""Cost of verifying N samples on the host against the interpreter's own batched invoke time.

    python scripts/measure_verify_overhead.py ARTIFACTS_DIR [--samples 10000] [--repeats 5]
                                              [--model model_int8.tflite] [--float-path]
                                              [--start-repeats 5] [--verify-rounds 3]

For one model of ARTIFACTS_DIR on the `host` target (LiteRT, XNNPACK, in its child process), it
times verify's own code for one candidate × target, the functions run_verify calls, on the test
split recorded at training, repeated to --samples rows:

    check    verify's structural check of the .tflite (checked_tflite: parsed once per run)
    inputs   the inputs in the model's input dtype (ModelInputs.for_tensor: table lookup when the
             data are integer pixels, as Dataset.x_test_codes allows; else, or with --float-path,
             the float path that data which are not pixels take)
    run      verify.run_candidate on HostRuntime: the inputs written to a temporary .npy, the
             request to the runtime's child and its answer, the interpreter made and allocated
             there, set_tensor and get_tensor copies, the batched invokes, the outputs read back,
             top-1, the paired statistics and the LSB distance from the host-ref outputs (computed
             once beforehand, as host-ref runs first)

against "the interpreter's own batched time": the wall time of the invoke() calls alone on the
very same batches (the RunResult.invoke_seconds of that run: ≤ 1024 rows per invoke; no
set_tensor / get_tensor copies, no resize or allocation, no interpreter construction, no
crossing between processes). The verify path counts all of those. Loading the data set
(including the integer pixel codes recovered at load) and the reference model's predictions
happen once per verify run for every candidate and are not counted. Each round forgets the
parse (forget_checked), so the .tflite is parsed once per round, as in a verify run. The child
is started before the rounds (one child per target serves every candidate of a verify run); the
first round warms up; medians of --repeats rounds, both sides measured in the same call.

A verify run checks each candidate once and quantizes each distinct input quantization once, for
all its targets; so the `run alone` line, run against the invokes, is what each further target of
a candidate costs there.

The child's start-up is reported apart, because it is paid once per target per verify run, not
per sample:

    start alone     a fresh HostRuntime's first run of this model minus a warm run's: starting
                    python, numpy and LiteRT in the child (what a lone first run pays, nothing to
                    hide it behind); medians of --start-repeats
    in verify       run_verify on a copy of ARTIFACTS_DIR (targets host-ref,host, every
                    candidate): it starts both children right after the structural checks, so
                    their start-up overlaps the reference model's loading and predictions. Per
                    round: its wall time, and how long the first request of each runtime waited
                    for its child to be ready. Medians of --verify-rounds.
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", type=Path)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default="model_int8.tflite")
    ap.add_argument(
        "--float-path",
        action="store_true",
        help="quantize the floats, as for data that are not integer pixels",
    )
    ap.add_argument("--start-repeats", type=int, default=5)
    ap.add_argument(
        "--verify-rounds",
        type=int,
        default=3,
        help="run_verify rounds for the start-up's overlap (0: skip)",
    )
    args = ap.parse_args()
    from pipeline.core.config import VerifyConfig
    from pipeline.data.dataset import recorded_dataset
    from pipeline.runtimes.host import HostRuntime, checked_tflite, forget_checked
    from pipeline.stages.verify import ModelInputs, Reference, run_candidate
    from pipeline.tflite.file import quant_params

    path = args.artifacts / args.model
    ds, _ = recorded_dataset([args.artifacts])
    idx = np.arange(args.samples) % len(ds.x_test)
    x, y = ds.x_test[idx], ds.y_test[idx]
    codes = None if ds.x_test_codes is None or args.float_path else ds.x_test_codes[idx]
    values = None if codes is None else ds.preprocessing.code_values()
    config = VerifyConfig()
    info = checked_tflite(path)

    def reference(inputs):
        # y stands in for the original's top-1 classes: the statistics cost the same
        return Reference(
            x=x,
            y=y,
            pred=y,
            n_classes=int(ds.num_classes),
            inputs=inputs,
            dataset={},
            preprocessing={},
            fingerprint="",
        )

    with HostRuntime(reference=True) as host_ref:
        _, raw_ref = run_candidate(
            host_ref, path, info, reference(ModelInputs(x, codes, values)), None, config
        )
    rt = HostRuntime()
    rt.start()

    parts: dict[str, list[float]] = {
        "check": [],
        "inputs": [],
        "run": [],
        "total": [],
        "invoke": [],
    }
    for _ in range(args.repeats + 1):  # the first round warms up (and waits for the child)
        forget_checked()
        t0 = time.perf_counter()
        info = checked_tflite(path)
        t1 = time.perf_counter()
        inputs = ModelInputs(x, codes, values)  # made afresh: its quantization is timed here
        xin = inputs.for_tensor(quant_params(info.input_tensor()))
        t2 = time.perf_counter()
        row, _ = run_candidate(rt, path, info, reference(inputs), raw_ref, config)
        t3 = time.perf_counter()
        for key, value in (
            ("check", t1 - t0),
            ("inputs", t2 - t1),
            ("run", t3 - t2),
            ("total", t3 - t0),
            ("invoke", row.seconds),
        ):
            parts[key].append(value)
    rt.close()
    ms = {key: 1e3 * statistics.median(v[1:]) for key, v in parts.items()}
    lookup = "table lookup of pixel codes" if codes is not None else "the float path"
    print(
        f"{args.model} on host, {args.samples} samples × {x.shape[1]} features, inputs "
        f"{xin.dtype} by {lookup}; medians of {args.repeats} rounds:"
    )
    print(
        f"  verify path   {ms['total']:8.2f} ms = check {ms['check']:.2f} + inputs "
        f"{ms['inputs']:.2f} + run {ms['run']:.2f} (of which invokes {ms['invoke']:.2f})"
    )
    batch = row.info["batch"]
    print(
        f"  invokes alone {ms['invoke']:8.2f} ms ({-(-args.samples // batch)} invokes of ≤ {batch} "
        "rows; no copies)"
    )
    print(f"  ratio         {ms['total'] / ms['invoke']:8.2f} (the candidate's first target)")
    print(
        f"  run alone     {ms['run']:8.2f} ms, ratio {ms['run'] / ms['invoke']:.2f} (a further "
        "target of the candidate: check and inputs shared)"
    )

    if args.start_repeats > 0:
        start_ms = _start_alone(path, xin, args.start_repeats)
        print(
            f"  start alone   {start_ms:8.2f} ms once per target per verify run (a fresh child's "
            f"first run minus a warm run, median of {args.start_repeats}); counted in full it "
            f"would add {start_ms / ms['invoke']:.1f}× the invokes to a lone first run"
        )
    if args.verify_rounds > 0:
        _start_in_verify(args.artifacts, args.verify_rounds)


def _start_alone(path: Path, xin: np.ndarray, repeats: int) -> float:
    from pipeline.runtimes.host import HostRuntime

    times = []
    for _ in range(repeats):
        with HostRuntime() as rt:
            t0 = time.perf_counter()
            rt.run(path, xin)
            t1 = time.perf_counter()
            rt.run(path, xin)
            t2 = time.perf_counter()
        times.append((t1 - t0) - (t2 - t1))
    return 1e3 * statistics.median(times)


def _start_in_verify(artifacts: Path, rounds: int) -> None:
    """run_verify on a copy of the artifacts dir (its reports land in the copy), its wall time
    and how long each runtime's first request waited for the child's ready line."""
    from pipeline.core.config import VerifyConfig
    from pipeline.core.tfenv import muted_stderr
    from pipeline.runtimes.served import ServedRunner
    from pipeline.stages.verify import REFERENCE_TARGET, run_verify

    waits: list[float] = []
    real_close = ServedRunner.close

    def close(self):  # the real close, after noting how long this runner waited to be ready
        waits.append(self.ready_seconds)
        real_close(self)

    config = VerifyConfig(targets=(REFERENCE_TARGET, "host"))
    walls, blocked = [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "artifacts"
        shutil.copytree(artifacts, out)
        ServedRunner.close = close
        try:
            with muted_stderr():
                run_verify(out, config=config)  # warm-up: TensorFlow, the data set, the plots
            for _ in range(rounds):
                waits.clear()
                t0 = time.perf_counter()
                with muted_stderr():
                    run_verify(out, config=config)
                walls.append(time.perf_counter() - t0)
                blocked.append(sum(waits))
        finally:
            ServedRunner.close = real_close
    n_models = len(list(artifacts.glob("model_*.tflite")))
    print(
        f"start-up in verify (run_verify, targets {REFERENCE_TARGET},host, {n_models} candidates, "
        f"one child per target; medians of {rounds} rounds):"
    )
    print(
        f"  run_verify    {1e3 * statistics.median(walls):8.1f} ms (all rounds, ms: "
        f"{[round(1e3 * w) for w in walls]})"
    )
    print(
        f"  wait blocked  {1e3 * statistics.median(blocked):8.1f} ms: the first requests waiting "
        f"for their children to be ready (load average now "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
