#!/usr/bin/env python3
"""The outlier case of the issue "Where the accuracy went": the same float function, a harder int8.

Takes a folded MLP (an artifacts dir after `bnpipe train` and `bnpipe fold`), multiplies `count`
output channels of its first Dense (their kernel columns and biases) by `factor` and divides the
matching input rows of the next Dense by `factor`. ReLU commutes with a positive scale
(relu(f·z) = f·relu(z)), so the float function is unchanged, which is checked on the test split;
but a per-tensor int8 scale for the first Dense's output is now set by the scaled channels, and
every other channel is left a handful of quantization levels.

    bnpipe train --data artifacts/digits28.npz --artifacts SRC && bnpipe fold --artifacts SRC
    python scripts/make_outlier_model.py SRC DEST [--factor 100] [--count 2]
    bnpipe layers --artifacts DEST --tflite DEST/model_ptq-int8.tflite

DEST gets SRC's model.keras and train.json (the reference and the data record), folded.keras (the
re-parametrized model) and what `bnpipe export` writes for --modes (default float32, the float
twin, and ptq-int8, plain post-training int8), so verify and layers run on it as on any
artifacts dir. The channels scaled are the first Dense's most active ones on the training split
(largest mean output after ReLU): a channel that is never active would stay at zero, however
scaled, and set no range.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Largest difference allowed between the probabilities of the model and of its re-parametrized
# twin. Scaling by f and dividing by f are each rounded in float32 (≈ 6e-8 relative), so outputs
# move by float32 round-off, as after the fold; the fold's tolerance (config.FOLD_RTOL) applies.
FUNCTION_ATOL = 1e-5
FACTOR = 100.0  # the issue's: two channels carry 100× the range of the others
COUNT = 2
POSITIVE_HOMOGENEOUS = ("relu", "linear")  # activations with act(f·z) = f·act(z) for f > 0


def first_dense_pair(model):
    """(first Dense, the Dense it feeds) of a Sequential MLP, with only ReLU between them."""
    dense = [i for i, layer in enumerate(model.layers) if type(layer).__name__ == "Dense"]
    if len(dense) < 2:
        raise ValueError(f"{model.name} has {len(dense)} Dense layer(s); two are needed")
    a, b = dense[0], dense[1]
    between = [model.layers[i] for i in range(a + 1, b)]
    acts = [model.layers[a].get_config().get("activation", "linear")]
    for layer in between:
        kind = type(layer).__name__
        if kind == "ReLU" and not layer.get_config().get("max_value"):
            continue
        if kind == "Activation" and layer.get_config().get("activation") in POSITIVE_HOMOGENEOUS:
            continue
        raise ValueError(f"layer {layer.name} ({kind}) between the two Dense layers is not a ReLU")
    if acts[0] not in POSITIVE_HOMOGENEOUS:
        raise ValueError(f"{model.layers[a].name} has activation {acts[0]!r}, not relu or linear")
    return model.layers[a], model.layers[b]


def most_active_channels(model, x: np.ndarray, count: int) -> list[int]:
    """The `count` output channels of the first Dense with the largest mean ReLU output on x."""
    first, _ = first_dense_pair(model)
    kernel, bias = first.get_weights()
    activity = np.maximum(x @ kernel + bias, 0).mean(axis=0)  # (units,)
    return sorted(int(c) for c in np.argsort(-activity, kind="stable")[:count])


def with_outliers(model, channels: list[int], factor: float):
    """A new model: `channels` of the first Dense scaled by `factor`, undone by the next Dense."""
    from pipeline.core.tfenv import keras

    if not factor > 0:
        raise ValueError(
            f"factor must be > 0 (ReLU commutes only with a positive scale), got {factor}"
        )
    twin = keras().models.clone_model(model)
    twin.set_weights(model.get_weights())
    first, second = first_dense_pair(twin)
    k1, b1 = first.get_weights()  # (inputs, units), (units,)
    k2, b2 = second.get_weights()  # (units, next units), (next units,)
    k1[:, channels] *= np.float32(factor)
    b1[channels] *= np.float32(factor)
    k2[channels, :] /= np.float32(factor)
    first.set_weights([k1, b1])
    second.set_weights([k2, b2])
    return twin


def function_difference(a, b, x: np.ndarray) -> tuple[float, float]:
    """(largest |Δ probability|, share of samples whose top-1 differs) between models a and b."""
    pa, pb = (m.predict(x, batch_size=1024, verbose=0) for m in (a, b))
    return float(np.max(np.abs(pa - pb))), float(np.mean(pa.argmax(1) != pb.argmax(1)))


def make_outlier_artifacts(
    src: Path, dest: Path, *, factor: float = FACTOR, count: int = COUNT,
    modes: tuple[str, ...] = ("float32", "ptq-int8"), seed: int = 0,
) -> dict:  # fmt: skip
    """Write the outlier artifacts dir `dest` from the folded model in `src` (see the module
    docstring); returns what was done. ValueError if the float function changed."""
    from pipeline.core.config import ExportConfig
    from pipeline.data.dataset import recorded_dataset
    from pipeline.models.door import load_model, save_model
    from pipeline.stages.export import run_export
    from pipeline.store import files

    folded = load_model(src / files.FOLDED)
    ds, _ = recorded_dataset(src, None, folded)
    channels = most_active_channels(folded, ds.x_train, count)
    twin = with_outliers(folded, channels, factor)
    diff, flips = function_difference(folded, twin, ds.x_test)
    if diff > FUNCTION_ATOL or flips:
        raise ValueError(
            f"the re-parametrized model is not the same function: probabilities differ by "
            f"{diff:.3g} (allowed {FUNCTION_ATOL:g}), top-1 on {flips:.2%} of the test split"
        )
    dest.mkdir(parents=True, exist_ok=True)
    for name in (files.MODEL, files.TRAIN_RECORD):
        shutil.copyfile(src / name, dest / name)
    save_model(twin, dest / files.FOLDED)
    export = run_export(dest / files.FOLDED, dest, config=ExportConfig(modes=modes, seed=seed))
    return {
        "channels": channels,
        "factor": factor,
        "max_probability_difference": diff,
        "modes": {
            r.mode: {"accuracy": r.tflite_accuracy, "agreement": r.agreement_with_float}
            for r in export.modes
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "src", type=Path, help="artifacts dir with folded.keras, model.keras, train.json"
    )
    ap.add_argument("dest", type=Path, help="the artifacts dir to write")
    ap.add_argument("--factor", type=float, default=FACTOR, help=f"[default: {FACTOR:g}]")
    ap.add_argument("--count", type=int, default=COUNT, help=f"channels scaled [default: {COUNT}]")
    ap.add_argument("--modes", default="float32,ptq-int8", help="export modes, comma-separated")
    args = ap.parse_args(argv)
    if args.src.resolve() == args.dest.resolve():
        ap.error("DEST must differ from SRC (SRC's folded.keras is the unchanged model)")
    summary = make_outlier_artifacts(
        args.src, args.dest, factor=args.factor, count=args.count,
        modes=tuple(m for m in args.modes.split(",") if m),
    )  # fmt: skip
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
