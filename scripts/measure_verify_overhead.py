#!/usr/bin/env python3
"""Cost of verifying N samples on the host against the interpreter's own batched invoke time.

    python scripts/measure_verify_overhead.py ARTIFACTS_DIR [--samples 10000] [--repeats 5]
                                              [--model model_int8.tflite] [--float-path]
                                              [--probe-repeats 5] [--verify-rounds 3]

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
are not counted. Each round forgets the parse (forget_parsed), so the .tflite is parsed once per
round, as in a verify run. The first round warms up; medians of --repeats rounds, both sides
measured in the same call.

A verify run checks each candidate once and quantizes each distinct input quantization once, for
all its targets; so the `run alone` line, run against the invokes, is what each further target of
a candidate costs there.

The probe is reported apart, because it is paid once per file per process, not per sample: before
a model's first in-process run, LiteRT loads and runs it once on zeros in a child process
(runtimes/host.py, start_probe / Probe.wait). The rounds above find it remembered.

    probe alone     the wall time of that child for this model on the host kernels (start + wait,
                    nothing to hide it behind: what a lone HostRuntime.run pays the first time);
                    medians of --probe-repeats, each after forget_checked()
    probe in verify run_verify on a copy of ARTIFACTS_DIR (targets host-ref,host, every candidate)
                    starts the probe of every candidate × host kernels after the structural checks
                    and waits just before the candidates run. Per round: the window between start
                    and wait (the reference model's loading and predictions), the time wait()
                    blocked, and run_verify's total wall time with the probe to do vs with every
                    probe remembered (the difference includes the child competing for the CPU).
                    Medians of --verify-rounds, the two kinds of rounds alternating.
"""

import argparse
import os
import resource
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
    ap.add_argument("--probe-repeats", type=int, default=5)
    ap.add_argument(
        "--verify-rounds",
        type=int,
        default=3,
        help="run_verify rounds of each kind for the probe's overlap (0: skip)",
    )
    args = ap.parse_args()
    from pipeline.config import VerifyConfig
    from pipeline.runtimes.host import HostRuntime, checked_tflite, forget_parsed
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
    _, raw_ref = run_row(
        HostRuntime(reference=True), path, info, xin, ref_pred, y, n_classes, None, config
    )
    rt = HostRuntime()

    parts: dict[str, list[float]] = {
        "check": [],
        "inputs": [],
        "run": [],
        "total": [],
        "invoke": [],
    }
    for _ in range(args.repeats + 1):  # the first round warms up (and probes, once)
        forget_parsed()
        t0 = time.perf_counter()
        info = checked_tflite(path)
        t1 = time.perf_counter()
        xin = ModelInputs(x, codes, values).for_tensor(quant_params(info.input_tensor()))
        t2 = time.perf_counter()
        row, _ = run_row(rt, path, info, xin, ref_pred, y, n_classes, raw_ref, config)
        t3 = time.perf_counter()
        for key, value in (
            ("check", t1 - t0),
            ("inputs", t2 - t1),
            ("run", t3 - t2),
            ("total", t3 - t0),
            ("invoke", row.seconds),
        ):
            parts[key].append(value)
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
        f"  run alone     {ms['run']:8.2f} ms, ratio {ms['run'] / ms['invoke']:.2f} (a further target "
        "of the candidate: check and inputs shared)"
    )

    probe_ms = _probe_alone(path, args.probe_repeats) if args.probe_repeats > 0 else None
    if probe_ms is not None:
        print(
            f"  probe alone   {probe_ms:8.2f} ms once per file per process (the child's wall time, "
            f"median of {args.probe_repeats}); counted in full it would add "
            f"{probe_ms / ms['invoke']:.1f}× the invokes to a lone first run"
        )
    if args.verify_rounds > 0:
        _probe_in_verify(args.artifacts, args.verify_rounds, ms["invoke"])


