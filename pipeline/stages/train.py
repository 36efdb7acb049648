"""Stage 1: train the BN MLP on a data set and write `model.keras` and `train.json`.

One model.fit runs every epoch; each epoch sees the training samples in an order drawn from
(seed, epoch) alone (data.epoch_order), and after each epoch a callback checkpoints the weights
and the optimizer's state in `.resume/train/` inside the artifacts dir (checkpoints.py).
`train(..., resume=True)` continues from the last checkpoint and ends with the very weights an
uninterrupted run gives: nothing else carries state from one epoch to the next (no dropout, a
constant learning rate). The checkpoints are removed once model.keras is written, and when the
training fails (a full disk, an error): they are kept only for an interrupted one to resume.
`--strategy mirrored|multi-worker` trains with tf.distribute instead (distribute.py).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.config import TrainConfig
from pipeline.core.errors import BnpipeError, DataError
from pipeline.data.dataset import load_dataset
from pipeline.data.splits import epoch_order
from pipeline.models.door import classify
from pipeline.store import artifacts, files
from pipeline.training import checkpoints


@dataclass(kw_only=True)
class TrainResult:
    model_path: Path
    record_path: Path
    test_accuracy: float
    val_accuracy: float | None
    epochs: int
    seconds: float
    dataset: dict = field(default_factory=dict)
    resumed_from: int = 0  # epochs taken from a checkpoint (0: trained from the start)


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
    interrupted run with the same config and data; "auto" continues when a matching checkpoint
    exists and starts afresh otherwise (what `bnpipe run` does). See checkpoints.resume_point.
    """
    say = say or (lambda message: None)
    if config.model is not None:
        return _import(config, artifacts_dir, say)
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
    if ds.num_classes == 0:
        raise DataError(
            f"{config.data} holds float regression targets; train builds classifiers: build "
            "your regressor in Keras and bring it with `bnpipe run --model M.keras`"
        )

    from pipeline.core.tfenv import set_determinism

    summary = ds.summary()  # hashes the arrays (tens of MB for MNIST): once per stage
    fingerprint = summary["fingerprint"]
    set_determinism(config.seed)
    model, ds = _new_model(config, ds)
    ckpt_root = Path(artifacts_dir) / files.RESUME_DIR
    start, hist = checkpoints.resume_point(model, ckpt_root, config, fingerprint, resume, say)
    artifacts.on_failure(lambda exc: _drop_unless_interrupted(exc, ckpt_root))
    t1 = time.perf_counter()
    _fit_epochs(model, ds, config, start, hist, quiet, ckpt_root, fingerprint)
    t_fit = time.perf_counter() - t1
    test_acc = float(np.mean(classify(model, ds.x_test) == ds.y_test))
    artifacts.on_success(lambda: checkpoints.remove(ckpt_root))
    return _write_outputs(
        artifacts_dir,
        model,
        config,
        summary,
        hist,
        float(test_acc),
        t0,
        resumed_from=start,
        timings={"load_data_s": t_data, "fit_s": t_fit},
    )


def _drop_unless_interrupted(exc: BaseException, ckpt_root: Path) -> None:
    """Ctrl-C or SIGTERM keeps the checkpoints for --resume; any failure removes them (a stage
    that fails leaves the artifacts dir as it found it)."""
    if not isinstance(exc, KeyboardInterrupt):
        checkpoints.remove(ckpt_root)


def _new_model(config: TrainConfig, ds):
    """(the compiled model of config.arch, the data laid out as it takes them): the MLP takes
    flat features, the CNN images (H, W, C) (data.image_shape)."""
    from pipeline.data.dataset import as_model_input, image_shape
    from pipeline.models.article import build_cnn, build_mlp, compile_model

    if config.arch == "cnn":
        shape = image_shape(ds)
        model = build_cnn(shape, ds.num_classes, bn=config.bn)
        ds = as_model_input(ds, shape)
    else:
        model = build_mlp(ds.preprocessing.n_features, ds.num_classes, config.hidden, config.bn)
    return compile_model(model, config.learning_rate), ds


