"""Stage 1: train the BN MLP on a data set and write `model.keras` and `train.json`."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import artifacts
from .config import TrainConfig

MODEL_FILE = "model.keras"
RECORD_FILE = "train.json"


@dataclass
class TrainResult:
    model_path: Path
    record_path: Path
    test_accuracy: float
    val_accuracy: float | None
    epochs: int
    seconds: float
    dataset: dict = field(default_factory=dict)


def train(config: TrainConfig, artifacts_dir: Path, *, quiet: bool = False) -> TrainResult:
    """Train from scratch with `config`; write model.keras and train.json atomically.

    Deterministic: the same config, data and machine give the same weights bit for bit.
    """
    from .data import load_dataset

    t0 = time.perf_counter()
    ds = load_dataset(config.data, config.test_data, seed=config.seed,
                      val_fraction=config.val_fraction, test_fraction=config.test_fraction)
    t_data = time.perf_counter() - t0

    from .model import build_mlp, compile_model, save_model
    from .tfenv import set_determinism

    set_determinism(config.seed)
    model = compile_model(build_mlp(ds.preprocessing.n_features, ds.num_classes, config.hidden,
                                    config.bn), config.learning_rate)
    verbose = 0 if quiet else (1 if sys.stdout.isatty() else 2)
    validation = (ds.x_val, ds.y_val) if len(ds.y_val) else None
    t1 = time.perf_counter()
    from .tfenv import muted_stderr

    with muted_stderr():  # tf.data's C++ notices ("NodeDef mentions attribute …"); progress is on stdout
        history = model.fit(ds.x_train, ds.y_train, epochs=config.epochs, batch_size=config.batch_size,
                            validation_data=validation, shuffle=True, verbose=verbose)
    t_fit = time.perf_counter() - t1
    _, test_acc = model.evaluate(ds.x_test, ds.y_test, batch_size=1024, verbose=0)

    out = artifacts.ensure_dir(artifacts_dir)
    model_path = save_model(model, out / MODEL_FILE)
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    record = {
        "stage": "train",
        "config": config.to_dict(),
        "dataset": ds.summary(),
        "preprocessing": ds.preprocessing.to_dict(),
        "history": hist,
        "test_accuracy": float(test_acc),
        "val_accuracy": hist["val_accuracy"][-1] if "val_accuracy" in hist else None,
        "parameters": int(model.count_params()),
        "timings": {"load_data_s": t_data, "fit_s": t_fit, "total_s": time.perf_counter() - t0},
        "outputs": {MODEL_FILE: artifacts.sha256_file(model_path)},
    }
    record_path = artifacts.write_json(out / RECORD_FILE, record,
                                       inputs={"data": ds.fingerprint()})
    return TrainResult(model_path, record_path, float(test_acc), record["val_accuracy"],
                       config.epochs, time.perf_counter() - t0, ds.summary())


def recorded_dataset(where: Path | list[Path], data: str | None = None, model=None):
    """The data set a later stage should use, and its preprocessing (a dict).

    `data` if given (loaded with the default split); else the data and split recorded in the
    first train.json found in `where` (one or more directories). The split is seeded, so the
    test set is the very one training held out. DataError if neither exists or if the feature
    count does not match `model`'s input.
    """
    from .data import load_dataset
    from .errors import DataError

    dirs = [where] if isinstance(where, Path) else list(where)
    cfg = None
    if data is None:
        for d in dirs:
            if (d / RECORD_FILE).is_file():
                cfg = artifacts.read_json(d / RECORD_FILE).get("config", {})
                break
        if cfg is None:
            raise DataError("no data given and no train.json found beside the model; pass --data "
                            "(digits, mnist, a .npz, an IDX directory or a .csv)")
        ds = load_dataset(cfg.get("data", "digits"), cfg.get("test_data"), seed=cfg.get("seed", 0),
                          val_fraction=cfg.get("val_fraction", 0.1),
                          test_fraction=cfg.get("test_fraction", 0.2))
    else:
        ds = load_dataset(data)
    if model is not None:
        n_in = int(model.inputs[0].shape[-1])
        n_out = int(model.outputs[0].shape[-1])
        if ds.preprocessing.n_features != n_in:
            raise DataError(f"the data has {ds.preprocessing.n_features} features per sample but "
                            f"the model takes {n_in}")
        if ds.num_classes > n_out:
            raise DataError(f"the data has {ds.num_classes} classes but the model outputs {n_out}")
    return ds, ds.preprocessing.to_dict()
