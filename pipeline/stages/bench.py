"""Stage 5: latency, throughput, size and memory of every .tflite model, with Keras as the baseline.

How it measures (so the figures can be trusted):
- Cold start and memory: each model is loaded in a fresh child process (the standalone runner),
  which reports the time to construct and allocate the interpreter, the first invoke, and the
  peak resident memory added by loading and running the model.
- Steady state: every (model, threads, batch size) configuration gets its own interpreter, is
  warmed up, and then the configurations take turns for `rounds` rounds, each timing its share of
  `runs` invokes. A machine that drifts (turbo, a noisy neighbour) so hits every model alike.
  Latency is per invoke (one batch); throughput is samples per second of timed invoke time.
- Keras baseline: `model(x)` and `model.predict(x)` on one sample, and `model(x)` on each batch
  size.
- Ratios are to `model_float32.tflite` on the same configuration, measured in the same run.
- arm64 is emulated by QEMU: its timings describe the emulator, not a phone, and are reported as
  such (never as device timings). `ssh:` targets report the board's own timings.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.config import BenchConfig
from pipeline.core.errors import BnpipeError, ModelError
from pipeline.core.quantize import to_input
from pipeline.core.safeio import regular_file
from pipeline.core.tfenv import native_noise_filtered
from pipeline.store import artifacts, files
from pipeline.tflite.file import check_io, quant_params, read_tflite

BASELINE = files.FLOAT_BASELINE
SAMPLE_ROWS = 1024  # distinct test samples fed (repeated to fill larger batches)


@dataclass
class Config:
    model: str
    threads: int
    batch: int
    latencies_s: list[float] = field(default_factory=list)


@dataclass(kw_only=True)
class BenchResult:
    record: dict[str, Any]
    record_path: Path
    report_path: Path
    plots: list[Path]
    seconds: float


def _percentiles(lat: list[float]) -> dict[str, float]:
    a = np.asarray(lat) * 1e6
    med, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "median": float(med),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "n": int(a.size),
    }


@artifacts.transactional
def run_bench(
    artifacts_dir: Path,
    *,
    config: BenchConfig = BenchConfig(),
    tflite: list[Path] | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> BenchResult:
    """Benchmark every model; write bench.json, bench.md and plots.

    progress: called as `progress(label, steps_done)`."""
    from pipeline.runtimes.host import cold_start

    t0 = time.perf_counter()
    out = artifacts_dir
    paths = [Path(p) for p in tflite] if tflite else [out / n for n in files.tflite_files(out)]
    paths = [regular_file(p, "model file", ModelError) for p in paths]  # a FIFO would block
    if not paths:
        raise BnpipeError(
            f"no .tflite files in {out}; run `bnpipe export --mode all` first or pass --tflite"
        )
    infos = {p: check_io(read_tflite(p)) for p in paths}
    keras_path = out / files.MODEL
    tick = progress or (lambda label, n=1: None)
    x, sample_source = _sample(out, infos[paths[0]])
    threads = list(dict.fromkeys(t if t > 0 else (os.cpu_count() or 1) for t in config.threads))
    inputs = {p: _model_input(x, info) for p, info in infos.items()}

    models: dict[str, dict[str, Any]] = {}
    for p, info in infos.items():
        tick(f"cold start {p.name}", 1)
        models[p.name] = {
            "file": p.name,
            "bytes": info.size_bytes,
            "sha256": artifacts.sha256_file(p),
            "input_dtype": info.input_tensor().dtype,
            "macs": _macs(info),
            "integer": _is_integer(info),
            **cold_start(p, inputs[p]),
        }
    keras = _KerasBaseline(keras_path, x, config) if keras_path.is_file() else None
    configs = _steady_state(paths, inputs, threads, config, keras, tick)
    rows = [_litert_row(cfg) for cfg in configs] + (keras.rows() if keras else [])
    _add_ratios(rows, models)
    for name, a in _tflm_arenas(paths, infos, inputs).items():
        models[name]["tflm_arena"] = a
    if keras_path.is_file():
        models[files.MODEL] = {"file": files.MODEL, "bytes": keras_path.stat().st_size}
    record = {
        "stage": "bench",
        "machine": artifacts.machine_info(),
        "config": dataclasses.asdict(config),
        "threads_used": threads,
        "sample": sample_source,
        "models": models,
        "rows": rows,
        "remote": _remote_targets(config, paths, inputs, tick),
        "baseline": BASELINE,
        "timings": {"total_s": time.perf_counter() - t0},
    }
    return _write(out, record, paths, t0)


def _sample(out: Path, info) -> tuple[np.ndarray, str]:
    """The inputs every model is timed on: the recorded test set's first rows, or (without a
    training record) uniform random inputs of the first model's shape; and what they are."""
    from pipeline.data.dataset import recorded_dataset

    try:
        ds, _ = recorded_dataset([out])
        x = ds.x_test[:SAMPLE_ROWS]
        return x, f"{len(x)} test samples of {ds.name}"
    except BnpipeError:
        n_in = int(np.prod(info.input_tensor().shape[1:]))
        x = np.random.default_rng(0).random((SAMPLE_ROWS, n_in), dtype=np.float32)
        return x, f"{SAMPLE_ROWS} uniform random inputs (no training record)"