def _fit_epochs(model, ds, config, start, hist, quiet, ckpt_root, fingerprint) -> None:
    """Epochs start … config.epochs - 1 in one model.fit, each in its own order; a callback
    appends each epoch's metrics to `hist` and checkpoints after every epoch but the last
    (`hist` and `model` are mutated)."""
    import math

    from pipeline.core.interrupts import raise_pending
    from pipeline.core.tfenv import keras, muted_stderr

    if start >= config.epochs:
        return

    class EpochEnd(keras().callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise_pending()  # a Ctrl-C a finalizer swallowed during the epoch
            for k, v in (logs or {}).items():
                hist.setdefault(k, []).append(float(v))
            if epoch + 1 < config.epochs:  # the last epoch's state is model.keras itself
                checkpoints.save(ckpt_root, self.model, epoch + 1, config, fingerprint, hist)

    verbose = 0 if quiet else (1 if sys.stdout.isatty() else 2)
    validation = (ds.x_val, ds.y_val) if len(ds.y_val) else None
    with muted_stderr():  # tf.data's C++ notices ("NodeDef mentions attribute …")
        model.fit(
            _epoch_batches(ds.x_train, ds.y_train, config, start),
            epochs=config.epochs,
            initial_epoch=start,
            steps_per_epoch=math.ceil(len(ds.y_train) / config.batch_size),
            validation_data=validation,
            verbose=verbose,
            callbacks=[EpochEnd()],
        )


def _epoch_batches(x, y, config: TrainConfig, first: int):
    """tf.data batches of epochs first … config.epochs − 1, in one stream.

    Epoch e takes the samples in epoch_order(seed, e) and cuts them into batches of batch_size,
    the last one shorter: exactly the batches of fit(x[order], y[order], shuffle=False), without
    a copy of x per epoch (one fit per epoch made a data adapter, a copy of x and a validation
    handler each time: +2.3 s CPU and +137 MiB at peak on 8,000 MNIST-sized samples). x (n,
    features) and y (n,) are copied once, into variables: a constant captured by the map
    function would be copied again into the iterator (~1× x). Images (n, H, W, C) are moved by
    shift_draws' pixels when config.shift asks for it (shifted); labels never change.
    """

    from pipeline.core.tfenv import tf

    t = tf()
    n = len(y)
    epochs = range(first, config.epochs)
    orders = np.stack([epoch_order(config.seed, e, n) for e in epochs])
    xs, ys = t.Variable(x, trainable=False), t.Variable(y, trainable=False)
    shift = config.shift if shiftable(x.shape) else 0
    if not shift:
        return (
            t.data.Dataset.from_tensor_slices(orders)  # (epochs, n): one epoch's order each
            .flat_map(lambda o: t.data.Dataset.from_tensor_slices(o).batch(config.batch_size))
            # No prefetch: the gather runs in the training step's own thread. A prefetch buffer
            # hands every batch over between threads, which costs a wake-up per step when the
            # cores are busy (2 shared cores: up to seconds per run).
            .map(lambda idx: (t.gather(xs, idx), t.gather(ys, idx)))
        )
    # (epochs, n, 2): the (rows, columns) shift of the i-th sample of each epoch's order
    moves = np.stack([shift_draws(config.seed, e, n, shift) for e in epochs])
    return (
        t.data.Dataset.from_tensor_slices((orders, moves))
        .flat_map(lambda o, m: t.data.Dataset.from_tensor_slices((o, m)).batch(config.batch_size))
        .map(lambda idx, m: (shifted(t.gather(xs, idx), m, shift), t.gather(ys, idx)))
    )


# Images smaller than this on either side are not shifted: digits' 8×8 has no margin to lose.
SHIFT_MIN_SIDE = 16


def shiftable(shape) -> bool:
    """True for a batch shape (n, H, W, C) of images at least SHIFT_MIN_SIDE on both sides."""
    return len(shape) == 4 and min(shape[1:3]) >= SHIFT_MIN_SIDE


def shift_draws(seed: int, epoch: int, n: int, shift: int) -> np.ndarray:
    """int32 (n, 2): the (rows, columns) shift, each in [-shift, shift], of the i-th sample in
    epoch_order(seed, epoch): a function of (seed, epoch) alone, so a resumed run draws the very
    shifts of the uninterrupted one. A generator of its own, apart from epoch_order's."""
    rng = np.random.default_rng([seed, epoch, SHIFT_STREAM])
    return rng.integers(-shift, shift + 1, size=(n, 2)).astype(np.int32)


SHIFT_STREAM = 1  # tells shift_draws' generator from epoch_order's ([seed, epoch])


def shifted(images, moves, shift: int):
    """images (b, H, W, C) with sample i moved down by moves[i, 0] and right by moves[i, 1]
    pixels (negative: up, left); what is moved in is 0, what is moved out is lost. TF ops, new
    tensors; |moves| ≤ shift. Pad by `shift`, then gather each sample's rows and columns."""
    from pipeline.core.tfenv import tf

    t = tf()
    height, width = images.shape[1], images.shape[2]
    padded = t.pad(images, [[0, 0], [shift, shift], [shift, shift], [0, 0]])
    rows = t.range(height)[None, :] + shift - moves[:, 0:1]  # (b, H) rows of `padded`
    cols = t.range(width)[None, :] + shift - moves[:, 1:2]  # (b, W)
    out = t.gather(padded, rows, axis=1, batch_dims=1)  # (b, H, W + 2·shift, C)
    return t.gather(out, cols, axis=2, batch_dims=1)  # (b, H, W, C)


def _import(config: TrainConfig, artifacts_dir: Path, say) -> TrainResult:
    """`bnpipe run --model M.keras`: M, trained elsewhere, becomes model.keras (its bytes, so
    the user's file and the reference are one), scored on the test split in the Keras that saved
    it. Refused before anything is written if bnpipe cannot take it (a layer it cannot export, a
    Keras 3 translation that does not hold, data that does not fit its input)."""

    from pipeline.data.dataset import check_fits, model_input_shape, output_width
    from pipeline.models.configcheck import KERAS3
    from pipeline.models.door import ModelFile, one_output, save_model
    from pipeline.models.h5file import is_h5_name
    from pipeline.models.translation import save_keras3

    t0 = time.perf_counter()
    src = Path(config.model)
    mf = ModelFile.open(src)  # the file's one read: checked, fingerprinted, copied
    kind = mf.kind
    # The tf_keras form fold and export will use: translated and checked now.
    translated = one_output(mf.tf_keras(), src)
    reference = mf.reference()
    ds = load_dataset(
        config.data,
        config.test_data,
        seed=config.seed,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
    )
    check_fits(ds, model_input_shape(reference), output_width(reference))
    accuracy, line = _imported_score(translated, reference, ds, say)
    say(f"imported {src} (saved by {kind}): {line}")
    out = artifacts.ensure_dir(artifacts_dir)
    if is_h5_name(src):  # the model built from the .h5, saved as .keras (the source: its sha256)
        model_path = (save_keras3 if kind == KERAS3 else save_model)(reference, out / files.MODEL)
    else:
        model_path = artifacts.write_bytes(out / files.MODEL, mf.bytes())
    imported = {"path": str(src), "sha256": mf.sha256, "saved_by": kind}
    return _write_record(
        out,
        model_path,
        config,
        ds.summary(),
        {},
        accuracy,
        t0,
        resumed_from=0,
        timings={},
        imported=imported,
        parameters=int(reference.count_params()),
    )


def _imported_score(translated, reference, ds, say) -> tuple[float | None, str]:
    """(test accuracy or None, a line) for an imported model: a classifier's accuracy as ever;
    the task's own measure for another output (analysis/tasks.py), whose task is said."""
    from pipeline.analysis.taskrun import summary
    from pipeline.analysis.tasks import CLASSIFICATION, model_tasks, only_task
    from pipeline.core.errors import ModelError
    from pipeline.data.dataset import model_input_shape, shaped
    from pipeline.models.door import predict

    try:
        task = only_task(model_tasks(translated, ds))
    except ModelError as exc:  # verify asks for --task; training data alone cannot decide
        say(f"task: not inferred here ({exc})")
        return None, "task to be set for verify"
    say(f"task: {task.describe()}")
    out = predict(reference, shaped(ds.x_test, model_input_shape(reference)))
    if task.task != CLASSIFICATION:
        return None, summary(task.task, out, ds.x_test, ds.y_test)
    accuracy = float(np.mean(out.argmax(axis=1) == ds.y_test))
    return accuracy, f"test accuracy {accuracy:.4f}"


def _train_distributed(
    config: TrainConfig, artifacts_dir: Path, *, quiet: bool, resume: bool | str, say
) -> TrainResult:
    """--strategy mirrored|multi-worker: distribute.fit, then write what train() writes.

    No per-epoch checkpoints: an explicit --resume is refused; "auto" (bnpipe run) trains from
    the start. Every multi-worker process writes into the artifacts dir it is given; the workers
    other than the chief are given a temporary one (stages._train).
    """
    from pipeline.training import distribute

    if resume is True:
        raise BnpipeError(
            f"--resume works only with --strategy none; --strategy {config.strategy} "
            "writes no per-epoch checkpoints (run it again without --resume)"
        )
    t0 = time.perf_counter()
    # First of all: multi-worker must configure TensorFlow before its first operation.
    strategy = distribute.make_strategy(config.strategy, config.to_dict())
    run = distribute.fit(config, strategy, say=(lambda m: None) if quiet else say)
    return _write_outputs(
        artifacts_dir,
        run.model,
        config,
        run.dataset,
        run.history,
        run.test_accuracy,
        t0,
        resumed_from=0,
        timings=run.timings,
        distribution=run.strategy,
    )


def _write_outputs(
    out, model, config, dataset, hist, test_acc, t0, *, resumed_from, timings, distribution=None
) -> TrainResult:
    """Save model.keras and train.json (inside the stage's transaction) and say what was done."""
    from pipeline.models.door import save_model

    out = artifacts.ensure_dir(out)
    model_path = save_model(model, out / files.MODEL)
    return _write_record(
        out,
        model_path,
        config,
        dataset,
        hist,
        test_acc,
        t0,
        resumed_from=resumed_from,
        timings=timings,
        distribution=distribution,
        parameters=int(model.count_params()),
    )


def _write_record(
    out,
    model_path,
    config,
    dataset,
    hist,
    test_acc,
    t0,
    *,
    resumed_from,
    timings,
    parameters,
    distribution=None,
    imported=None,
) -> TrainResult:
    """train.json beside model.keras, and the TrainResult saying what was done."""
    record = {
        "stage": "train",
        "config": config.to_dict(),
        "dataset": dataset,
        "preprocessing": dataset["preprocessing"],
        "history": hist,
        "test_accuracy": test_acc,
        "val_accuracy": hist["val_accuracy"][-1] if "val_accuracy" in hist else None,
        "parameters": parameters,
        "resumed_from_epoch": resumed_from,
        **({"distribution": distribution} if distribution else {}),
        **({"imported": imported} if imported else {}),
        "timings": {**timings, "total_s": time.perf_counter() - t0},
        "outputs": {files.MODEL: artifacts.sha256_file(model_path)},
    }
    record_path = artifacts.write_json(
        out / files.TRAIN_RECORD, record, inputs={"data": dataset["fingerprint"]}
    )
    return TrainResult(
        model_path=model_path,
        record_path=record_path,
        test_accuracy=test_acc,
        val_accuracy=record["val_accuracy"],
        epochs=config.epochs,
        seconds=time.perf_counter() - t0,
        dataset=dataset,
        resumed_from=resumed_from,
    )
