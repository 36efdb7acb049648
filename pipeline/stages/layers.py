"""`bnpipe layers`: where an integer model's accuracy went, layer by layer.

A diagnosis, not a stage: `bnpipe run` does not run it and the manifest does not record it. It
reads the integer file (`model_int8.tflite` unless `tflite` is given), its float twin
(`model_float32.tflite` unless `reference`), and the test split recorded at training (or
`data`); layerwise.analyse_layers does the work; layers.json, layers.md and layers.png land in
the artifacts dir together (one transaction) or not at all.

layers.json: {"layers": [one entry per operator output, in graph order], "worst": the entry of
the culprit, "ranking": op indices culprit first, ...}; an entry holds op_index, op, tensor,
sqnr_db, error_steps_rms / _max, range_used (and per channel), scale, zero_point, and "alone":
what the layer costs when it alone is quantized (layerwise.LayerCost).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.analysis.layerwise import LayerAnalysis, LayerReport, analyse_layers, check_twins
from pipeline.core.config import LayersConfig
from pipeline.core.errors import DataError
from pipeline.report.layers import pyplot_loading
from pipeline.runtimes.tensors import TensorRunner
from pipeline.store import artifacts, files
from pipeline.store.lock import writer_lock
from pipeline.tflite.file import TfliteInfo, read_tflite


@dataclass(kw_only=True)
class LayersResult:
    analysis: LayerAnalysis
    record_path: Path
    report_path: Path
    plot_path: Path
    seconds: float


def run_layers(
    artifacts_dir: Path,
    *,
    config: LayersConfig | None = None,
    tflite: Path | None = None,
    reference: Path | None = None,
    data: str | None = None,
    progress=None,
    wait: bool = False,
) -> LayersResult:
    """Analyse the integer file against its float twin; write layers.json, layers.md, layers.png.

    ModelError / DataError / ArtifactError for bad input, before anything is written. Holds the
    artifacts dir's writer lock throughout, like every stage (`wait`: wait for another writer
    instead of ArtifactError)."""
    with writer_lock(Path(artifacts_dir), wait=wait, say=progress or (lambda m: None)):
        return _run_layers(artifacts_dir, config, tflite, reference, data, progress)


def _run_layers(artifacts_dir, config, tflite, reference, data, progress) -> LayersResult:
    t0 = time.perf_counter()
    config = config or LayersConfig()
    say = progress or (lambda m: None)
    out = Path(artifacts_dir)
    int8_path = tflite or artifacts.require_file(
        out / files.tflite_name("int8"), "integer model",
        "run `bnpipe export` first or pass --tflite")  # fmt: skip
    float_path = reference or artifacts.require_file(
        out / files.FLOAT_BASELINE, "float twin",
        "run `bnpipe export --mode float32` or pass --reference")  # fmt: skip
    check_twins(int8_path, float_path)  # before the data: a wrong file fails at once
    info = read_tflite(int8_path)
    # LiteRT's child starts now and loads while the data does; pyplot loads while LiteRT runs.
    with TensorRunner() as runner:
        ds = _test_data(out, Path(int8_path), data, info, say)
        x, y, codes = _as_file_input(ds, info)
        if config.max_samples:
            x, y = x[: config.max_samples], y[: config.max_samples]
            codes = None if codes is None else codes[: config.max_samples]
        say(f"layers: {Path(int8_path).name} against {Path(float_path).name}")
        with pyplot_loading():
            analysis = analyse_layers(int8_path, float_path, x, y, codes=codes,
                                      values=ds.preprocessing.code_values(), say=say,
                                      runner=runner)  # fmt: skip
    record = _record(analysis, config, int8_path, float_path, ds, t0)
    inputs = {"model": artifacts.sha256_file(int8_path),
              "reference": artifacts.sha256_file(float_path), "data": ds.fingerprint()}  # fmt: skip
    record_path, report_path, plot_path = _write(out, record, inputs)
    return LayersResult(
        analysis=analysis,
        record_path=record_path,
        report_path=report_path,
        plot_path=plot_path,
        seconds=time.perf_counter() - t0,
    )


def _test_data(out: Path, int8_path: Path, data: str | None, info: TfliteInfo, say):
    """The test split (the one training held out, or `data`'s), checked against the file's
    recorded preprocessing."""
    from pipeline.data.dataset import recorded_dataset

    ds, _ = recorded_dataset([out, int8_path.parent], data)
    pre = info.metadata.get("preprocessing")
    if pre and float(pre.get("divisor", 0)) != ds.preprocessing.divisor:
        raise DataError(
            f"{int8_path.name} was exported for inputs divided by {pre.get('divisor')} but the "
            f"data is divided by {ds.preprocessing.divisor:g}"
        )
    say(f"data: {len(ds.y_test):,} test samples of {ds.name}")
    return ds


def _as_file_input(ds, info: TfliteInfo):
    """(x, y, pixel codes) of the test split laid out as the file takes them, (n, 8, 8, 1) for a
    CNN of digits; left flat when the sizes differ (the analysis then names both shapes)."""
    from pipeline.data.dataset import as_model_input

    shape = tuple(max(int(d), 1) for d in info.input_tensor().shape[1:])
    if int(np.prod(shape, dtype=np.int64)) == ds.preprocessing.n_features:
        shaped = as_model_input(ds, shape)
        return shaped.x_test, shaped.y_test, shaped.x_test_codes
    return ds.x_test, ds.y_test, ds.x_test_codes


def layer_entry(layer: LayerReport) -> dict:
    """One operator output as layers.json holds it (flat: its statistics beside its grid)."""
    stats = dataclasses.asdict(layer.stats)
    return {
        "op_index": layer.op_index,
        "op": layer.op,
        "tensor": layer.tensor,
        "float_op_index": layer.float_op_index,
        "shape": layer.shape,
        "dtype": layer.dtype,
        "scale": layer.scale,
        "zero_point": layer.zero_point,
        **stats,
        "alone": dataclasses.asdict(layer.alone),
    }


def _record(analysis: LayerAnalysis, config, int8_path, float_path, ds, t0) -> dict:
    entries = [layer_entry(layer) for layer in analysis.layers]
    culprit = analysis.ranking.culprit
    return {
        "command": "layers",
        "config": dataclasses.asdict(config),
        "model": str(int8_path),
        "reference": str(float_path),
        "n": analysis.n,
        "dataset": ds.summary(),
        "float_accuracy": analysis.ranking.float_accuracy,
        "int8_accuracy": analysis.int8_accuracy,
        "agreement": analysis.agreement,
        "simulation": analysis.simulation,
        "layers": entries,
        "worst": next(e for e in entries if e["op_index"] == culprit.op_index),
        "ranking": [c.op_index for c in analysis.ranking.order],
        "timings": {"total_s": time.perf_counter() - t0},
    }


def _write(out: Path, record: dict, inputs: dict) -> tuple[Path, Path, Path]:
    from pipeline.report.layers import layers_markdown, layers_plot

    artifacts.ensure_dir(out)
    with artifacts.transaction():  # the three land together
        plot = layers_plot(record, out / files.LAYERS_PLOT)
        record_path = artifacts.write_json(out / files.LAYERS_RECORD, record, inputs=inputs)
        report_path = artifacts.write_text(out / files.LAYERS_REPORT, layers_markdown(record, plot))
    return record_path, report_path, plot