def _steady_state(paths, inputs, threads, config: BenchConfig, keras, tick) -> list[Config]:
    """Every (model, threads, batch) timed in rounds in the host runtime's child process (LiteRT
    never runs here), a different one first each round, the Keras baseline between rounds."""
    from pipeline.runtimes.host import HostRuntime

    setups = [(p, th, b) for p in paths for th in threads for b in config.batch_sizes]
    configs = [Config(p.name, th, b) for p, th, b in setups]
    budget = config.max_seconds / config.rounds  # per configuration and round
    with HostRuntime() as host:
        rounds = host.rounds(
            [(p, inputs[p], th, b) for p, th, b in setups], warmup=config.warmup, budget=budget
        )
        per_round = max(1, config.runs // config.rounds)
        for r in range(config.rounds):
            tick(f"round {r + 1}/{config.rounds}", 1)
            seconds = rounds.run(per_round, first=r % len(configs), budget=budget)
            for cfg, lat in zip(configs, seconds, strict=True):
                cfg.latencies_s.extend(lat)
            if keras:
                keras.round(max(1, config.keras_runs // config.rounds))
    return configs


def _litert_row(cfg: Config) -> dict:
    return {
        "model": cfg.model,
        "runtime": "litert (host, XNNPACK)",
        "threads": cfg.threads,
        "batch": cfg.batch,
        "latency_us": _percentiles(cfg.latencies_s),
        "throughput_per_s": cfg.batch * len(cfg.latencies_s) / float(sum(cfg.latencies_s)),
    }


def _write(out: Path, record: dict, paths: list[Path], t0: float) -> BenchResult:
    from pipeline.report.markdown import bench_markdown, bench_plots

    plots = bench_plots(record, out)
    inputs_sha = {p.name: record["models"][p.name]["sha256"] for p in paths}
    record_path = artifacts.write_json(out / files.BENCH_RECORD, record, inputs=inputs_sha)
    report_path = artifacts.write_text(out / files.BENCH_REPORT, bench_markdown(record, plots))
    return BenchResult(
        record=record,
        record_path=record_path,
        report_path=report_path,
        plots=plots,
        seconds=time.perf_counter() - t0,
    )


def _macs(info) -> int | None:
    """Multiply-accumulates of one inference (macs.py); None where a shape cannot be read."""
    from pipeline.tflite.macs import count_macs

    try:
        return count_macs(info).total
    except ModelError:
        return None


def _is_integer(info) -> bool:
    """Whether the model computes in integers (what an MCU runs): some convolution or fully
    connected operator gives int8 or int16 outputs (dynamic-range and float16 models do not)."""
    from pipeline.tflite.macs import COUNTED_OPS

    return any(
        info.tensors[op.outputs[0]].dtype in ("int8", "int16")
        for op in info.operators
        if op.op in COUNTED_OPS and op.outputs and op.outputs[0] >= 0
    )


def _model_input(x: np.ndarray, info) -> np.ndarray:
    """(N, features) floats → the file's input tensor: its dtype and its layout (a view)."""
    xin = to_input(x, quant_params(info.input_tensor()))
    return xin.reshape((len(xin), *info.input_tensor().shape[1:]))


class _KerasBaseline:
    """The original Keras model timed the way Keras users call it, interleaved with the rounds."""

    def __init__(self, path: Path, x: np.ndarray, config: BenchConfig):
        from pipeline.data.dataset import model_input_shape, shaped
        from pipeline.models.door import load_reference

        self.model = load_reference(path)  # in the Keras that saved it
        self.config = config
        x = shaped(x, model_input_shape(self.model))
        self.x1 = x[:1]
        self.batches = {b: np.take(x, np.arange(b) % len(x), axis=0) for b in config.batch_sizes}
        self.call_lat: dict[int, list[float]] = {b: [] for b in config.batch_sizes}
        self.predict_lat: list[float] = []
        with native_noise_filtered():  # the first predict's tf.data notice
            for _ in range(3):  # warm up: the first calls trace functions
                self.model(self.x1, training=False)
                self.model.predict(self.x1, verbose=0)
                for xb in self.batches.values():
                    self.model(xb, training=False)

    def round(self, n: int) -> None:
        """n calls per batch size (fewer once a batch size's took the round's time budget)."""
        budget = self.config.max_seconds / self.config.rounds
        spent = dict.fromkeys(self.batches, 0.0)
        with native_noise_filtered():  # each predict builds a tf.data pipeline, which may say so
            for _ in range(n):
                for b, xb in self.batches.items():
                    if spent[b] >= budget:
                        continue
                    s = time.perf_counter()
                    self.model(xb, training=False)
                    self.call_lat[b].append(time.perf_counter() - s)
                    spent[b] += self.call_lat[b][-1]
                s = time.perf_counter()
                self.model.predict(self.x1, verbose=0)
                self.predict_lat.append(time.perf_counter() - s)

    def rows(self) -> list[dict]:
        rows = [
            {
                "model": "model.keras",
                "runtime": "keras model(x)",
                "threads": None,
                "batch": b,
                "latency_us": _percentiles(lat),
                "throughput_per_s": b * len(lat) / float(sum(lat)),
            }
            for b, lat in self.call_lat.items()
        ]
        rows.append(
            {
                "model": "model.keras",
                "runtime": "keras predict",
                "threads": None,
                "batch": 1,
                "latency_us": _percentiles(self.predict_lat),
                "throughput_per_s": len(self.predict_lat) / float(sum(self.predict_lat)),
            }
        )
        return rows


def _add_ratios(rows: list[dict], models: dict) -> None:
    """latency / throughput / size as ratios to the float32 TFLite model, same configuration."""
    base = {(r["threads"], r["batch"]): r for r in rows if r["model"] == BASELINE}
    base_size = models.get(BASELINE, {}).get("bytes")
    for r in rows:
        b = base.get((r["threads"], r["batch"])) or base.get((1, r["batch"]))
        if b:
            r["latency_ratio"] = r["latency_us"]["median"] / b["latency_us"]["median"]
            r["throughput_ratio"] = r["throughput_per_s"] / b["throughput_per_s"]
    for m in models.values():
        if base_size:
            m["size_ratio"] = m["bytes"] / base_size


def _tflm_arenas(files, infos, inputs) -> dict[str, Any]:
    """The tensor arena TFLM needed for each model (one sample); the reason where it cannot run."""
    try:
        from pipeline.runtimes.tflm import TflmRuntime
    except ImportError as exc:
        return {p.name: {"error": str(exc)} for p in files}
    out = {}
    with TflmRuntime() as rt:  # one child process for every model
        for p in files:
            try:
                res = rt.run(str(p), inputs[p][:1])
                out[p.name] = {k: v for k, v in res.info.items() if "arena" in k}
            except BnpipeError as exc:
                out[p.name] = {"error": " ".join(str(exc).split())[:200]}
    return out


def _remote_targets(config: BenchConfig, files, inputs, tick) -> list[dict]:
    """arm64 (emulated: not device timing) and ssh boards (device timing) via the runner's bench."""
    results = []
    for target in config.targets:
        if target == "host":
            continue
        from pipeline.runtimes.registry import close_all, get_runtime

        rt = get_runtime(target)
        ok, why = rt.available()
        if not ok:
            from pipeline.core.errors import TargetUnavailable

            raise TargetUnavailable(why)
        try:  # one runtime for every model; arm64 keeps its emulator running until closed
            for p in files:
                tick(f"{p.name} on {target}", 1)
                rep = rt.bench(
                    str(p),
                    inputs[p][:64],
                    batch_sizes=config.batch_sizes,
                    threads=[1],
                    warmup=config.warmup,
                    runs=max(10, config.runs // 4),
                )
                emulated = target == "arm64"
                results.append(
                    {
                        "target": target,
                        "model": p.name,
                        "emulated": emulated,
                        "timing_meaning": (
                            "QEMU user-mode emulation on the host: NOT a device timing"
                            if emulated
                            else "measured on the device"
                        ),
                        "report": rep,
                    }
                )
        finally:
            close_all([rt])
    return results
