"""BatchNormalization over the global batch, for training under tf.distribute.

With R replicas each holding a slice of a global batch, a plain BN would normalize with each
slice's statistics. The twins here (`SyncBatchNormalization`, `SyncCustomBatchNorm`) subclass
the layers build_mlp uses and change only where the batch statistics come from
(`replica_moments`: all-reduced over every replica), so one step under a strategy computes what
one single-process step computes. TensorFlow is imported when the classes are first made.
"""

from __future__ import annotations


def replica_moments(x):
    """Mean and biased variance of x (batch, features) over the batch of *all* replicas.

    With one replica (or outside any strategy) this is tf.nn.moments itself. With R replicas:
    the sums of x and the sample counts are all-reduced (one collective), then the sums of
    squared deviations from that global mean (a second one), tf.nn.moments' two-pass formula.
    A replica with no samples (a last batch shorter than R) adds zeros. The all-reduce is
    differentiable (its gradient is an all-reduce), so the backward pass sees the global batch too.
    """
    from pipeline.core.tfenv import tf

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
    from pipeline.core.tfenv import keras, tf
    from pipeline.models.article import custom_bn_class

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
    from pipeline.models.article import build_mlp

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
    from pipeline.core.tfenv import keras

    k = keras()
    layers = [k.Input(shape=(n_features,), name="pixels")]
    layers += [cls.from_config(cfg) for cls, cfg in specs]
    return k.Sequential(layers, name=name)
