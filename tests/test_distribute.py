"""distribute.py: TF_CONFIG checks, meeting the workers, the streamed IDX source, and training
under `mirrored` (in this process) and `multi-worker` (two `bnpipe train` processes on 127.0.0.1)
against the single-process run."""

from __future__ import annotations

import gzip
import json
import os
import socket
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest

from pipeline.config import TrainConfig
from pipeline.errors import BnpipeError

# Two workers against one process, same recipe and seed. Both compute the same steps; only the
# order of float additions differs (each worker sums its half of a batch, the all-reduce adds the
# halves), so they drift apart by round-off amplified through training. Measured here (digits,
# this recipe, seeds 0 and 1, both BN kinds): weights ≤ 1.2e-6 relative, output probabilities
# ≤ 6.3e-3 apart, top-1 agreement 100 %, equal test accuracy.
TWO_WORKERS = {"hidden": (16, 16), "epochs": 2, "batch_size": 32, "learning_rate": 1e-2, "seed": 0}
# Per tensor, max |a − b| ≤ WEIGHT_RTOL · max |a|: 80× the measured 1.2e-6. BN with each
# worker's half-batch statistics instead (measured by swapping replica_moments for tf.nn.moments)
# ends 0.64 apart, with probabilities 0.47 apart and 92 % top-1 agreement.
WEIGHT_RTOL = 1e-4
# The hidden Dense biases and the BN moving means are left out of WEIGHT_RTOL: BN subtracts the
# batch mean, so a bias's gradient is zero up to round-off, and Adam divides a gradient by its
# own size, turning that round-off into steps of ~1e-2·lr. Those biases (and the moving means,
# which follow them) are noise in either run; what inference uses of them is checked through
# the outputs: probabilities within PROB_ATOL (5× the measured 6.3e-3) and top-1 agreement.
PROB_ATOL = 0.03
MIN_TOP1_AGREEMENT = 0.99
NOISE_WEIGHTS = ("dense_1/bias", "dense_2/bias", "bn_1/moving_mean", "bn_2/moving_mean")
WORKER_TIMEOUT_S = 600  # a two-worker run takes ≈ 20 s here; this only stops a hung test


def _weights(path):
    from pipeline.model import load_model

    return [(w.name, w.numpy()) for w in load_model(path).weights]


# --- TF_CONFIG --------------------------------------------------------------------------------


def _tf_config(workers, index=0, task_type="worker", chief=None):
    cluster = {"worker": list(workers)}
    if chief:
        cluster["chief"] = [chief]
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def test_parse_tf_config_workers_and_chief():
    from pipeline.distribute import parse_tf_config

    c = parse_tf_config(_tf_config(["127.0.0.1:2000", "127.0.0.1:2001"], index=1))
    assert c.tasks == (("worker", "127.0.0.1:2000"), ("worker", "127.0.0.1:2001"))
    assert (c.position, c.address, c.is_chief, c.size) == (1, "127.0.0.1:2001", False, 2)
    assert (
        c.describe() == "worker 1 (127.0.0.1:2001)" and c.describe(0) == "worker 0 (127.0.0.1:2000)"
    )
    assert parse_tf_config(_tf_config(["h:1", "h:2"], index=0)).is_chief

    # With a chief task, the chief comes first and worker 0 is not the chief.
    c = parse_tf_config(_tf_config(["h:1"], index=0, chief="h:9"))
    assert c.tasks == (("chief", "h:9"), ("worker", "h:1")) and not c.is_chief and c.position == 1
    assert parse_tf_config(_tf_config(["h:1"], index=0, task_type="chief", chief="h:9")).is_chief


HINT = (
    'set it in each worker\'s environment, e.g. TF_CONFIG=\'{"cluster": {"worker": '
    '["HOST0:PORT0", "HOST1:PORT1"]}, "task": {"type": "worker", "index": 0}}\' on '
    "the first worker and index 1 on the second"
)


