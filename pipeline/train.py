"""Stage 1: train the BN MLP on a data set and write `model.keras` and `train.json`.

Training runs one epoch at a time. Each epoch sees the training samples in an order drawn from
(seed, epoch) alone, and after each epoch the weights and the optimizer's state are checkpointed
in `.resume/train/` inside the artifacts dir. `train(..., resume=True)` continues from the last
checkpoint and ends with the very weights an uninterrupted run gives: nothing else carries state
from one epoch to the next (no dropout, a constant learning rate). The checkpoints are removed
once model.keras is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import artifacts
from .config import TrainConfig
from .errors import ArtifactError

MODEL_FILE = "model.keras"
RECORD_FILE = "train.json"
RESUME_DIR = Path(".resume") / "train"  # inside the artifacts dir
_EPOCH_PREFIX = "epoch-"
_STATE_FILE = "state.json"


@dataclass
class TrainResult:
    model_path: Path
    record_path: Path
    test_accuracy: float
    val_accuracy: float | None
    epochs: int
    seconds: float
    dataset: dict = field(default_factory=dict)
    resumed_from: int = 0  # epochs taken from a checkpoint (0: trained from the start)


def epoch_order(seed: int, epoch: int, n: int):
    """The order of the n training samples in `epoch`: a function of (seed, epoch) only, so a
    resumed run draws exactly the orders the uninterrupted one would have."""
    import numpy as np

    return np.random.default_rng([seed, epoch]).permutation(n)


@artifacts.transactional
def train(
    config: TrainConfig,
    artifacts_dir: Path,
    *,
    quiet: bool = False,
    resume: bool | str = False,
    say=None,
) -> TrainResult:
    """Train with `config`; write model.keras and train.json atomically.

    Deterministic: the same config, data and machine give the same weights bit for bit.
    `resume`: False trains from the start; True continues from the last checkpoint of an
    interrupted run with the same config and data (ArtifactError if the checkpoint belongs to
    another config or data; a note and a fresh start if there is none); "auto" continues when a
    matching checkpoint exists and starts afresh otherwise (what `bnpipe run` does).
    `config.strategy` other than "none" trains with tf.distribute instead (_train_distributed).
    """
    from .data import load_dataset

    say = say or (lambda message: None)
    if config.strategy != "none":
        return _train_distributed(config, artifacts_dir, quiet=quiet, resume=resume, say=say)
    t0 = time.perf_counter()
    ds = load_dataset(
        config.data,
        config.test_data,
        seed=config.seed,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
    )
    t_data = time.perf_counter() - t0

    from .model import build_mlp, compile_model, save_model
    from .tfenv import muted_stderr, set_determinism

    set_determinism(config.seed)
    model = compile_model(
        build_mlp(ds.preprocessing.n_features, ds.num_classes, config.hidden, config.bn),
        config.learning_rate,
    )
    ckpt_root = Path(artifacts_dir) / RESUME_DIR
    fingerprint = ds.fingerprint()
    start, hist = 0, {}
    if resume:
        found = _latest_checkpoint(ckpt_root)
        if found is None:
            say(f"no interrupted training to resume in {ckpt_root}; training from the start")
        else:
            mismatch = _mismatch(artifacts.read_json(found / _STATE_FILE), config, fingerprint)
            if mismatch and resume != "auto":
                raise ArtifactError(
                    f"cannot resume from {found}: {mismatch}; run without --resume "
                    "to train from the start"
                )
            if not mismatch:
                start, hist = _restore(model, found)
                say(f"resuming after epoch {start} of {config.epochs} ({found})")

    verbose = 0 if quiet else (1 if sys.stdout.isatty() else 2)
    validation = (ds.x_val, ds.y_val) if len(ds.y_val) else None
    one_epoch = _StopAfterOneEpoch()
    t1 = time.perf_counter()
    for epoch in range(start, config.epochs):
        order = epoch_order(config.seed, epoch, len(ds.y_train))
        # epochs/initial_epoch keep Keras's "Epoch 3/10" progress right; the callback stops the
        # fit after this one epoch, so the checkpoint below falls between epochs.
        with muted_stderr():  # tf.data's C++ notices ("NodeDef mentions attribute …")
            h = model.fit(
                ds.x_train[order],
                ds.y_train[order],
                epochs=config.epochs,
                initial_epoch=epoch,
                batch_size=config.batch_size,
                shuffle=False,
                validation_data=validation,
                verbose=verbose,
                callbacks=[one_epoch],
            )
        for k, vals in h.history.items():
            hist.setdefault(k, []).extend(float(v) for v in vals)
        if epoch + 1 < config.epochs:  # the last epoch's state is model.keras itself
            _save_checkpoint(ckpt_root, model, epoch + 1, config, fingerprint, hist)
    t_fit = time.perf_counter() - t1
    _, test_acc = model.evaluate(ds.x_test, ds.y_test, batch_size=1024, verbose=0)

    out = artifacts.ensure_dir(artifacts_dir)
    model_path = save_model(model, out / MODEL_FILE)
    record = {
        "stage": "train",
        "config": config.to_dict(),
        "dataset": ds.summary(),
        "preprocessing": ds.preprocessing.to_dict(),
        "history": hist,
        "test_accuracy": float(test_acc),
        "val_accuracy": hist["val_accuracy"][-1] if "val_accuracy" in hist else None,
        "parameters": int(model.count_params()),
        "resumed_from_epoch": start,
        "timings": {"load_data_s": t_data, "fit_s": t_fit, "total_s": time.perf_counter() - t0},
        "outputs": {MODEL_FILE: artifacts.sha256_file(model_path)},
    }
    record_path = artifacts.write_json(out / RECORD_FILE, record, inputs={"data": fingerprint})
    artifacts.on_success(lambda: _remove_checkpoints(ckpt_root))
    return TrainResult(
        model_path,
        record_path,
        float(test_acc),
        record["val_accuracy"],
        config.epochs,
        time.perf_counter() - t0,
        ds.summary(),
        start,
    )


def _train_distributed(
    config: TrainConfig, artifacts_dir: Path, *, quiet: bool, resume: bool | str, say
) -> TrainResult:
    """--strategy mirrored|multi-worker: distribute.fit, then write what train() writes.

    No per-epoch checkpoints: an explicit --resume is refused; "auto" (bnpipe run) trains from
    the start. Every multi-worker process writes into the artifacts dir it is given; the CLI
    gives the workers other than the chief a temporary one (see cli.train).
    """
    from . import distribute
    from .errors import BnpipeError
    from .model import save_model

    if resume is True:
        raise BnpipeError(
            f"--resume works only with --strategy none; --strategy {config.strategy} "
            "writes no per-epoch checkpoints (run it again without --resume)"
        )
    t0 = time.perf_counter()
    # First of all: multi-worker must configure TensorFlow before its first operation.
    strategy = distribute.make_strategy(config.strategy, config.to_dict())
    run = distribute.fit(config, strategy, say=(lambda m: None) if quiet else say)
    out = artifacts.ensure_dir(artifacts_dir)
    model_path = save_model(run.model, out / MODEL_FILE)
    hist = run.history
    record = {
        "stage": "train",
        "config": config.to_dict(),
        "dataset": run.dataset,
        "preprocessing": run.preprocessing,
        "history": hist,
        "test_accuracy": run.test_accuracy,
        "val_accuracy": hist["val_accuracy"][-1] if "val_accuracy" in hist else None,
        "parameters": int(run.model.count_params()),
        "resumed_from_epoch": 0,
        "distribution": run.strategy,
        "timings": {**run.timings, "total_s": time.perf_counter() - t0},
        "outputs": {MODEL_FILE: artifacts.sha256_file(model_path)},
    }
    record_path = artifacts.write_json(
        out / RECORD_FILE, record, inputs={"data": run.dataset["fingerprint"]}
    )
    return TrainResult(
        model_path,
        record_path,
        run.test_accuracy,
        record["val_accuracy"],
        config.epochs,
        time.perf_counter() - t0,
        run.dataset,
        0,
    )


class _StopAfterOneEpoch:
    """A Keras callback (built lazily: subclassing needs TensorFlow) that ends fit after an epoch."""

    def __new__(cls):
        from .tfenv import keras

        class StopAfterOneEpoch(keras().callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                self.model.stop_training = True

        return StopAfterOneEpoch()


def _tf_checkpoint(model):
    from .tfenv import tf

    return tf().train.Checkpoint(model=model, optimizer=model.optimizer)


def _save_checkpoint(
    root: Path, model, epoch: int, config: TrainConfig, fingerprint: str, hist: dict
) -> None:
    """Write epoch-NNNN/ (weights, optimizer state, history) whole or not at all, then drop older ones.

    The directory is written under a temporary name and renamed: a checkpoint that exists is
    complete, whenever the process is stopped.
    """
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=artifacts.TMP_PREFIX, dir=root))
    try:
        _tf_checkpoint(model).write(str(tmp / "ckpt"))
        # Written in place, not through artifacts.write_json: the directory rename below is what
        # makes the checkpoint appear whole, and it must not wait for the stage's transaction.
        state = {
            "epoch": epoch,
            "config": config.to_dict(),
            "history": hist,
            "inputs": {"data": fingerprint},
        }
        (tmp / _STATE_FILE).write_text(json.dumps(artifacts.jsonable(state)))
        final = root / f"{_EPOCH_PREFIX}{epoch:04d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in root.glob(f"{_EPOCH_PREFIX}*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def _latest_checkpoint(root: Path) -> Path | None:
    done = sorted(p for p in root.glob(f"{_EPOCH_PREFIX}*") if (p / _STATE_FILE).is_file())
    return done[-1] if done else None


def _mismatch(state: dict, config: TrainConfig, fingerprint: str) -> str:
    """Why a checkpoint cannot continue this training ("" if it can).

    Every option but the epoch count must match: more epochs continue the same run, because an
    epoch's order and updates do not depend on how many epochs follow it.
    """
    mine = json.loads(json.dumps(config.to_dict()))
    theirs = state.get("config", {})
    diff = sorted(
        k for k in set(mine) | set(theirs) if k != "epochs" and mine.get(k) != theirs.get(k)
    )
    if diff:
        return (
            "it was trained with other options ("
            + ", ".join(f"{k}={theirs.get(k)!r}, now {mine.get(k)!r}" for k in diff)
            + ")"
        )
    if state.get("inputs", {}).get("data") != fingerprint:
        return "it was trained on other data"
    if state.get("epoch", 0) > config.epochs:
        return f"it has already done {state['epoch']} epochs, more than --epochs {config.epochs}"
    return ""


def _restore(model, found: Path) -> tuple[int, dict]:
    state = artifacts.read_json(found / _STATE_FILE)
    model.optimizer.build(model.trainable_variables)  # slots exist before values are read in
    try:
        _tf_checkpoint(model).read(str(found / "ckpt")).assert_existing_objects_matched()
    except Exception as exc:
        raise ArtifactError(
            f"checkpoint {found} is damaged: {str(exc).splitlines()[0][:200]}; "
            "run without --resume to train from the start"
        ) from None
    return int(state["epoch"]), {k: list(v) for k, v in state.get("history", {}).items()}


def _remove_checkpoints(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    with contextlib.suppress(OSError):
        root.parent.rmdir()  # .resume/, if nothing else is resumable


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
            raise DataError(
                "no data given and no train.json found beside the model; pass --data "
                "(digits, mnist, a .npz, an IDX directory or a .csv)"
            )
        ds = load_dataset(
            cfg.get("data", "digits"),
            cfg.get("test_data"),
            seed=cfg.get("seed", 0),
            val_fraction=cfg.get("val_fraction", 0.1),
            test_fraction=cfg.get("test_fraction", 0.2),
        )
    else:
        ds = load_dataset(data)
    if model is not None:
        n_in = int(model.inputs[0].shape[-1])
        n_out = int(model.outputs[0].shape[-1])
        if ds.preprocessing.n_features != n_in:
            raise DataError(
                f"the data has {ds.preprocessing.n_features} features per sample but "
                f"the model takes {n_in}"
            )
        if ds.num_classes > n_out:
            raise DataError(f"the data has {ds.num_classes} classes but the model outputs {n_out}")
    return ds, ds.preprocessing.to_dict()
