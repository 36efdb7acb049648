"""distribute.py: training under `mirrored` (in this process) and `multi-worker` (two `bnpipe train`
processes on 127.0.0.1) against the single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import digits_idx, free_ports, keras_weights, tf_config_json

from pipeline.core.config import TrainConfig

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


@pytest.mark.parametrize("fixture", ["trained", "trained_custom"])
def test_mirrored_on_one_device_gives_the_single_process_weights(request, fixture, tmp_path):
    """On a CPU-only machine `mirrored` has one replica: the same steps in the same order, so the
    weights must be those of `--strategy none` bit for bit (the history to float32 precision:
    Keras averages it in float32, distribute.fit in float64)."""
    import dataclasses

    from pipeline.stages.train import train

    config, single = request.getfixturevalue(fixture)
    mirrored = train(dataclasses.replace(config, strategy="mirrored"), tmp_path, quiet=True)
    a, b = keras_weights(single.model_path), keras_weights(mirrored.model_path)
    assert [n for n, _ in a] == [n for n, _ in b]
    for (name, wa), (_, wb) in zip(a, b, strict=True):
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
    addresses = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = []
    for i in range(2):
        scratch = tmp_path / f"tmp{i}"
        scratch.mkdir()
        env = {
            **os.environ,
            "TF_CONFIG": tf_config_json(addresses, index=i),
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
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return addresses, outputs


def _assert_close(reference_model, two_worker_model, x_test):
    """Check WEIGHT_RTOL, PROB_ATOL and MIN_TOP1_AGREEMENT; return the two models' probabilities."""
    from pipeline.models.door import load_model

    a, b = dict(keras_weights(reference_model)), dict(keras_weights(two_worker_model))
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
    from pipeline.stages.train import train

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
    from pipeline.data.dataset import load_dataset
    from pipeline.stages.train import train

    spec = str(digits_idx(tmp_path / "idx", gzipped=True))
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
