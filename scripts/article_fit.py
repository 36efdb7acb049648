#!/usr/bin/env python3
"""The seed article's training as a plain script: the baseline `scripts/measure_train.py` times.

    python scripts/article_fit.py DATA.npz MODEL.keras [--seed 0]

What the article does, on the same data and the same Keras as `bnpipe train` (tf_keras, Keras 2,
through TF_USE_LEGACY_KERAS=1): load the .npz with numpy, scale the pixels to [0, 1], hold out
the same number of validation samples as bnpipe (ceil(0.1 · n) of the training part; the test
split is the file's own), build Dense(64) → BatchNormalization → ReLU → Dense(64) → BN → ReLU →
Dense(10, softmax), compile with Adam and sparse categorical cross-entropy, `fit` 10 epochs of
batch 32 with the validation data, evaluate on the test split and save the model as .keras.
Nothing else: no checkpoints, no records, no determinism switches.
"""

import argparse
import math
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.keras is tf_keras, as in bnpipe
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

VAL_FRACTION = 0.1  # bnpipe's default share of the training part held out for validation
EPOCHS, BATCH_SIZE = 10, 32  # the article's recipe


def main(data: str, dest: str, seed: int) -> None:
    with np.load(data) as f:
        x_train, y_train = f["x_train"], f["y_train"]
        x_test, y_test = f["x_test"], f["y_test"]
    x_train = x_train.reshape(len(x_train), -1).astype("float32") / 255.0
    x_test = x_test.reshape(len(x_test), -1).astype("float32") / 255.0
    order = np.random.default_rng(seed).permutation(len(y_train))
    n_val = math.ceil(VAL_FRACTION * len(y_train))
    val, train = order[:n_val], order[n_val:]
    x_val, y_val = x_train[val], y_train[val]
    x_train, y_train = x_train[train], y_train[train]

    model = tf.keras.Sequential(
        [
            tf.keras.Input(shape=(x_train.shape[1],)),
            tf.keras.layers.Dense(64),
            tf.keras.layers.BatchNormalization(),
            tf.keras.layers.ReLU(),
            tf.keras.layers.Dense(64),
            tf.keras.layers.BatchNormalization(),
            tf.keras.layers.ReLU(),
            tf.keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=tf.keras.optimizers.Adam(),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(
        x_train,
        y_train,
        epochs=EPOCHS,
        batch_size=BATCH_SIZE,
        validation_data=(x_val, y_val),
        verbose=0,
    )
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    model.save(dest)
    print(f"test accuracy {accuracy:.4f}; wrote {dest}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="a .npz with x_train, y_train, x_test, y_test (8-bit pixels)")
    ap.add_argument("dest", help="the .keras file to write")
    ap.add_argument("--seed", type=int, default=0, help="seeds the validation hold-out")
    args = ap.parse_args()
    main(args.data, args.dest, args.seed)
