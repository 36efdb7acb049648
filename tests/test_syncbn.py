"""syncbn.py: the synchronized BN twins start where build_mlp's layers do and compute
tf.nn.moments' statistics with one replica."""

import numpy as np
import pytest


@pytest.mark.parametrize("bn", ["keras", "custom"])
def test_sync_model_starts_from_build_mlps_initial_weights(keras, bn):
    from pipeline.core.tfenv import set_determinism
    from pipeline.models.article import build_mlp
    from pipeline.training.syncbn import build_from_specs, sync_bn_classes, sync_layer_specs

    set_determinism(5)
    plain = build_mlp(64, 10, (16, 16), bn)
    specs = sync_layer_specs(64, 10, (16, 16), bn)
    set_determinism(5)
    sync = build_from_specs(64, specs)
    assert sum(isinstance(layer, sync_bn_classes()[bn]) for layer in sync.layers) == 2
    assert [w.name for w in sync.weights] == [w.name for w in plain.weights]
    for a, b in zip(plain.weights, sync.weights, strict=True):
        assert np.array_equal(a.numpy(), b.numpy()), a.name


def test_replica_moments_outside_a_strategy_is_tf_nn_moments(tf):
    from pipeline.training.syncbn import replica_moments

    x = tf.constant(np.random.default_rng(0).normal(3.0, 2.0, (37, 5)).astype(np.float32))
    for got, want in zip(replica_moments(x), tf.nn.moments(x, axes=[0]), strict=True):
        assert np.array_equal(got.numpy(), want.numpy())
