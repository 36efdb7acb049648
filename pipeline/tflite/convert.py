"""Keras model → TFLite bytes: the converter's settings per mode, quantization-aware training,
and the mixed model that keeps one layer in float.

    int8          QAT (tensorflow-model-optimization) then full-integer conversion
    ptq-int8      post-training, full integer, calibrated on a representative sample
    ptq-int16x8   int16 activations, int8 weights
    ptq-dynamic   int8 weights, float activations
    ptq-float16   float16 weights
    float32       no quantization (the float twin every integer file is compared with)
    mixed-int8    post-training int8 with one layer left in float (export --mode auto's
                  fallback when no full-integer mode keeps the model's accuracy)

Shared by export (the stage) and the tools that convert on their own. TensorFlow and tfmot are
imported when a conversion runs.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np

from pipeline.core.config import MIXED, ExportConfig
from pipeline.core.errors import ModelError
from pipeline.core.interrupts import interrupts_deferred, raise_pending
from pipeline.models.cost import batch_that_fits
from pipeline.models.door import predict


def _representative(x: np.ndarray, n: int, seed: int):
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))[:n]
    sample = x[np.sort(idx)].astype(np.float32)

    def gen():
        for row in sample:
            yield [row[None, ...]]

    return gen


def convert(model, mode: str, x_train: np.ndarray, config: ExportConfig) -> bytes:
    """Keras model → .tflite bytes for `mode` (the QAT-wrapped model for `int8`)."""
    from pipeline.core.tfenv import tf

    t = tf()
    conv = t.lite.TFLiteConverter.from_keras_model(model)
    _configure(conv, mode, x_train, config)
    return _run(lambda: conv.convert(), mode)


def _configure(conv, mode: str, x_train: np.ndarray, config: ExportConfig) -> None:
    """The converter's settings for `mode` (conv is changed)."""
    from pipeline.core.tfenv import tf

    t = tf()
    if mode == "float32":
        return
    conv.optimizations = [t.lite.Optimize.DEFAULT]
    if mode == "ptq-float16":
        conv.target_spec.supported_types = [t.float16]
    if mode not in ("int8", "ptq-int8", "ptq-int16x8", MIXED):
        if mode not in ("ptq-dynamic", "ptq-float16"):
            raise ModelError(f"unknown mode {mode!r}")
        return
    conv.representative_dataset = _representative(x_train, config.calibration_samples, config.seed)
    io = t.int16 if mode == "ptq-int16x8" else t.int8
    if mode == "ptq-int16x8":
        ops = t.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        conv.target_spec.supported_ops = [ops]
    elif mode != MIXED:  # mixed keeps a float operator: the builtins, not only int8 ones
        conv.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if not config.float_io:
        conv.inference_input_type = conv.inference_output_type = io


def convert_mixed(model, x_train: np.ndarray, config: ExportConfig, keep_float: list[str]) -> bytes:
    """Post-training int8 with the operators whose output tensors are named in `keep_float`
    left in float (DEQUANTIZE before, QUANTIZE after them): LiteRT's quantization debugger with
    those nodes denylisted. The names are the float conversion's (the same as the int8 file's)."""
    from pipeline.core.tfenv import tf

    t = tf()
    conv = t.lite.TFLiteConverter.from_keras_model(model)
    _configure(conv, MIXED, x_train, config)
    options = t.lite.experimental.QuantizationDebugOptions(
        denylisted_nodes=list(keep_float), fully_quantize=True
    )

    def build():
        debugger = t.lite.experimental.QuantizationDebugger(
            converter=conv, debug_dataset=conv.representative_dataset, debug_options=options
        )
        return debugger.get_nondebug_quantized_model()

    return _run(build, MIXED)


def _run(build, mode: str) -> bytes:
    from pipeline.core.tfenv import muted_stderr

    try:
        # Ctrl-C is held during the conversion (< 1 s a mode for the MLP, 6-9 s for the digits
        # CNN's QAT model): TensorFlow's converter catches Exception around one of its paths
        # and retries another, so an interrupt landing there could be swallowed, and the retry
        # gives other (valid but different) bytes.
        with (
            muted_stderr(),
            warnings.catch_warnings(),
            interrupts_deferred(),
            tflite_friendly_layers(),
        ):
            # The converter prints its settings and TF graph notices on stderr: noise here.
            warnings.simplefilter("ignore")
            return bytes(build())
    except Exception as exc:
        msg = " ".join(str(exc).split())[:300]
        raise ModelError(f"the TFLite converter failed for mode {mode}: {msg}") from None


