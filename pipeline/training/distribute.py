"""Training on several devices or machines: `bnpipe train --strategy mirrored|multi-worker`.

    none          no tf.distribute: train.py's single-process loop (its determinism and
                  `--resume` are untouched by anything here)
    mirrored      tf.distribute.MirroredStrategy over this machine's devices (one replica on a
                  CPU-only machine: the same loop as below with a strategy in place)
    multi-worker  tf.distribute.MultiWorkerMirroredStrategy: one `bnpipe train` process per worker,
                  each told by TF_CONFIG which worker it is; gradients and BN statistics are
                  all-reduced over gRPC (ring all-reduce)

One training step here computes what one single-process step computes, whatever the number of
replicas R, so `multi-worker` on 2 workers and `none` end with the same weights up to float
round-off (summation order). What makes that so:
  * Every worker draws the same global batch of `batch_size` samples (same seed, same order:
    data.epoch_order for data held in memory) and keeps only its replicas' slices: replica r
    of R takes samples [m·r/R, m·(r+1)/R) of a global batch of m. This is tf.data's DATA
    sharding done per batch instead of per element, so the last, short batch is split too.
    (Measured on digits, 2 workers against one process: Keras's fit with AutoShardPolicy.DATA
    and `synchronized=True` BN ended 4.8e-2 apart in relative weight, this module 1.2e-6;
    AutoShardPolicy.FILE refuses data held in memory, and one IDX file would go to one worker.)
  * Each replica's loss is its samples' summed cross-entropy divided by m, the global batch;
    the optimizer sums the replicas' gradients, so the update is the gradient of the global
    batch's mean loss, as in one process.
  * BatchNormalization uses the global batch's mean and variance (all-reduced sums, see
    `replica_moments`), not each replica's half-batch ones; the moving statistics are then
    the same on every replica. Keras's own `synchronized=True` computes the variance as
    E[x²] − E[x]²; replica_moments keeps tf.nn.moments' two-pass formula, so with one replica
    it is tf.nn.moments itself.
  * The initial weights are drawn from the same seed as train.py's (and MultiWorkerMirrored-
    Strategy broadcasts the chief's anyway).
Training runs on copies of the BN layers that do the above (`SyncBatchNormalization`,
`SyncCustomBatchNorm`); the weights and Adam's state are then copied into the very model
build_mlp makes, so the saved model.keras is the same architecture whatever the strategy.

Processes. TensorFlow sets up collective operations only before its first operation, so
make_strategy("multi-worker") runs first in a `bnpipe train` process (and refuses otherwise),
after the workers have met (cluster.py). Every worker trains; only the chief writes artifacts
(the CLI hands the others a temporary directory).

Data comes from stream.open_source: in memory in data.epoch_order's order, or an MNIST-layout
IDX directory streamed from its files. BN's global-batch statistics live in syncbn.py.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.core.config import TRAIN_STRATEGIES as STRATEGIES  # none, mirrored, multi-worker
from pipeline.core.errors import BnpipeError
from pipeline.training.cluster import current_cluster, job_token, join_timeout, wait_for_workers
from pipeline.training.stream import open_source
from pipeline.training.syncbn import build_from_specs, sync_layer_specs

# A collective (an all-reduce of one step) that waits longer than this has lost a worker; the
# step then fails instead of hanging. A step takes milliseconds, the first one (tracing) seconds.
COLLECTIVE_TIMEOUT_S = 600.0


# ---------------------------------------------------------------------------------------------
# Strategies


def make_strategy(name: str, options: dict | None = None):
    """The tf.distribute strategy for `name` (None for "none").

    "multi-worker" reads TF_CONFIG, meets the other workers (wait_for_workers) and must run
    before TensorFlow executes its first operation in this process: TensorFlow configures
    collective operations only at start-up. `options` (the training options) are compared
    across workers.
    """
    if name not in STRATEGIES:
        raise BnpipeError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if name == "none":
        return None
    if name == "mirrored":
        tf = _import_tf()
        from pipeline.core.tfenv import muted_stderr

        with muted_stderr():
            return tf.distribute.MirroredStrategy()
    cluster = current_cluster()
    if _tf_started():
        raise BnpipeError(
            "--strategy multi-worker must set up TensorFlow before it runs anything "
            "else in the process; start each worker as its own `bnpipe train` process"
        )
    # Before importing TensorFlow: a worker that is missing is reported seconds sooner.
    wait_for_workers(cluster, job_token(cluster, options or {}), join_timeout())
    tf = _import_tf()
    comm = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING,
        timeout_seconds=COLLECTIVE_TIMEOUT_S,
    )
    from pipeline.core.tfenv import muted_stderr

    with muted_stderr():  # gRPC and collective-ops start-up notices
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=comm)
    return strategy


def _tf_started() -> bool:
    """Has TensorFlow run an operation in this process? (No public API says; the eager
    context's handle exists once it has.)"""
    if "tensorflow" not in sys.modules:
        return False
    from tensorflow.python.eager import context

    return getattr(context.context(), "_context_handle", None) is not None


def _import_tf():
    """TensorFlow imported (quietly) but not started: tfenv.tf() runs an operation, which would
    make MultiWorkerMirroredStrategy impossible in this process."""
    import logging

    import pipeline  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow is imported)
    from pipeline.core.tfenv import muted_stderr

    with muted_stderr():
        import tensorflow
    tensorflow.get_logger().setLevel(logging.ERROR)
    return tensorflow


