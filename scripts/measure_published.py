#!/usr/bin/env python3
"""Output SQNR of post-training int8 files of MLPerf-Tiny-like models, equalization on vs off.

    python scripts/measure_published.py [--workdir DIR] [--size 32] [--samples 200]

Builds the look-alikes of tests/lookalikes.py in Keras 3 (a 27-BN MobileNetV1-0.25 with dead
pointwise channels, a ResNet-8 fed raw 0–255 pixels, a DS-CNN on MFCC-range inputs −40 … 20),
saves each as a .keras file, and for each: loads it through bnpipe's door (the Keras 3
translation and its proof), folds it, equalizes it as `bnpipe fold` does (the SQNR guard
included) or not, converts both to post-training int8 TFLite (bnpipe's converter settings,
calibrated on the training inputs) and runs them with LiteRT on the test inputs. SQNR is the
int8 file's dequantized output against the original float Keras 3 model, 10·log10(Σy²/Σ(y−ŷ)²);
"unguarded" is equalization as it was before: every channel rescaled, no SQNR guard.
Prints one table and writes published.json in the work dir.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _models(k3, size: int, n: int):
    """(name, Keras 3 model with trained-looking weights, x_train, x_test) per look-alike, x as
    the model is fed."""
    from tests import lookalikes as la

    rng = np.random.default_rng(0)
    images = la.smooth_images(2 * n, size, seed=1).astype(np.float32)
    mfcc = (rng.random((2 * n, 49, 10, 1)) * 60 - 40).astype(np.float32)
    built = [
        ("vww-like (27 BNs, dead channels)", la.vww_like(k3, size), images / 255, 3),
        ("resnet8-like (raw 0-255)", la.resnet8_like(k3, size), images, 0),
        ("dscnn-like (MFCC -40..20)", la.dscnn_like(k3), mfcc, 0),
    ]
    for name, model, x, dead in built:
        la.pretrain_like(k3, model, x[:n], dead=dead)
        yield name, model, x[:n], x[n:]


REFUSED = []  # the files XNNPACK would not prepare (run with the reference kernels instead)


def _int8_output(folded, x_train, x_test, label: str = "") -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from pipeline.core.config import ExportConfig
    from pipeline.core.quantize import dequantize
    from pipeline.tflite.convert import convert

    data = convert(folded, "ptq-int8", x_train, ExportConfig())
    try:
        it = Interpreter(model_content=data)
        it.resize_tensor_input(0, x_test.shape)
        it.allocate_tensors()
    except RuntimeError:
        REFUSED.append(label)
        it = Interpreter(
            model_content=data, experimental_op_resolver_type=OpResolverType.BUILTIN_REF
        )
        it.resize_tensor_input(0, x_test.shape)
        it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    s, z = inp["quantization"]
    it.set_tensor(inp["index"], np.clip(np.round(x_test / s) + z, -128, 127).astype(np.int8))
    it.invoke()
    return dequantize(it.get_tensor(out["index"]), *out["quantization"])


def _unguarded(model, folded, x):
    """`folded` equalized as before issue 19: dead channels rescaled too, no SQNR guard."""
    from pipeline.core.config import FoldConfig
    from pipeline.folding import equalize
    from pipeline.stages.fold import _equalize_pairs, _pairs_to_equalize

    negligible, equalize.NEGLIGIBLE = equalize.NEGLIGIBLE, 0.0
    try:
        pairs, weights, classes = _pairs_to_equalize(folded, FoldConfig())
        if not pairs:
            return folded
        return _equalize_pairs(model, folded, x, FoldConfig(), pairs, weights, classes)[0]
    finally:
        equalize.NEGLIGIBLE = negligible


def measure(path: Path, x_train, x_test) -> dict:
    from pipeline.core.config import FoldConfig
    from pipeline.folding.int8sim import sqnr_db
    from pipeline.models.door import load_model
    from pipeline.models.keras3_file import load_keras3
    from pipeline.stages.fold import _equalized, fold_model, predict

    reference = np.asarray(load_keras3(path)(x_test, training=False), np.float64)
    model = load_model(path)  # tf_keras, the translation proved
    folded, _, _ = fold_model(model)
    lines = []
    equalized, records, verdict, (_, _, failures) = _equalized(
        model, folded, x_test, FoldConfig(), lines.append
    )
    assert not failures, failures
    off = _int8_output(folded, x_train, x_test)
    on = _int8_output(equalized, x_train, x_test)
    unguarded = _unguarded(model, folded, x_test)
    return {
        "sqnr_db_off": sqnr_db([reference], [off]),
        "sqnr_db_on": sqnr_db([reference], [on]),
        "sqnr_db_unguarded": sqnr_db(
            [reference], [_int8_output(unguarded, x_train, x_test, f"{path.stem} unguarded")]
        ),
        "int8_output_std_on": float(np.std(on)),
        "pairs": len(records),
        "negligible_channels": sum(len(r.negligible) for r in records),
        "equalization": verdict,
        "printed": lines,
        "float_check": float(np.max(np.abs(predict(model, x_test) - reference))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="published-"))
    work.mkdir(parents=True, exist_ok=True)
    from pipeline.models.keras3_file import keras3

    k3 = keras3()
    results = {}
    for name, model, x_train, x_test in _models(k3, args.size, args.samples):
        path = work / f"{model.name}.keras"
        model.save(path)
        results[name] = measure(path, x_train, x_test)
        r = results[name]
        print(
            f"{name:36s} int8 SQNR off {r['sqnr_db_off']:6.2f} dB, on {r['sqnr_db_on']:6.2f} dB "
            f"(unguarded {r['sqnr_db_unguarded']:6.2f} dB); {r['pairs']} pairs, "
            f"{r['negligible_channels']} negligible channels; " + "; ".join(r["printed"][-1:]),
            flush=True,
        )
    if REFUSED:
        print("XNNPACK refused (reference kernels used): " + ", ".join(REFUSED))
    results["xnnpack_refused"] = REFUSED
    (work / "published.json").write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
