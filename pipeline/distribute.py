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
    train.epoch_order for data held in memory) and keeps only its replicas' slices: replica r
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
make_strategy("multi-worker") runs first in a `bnpipe train` process (and refuses otherwise).
Before that, the workers meet on their TF_CONFIG ports (wait_for_workers): a missing worker, or
one started with other options, is a BnpipeError (exit 2) naming it, not a hang. Every worker
trains; only the chief writes artifacts (cli.train hands the others a temporary directory).

Data. An IDX directory of 8-bit images (the MNIST layout) is streamed from its files with
tf.data (FixedLengthRecordDataset, GZIP for .gz): only the labels (one byte per sample, needed
for the seeded stratified split, which is therefore data.py's very split) are held in memory,
never the images. Its samples are shuffled by a seeded buffer of SHUFFLE_BUFFER samples, not by a
permutation of the whole set, so a streamed run sees another order than `--strategy none`
(which reads the data whole) and ends with other (equally trained) weights. Every other source
(digits, mnist, .npz, .csv, IDX files of other types) is read whole by data.load_dataset — an
.npz holds compressed arrays numpy reads whole, and a .csv needs a pass over every cell to check
it and to infer its scaling — and tf.data serves batches from those arrays in train.py's order.
Preprocessing is data.py's in both cases: pixels / divisor in float32.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import TRAIN_STRATEGIES as STRATEGIES  # none, mirrored, multi-worker
from .errors import BnpipeError, DataError

TF_CONFIG = "TF_CONFIG"
TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["HOST0:PORT0", "HOST1:PORT1"]}, '
    '"task": {"type": "worker", "index": 0}}'
)
TF_CONFIG_HINT = (
    f"set it in each worker's environment, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}' "
    "on the first worker and index 1 on the second"
)
JOBS = ("chief", "worker")  # the task types MultiWorkerMirroredStrategy trains with
# How long a worker waits for every other worker in TF_CONFIG to start. Each worker imports
# TensorFlow first (≈ 6 s, more on a loaded machine); five minutes leaves time to start workers by
# hand on several machines. BNPIPE_JOIN_TIMEOUT (seconds) overrides it.
JOIN_TIMEOUT_S = 300.0
JOIN_TIMEOUT_ENV = "BNPIPE_JOIN_TIMEOUT"
# A collective (an all-reduce of one step) that waits longer than this has lost a worker; the
# step then fails instead of hanging. A step takes milliseconds, the first one (tracing) seconds.
COLLECTIVE_TIMEOUT_S = 600.0
# Samples in the shuffle buffer of a streamed source: 10,000 raw MNIST images are 7.8 MB, and a
# sample can then move by up to 10,000 places (a sixth of MNIST) from its place in the file.
SHUFFLE_BUFFER = 10_000
EVAL_BATCH = 1024  # as train.py's model.evaluate


# ---------------------------------------------------------------------------------------------
# TF_CONFIG


@dataclass(frozen=True)
class Cluster:
    """The cluster TF_CONFIG describes and which of its tasks this process is."""

    tasks: tuple[tuple[str, str], ...]  # (job, "host:port"): the chief first, then the workers
    task_type: str  # "chief" or "worker"
    task_index: int

    @property
    def position(self) -> int:
        """This task's place in `tasks` (0 is the chief: the one that writes artifacts)."""
        order = [job for job, _ in self.tasks]
        return order.index(self.task_type) + self.task_index

    @property
    def address(self) -> str:
        return self.tasks[self.position][1]

    @property
    def is_chief(self) -> bool:
        return self.position == 0

    @property
    def size(self) -> int:
        return len(self.tasks)

    def describe(self, position: int | None = None) -> str:
        """ "worker 1 (HOST:PORT)": this task, or the task at `position` (0: the chief)."""
        position = self.position if position is None else position
        job, address = self.tasks[position]
        index = position - [j for j, _ in self.tasks].index(job)
        return f"{job} {index} ({address})"


