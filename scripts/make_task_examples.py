"""The README's worked examples of tasks other than classification, on the bundled digits:

    reg.npz, reg.keras   a Dense → BN → ReLU → Dense(3) regressor of three float targets
    ae.npz,  ae.keras    a 64 → 32 → 16 → 8 → 16 → 32 → 64 autoencoder (BN after every hidden
                         Dense) trained without the 0s; the test split marks the 0s as anomalies
    cae.keras            a convolutional autoencoder: Conv2D + BN, Conv2DTranspose + BN,
                         UpSampling2D, Cropping2D (use it with --data digits)

Each model is saved by Keras 3, as a user of tf.keras would save it. Then:

    python scripts/make_task_examples.py DIR
    bnpipe run --model DIR/reg.keras --data DIR/reg.npz --artifacts reg
    bnpipe run --model DIR/ae.keras --data DIR/ae.npz --artifacts ae
    bnpipe run --model DIR/cae.keras --data digits --artifacts cae
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="directory to write the files into")
    out = parser.parse_args().dest
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = (digits.data / 16).astype(np.float32), digits.target
    L = keras.layers

    # A regressor of three smooth functions of the pixels.
    keras.utils.set_random_seed(0)
    w = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    t = np.tanh(x @ w / 4).astype(np.float32)  # (1797, 3) float targets
    np.savez(out / "reg.npz", x_train=x[:1400], y_train=t[:1400], x_test=x[1400:], y_test=t[1400:])
    reg = keras.Sequential(
        [keras.Input((64,)), L.Dense(32), L.BatchNormalization(), L.ReLU(), L.Dense(3)]
    )
    reg.compile(optimizer="adam", loss="mse")
    reg.fit(x[:1400], t[:1400], epochs=30, verbose=0)
    reg.save(out / "reg.keras")

    # An anomaly detector: trained on digits 1-9, tested on the rest of them and every 0 (label 1).
    normal, zeros = x[y != 0], x[y == 0]
    x_test = np.concatenate([normal[1200:], zeros])
    marks = np.r_[np.zeros(len(normal) - 1200), np.ones(len(zeros))].astype(np.int64)
    train_marks = np.zeros(1200, np.int64)  # no anomaly among the training data
    split = dict(x_train=normal[:1200], y_train=train_marks, x_test=x_test, y_test=marks)
    np.savez(out / "ae.npz", **split)
    inp = keras.Input((64,))
    h = inp
    for width in (32, 16, 8, 16, 32):
        h = L.ReLU()(L.BatchNormalization()(L.Dense(width)(h)))
    ae = keras.Model(inp, L.Dense(64, name="recon")(h))
    ae.compile(optimizer="adam", loss="mse")
    ae.fit(normal[:1200], normal[:1200], epochs=40, verbose=0)
    ae.save(out / "ae.keras")

    # A convolutional autoencoder of the 8×8 images.
    keras.utils.set_random_seed(0)
    images = x.reshape(-1, 8, 8, 1)
    inp = keras.Input((8, 8, 1))
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(inp)))
    h = L.MaxPooling2D()(h)  # 4×4×8
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(4, 3, padding="same")(h)))
    h = L.Conv2DTranspose(8, 3, strides=2, padding="same")(h)  # 8×8×8
    h = L.ReLU()(L.BatchNormalization()(h))
    h = L.Cropping2D(4)(L.UpSampling2D()(h))  # 16×16, then the middle 8×8
    cae = keras.Model(inp, L.Conv2D(1, 3, padding="same", name="recon")(h))
    cae.compile(optimizer="adam", loss="mse")
    cae.fit(images[:1400], images[:1400], epochs=15, batch_size=32, verbose=0)
    cae.save(out / "cae.keras")
    print(f"wrote reg.npz, reg.keras, ae.npz, ae.keras and cae.keras in {out}")


if __name__ == "__main__":
    main()