@contextlib.contextmanager
def tflite_friendly_layers() -> Iterator[None]:
    """While the converter traces the model, two tf_keras layers compute the same values by the
    TensorFlow ops TFLite (and TFLite Micro) run best:

    - Reshape reshapes to (-1, *target), the target's own -1 worked out: one RESHAPE with a
      constant shape. Its own call asks for the batch size at run time (SHAPE → STRIDED_SLICE →
      PACK → RESHAPE), which TFLite Micro cannot prepare ("num_input_elements !=
      num_output_elements").
    - A dilated Conv2D or DepthwiseConv2D is one op with a dilation factor. tf.nn's form,
      SPACE_TO_BATCH_ND → convolution → BATCH_TO_SPACE_ND with a batch size known only at run
      time, gave TFLite Micro wrong outputs (1.09 off at float32, NaN with "valid" padding,
      against the reference kernels' 4e-7 from Keras).
    """
    from pipeline.core.tfenv import keras

    layers = keras().layers
    patches = [
        (layers.Reshape, "call", _reshape_call),
        (layers.Conv2D, "convolution_op", _dilated_conv2d),
        (layers.DepthwiseConv2D, "call", _dilated_depthwise_call),
    ]
    owns = [(cls, name, cls.__dict__.get(name)) for cls, name, _ in patches]
    try:
        for cls, name, make in patches:
            setattr(cls, name, make(getattr(cls, name)))
        yield
    finally:
        for cls, name, own in owns:
            if own is None:  # inherited (Conv2D's convolution_op is its base class's)
                delattr(cls, name)
            else:
                setattr(cls, name, own)


def _reshape_call(own):
    from pipeline.core.tfenv import tf

    def call(self, inputs, *args, **kwargs):
        target = _known_target(tuple(inputs.shape[1:]), tuple(self.target_shape))
        if target is None:
            return own(self, inputs, *args, **kwargs)
        return tf().reshape(inputs, (-1, *target))

    return call


def _native_dilation(layer) -> bool:
    return (
        max(layer.dilation_rate) > 1
        and len(layer.dilation_rate) == 2
        and layer.data_format == "channels_last"
        and layer.padding in ("same", "valid")
        and getattr(layer, "groups", 1) == 1
    )


def _dilated_conv2d(own):
    from pipeline.core.tfenv import tf

    def convolution_op(self, inputs, kernel):
        if not _native_dilation(self):
            return own(self, inputs, kernel)
        return tf().raw_ops.Conv2D(
            input=inputs,
            filter=kernel,
            strides=[1, *self.strides, 1],
            padding=self.padding.upper(),
            dilations=[1, *self.dilation_rate, 1],
            data_format="NHWC",
        )

    return convolution_op


def _dilated_depthwise_call(own):
    from pipeline.core.tfenv import tf

    def call(self, inputs):
        if not _native_dilation(self):
            return own(self, inputs)
        t = tf()
        outputs = t.raw_ops.DepthwiseConv2dNative(
            input=inputs,
            filter=self.depthwise_kernel,
            strides=[1, *self.strides, 1],
            padding=self.padding.upper(),
            dilations=[1, *self.dilation_rate, 1],
            data_format="NHWC",
        )
        if self.use_bias:
            outputs = t.nn.bias_add(outputs, self.bias)
        return outputs if self.activation is None else self.activation(outputs)

    return call