def describe_strategy(strategy) -> dict:
    """strategy name, replicas in sync, workers, and this worker's place (for train.json)."""
    from pipeline.core.tfenv import tf

    t = tf()
    if isinstance(strategy, t.distribute.MultiWorkerMirroredStrategy):
        cluster = current_cluster()
        return {
            "strategy": "multi-worker",
            "replicas": int(strategy.num_replicas_in_sync),
            "workers": cluster.size,
            "worker": cluster.position,
            "chief": cluster.is_chief,
        }
    return {
        "strategy": "mirrored",
        "replicas": int(strategy.num_replicas_in_sync),
        "workers": 1,
        "worker": 0,
        "chief": True,
    }


def replica_batches(strategy, make_global: Callable):
    """A distributed dataset: each replica's slice of every global batch `make_global()` yields.

    Every worker runs make_global() in full (same seed ⇒ same batches) and keeps the slices
    of its own replicas: replica r of R gets rows [m·r//R, m·(r+1)//R) of a batch of m rows,
    with m itself, by which its loss is divided.
    """
    from pipeline.core.tfenv import tf

    t = tf()

    def per_worker(ctx):
        replicas = ctx.num_replicas_in_sync
        local = replicas // ctx.num_input_pipelines
        first = ctx.input_pipeline_id * local

        def slices(x, y):
            m = t.shape(y, out_type=t.int64)[0]

            def one(j):
                r = first + j
                lo, hi = m * r // replicas, m * (r + 1) // replicas
                return x[lo:hi], y[lo:hi], t.cast(m, t.float32)

            return t.data.Dataset.range(local).map(one)

        return make_global().flat_map(slices)

    return strategy.distribute_datasets_from_function(per_worker)


# ---------------------------------------------------------------------------------------------
# Training


@dataclass(kw_only=True)
class DistributedResult:
    model: object  # build_mlp's model holding the trained weights (compiled)
    history: dict  # loss, accuracy, val_loss, val_accuracy per epoch, as Keras's
    test_accuracy: float
    dataset: dict  # the source's summary (with "fingerprint" and "streamed")
    preprocessing: dict
    strategy: dict  # describe_strategy
    timings: dict = field(default_factory=dict)


def fit(config, strategy, *, say: Callable[[str], None] | None = None) -> DistributedResult:
    """Train build_mlp's network with `config` (a TrainConfig) under `strategy`.

    Every worker runs this whole function in lockstep (collectives inside); each returns the
    same weights. Writes nothing: the caller saves (on the chief only).
    """
    say = say or (lambda message: None)
    t0 = time.perf_counter()
    source = open_source(config)
    t_data = time.perf_counter() - t0
    run = _Training(config, strategy, source)
    t1 = time.perf_counter()
    for epoch in range(config.epochs):
        te = time.perf_counter()
        run.epoch(epoch)
        say(
            f"epoch {epoch + 1}/{config.epochs}: "
            + ", ".join(f"{key} {values[-1]:.4f}" for key, values in run.history.items())
            + f" ({time.perf_counter() - te:.1f} s)"
        )
    t_fit = time.perf_counter() - t1
    run.copy_optimizer_state()
    _, test_acc = run.evaluate(source.eval_batches("test"))
    return DistributedResult(
        model=run.plain,
        history=run.history,
        test_accuracy=test_acc,
        dataset=source.summary(),
        preprocessing=source.preprocessing.to_dict(),
        strategy=describe_strategy(strategy),
        timings={"load_data_s": t_data, "fit_s": t_fit},
    )


