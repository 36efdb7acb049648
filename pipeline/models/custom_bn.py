"""The seed article's BatchNormalization layer, made correct (a Keras 2 layer).

The article's `CustomBatchNorm` normalized with the current batch's mean and variance even at
inference, so a prediction depended on which other samples shared its batch (one sample alone is
normalized to exactly β). This one keeps the article's learnable γ and β and adds what
BatchNormalization needs to be a deterministic function at inference: moving mean and variance,
updated during training and used in inference.

Importing this module imports TensorFlow (a Keras layer class needs it): import it where a model
is built or loaded, never at start-up (model.custom_bn_class does).
"""

from __future__ import annotations

from pipeline.core.tfenv import keras, tf

_k, _t = keras(), tf()


@_k.saving.register_keras_serializable(package="bnpipe", name="CustomBatchNorm")
class CustomBatchNorm(_k.layers.Layer):
    """Batch normalization over the last axis with learnable γ, β and moving statistics.

    Training: y = γ·(x − mean_B)/√(var_B + ε) + β with the batch's statistics, and the moving
    statistics move toward them: m ← momentum·m + (1 − momentum)·stat_B.
    Inference: the same with the moving mean and variance, so y depends on x alone.
    The variance is the biased batch variance, as in keras.layers.BatchNormalization.
    """

    def __init__(self, momentum=0.99, epsilon=1e-3, center=True, scale=True, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.axis = -1

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.gamma = (
            self.add_weight(name="gamma", shape=(dim,), initializer="ones") if self.scale else None
        )
        self.beta = (
            self.add_weight(name="beta", shape=(dim,), initializer="zeros") if self.center else None
        )
        statistic = self._statistic_options()
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=(dim,), initializer="zeros", **statistic
        )
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=(dim,), initializer="ones", **statistic
        )
        super().build(input_shape)

    def _statistic_options(self) -> dict:
        """add_weight options of the moving statistics (distribute.py adds how replicas
        share them)."""
        return {"trainable": False}

    def _normalize(self, x, mean, variance):
        y = (x - mean) * _t.math.rsqrt(variance + self.epsilon)
        if self.gamma is not None:
            y = y * self.gamma
        if self.beta is not None:
            y = y + self.beta
        return y

    def _train(self, x):
        axes = list(range(len(x.shape) - 1))
        mean, variance = _t.nn.moments(x, axes=axes)
        m = self.momentum
        self.moving_mean.assign(m * self.moving_mean + (1.0 - m) * mean)
        self.moving_variance.assign(m * self.moving_variance + (1.0 - m) * variance)
        return self._normalize(x, mean, variance)

    def _infer(self, x):
        return self._normalize(x, self.moving_mean, self.moving_variance)

    def call(self, inputs, training=None):
        if training is None or not self.trainable:
            # Frozen (trainable=False), like keras's BatchNormalization since TF 2.0: run in
            # inference mode, so fine-tuning a frozen BN neither uses batch statistics nor
            # moves the moving ones.
            training = False
        if isinstance(training, bool):
            return self._train(inputs) if training else self._infer(inputs)
        return _t.cond(
            _t.cast(training, _t.bool), lambda: self._train(inputs), lambda: self._infer(inputs)
        )

    def get_config(self):
        return {
            **super().get_config(),
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
        }