def parse_tf_config(text: str | None) -> Cluster:
    """Check TF_CONFIG's JSON and return the Cluster; BnpipeError saying what is wrong otherwise."""
    if text is None or not text.strip():
        raise BnpipeError(
            f"--strategy multi-worker needs the environment variable {TF_CONFIG}; " + TF_CONFIG_HINT
        )
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BnpipeError(
            f"{TF_CONFIG} is not valid JSON ({exc.msg} at character {exc.pos}); " + TF_CONFIG_HINT
        ) from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("cluster"), dict) or not cfg["cluster"]:
        raise BnpipeError(
            f'{TF_CONFIG} has no "cluster" object listing the workers; ' + TF_CONFIG_HINT
        )
    cluster = cfg["cluster"]
    other = sorted(set(cluster) - set(JOBS))
    if other:
        raise BnpipeError(
            f"{TF_CONFIG}'s cluster has the job(s) {', '.join(other)}; multi-worker "
            "training takes only chief and worker tasks"
        )
    tasks, seen = [], set()
    for job in JOBS:
        if job not in cluster:
            continue
        addresses = cluster[job]
        if not isinstance(addresses, list) or not addresses:
            raise BnpipeError(
                f'{TF_CONFIG} cluster "{job}" is {addresses!r}; expected a list of '
                '"HOST:PORT" strings'
            )
        if job == "chief" and len(addresses) != 1:
            raise BnpipeError(
                f'{TF_CONFIG} cluster "chief" lists {len(addresses)} addresses; there is one chief'
            )
        for i, address in enumerate(addresses):
            _check_address(address, f"cluster.{job}[{i}]")
            if address in seen:
                raise BnpipeError(
                    f"{TF_CONFIG} lists {address} twice; every task needs its own HOST:PORT"
                )
            seen.add(address)
            tasks.append((job, address))
    task = cfg.get("task")
    if not isinstance(task, dict):
        raise BnpipeError(
            f'{TF_CONFIG} has no "task" object saying which worker this process '
            'is, e.g. "task": {"type": "worker", "index": 0}'
        )
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in cluster:
        raise BnpipeError(
            f"{TF_CONFIG} task type is {task_type!r}; expected one of the cluster's "
            f"jobs ({', '.join(j for j in JOBS if j in cluster)})"
        )
    count = len(cluster[task_type])
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        allowed = "0" if count == 1 else f"0 to {count - 1}"
        raise BnpipeError(
            f"{TF_CONFIG} task index is {index!r}; cluster.{task_type} lists {count} "
            f"address(es), so the index must be {allowed}"
        )
    return Cluster(tuple(tasks), task_type, index)


def _check_address(address, where: str) -> None:
    host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BnpipeError(
            f'{TF_CONFIG} {where} is {address!r}; expected "HOST:PORT" with a port from 1 to 65535'
        )


def current_cluster() -> Cluster:
    """The Cluster of this process's TF_CONFIG (BnpipeError if it is missing or malformed)."""
    return parse_tf_config(os.environ.get(TF_CONFIG))