def _probe_alone(path: Path, repeats: int) -> float:
    from pipeline.runtimes.host import forget_checked, probe_in_child

    times = []
    for _ in range(repeats):
        forget_checked()
        t0 = time.perf_counter()
        probe_in_child([(path, False)])
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _cpu_seconds() -> tuple[float, float]:
    """CPU time (user + system, ms) of this process and of its children waited for so far."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return (1e3 * (own.ru_utime + own.ru_stime), 1e3 * (children.ru_utime + children.ru_stime))


def _probe_in_verify(artifacts: Path, rounds: int, invoke_ms: float) -> None:
    """run_verify's phases on a copy of the artifacts dir (its reports land in the copy)."""
    from pipeline.config import VerifyConfig
    from pipeline.runtimes import host
    from pipeline.tfenv import muted_stderr
    from pipeline.verify import REFERENCE_TARGET, run_verify

    events: dict[str, float] = {}
    real_start, real_wait = host.start_probe, host.Probe.wait

    # The real start and wait, timed (run_verify imports start_probe from the module). Only the
    # first of each counts: run_verify's own (a HostRuntime.run after a failed probe would probe again).
    def start_probe(models):
        events.setdefault("start", time.perf_counter())
        probe = real_start(models)
        events.setdefault("n_models", len(probe.models))
        return probe

    def wait(self):
        events.setdefault("wait_in", time.perf_counter())
        try:
            real_wait(self)
        finally:
            events.setdefault("wait_out", time.perf_counter())

    def progress(message):
        if message.startswith("reference:"):
            events.setdefault("reference", time.perf_counter())

    config = VerifyConfig(targets=(REFERENCE_TARGET, "host"))
    kinds = {"to probe": [], "remembered": []}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "artifacts"
        shutil.copytree(artifacts, out)
        host.start_probe, host.Probe.wait = start_probe, wait
        try:
            with muted_stderr():
                run_verify(out, config=config)  # warm-up: TensorFlow, the data set, the plots
            for _ in range(rounds):
                for kind, results in kinds.items():
                    (host.forget_checked if kind == "to probe" else host.forget_parsed)()
                    events.clear()
                    cpu0 = _cpu_seconds()
                    t0 = time.perf_counter()
                    with muted_stderr():
                        run_verify(out, config=config, progress=progress)
                    wall = time.perf_counter() - t0
                    events.update(
                        zip(("cpu_self", "cpu_children"), np.subtract(_cpu_seconds(), cpu0))
                    )
                    results.append((wall, dict(events)))
        finally:
            host.start_probe, host.Probe.wait = real_start, real_wait
        # The same models on the same kernels in one child, nothing to overlap with.
        models = sorted(out.glob("model_*.tflite"))
        alone = []
        for _ in range(rounds):
            host.forget_checked()
            t0 = time.perf_counter()
            host.probe_in_child([(p, ref) for p in models for ref in (True, False)])
            alone.append(time.perf_counter() - t0)

    def med(kind, f):  # ms
        return statistics.median(f(1e3 * total, ev) for total, ev in kinds[kind])

    n_models = kinds["to probe"][0][1]["n_models"]
    window = med("to probe", lambda t, ev: 1e3 * (ev["wait_in"] - ev["start"]))
    loading = med("to probe", lambda t, ev: 1e3 * (ev["reference"] - ev["start"]))
    blocked = med("to probe", lambda t, ev: 1e3 * (ev["wait_out"] - ev["wait_in"]))
    blocked_none = med("remembered", lambda t, ev: 1e3 * (ev["wait_out"] - ev["wait_in"]))
    total_probe, total_known = med("to probe", lambda t, ev: t), med("remembered", lambda t, ev: t)
    spread = {k: [round(1e3 * t) for t, _ in v] for k, v in kinds.items()}
    print(
        f"probe in verify (run_verify, targets {REFERENCE_TARGET},host, {len(models)} candidates: "
        f"{n_models} model × kernels in one child; medians of {rounds} rounds):"
    )
    print(
        f"  probe alone   {1e3 * statistics.median(alone):8.1f} ms (the same {n_models} in one child, "
        "nothing to overlap)"
    )
    print(
        f"  window        {window:8.1f} ms from start to wait: loading the reference model and the "
        f"data {loading:.1f} ms, then the predictions of model.keras and folded.keras"
    )
    print(f"  wait blocked  {blocked:8.1f} ms (with every probe remembered: {blocked_none:.1f} ms)")
    print(
        f"  run_verify    {total_probe:8.1f} ms with the probe to do, {total_known:.1f} ms with it "
        f"remembered: +{total_probe - total_known:.1f} ms (all rounds, ms: {spread})"
    )
    print(
        f"  CPU time      this process {med('to probe', lambda t, ev: ev['cpu_self']):.1f} ms vs "
        f"{med('remembered', lambda t, ev: ev['cpu_self']):.1f} ms; the probe's child "
        f"{med('to probe', lambda t, ev: ev['cpu_children']):.1f} ms (hidden only if a core is idle: "
        f"load average now {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs)"
    )
    print(
        f"  per run, the blocked wait is {blocked / invoke_ms:.2f}× the invokes of one candidate "
        "on one target above"
    )


if __name__ == "__main__":
    main()