@pytest.mark.parametrize(
    "text,message",
    [
        (None, "--strategy multi-worker needs the environment variable TF_CONFIG; " + HINT),
        ("  ", "--strategy multi-worker needs the environment variable TF_CONFIG; " + HINT),
        ('{"cluster": ', "TF_CONFIG is not valid JSON (Expecting value at character 12); " + HINT),
        (
            '{"task": {"type": "worker", "index": 0}}',
            'TF_CONFIG has no "cluster" object listing the workers; ' + HINT,
        ),
        (
            '{"cluster": {"worker": ["h:1"], "ps": ["h:2"]}, "task": {"type": "worker", "index": 0}}',
            "TF_CONFIG's cluster has the job(s) ps; multi-worker training takes only chief and worker tasks",
        ),
        (
            '{"cluster": {"worker": ["h:1", "nohostport"]}, "task": {"type": "worker", "index": 0}}',
            "TF_CONFIG cluster.worker[1] is 'nohostport'; expected \"HOST:PORT\" with a port from 1 to 65535",
        ),
        (
            '{"cluster": {"worker": ["h:1", "h:70000"]}, "task": {"type": "worker", "index": 0}}',
            "TF_CONFIG cluster.worker[1] is 'h:70000'; expected \"HOST:PORT\" with a port from 1 to 65535",
        ),
        (
            '{"cluster": {"worker": ["h:1", "h:1"]}, "task": {"type": "worker", "index": 0}}',
            "TF_CONFIG lists h:1 twice; every task needs its own HOST:PORT",
        ),
        (
            '{"cluster": {"worker": ["h:1", "h:2"]}}',
            (
                'TF_CONFIG has no "task" object saying which worker this process is, e.g. "task": '
                '{"type": "worker", "index": 0}'
            ),
        ),
        (
            '{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 2}}',
            "TF_CONFIG task index is 2; cluster.worker lists 2 address(es), so the index must be 0 to 1",
        ),
        (
            '{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "evaluator", "index": 0}}',
            "TF_CONFIG task type is 'evaluator'; expected one of the cluster's jobs (worker)",
        ),
    ],
)
def test_parse_tf_config_refuses_with_one_clear_message(text, message):
    from pipeline.distribute import parse_tf_config

    with pytest.raises(BnpipeError) as info:
        parse_tf_config(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "tf_config,expected",
    [
        (None, "Error: --strategy multi-worker needs the environment variable TF_CONFIG; " + HINT),
        (
            "not json",
            "Error: TF_CONFIG is not valid JSON (Expecting value at character 0); " + HINT,
        ),
    ],
)
def test_cli_multi_worker_without_a_valid_tf_config_is_exit_2(tmp_path, tf_config, expected):
    from click.testing import CliRunner

    from pipeline.cli import cli

    out = tmp_path / "out"
    result = CliRunner(env={"TF_CONFIG": tf_config}).invoke(
        cli, ["train", "--strategy", "multi-worker", "--artifacts", str(out)]
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [expected]
    assert "Traceback" not in result.output and not out.exists()


def test_cli_refuses_resume_with_a_strategy(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import cli

    result = CliRunner().invoke(
        cli, ["train", "--strategy", "mirrored", "--resume", "--artifacts", str(tmp_path / "out")]
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        (
            "Error: --resume works only with --strategy none; --strategy mirrored writes no "
            "per-epoch checkpoints (run it again without --resume)"
        )
    ]
    assert not (tmp_path / "out" / "model.keras").exists()


def test_train_config_checks_the_strategy():
    assert TrainConfig().strategy == "none"
    with pytest.raises(BnpipeError) as info:
        TrainConfig(strategy="horovod")
    assert (
        str(info.value) == "--strategy must be one of none, mirrored, multi-worker, got 'horovod'"
    )


# --- meeting the other workers (plain sockets on 127.0.0.1, no TensorFlow) ---------------------


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _meet(configs, tokens, timeout_s=20.0):
    """Run wait_for_workers for each (TF_CONFIG, token) in its own thread; their errors or None."""
    from pipeline.distribute import parse_tf_config, wait_for_workers

    results = [None] * len(configs)

    def run(i):
        try:
            wait_for_workers(parse_tf_config(configs[i]), tokens[i], timeout_s)
        except BnpipeError as exc:
            results[i] = str(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(configs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s + 10)
    assert not any(t.is_alive() for t in threads)
    return results


def test_workers_meet_when_all_are_up_and_agree():
    addresses = [f"127.0.0.1:{p}" for p in _free_ports(3)]
    configs = [_tf_config(addresses, index=i) for i in range(3)]
    assert _meet(configs, ["same"] * 3) == [None, None, None]


def test_workers_with_other_options_are_refused_on_both_sides():
    addresses = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    configs = [_tf_config(addresses, index=i) for i in range(2)]
    errors = _meet(configs, ["a", "b"])
    for i, error in enumerate(errors):
        assert error == (
            f"worker {1 - i} ({addresses[1 - i]}) runs with another cluster or other "
            "training options; start every worker with the same bnpipe train command "
            "and the same TF_CONFIG cluster (only the task index differs)"
        )


def test_a_missing_worker_is_named_after_the_timeout():
    addresses = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    [error] = _meet([_tf_config(addresses, index=0)], ["t"], timeout_s=1.0)
    assert error == (
        f"worker 0 ({addresses[0]}): no answer within 1 s from worker 1 "
        f"({addresses[1]}); start every task listed in TF_CONFIG (or raise "
        "BNPIPE_JOIN_TIMEOUT)"
    )


def test_a_taken_port_is_reported():
    from pipeline.distribute import parse_tf_config, wait_for_workers

    with socket.create_server(("127.0.0.1", 0)) as taken:
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        other = f"127.0.0.1:{_free_ports(1)[0]}"
        with pytest.raises(BnpipeError) as info:
            wait_for_workers(parse_tf_config(_tf_config([address, other])), "t", 1.0)
    assert str(info.value).startswith(
        f"cannot listen on {address}, this task's address in TF_CONFIG: "
    )


# --- the model under a strategy ------------------------------------------------------------------


@pytest.mark.parametrize("bn", ["keras", "custom"])
def test_sync_model_starts_from_build_mlps_initial_weights(keras, bn):
    from pipeline.distribute import build_from_specs, sync_bn_classes, sync_layer_specs
    from pipeline.model import build_mlp
    from pipeline.tfenv import set_determinism

    set_determinism(5)
    plain = build_mlp(64, 10, (16, 16), bn)
    specs = sync_layer_specs(64, 10, (16, 16), bn)
    set_determinism(5)
    sync = build_from_specs(64, specs)
    assert sum(isinstance(layer, sync_bn_classes()[bn]) for layer in sync.layers) == 2
    assert [w.name for w in sync.weights] == [w.name for w in plain.weights]
    for a, b in zip(plain.weights, sync.weights):
        assert np.array_equal(a.numpy(), b.numpy()), a.name


def test_replica_moments_outside_a_strategy_is_tf_nn_moments(tf):
    from pipeline.distribute import replica_moments

    x = tf.constant(np.random.default_rng(0).normal(3.0, 2.0, (37, 5)).astype(np.float32))
    for got, want in zip(replica_moments(x), tf.nn.moments(x, axes=[0])):
        assert np.array_equal(got.numpy(), want.numpy())


@pytest.mark.parametrize("fixture", ["trained", "trained_custom"])
def test_mirrored_on_one_device_gives_the_single_process_weights(request, fixture, tmp_path):
    """On a CPU-only machine `mirrored` has one replica: the same steps in the same order, so the
    weights must be those of `--strategy none` bit for bit (the history to float32 precision:
    Keras averages it in float32, distribute.fit in float64)."""
    import dataclasses

    from pipeline.train import train

    config, single = request.getfixturevalue(fixture)
    mirrored = train(dataclasses.replace(config, strategy="mirrored"), tmp_path, quiet=True)
    a, b = _weights(single.model_path), _weights(mirrored.model_path)
    assert [n for n, _ in a] == [n for n, _ in b]
    for (name, wa), (_, wb) in zip(a, b):
        assert np.array_equal(wa, wb), name
    assert mirrored.test_accuracy == pytest.approx(single.test_accuracy, abs=1e-7)
    rec = json.loads(mirrored.record_path.read_text())
    ref = json.loads(single.record_path.read_text())
    assert rec["distribution"] == {
        "strategy": "mirrored",
        "replicas": 1,
        "workers": 1,
        "worker": 0,
        "chief": True,
    }
    assert rec["config"]["strategy"] == "mirrored" and ref["config"]["strategy"] == "none"
    assert rec["dataset"]["fingerprint"] == ref["dataset"]["fingerprint"]
    assert rec["dataset"]["streamed"] is False
    assert set(rec["history"]) == set(ref["history"])
    for key, values in ref["history"].items():
        assert np.allclose(rec["history"][key], values, rtol=1e-6, atol=1e-7), key


# --- the streamed IDX source ---------------------------------------------------------------------


def _write_idx(path, array, gzipped):
    data = struct.pack(">HBB", 0, {np.uint8: 0x08, np.int16: 0x0B}[array.dtype.type], array.ndim)
    data += (
        struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(array.dtype.newbyteorder(">")).tobytes()
    )
    if gzipped:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def _digits_idx(directory, gzipped=False, dtype=np.uint8):
    """digits as MNIST-layout IDX files: 8-bit pixels (the 0..16 counts × 16, capped at 255),
    the first 1400 samples for training, the other 397 for test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.minimum(d.images * 16, 255).astype(dtype)
    y = d.target.astype(np.uint8)
    directory.mkdir(parents=True, exist_ok=True)
    for name, arr in (
        ("train-images-idx3-ubyte", x[:1400]),
        ("train-labels-idx1-ubyte", y[:1400]),
        ("t10k-images-idx3-ubyte", x[1400:]),
        ("t10k-labels-idx1-ubyte", y[1400:]),
    ):
        _write_idx(directory / name, arr, gzipped)
    return directory


def _collect(dataset):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(xs), np.concatenate(ys)


def _rows(x, y):
    """The samples as a sorted list of bytes: equal lists ⇔ the same samples, in any order."""
    return sorted(x[i].tobytes() + bytes([int(y[i])]) for i in range(len(y)))


@pytest.mark.parametrize("gzipped", [False, True])
def test_idx_directory_streams_the_split_and_scaling_of_load_dataset(tf, tmp_path, gzipped):
    from pipeline.data import load_dataset
    from pipeline.distribute import IdxStream, open_source

    spec = str(_digits_idx(tmp_path / "idx", gzipped))
    source = open_source(TrainConfig(data=spec, seed=3))
    assert isinstance(source, IdxStream)
    ds = load_dataset(spec, seed=3)
    summary, reference = source.summary(), ds.summary()
    for key in ("name", "sizes", "n_features", "num_classes", "preprocessing", "split"):
        assert summary[key] == reference[key], key
    assert summary["streamed"] is True

    # Validation and test: load_dataset's samples, bit for bit (÷255 in float32 both ways). The
    # stream keeps file order; load_dataset's validation set is in its split's order.
    x_val, y_val = _collect(source.eval_batches("val"))
    assert _rows(x_val, y_val) == _rows(ds.x_val, ds.y_val)
    x_test, y_test = _collect(source.eval_batches("test"))
    assert np.array_equal(x_test.view(np.uint32), ds.x_test.view(np.uint32))
    assert np.array_equal(y_test, ds.y_test)

    # Training: every training sample exactly once per epoch, in an order fixed by (seed, epoch).
    x0, y0 = _collect(source.train_batches(3, 0, 32))
    assert _rows(x0, y0) == _rows(ds.x_train, ds.y_train)
    assert np.array_equal(_collect(source.train_batches(3, 0, 32))[0], x0)
    x1, y1 = _collect(source.train_batches(3, 1, 32))
    assert _rows(x1, y1) == _rows(x0, y0) and not np.array_equal(x1, x0)
    assert [len(y) for _, y in source.train_batches(3, 0, 32)] == [32] * 39 + [12]  # 1260 samples


def test_streamed_fingerprint_is_the_data_not_the_compression(tf, tmp_path):
    from pipeline.distribute import open_source

    plain = open_source(TrainConfig(data=str(_digits_idx(tmp_path / "a"))))
    packed = open_source(TrainConfig(data=str(_digits_idx(tmp_path / "b", gzipped=True))))
    other_seed = open_source(TrainConfig(data=str(tmp_path / "a"), seed=1))
    assert plain.fingerprint() == packed.fingerprint() != other_seed.fingerprint()


def test_idx_files_of_other_types_or_damaged_are_read_whole_by_data_py(tf, tmp_path):
    from pipeline.data import load_dataset
    from pipeline.distribute import MemorySource, open_source
    from pipeline.errors import DataError

    wide = str(_digits_idx(tmp_path / "int16", dtype=np.int16))
    source = open_source(TrainConfig(data=wide))
    assert isinstance(source, MemorySource)
    assert source.summary()["fingerprint"] == load_dataset(wide).fingerprint()

    damaged = _digits_idx(tmp_path / "damaged")
    images = damaged / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5])
    with pytest.raises(DataError) as info:
        open_source(TrainConfig(data=str(damaged)))
    assert "is truncated" in str(info.value)  # data.py's own message


# --- two workers on 127.0.0.1 --------------------------------------------------------------------


def _cli_args(cfg: dict) -> list[str]:
    return [
        "--hidden",
        ",".join(map(str, cfg["hidden"])),
        "--epochs",
        str(cfg["epochs"]),
        "--batch-size",
        str(cfg["batch_size"]),
        "--learning-rate",
        str(cfg["learning_rate"]),
        "--seed",
        str(cfg["seed"]),
        "--quiet",
    ]


def _two_workers(tmp_path, extra: list[str]):
    """Run two `bnpipe train --strategy multi-worker` processes; (chief's dir, outputs)."""
    addresses = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for i in range(2):
        scratch = tmp_path / f"tmp{i}"
        scratch.mkdir()
        env = {
            **os.environ,
            "TF_CONFIG": _tf_config(addresses, index=i),
            "TMPDIR": str(scratch),
            "BNPIPE_JOIN_TIMEOUT": "120",
        }
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pipeline.cli",
                    "train",
                    "--strategy",
                    "multi-worker",
                    *extra,
                    "--artifacts",
                    str(tmp_path / f"worker{i}"),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=WORKER_TIMEOUT_S))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    return addresses, outputs


def _assert_close(reference_model, two_worker_model, x_test):
    """The checks of WEIGHT_RTOL, PROB_ATOL and MIN_TOP1_AGREEMENT; the two models' probabilities."""
    from pipeline.model import load_model

    a, b = dict(_weights(reference_model)), dict(_weights(two_worker_model))
    assert list(a) == list(b)
    compared = [name for name in a if name.split(":")[0] not in NOISE_WEIGHTS]
    assert len(compared) == len(a) - len(NOISE_WEIGHTS)
    for name in compared:
        assert np.max(np.abs(a[name] - b[name])) <= WEIGHT_RTOL * np.max(np.abs(a[name])), name
    pa = np.asarray(load_model(reference_model)(x_test, training=False))
    pb = np.asarray(load_model(two_worker_model)(x_test, training=False))
    assert np.max(np.abs(pa - pb)) <= PROB_ATOL
    assert np.mean(pa.argmax(1) == pb.argmax(1)) >= MIN_TOP1_AGREEMENT
    return pa, pb


@pytest.mark.slow
def test_two_workers_match_the_single_process_run(keras, digits, tmp_path):
    from pipeline.train import train

    addresses, ((out0, _), (out1, _)) = _two_workers(tmp_path, _cli_args(TWO_WORKERS))
    chief, other = tmp_path / "worker0", tmp_path / "worker1"
    rec = json.loads((chief / "train.json").read_text())
    assert rec["distribution"] == {
        "strategy": "multi-worker",
        "replicas": 2,
        "workers": 2,
        "worker": 0,
        "chief": True,
    }
    assert rec["config"]["strategy"] == "multi-worker"
    # Only the chief writes; the other worker's scratch dir is gone and its --artifacts unused.
    assert not other.exists() and list((tmp_path / "tmp1").iterdir()) == []
    acc = rec["test_accuracy"]
    assert out0.startswith(f"test accuracy {acc:.4f} on {len(digits.y_test)} samples; wrote ")
    assert out1.startswith(
        f"worker 1 ({addresses[1]}): test accuracy {acc:.4f}; the chief, "
        f"worker 0 ({addresses[0]}), writes the artifacts"
    )

    single = train(TrainConfig(**TWO_WORKERS), tmp_path / "single", quiet=True)
    assert rec["dataset"]["fingerprint"] == digits.fingerprint()
    _, pb = _assert_close(single.model_path, chief / "model.keras", digits.x_test)
    # The recorded accuracy is the saved model's on the test split (every test sample counted once).
    assert round(acc * len(digits.y_test)) == int(np.sum(pb.argmax(1) == digits.y_test))


@pytest.mark.slow
def test_two_workers_streaming_idx_match_one_streaming_process(keras, tmp_path):
    """The streamed source under two workers: both must draw the same shuffled stream, or their
    halves of a batch would come from different batches."""
    from pipeline.data import load_dataset
    from pipeline.train import train

    spec = str(_digits_idx(tmp_path / "idx", gzipped=True))
    _two_workers(tmp_path, ["--data", spec, *_cli_args(TWO_WORKERS)])
    rec = json.loads((tmp_path / "worker0" / "train.json").read_text())
    assert rec["dataset"]["streamed"] is True
    single = train(
        TrainConfig(data=spec, strategy="mirrored", **TWO_WORKERS), tmp_path / "single", quiet=True
    )
    assert json.loads(single.record_path.read_text())["dataset"] == rec["dataset"]
    ds = load_dataset(spec)
    _, pb = _assert_close(single.model_path, tmp_path / "worker0" / "model.keras", ds.x_test)
    assert round(rec["test_accuracy"] * len(ds.y_test)) == int(np.sum(pb.argmax(1) == ds.y_test))