def join_timeout() -> float:
    text = os.environ.get(JOIN_TIMEOUT_ENV)
    if text is None:
        return JOIN_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise BnpipeError(f"{JOIN_TIMEOUT_ENV} must be a number of seconds > 0, got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Meeting the other workers

_HELLO = "bnpipe-join"


def wait_for_workers(cluster: Cluster, token: str, timeout_s: float) -> None:
    """Block until every other task of `cluster` is up and runs the same job; BnpipeError if not.

    MultiWorkerMirroredStrategy waits for missing workers forever, inside C++ that holds the
    GIL, so bnpipe meets the others first on the same ports: each task listens on its own
    address and says hello (its position and `token`, a digest of the cluster and the training
    options) to every other task, until it has both reached and heard from all of them. A task
    closes its port only after every other task has reached it, so none is left waiting, and
    TensorFlow's server takes the port over. Workers started with different options are refused
    here, instead of deadlocking in their first all-reduce.
    """
    me = cluster.position
    others = {i: address for i, (_, address) in enumerate(cluster.tasks) if i != me}
    if not others:
        return
    host, _, port = cluster.address.rpartition(":")
    try:
        listener = socket.create_server((host.strip("[]"), int(port)), reuse_port=False)
    except OSError as exc:
        raise BnpipeError(
            f"cannot listen on {cluster.address}, this task's address in "
            f"{TF_CONFIG}: {exc.strerror or exc}"
        ) from None
    listener.settimeout(0.2)
    hello = f"{_HELLO} {me} {token}\n".encode()
    reached, heard = set(), set()
    deadline = time.monotonic() + timeout_s
    try:
        while reached != set(others) or heard != set(others):
            if time.monotonic() > deadline:
                missing = sorted(set(others) - (reached & heard))
                raise BnpipeError(
                    f"{cluster.describe()}: no answer within {timeout_s:g} s from "
                    + ", ".join(cluster.describe(i) for i in missing)
                    + f"; start every task listed in {TF_CONFIG} (or raise {JOIN_TIMEOUT_ENV})"
                )
            reached.update(i for i in sorted(set(others) - reached) if _say_hello(others[i], hello))
            try:
                conn, _ = listener.accept()
            except (TimeoutError, BlockingIOError):
                continue
            with conn:
                conn.settimeout(2.0)
                try:
                    words = _read_line(conn).split()
                except OSError:
                    continue
            if len(words) != 3 or words[0] != _HELLO or not words[1].isdigit():
                continue  # not a bnpipe worker: ignore it
            them = int(words[1])
            if them in others and words[2] != token:
                if them not in reached:  # so that it learns of the mismatch too, not by timing out
                    _say_hello(others[them], hello)
                raise BnpipeError(
                    f"{cluster.describe(them)} runs with another cluster or other "
                    "training options; start every worker with the same bnpipe train command and "
                    f"the same {TF_CONFIG} cluster (only the task index differs)"
                )
            if them in others:
                heard.add(them)
    finally:
        listener.close()


def _say_hello(address: str, hello: bytes) -> bool:
    """Send `hello` to the task at address; False if it is not listening (yet)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0) as conn:
            conn.sendall(hello)
    except OSError:
        return False
    return True


def _read_line(conn: socket.socket, limit: int = 256) -> str:
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = conn.recv(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data.decode("ascii", "replace")


def job_token(cluster: Cluster, options: dict) -> str:
    """A digest every worker of one job computes alike: the cluster and the training options."""
    text = json.dumps({"cluster": cluster.tasks, "options": options}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
        from .tfenv import muted_stderr

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
    from .tfenv import muted_stderr

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

    from .tfenv import muted_stderr

    with muted_stderr():
        import tensorflow
    tensorflow.get_logger().setLevel(logging.ERROR)
    return tensorflow


def describe_strategy(strategy) -> dict:
    """strategy name, replicas in sync, workers, and this worker's place (for train.json)."""
    from .tfenv import tf

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


# ---------------------------------------------------------------------------------------------
# BatchNormalization over the global batch


def replica_moments(x):
    """Mean and biased variance of x (batch, features) over the batch of *all* replicas.

    With one replica (or outside any strategy) this is tf.nn.moments itself. With R replicas:
    the sums of x and the sample counts are all-reduced (one collective), then the sums of
    squared deviations from that global mean (a second one), tf.nn.moments' two-pass formula.
    A replica with no samples (a last batch shorter than R) adds zeros. The all-reduce is
    differentiable (its gradient is an all-reduce), so the backward pass sees the global batch too.
    """
    from .tfenv import tf

    t = tf()
    ctx = t.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return t.nn.moments(x, axes=[0])
    n = t.cast(t.shape(x)[0], x.dtype)
    sums = ctx.all_reduce(t.distribute.ReduceOp.SUM, t.concat([t.reduce_sum(x, 0), n[None]], 0))
    count = sums[-1]
    mean = sums[:-1] / count
    squares = ctx.all_reduce(
        t.distribute.ReduceOp.SUM,
        t.reduce_sum(t.math.squared_difference(x, t.stop_gradient(mean)), 0),
    )
    return mean, squares / count


_sync_classes: dict[str, type] = {}


def sync_bn_classes() -> dict[str, type]:
    """{"keras": SyncBatchNormalization, "custom": SyncCustomBatchNorm}, created on first use.

    Each subclasses the layer build_mlp uses and changes only where the batch statistics come
    from (replica_moments). Keras's BatchNormalization already keeps its moving statistics as
    ON_READ variables (each replica updates its own copy); CustomBatchNorm's become ON_READ here
    too, since a mirrored variable cannot be assigned per replica.
    """
    if _sync_classes:
        return _sync_classes
    from .model import custom_bn_class
    from .tfenv import keras, tf

    k, t = keras(), tf()

    class SyncBatchNormalization(k.layers.BatchNormalization):
        def _calculate_mean_and_var(self, inputs, reduction_axes, keep_dims, mask=None):
            if mask is not None or list(reduction_axes) != [0] or keep_dims:
                raise ValueError("SyncBatchNormalization handles (batch, features) inputs only")
            return replica_moments(inputs)

    base = custom_bn_class()

    class SyncCustomBatchNorm(base):
        def _statistic_options(self):
            return {
                "trainable": False,
                "synchronization": t.VariableSynchronization.ON_READ,
                "aggregation": t.VariableAggregation.MEAN,
            }

        def _train(self, x):
            mean, variance = replica_moments(x)
            m = self.momentum
            self.moving_mean.assign(m * self.moving_mean + (1.0 - m) * mean)
            self.moving_variance.assign(m * self.moving_variance + (1.0 - m) * variance)
            return self._normalize(x, mean, variance)

    _sync_classes.update(keras=SyncBatchNormalization, custom=SyncCustomBatchNorm)
    return _sync_classes


def sync_layer_specs(n_features: int, num_classes: int, hidden, bn: str) -> list[tuple[type, dict]]:
    """(class, config) of each layer of build_mlp's network, every BN replaced by its twin.

    Read off a model build_mlp makes (so the architecture has one definition); call it before
    seeding, since building that model draws initial values.
    """
    from .model import build_mlp

    sync = sync_bn_classes()[bn]
    template = build_mlp(n_features, num_classes, hidden, bn)
    plain_bn = sync.__mro__[1]  # the class the twin derives from
    return [
        (sync if type(layer) is plain_bn else type(layer), layer.get_config())
        for layer in template.layers
    ]


def build_from_specs(n_features: int, specs: list[tuple[type, dict]], name: str = "bn_mlp"):
    """A Sequential of fresh layers from sync_layer_specs, in build_mlp's order with its
    initializers: after the same seed its initial weights are build_mlp's, bit for bit
    (tests/test_distribute.py checks it)."""
    from .tfenv import keras

    k = keras()
    layers = [k.Input(shape=(n_features,), name="pixels")]
    layers += [cls.from_config(cfg) for cls, cfg in specs]
    return k.Sequential(layers, name=name)


# ---------------------------------------------------------------------------------------------
# Input: in memory or streamed


class MemorySource:
    """A data set read whole by data.load_dataset; batches in train.py's per-epoch order."""

    streamed = False

    def __init__(self, ds):
        self.ds = ds
        self.preprocessing = ds.preprocessing
        self.num_classes = ds.num_classes
        self.n_train = len(ds.y_train)
        self._x = self._y = None

    def summary(self) -> dict:
        return {**self.ds.summary(), "streamed": False}

    def train_batches(self, seed: int, epoch: int, batch_size: int):
        """tf.data of global (x, y) batches: epoch_order(seed, epoch) cut into batch_size pieces."""
        from .tfenv import tf
        from .train import epoch_order

        t = tf()
        if self._x is None:
            self._x, self._y = t.constant(self.ds.x_train), t.constant(self.ds.y_train)
        x, y = self._x, self._y
        order = epoch_order(seed, epoch, self.n_train)
        return (
            t.data.Dataset.from_tensor_slices(order)
            .batch(batch_size)
            .map(lambda i: (t.gather(x, i), t.gather(y, i)))
        )

    def eval_batches(self, part: str):
        """tf.data of (x, y) batches of "val" or "test" (None if that part is empty)."""
        from .tfenv import tf

        x, y = getattr(self.ds, f"x_{part}"), getattr(self.ds, f"y_{part}")
        if not len(y):
            return None
        return tf().data.Dataset.from_tensor_slices((x, y)).batch(EVAL_BATCH)


_TRAIN, _VAL = 1, 2  # a streamed training file's sample roles


@dataclass
class _IdxFile:
    path: Path
    dims: tuple[int, ...]
    header: int  # bytes before the first value
    gzipped: bool


class IdxStream:
    """An MNIST-layout IDX directory read record by record: the images never sit in memory.

    Only the canonical layout streams: 8-bit images (type 0x08, 3-D) and 8-bit labels (1-D)
    whose counts agree and whose files are as long as their headers say. Anything else is left
    to data.load_dataset (open_source falls back), whose checks and messages are the reference.
    The split is data.py's (its _split on the label column), so the train, validation and test
    samples are load_dataset's; the preprocessing (÷255 in float32) too.
    """

    streamed = True

    def __init__(
        self,
        spec: str,
        files: dict[str, _IdxFile],
        labels: dict[str, np.ndarray],
        seed: int,
        val_fraction: float,
    ):
        from .data import PIXEL_DIVISOR, Preprocessing, _split

        self.spec, self.files, self.labels = spec, files, labels
        rows_cols = files["x_train"].dims[1:]
        self.record_bytes = int(np.prod(rows_cols))
        self.preprocessing = Preprocessing(divisor=PIXEL_DIVISOR, n_features=self.record_bytes)
        y_train = labels["y_train"].astype(np.int64)
        self.num_classes = int(max(y_train.max(), labels["y_test"].max())) + 1
        if self.num_classes < 2:
            raise DataError(f"{spec} holds only the label 0; a classifier needs at least 2 classes")
        # data.load_dataset splits (x, y) with train_test_split, whose choice depends on the
        # labels, the count and the seed only: splitting the sample numbers picks the same samples.
        keep, held, _, _, stratified = _split(
            np.arange(len(y_train)), y_train, val_fraction, seed, "the training part", "validation"
        )
        self.role = np.zeros(len(y_train), np.int8)
        self.role[keep], self.role[held] = _TRAIN, _VAL
        self.n_train, self.n_val = len(keep), len(held)
        self.split = {
            "seed": seed,
            "val_fraction": val_fraction,
            "source_has_test_split": True,
            "test_from": "source",
            "test_fraction": None,
            "test_stratified": None,
            "val_stratified": stratified,
        }

    def fingerprint(self) -> str:
        """sha256 over the four files' contents (decompressed) and the split, read in chunks.

        Not Dataset.fingerprint, which hashes the arrays in split order and so needs them in
        memory; the same data and split give the same value, gzipped or not.
        """
        h = hashlib.sha256(b"idx-stream|")
        for role in ("x_train", "y_train", "x_test", "y_test"):
            f = self.files[role]
            h.update(f"{role}|".encode())
            with gzip.open(f.path, "rb") if f.gzipped else open(f.path, "rb") as stream:
                while chunk := stream.read(1 << 20):
                    h.update(chunk)
        h.update(json.dumps(self.split, sort_keys=True).encode())
        return h.hexdigest()

    def summary(self) -> dict:
        n_test = len(self.labels["y_test"])
        names = ", ".join(f.path.name for f in self.files.values())
        return {
            "name": self.spec,
            "source": f"MNIST IDX files in {self.spec} ({self.n_train + self.n_val + n_test} "
            f"samples), streamed: {names}",
            "sizes": {"train": self.n_train, "val": self.n_val, "test": n_test},
            "n_features": self.preprocessing.n_features,
            "num_classes": self.num_classes,
            "preprocessing": self.preprocessing.to_dict(),
            "split": dict(self.split),
            "fingerprint": self.fingerprint(),
            "streamed": True,
        }

    def _records(self, role: str):
        """tf.data of (raw image bytes, label) in file order, read record by record."""
        from .tfenv import tf

        t = tf()
        f = self.files[role]
        images = t.data.FixedLengthRecordDataset(
            str(f.path),
            record_bytes=self.record_bytes,
            header_bytes=f.header,
            compression_type="GZIP" if f.gzipped else "",
        )
        labels = t.data.Dataset.from_tensor_slices(
            self.labels[role.replace("x_", "y_")].astype(np.int64)
        )
        return t.data.Dataset.zip((images, labels))

    def _decode(self, raw, y):
        from .tfenv import tf

        t = tf()
        pixels = t.io.decode_raw(raw, t.uint8)  # (batch, features)
        # data.py's arithmetic: float32 pixels / float32 divisor (one IEEE division each)
        return t.cast(pixels, t.float32) / t.constant(self.preprocessing.divisor, t.float32), y

    def _train_part(self, wanted: int):
        from .tfenv import tf

        t = tf()
        roles = t.data.Dataset.from_tensor_slices(self.role)
        return (
            t.data.Dataset.zip((self._records("x_train"), roles))
            .filter(lambda record, role: t.equal(role, wanted))
            .map(lambda record, role: record)
        )

    def train_batches(self, seed: int, epoch: int, batch_size: int):
        # The buffer holds raw bytes (1 per pixel); decoding comes after batching.
        shuffled = self._train_part(_TRAIN).shuffle(
            SHUFFLE_BUFFER, seed=shuffle_seed(seed, epoch), reshuffle_each_iteration=False
        )
        return shuffled.batch(batch_size).map(self._decode)

    def eval_batches(self, part: str):
        if part == "val":
            if not self.n_val:
                return None
            return self._train_part(_VAL).batch(EVAL_BATCH).map(self._decode)
        return self._records("x_test").batch(EVAL_BATCH).map(self._decode)


def shuffle_seed(seed: int, epoch: int) -> int:
    """The streamed shuffle's seed for (seed, epoch): a function of both alone, as epoch_order."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint32)[0])


def _idx_header(path: Path) -> _IdxFile | None:
    """The header of an IDX file of 8-bit values whose length matches it, else None."""
    gzipped = path.name.endswith(".gz")
    try:
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4:
                return None
            zero, code, ndim = struct.unpack(">HBB", head)
            if zero != 0 or code != 0x08 or ndim == 0:
                return None
            raw = f.read(4 * ndim)
            if len(raw) < 4 * ndim:
                return None
            dims = struct.unpack(f">{ndim}I", raw)
        expected = 4 + 4 * ndim + int(np.prod(dims, dtype=np.int64))
        if gzipped:
            with open(path, "rb") as f:  # gzip's trailer: the data's length modulo 2**32
                f.seek(-4, os.SEEK_END)
                actual = struct.unpack("<I", f.read(4))[0]
            ok = actual == expected % 2**32
        else:
            ok = path.stat().st_size == expected
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    return _IdxFile(path, tuple(int(d) for d in dims), 4 + 4 * ndim, gzipped) if ok else None


def _open_idx_stream(spec: str, seed: int, val_fraction: float) -> IdxStream | None:
    """An IdxStream for the directory `spec`, or None when it is not the canonical layout."""
    from .data import IDX_FILES, _idx_candidates, read_idx

    directory = Path(spec)
    files: dict[str, _IdxFile] = {}
    for role, base in IDX_FILES.items():
        path = next(
            (directory / n for n in _idx_candidates(base) if (directory / n).is_file()), None
        )
        header = _idx_header(path) if path is not None else None
        if header is None:
            return None
        files[role] = header
    ok = (
        len(files["x_train"].dims) == 3
        and len(files["x_test"].dims) == 3
        and files["x_train"].dims[1:] == files["x_test"].dims[1:]
        and files["y_train"].dims == files["x_train"].dims[:1]
        and files["y_test"].dims == files["x_test"].dims[:1]
        and files["x_train"].dims[0] > 0
        and files["x_test"].dims[0] > 0
    )
    if not ok:
        return None
    labels = {role: read_idx(files[role].path) for role in ("y_train", "y_test")}  # 1 B a sample
    return IdxStream(spec, files, labels, seed, val_fraction)


def open_source(config):
    """The training data for `config` (a TrainConfig): an IdxStream when the data is an IDX
    directory in the MNIST layout, else a MemorySource over data.load_dataset."""
    from .data import load_dataset

    if config.test_data is None and Path(config.data).is_dir():
        stream = _open_idx_stream(config.data, config.seed, config.val_fraction)
        if stream is not None:
            return stream
    return MemorySource(
        load_dataset(
            config.data,
            config.test_data,
            seed=config.seed,
            val_fraction=config.val_fraction,
            test_fraction=config.test_fraction,
        )
    )


def replica_batches(strategy, make_global: Callable):
    """A distributed dataset: each replica's slice of every global batch `make_global()` yields.

    Every worker runs make_global() in full (same seed ⇒ same batches) and keeps the slices
    of its own replicas: replica r of R gets rows [m·r//R, m·(r+1)//R) of a batch of m rows,
    with m itself, by which its loss is divided.
    """
    from .tfenv import tf

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


@dataclass
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
    from .model import build_mlp, compile_model
    from .tfenv import keras, set_determinism, tf

    t, k = tf(), keras()
    say = say or (lambda message: None)
    t0 = time.perf_counter()
    source = open_source(config)
    t_data = time.perf_counter() - t0
    n_features, num_classes = source.preprocessing.n_features, source.num_classes

    specs = sync_layer_specs(n_features, num_classes, config.hidden, config.bn)
    with strategy.scope():
        set_determinism(config.seed)  # as train.py, right before the model's layers are made
        model = build_from_specs(n_features, specs)
        optimizer = k.optimizers.Adam(learning_rate=config.learning_rate)
        optimizer.build(model.trainable_variables)
        loss_fn = k.losses.SparseCategoricalCrossentropy(reduction="none")
        on_read = {
            "synchronization": t.VariableSynchronization.ON_READ,
            "aggregation": t.VariableAggregation.SUM,
            "trainable": False,
        }
        loss_sum = t.Variable(0.0, dtype=t.float64, **on_read)
        correct = t.Variable(0.0, dtype=t.float64, **on_read)
    plain = compile_model(
        build_mlp(n_features, num_classes, config.hidden, config.bn), config.learning_rate
    )
    _check_alignment(model, plain)

    @t.function
    def train_step(iterator):
        def replica_step(x, y, m):
            with t.GradientTape() as tape:
                p = model(x, training=True)  # (b, classes)
                per_sample = loss_fn(y, p)  # (b,)
                loss = t.reduce_sum(per_sample) / m
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            loss_sum.assign_add(t.cast(t.reduce_sum(per_sample), t.float64))
            correct.assign_add(t.reduce_sum(t.cast(t.equal(t.argmax(p, 1), y), t.float64)))

        strategy.run(replica_step, args=next(iterator))

    eval_step = _evaluator(plain, loss_fn)
    steps = -(-source.n_train // config.batch_size)
    hist: dict[str, list[float]] = {}
    t1 = time.perf_counter()
    for epoch in range(config.epochs):
        te = time.perf_counter()
        loss_sum.assign(0.0)
        correct.assign(0.0)
        data = replica_batches(
            strategy, lambda e=epoch: source.train_batches(config.seed, e, config.batch_size)
        )
        iterator = iter(data)
        for _ in range(steps):
            train_step(iterator)
        # Reading an ON_READ SUM variable here sums it over every replica (a collective).
        hist.setdefault("loss", []).append(float(loss_sum.read_value()) / source.n_train)
        hist.setdefault("accuracy", []).append(float(correct.read_value()) / source.n_train)
        plain.set_weights(local_weights(strategy, model))
        val = source.eval_batches("val")
        if val is not None:
            v_loss, v_acc = eval_step(val)
            hist.setdefault("val_loss", []).append(v_loss)
            hist.setdefault("val_accuracy", []).append(v_acc)
        say(
            f"epoch {epoch + 1}/{config.epochs}: "
            + ", ".join(f"{key} {values[-1]:.4f}" for key, values in hist.items())
            + f" ({time.perf_counter() - te:.1f} s)"
        )
    t_fit = time.perf_counter() - t1
    # The optimizer's state too, so model.keras holds what train.py's would (Adam's step count
    # and moments): with one replica the two files are then the same bytes.
    plain.optimizer.build(plain.trainable_variables)
    state = [strategy.experimental_local_results(v)[0] for v in optimizer.variables]
    if [tuple(v.shape) for v in state] != [tuple(v.shape) for v in plain.optimizer.variables]:
        raise RuntimeError("the optimizer states of the two models do not line up")
    for dst, src in zip(plain.optimizer.variables, state):
        dst.assign(src.numpy())
    _, test_acc = eval_step(source.eval_batches("test"))
    summary = source.summary()
    return DistributedResult(
        plain,
        hist,
        test_acc,
        summary,
        source.preprocessing.to_dict(),
        describe_strategy(strategy),
        {"load_data_s": t_data, "fit_s": t_fit},
    )


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
    from .tfenv import tf

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