def _known_target(source: tuple, target: tuple) -> tuple[int, ...] | None:
    """`target` with its -1 (if any) resolved from the `source` shape; None when a dimension is
    unknown or the sizes do not divide (the layer's own call then reports it)."""
    if any(d is None for d in source):
        return None
    total = int(np.prod(source, dtype=np.int64))
    known = int(np.prod([d for d in target if d != -1], dtype=np.int64))
    if list(target).count(-1) > 1 or known == 0 or total % known:
        return None
    return tuple(total // known if d == -1 else int(d) for d in target)


def _quantized(folded, tfmot):
    """tfmot's quantize_model; where a BN that fold had to keep remains, every other layer is
    annotated as usual and the BN gets an output quantizer only (tfmot has no BN scheme of its
    own): the converter then makes it an int8 MUL and ADD."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_configs as configs,
    )

    from pipeline.core.tfenv import keras
    from pipeline.models.article import is_batch_norm

    reserve_layer_names(folded)
    if not any(is_batch_norm(layer) for layer in folded.layers):
        return tfmot.quantization.keras.quantize_model(folded)
    k, q = keras(), tfmot.quantization.keras

    def annotate(layer):
        if isinstance(layer, k.layers.InputLayer):
            return layer
        if is_batch_norm(layer):
            return q.quantize_annotate_layer(layer, configs.Default8BitOutputQuantizeConfig())
        return q.quantize_annotate_layer(layer)

    annotated = k.models.clone_model(folded, clone_function=annotate)
    annotated.set_weights(folded.get_weights())
    from pipeline.models.article import custom_bn_class

    scope = {
        "Default8BitOutputQuantizeConfig": configs.Default8BitOutputQuantizeConfig,
        "CustomBatchNorm": custom_bn_class(),
    }
    with q.quantize_scope(scope):
        return q.quantize_apply(annotated)


def reserve_layer_names(model) -> None:
    """Move Keras's layer-name counters past every name `model` uses.

    tfmot names the layers it makes (a SeparableConv2D's depthwise and pointwise halves) the way
    Keras names a new layer: its class in snake case and this process's count of them so far,
    "depthwise_conv2d", then "depthwise_conv2d_1" … A model trained in another process holds
    those very names, and quantize_apply then refuses the duplicate ("All layers added to a
    Sequential model should have unique names"). For each name `base` or `base_N` in the model,
    the counter of `base` is advanced past N, so every name made from here on is new to it."""
    import re

    from tf_keras.src.backend import unique_object_name  # what names a new tf_keras layer

    highest: dict[str, int] = {}
    for layer in model.layers:
        match = re.fullmatch(r"(.+?)(?:_(\d+))?", layer.name)
        base, n = match.group(1), int(match.group(2) or 0)
        highest[base] = max(highest.get(base, -1), n)
    for base, n in highest.items():
        while True:  # names base, base_1, base_2 … in turn: stop once one past n was made
            made = re.fullmatch(r"(.+?)(?:_(\d+))?", unique_object_name(base, zero_based=True))
            if int(made.group(2) or 0) >= n:
                break


# tfmot's activation quantizers start at [-6, 6] and follow the data by an exponential moving
# average, v ← d·v + (1 − d)·r with d = 0.999 (quant_ops.MovingAvgQuantize): after the ~120
# steps of 3 epochs on digits they are still 88 % the initial range, so an activation beyond ±6
# is clipped and a narrower one gets coarse steps. They are settled first: one training-mode pass
# over a fixed calibration sample takes one step, from which r, the sample's own range, follows
# exactly, r = (v_new − d·v_old)/(1 − d); every such variable is then set to r. (Taking 4,603
# steps on the same sample leaves 1 % of the initial range and gives the same ranges within it.)
EMA_DECAY = 0.999
EMA_RANGES = (
    "pre_activation_min",
    "pre_activation_max",
    "post_activation_min",
    "post_activation_max",
    "output_min",
    "output_max",
)


def settle_ranges(qat, x: np.ndarray, config: ExportConfig) -> None:
    """Move every moving-average fake-quant range of `qat` (mutated) to the calibration
    sample's own min and max."""
    rng = np.random.default_rng(config.seed)
    n = batch_that_fits(qat, config.calibration_samples)  # one training-mode call: in budget
    sample = x[np.sort(rng.permutation(len(x))[:n])]
    ema = [
        v for v in qat.non_trainable_variables if v.name.split("/")[-1].split(":")[0] in EMA_RANGES
    ]
    before = [v.numpy() for v in ema]
    qat(sample, training=True)
    for v, old in zip(ema, before, strict=True):
        v.assign((v.numpy() - EMA_DECAY * old) / (1.0 - EMA_DECAY))


def _check_qat_layers(model) -> None:
    from pipeline.tflite.opset import QAT_LAYERS, unsupported_layers

    bad = unsupported_layers(model, QAT_LAYERS)
    if bad:
        raise ModelError(
            f"quantization-aware training (tfmot) cannot quantize layer(s) {', '.join(bad)}; "
            "the post-training modes can (--mode ptq-int8, or auto)"
        )


def qat_fine_tune(folded, ds, config: ExportConfig, verbose: int = 0, *, scores: bool = True):
    """quantize_model(folded), fine-tuned for config.qat_epochs. Returns (qat_model, history).
    `scores`: the output is a classifier's (distilled by KL divergence); False for any other
    task's output (a regressor's values, an autoencoder's reconstruction: mean squared error)."""
    import tensorflow_model_optimization as tfmot

    from pipeline.core.tfenv import keras, set_determinism

    k = keras()
    set_determinism(config.seed)
    _check_qat_layers(folded)
    try:
        qat = _quantized(folded, tfmot)
    except Exception as exc:
        msg = " ".join(str(exc).split())[:300]
        raise ModelError(f"quantization-aware training cannot wrap this model: {msg}") from None
    if config.qat_target == "distill":
        # The teacher is the folded float model (= the original within 1e-5); its outputs are the
        # targets, so QAT learns to reproduce the float model: KL divergence between a
        # classifier's probabilities, mean squared error for any other output (a regressor's
        # values, an autoencoder's reconstruction), which KL would take for a distribution.
        y_fit = predict(folded, ds.x_train)
        loss = k.losses.KLDivergence() if scores else k.losses.MeanSquaredError()
    elif ds.num_classes == 0:  # float regression targets (data/targets.py)
        y_fit, loss = ds.y_train, k.losses.MeanSquaredError()
    else:
        y_fit, loss = ds.y_train, "sparse_categorical_crossentropy"
    labels = config.qat_target != "distill" and ds.num_classes > 0
    qat.compile(
        optimizer=k.optimizers.Adam(config.qat_learning_rate),
        loss=loss,
        metrics=["accuracy"] if labels else [],
    )
    settle_ranges(qat, ds.x_train, config)
    history = {}
    if config.qat_epochs:
        from pipeline.core.tfenv import muted_stderr

        with muted_stderr():
            h = qat.fit(
                ds.x_train,
                y_fit,
                epochs=config.qat_epochs,
                batch_size=config.qat_batch_size,
                shuffle=True,
                verbose=verbose,
                callbacks=[k.callbacks.LambdaCallback(on_epoch_end=lambda *_: raise_pending())],
            )
        history = {kk: [float(v) for v in vals] for kk, vals in h.history.items()}
    return qat, history
