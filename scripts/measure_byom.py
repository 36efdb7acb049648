#!/usr/bin/env python3
"""Bring-your-own-model figures: Keras 3 models taken through `bnpipe run --model`.

    python scripts/measure_byom.py [--workdir DIR] [--epochs 10]

Makes MNIST-sized data offline (digits enlarged to 28×28 with shifted copies, as
scripts/make_digits28.py does), trains with Keras 3 (a) the seed article's network and (b) a
Functional model with BN first, a bias-free Dense, BN without centre, Dropout and
Dense(relu) → BN → Dense, saves each as its user would (`model.save("m.keras")`), runs
`bnpipe run --model` on it, and prints per model: the fold's largest relative difference
against the original in Keras 3, whether any BN is left in folded.keras, the int8 file's
operators, and the int8 accuracy drop and agreement against the original on every target.
Writes the table as JSON too (byom.json in the work dir).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
[export]
modes = ["int8", "float32", "ptq-int8"]
[verify]
targets = ["host", "host-ref", "tflm", "arm64"]
[bench]
batch_sizes = [1, 32]
threads = [1]
runs = 40
rounds = 2
keras_runs = 4
"""


def _build(kind: str, k3):
    """The two Keras 3 models, for 784-pixel inputs."""
    L = k3.layers
    if kind == "keras3_article":
        return k3.Sequential(
            [
                k3.Input((784,)),
                L.Dense(64),
                L.BatchNormalization(),
                L.ReLU(),
                L.Dense(64),
                L.BatchNormalization(),
                L.ReLU(),
                L.Dense(10, activation="softmax"),
            ]
        )
    inp = k3.Input((784,))
    h = L.BatchNormalization(name="bn_in")(inp)
    h = L.Dense(64, use_bias=False, name="d1")(h)
    h = L.BatchNormalization(center=False, name="bn1")(h)
    h = L.Dropout(0.2)(L.ReLU()(h))
    h = L.BatchNormalization(name="bn2")(L.Dense(64, activation="relu", name="d2")(h))
    return k3.Model(inp, L.Dense(10, activation="softmax")(h))


def train(kind: str, data: Path, dest: Path, epochs: int) -> None:
    """Train model `kind` with Keras 3 on the npz's training split; save it at `dest` (run in its
    own process: `measure_byom.py --train KIND DATA DEST EPOCHS`)."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from pipeline.keras3 import keras3

    k3 = keras3()
    d = np.load(data)
    x = d["x_train"].reshape(len(d["x_train"]), -1).astype("float32") / 255.0
    k3.utils.set_random_seed(0)
    model = _build(kind, k3)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, d["y_train"], epochs=epochs, batch_size=32, verbose=0)
    model.save(dest)


def _train(kind: str, data: Path, dest: Path, epochs: int) -> None:
    cmd = [sys.executable, __file__, "--train", kind, str(data), str(dest), str(epochs)]
    subprocess.run(cmd, check=True, cwd=ROOT)


def _measure(name: str, model: Path, data: Path, work: Path) -> dict:
    cfg = work / "byom.toml"
    cfg.write_text(CONFIG)
    out = work / f"artifacts-{name}"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "run",
        "--model",
        str(model),
        "--data",
        str(data),
        "--config",
        str(cfg),
        "--artifacts",
        str(out),
        "-q",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    fold = json.loads((out / "fold.json").read_text())["report"]
    export = json.loads((out / "export.json").read_text())
    verify = json.loads((out / "verify.json").read_text())
    layers = json.loads(zipfile.ZipFile(out / "folded.keras").read("config.json"))
    classes = {e["class_name"] for e in layers["config"]["layers"]}
    rows = [r for r in verify["rows"] if r["candidate"] == "model_int8.tflite"]
    return {
        "model": name,
        "exit": proc.returncode,
        "saved_by": fold["saved_by"],
        "fold_max_rel_diff": max(
            [fold["output_max_rel_diff"]] + [p["max_rel_diff"] for p in fold["pairs"]]
        ),
        "bn_left": "BatchNormalization" in classes,
        "int8_operators": export["modes"]["int8"]["operators"],
        "reference_accuracy": verify["reference"]["accuracy"],
        "int8": {
            r["target"]: {"drop_pp": -r["diff_pp"], "agreement": r["agreement"]} for r in rows
        },
        "verdict": "PASS" if verify["passed"] else "FAIL",
    }


def main() -> int:
    if sys.argv[1:2] == ["--train"]:
        kind, data, dest, epochs = sys.argv[2:6]
        train(kind, Path(data), Path(dest), int(epochs))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--shifted-copies", type=int, default=5)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bnpipe-byom-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "digits28.npz"
    if not data.is_file():
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "make_digits28.py"),
                str(data),
                "--shifted-copies",
                str(args.shifted_copies),
            ],
            check=True,
        )
    results = []
    for kind in ("keras3_article", "keras3_functional"):
        model = work / f"{kind}.keras"
        if not model.is_file():
            _train(kind, data, model, args.epochs)
        results.append(_measure(kind, model, data, work))
    (work / "byom.json").write_text(json.dumps(results, indent=2))
    for r in results:
        worst = max(r["int8"].values(), key=lambda v: v["drop_pp"]) if r["int8"] else {}
        least = min((v["agreement"] for v in r["int8"].values()), default=float("nan"))
        print(
            f"{r['model']}: {r['verdict']} (exit {r['exit']}), saved by {r['saved_by']}, "
            f"fold max rel diff {r['fold_max_rel_diff']:.2e}, BN left: {r['bn_left']}, "
            f"int8 ops {r['int8_operators']}, original {100 * r['reference_accuracy']:.2f} %, "
            f"int8 worst drop {worst.get('drop_pp', float('nan')):.2f} pp, least agreement "
            f"{100 * least:.2f} % over {sorted(r['int8'])}"
        )
    print(f"wrote {work / 'byom.json'}")
    return 0 if all(r["exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