class _Training:
    """The synchronized model under `strategy`, its optimizer and per-epoch sums, and the plain
    build_mlp model that receives its weights after every epoch (and is what gets saved)."""

    def __init__(self, config, strategy, source):
        from pipeline.core.tfenv import keras, set_determinism, tf
        from pipeline.models.article import build_mlp, compile_model

        t, k = tf(), keras()
        self.config, self.strategy, self.source = config, strategy, source
        n_features, num_classes = source.preprocessing.n_features, source.num_classes
        specs = sync_layer_specs(n_features, num_classes, config.hidden, config.bn)
        with strategy.scope():
            set_determinism(config.seed)  # as train.py, right before the model's layers are made
            self.model = build_from_specs(n_features, specs)
            self.optimizer = k.optimizers.Adam(learning_rate=config.learning_rate)
            self.optimizer.build(self.model.trainable_variables)
            self.loss_fn = k.losses.SparseCategoricalCrossentropy(reduction="none")
            on_read = {
                "synchronization": t.VariableSynchronization.ON_READ,
                "aggregation": t.VariableAggregation.SUM,
                "trainable": False,
            }
            self.loss_sum = t.Variable(0.0, dtype=t.float64, **on_read)
            self.correct = t.Variable(0.0, dtype=t.float64, **on_read)
        self.plain = compile_model(
            build_mlp(n_features, num_classes, config.hidden, config.bn), config.learning_rate
        )
        _check_alignment(self.model, self.plain)
        self.train_step = t.function(self._step)
        self.evaluate = _evaluator(self.plain, self.loss_fn)
        self.history: dict[str, list[float]] = {}

    def _step(self, iterator):
        from pipeline.core.tfenv import tf

        t = tf()
        model, loss_fn = self.model, self.loss_fn

        def replica_step(x, y, m):
            with t.GradientTape() as tape:
                p = model(x, training=True)  # (b, classes)
                per_sample = loss_fn(y, p)  # (b,)
                loss = t.reduce_sum(per_sample) / m
            grads = tape.gradient(loss, model.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            self.loss_sum.assign_add(t.cast(t.reduce_sum(per_sample), t.float64))
            self.correct.assign_add(t.reduce_sum(t.cast(t.equal(t.argmax(p, 1), y), t.float64)))

        self.strategy.run(replica_step, args=next(iterator))

    def epoch(self, epoch: int) -> None:
        """One epoch over the global batches of (seed, epoch); appends to the history."""
        config, source, hist = self.config, self.source, self.history
        self.loss_sum.assign(0.0)
        self.correct.assign(0.0)
        data = replica_batches(
            self.strategy,
            lambda: source.train_batches(config.seed, epoch, config.batch_size),
        )
        iterator = iter(data)
        for _ in range(-(-source.n_train // config.batch_size)):
            self.train_step(iterator)
        # Reading an ON_READ SUM variable here sums it over every replica (a collective).
        hist.setdefault("loss", []).append(float(self.loss_sum.read_value()) / source.n_train)
        hist.setdefault("accuracy", []).append(float(self.correct.read_value()) / source.n_train)
        self.plain.set_weights(local_weights(self.strategy, self.model))
        val = source.eval_batches("val")
        if val is not None:
            v_loss, v_acc = self.evaluate(val)
            hist.setdefault("val_loss", []).append(v_loss)
            hist.setdefault("val_accuracy", []).append(v_acc)

    def copy_optimizer_state(self) -> None:
        """Adam's step count and moments into the plain model, so model.keras holds what
        train.py's would: with one replica the two files are then the same bytes."""
        plain = self.plain
        plain.optimizer.build(plain.trainable_variables)
        state = [self.strategy.experimental_local_results(v)[0] for v in self.optimizer.variables]
        if [tuple(v.shape) for v in state] != [tuple(v.shape) for v in plain.optimizer.variables]:
            raise RuntimeError("the optimizer states of the two models do not line up")
        for dst, src in zip(plain.optimizer.variables, state, strict=True):
            dst.assign(src.numpy())


def local_weights(strategy, model) -> list[np.ndarray]:
    """The model's weights as this worker's first replica holds them (no collective needed:
    every replica holds the same values, the BN statistics included)."""
    return [np.asarray(strategy.experimental_local_results(v)[0].numpy()) for v in model.weights]


def _check_alignment(model, plain) -> None:
    a = [w.name.split("/", 1)[-1] for w in model.weights]
    b = [w.name.split("/", 1)[-1] for w in plain.weights]
    shapes_a = [tuple(w.shape) for w in model.weights]
    shapes_b = [tuple(w.shape) for w in plain.weights]
    if shapes_a != shapes_b or [n.split("/")[-1] for n in a] != [n.split("/")[-1] for n in b]:
        raise RuntimeError(
            f"the synchronized model's weights {a} do not line up with build_mlp's {b}"
        )


def _evaluator(model, loss_fn):
    """(dataset of (x, y) batches) -> (mean loss, accuracy) of `model` in inference mode."""
    from pipeline.core.tfenv import tf

    t = tf()

    @t.function
    def batch(x, y):
        p = model(x, training=False)
        return (
            t.reduce_sum(t.cast(loss_fn(y, p), t.float64)),
            t.reduce_sum(t.cast(t.equal(t.argmax(p, 1), y), t.int64)),
        )

    def evaluate(dataset):
        total, right, n = 0.0, 0, 0
        for x, y in dataset:
            s, c = batch(x, y)
            total, right, n = total + float(s), right + int(c), n + int(y.shape[0])
        return total / n, right / n

    return evaluate
