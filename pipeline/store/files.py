"""The artifacts dir's file names, and which stage reads and writes which: one place for all.

    train   reads the data set             writes model.keras, train.json
    fold    reads model.keras              writes folded.keras, fold.json
    export  reads folded.keras             writes model_<mode>.tflite …, export.json
    verify  reads model.keras, folded.keras and every .tflite
                                           writes verify.json, verify.md, verify_*.png
    bench   reads model.keras and every .tflite
                                           writes bench.json, bench.md, bench_*.png
    fit     reads every .tflite (uses the integer ones)
                                           writes fit.json, fit.md, fit.png
    layers  (not a stage) reads model_int8.tflite and model_float32.tflite
                                           writes layers.json, layers.md, layers.png
    report  reads the records above (not their models)   writes report.html

Every module that names an artifact takes the name from here (pipeline/DESIGN.md, "The CLI
contract", fixes them: other tools read them). Only the standard library is imported.
"""

from __future__ import annotations

from pathlib import Path

MODEL = "model.keras"  # the trained original with BN: the reference of every accuracy claim
TRAIN_RECORD = "train.json"
FOLDED = "folded.keras"
FOLD_RECORD = "fold.json"
EXPORT_RECORD = "export.json"
VERIFY_RECORD = "verify.json"
VERIFY_REPORT = "verify.md"
VERIFY_ACCURACY_PLOT = "verify_accuracy.png"
VERIFY_DISAGREEMENT_PLOT = "verify_disagreement.png"
BENCH_RECORD = "bench.json"
BENCH_REPORT = "bench.md"
BENCH_LATENCY_PLOT = "bench_latency.png"
BENCH_THROUGHPUT_PLOT = "bench_throughput.png"
FIT_RECORD = "fit.json"
FIT_REPORT = "fit.md"
FIT_PLOT = "fit.png"
LAYERS_RECORD = "layers.json"  # bnpipe layers (a diagnosis, not a stage: no manifest entry)
LAYERS_REPORT = "layers.md"
LAYERS_PLOT = "layers.png"
REPORT = "report.html"  # bnpipe report: one self-contained page from the records above
MANIFEST = "manifest.json"
LOCK = ".bnpipe.lock"  # held by the one process writing the artifacts dir (lock.py); then removed
RESUME_DIR = Path(".resume") / "train"  # per-epoch checkpoints of an unfinished training
TFLITE_PREFIX, TFLITE_SUFFIX = "model_", ".tflite"
FLOAT_BASELINE = "model_float32.tflite"  # what bench's ratios divide by

# In the order `bnpipe run` runs them.
STAGES = ("train", "fold", "export", "verify", "bench", "fit", "report")


def tflite_name(mode: str) -> str:
    """model_<mode>.tflite: the file export writes for `mode`."""
    return f"{TFLITE_PREFIX}{mode}{TFLITE_SUFFIX}"


def tflite_files(out: Path) -> list[str]:
    """Names of the .tflite files in the artifacts dir `out`, sorted."""
    return sorted(p.name for p in Path(out).glob(f"{TFLITE_PREFIX}*{TFLITE_SUFFIX}"))


def stage_reads(stage: str, out: Path) -> list[str]:
    """The artifacts `stage` reads by default (their sha256 are its recorded inputs)."""
    return {
        "train": [],
        "fold": [MODEL],
        "export": [FOLDED],
        "verify": [MODEL, FOLDED, *tflite_files(out)],
        "bench": [MODEL, *tflite_files(out)],
        "fit": tflite_files(out),
        "report": [],  # records are read unchecked: an edited one is reported, not refused
    }[stage]


def stage_outputs(stage: str, modes: tuple[str, ...] = ()) -> list[str]:
    """The files `stage` writes (export: one per mode in `modes`, then its record)."""
    if stage == "export":
        return [tflite_name(m) for m in modes] + [EXPORT_RECORD]
    return {
        "train": [MODEL, TRAIN_RECORD],
        "fold": [FOLDED, FOLD_RECORD],
        "verify": [VERIFY_RECORD, VERIFY_REPORT, VERIFY_ACCURACY_PLOT, VERIFY_DISAGREEMENT_PLOT],
        "bench": [BENCH_RECORD, BENCH_REPORT, BENCH_LATENCY_PLOT, BENCH_THROUGHPUT_PLOT],
        "fit": [FIT_RECORD, FIT_REPORT, FIT_PLOT],
        "report": [REPORT],
    }[stage]
