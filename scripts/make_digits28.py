#!/usr/bin/env python3
"""Write scikit-learn's digits as an MNIST-shaped data set (28×28 uint8 pixels) in Keras's .npz layout.

For measuring the 784-input network offline: MNIST itself needs a download, digits ships with
scikit-learn. Each 8×8 image (values 0–16) is enlarged 3× by pixel repetition to 24×24, padded by
2 pixels to 28×28 (MNIST's own 20×20-in-28×28 framing is similar) and scaled to 0–255.
The split is seeded and stratified: 80 % train, 20 % test.

    python scripts/make_digits28.py artifacts/digits28.npz && bnpipe run --data artifacts/digits28.npz
"""
import sys

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def main(dest: str) -> None:
    d = load_digits()
    img = np.kron(d.images, np.ones((3, 3)))  # (n, 24, 24)
    img = np.pad(img, ((0, 0), (2, 2), (2, 2)))  # (n, 28, 28)
    x = np.clip(np.round(img * 255.0 / 16.0), 0, 255).astype(np.uint8)
    y = d.target.astype(np.uint8)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    np.savez_compressed(dest, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    print(f"wrote {dest}: {len(x_tr)} train and {len(x_te)} test images of 28×28")


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)
    main(sys.argv[1])
