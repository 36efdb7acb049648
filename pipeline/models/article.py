"""The seed article's networks: the MLP (Dense → BN → ReLU blocks) and the small CNN bnpipe trains,
their BN layers (Keras's, or the article's own made correct: custom_bn.CustomBatchNorm, `--bn
custom`), and the article's compile recipe.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.core.config import RECIPES
from pipeline.core.tfenv import keras

BN_KINDS = ("keras", "custom")


CUSTOM_BN_NAME = "bnpipe>CustomBatchNorm"  # how Keras registers custom_bn.CustomBatchNorm


def custom_bn_class():
    """The CustomBatchNorm class (custom_bn.py), registered for loading; imports TensorFlow."""
    from pipeline.models.custom_bn import CustomBatchNorm

    return CustomBatchNorm


def build_mlp(
    n_features: int, num_classes: int = 10, hidden: Sequence[int] = (64, 64), bn: str = "keras"
):
    """The article's MLP: [Dense(h) → BatchNormalization → ReLU] per hidden width → Dense(softmax).

    Input (batch, n_features) float32 in [0, 1]; output (batch, num_classes) probabilities.
    The hidden Dense layers keep their bias (as in the article); folding absorbs it into the BN.
    """
    if bn not in BN_KINDS:
        raise ValueError(f"bn must be one of {BN_KINDS}, got {bn!r}")
    if n_features < 1 or num_classes < 2 or not hidden or min(hidden) < 1:
        raise ValueError(
            f"bad shape: n_features={n_features}, num_classes={num_classes}, hidden={tuple(hidden)}"
        )
    k = keras()
    layers = [k.Input(shape=(n_features,), name="pixels")]
    for i, width in enumerate(hidden, start=1):
        layers.append(k.layers.Dense(width, name=f"dense_{i}"))
        if bn == "keras":
            layers.append(k.layers.BatchNormalization(name=f"bn_{i}"))
        else:
            layers.append(custom_bn_class()(name=f"bn_{i}"))
        layers.append(k.layers.ReLU(name=f"relu_{i}"))
    layers.append(k.layers.Dense(num_classes, activation="softmax", name="classes"))
    return k.Sequential(layers, name="bn_mlp")


# (filters, stride) of each full 3×3 Conv2D → BN → ReLU before the depthwise blocks. On MNIST
# the first keeps 28×28 and the second halves it: strokes are found at full resolution by
# convolutions that see every input channel, which depthwise ones do not. Measured on MNIST
# (`bnpipe train --arch cnn --data mnist10k.npz`: 7,200 training images, 2,000 test, recipe
# defaults with 2-pixel shifts, seed 0): 98.25 % test accuracy; 97.5 % with the stride 2 in the
# first convolution and a 64, 128, 256, 768 tail; 95.15 % for the former design (one stride-2
# Conv(16), then 32, 64, 128, 384, 768 blocks) without shifts.
CNN_STEM = ((16, 1), (32, 2))


# Inputs smaller than this on either side (digits' 8×8) pass the stem at stride 1: they keep
# their resolution, which is all they have. Digits (`bnpipe run --arch cnn`, seed 0) scored
# 94.7 % so, 91.1 % with the stem's stride 2 and 91.9 % with it moved to the first block.
CNN_STEM_STRIDE_FROM = 16


# (pointwise filters, depthwise stride) of each depthwise-separable block of build_cnn. After
# the stem's 28×28 → 14×14, two stride-2 blocks take MNIST to 7×7 and 4×4 (digits' 8×8 to 4×4
# and 2×2); the widths grow as the grid shrinks, as in MobileNet, and the last block expands to
# 768 channels before the pooling, as MobileNetV2's last 1×1 convolution does (to 1280). Why that
# wide: int8 pays ~28 bytes of per-channel scales, zero points and bias per output channel, so
# only pointwise kernels with a fan-in in the hundreds shrink ~4×; with the 384→768 kernel
# holding most of the ~399k weights the int8 file is 0.29× the float32 one (0.30× with a
# 256-wide fan-in). Likewise XNNPACK's int8 kernels beat float32 only on such large 1×1
# convolutions, and lose on the stem (one input channel at full resolution): measured int8 /
# float32 batch-1 latency 0.49 on 28×28 (the MNIST model above, converted and timed as
# scripts/measure_cnn.py does).
CNN_BLOCKS = ((64, 1), (128, 2), (128, 1), (384, 2), (768, 1))


# The BNs' moving statistics follow the batches' with this momentum. Keras's 0.99 averages over
# ~100 steps; digits gives only ~20 steps an epoch, and a dozen BNs in a row compound what the
# averages lag behind the changing weights: with 0.99 the inference-mode CNN scored 10 % (one
# class) on digits after 12 epochs while the training-mode one scored 93 %, and on 28×28 it
# stayed at chance for 3 epochs. 0.9 averages over ~10 steps.
CNN_BN_MOMENTUM = 0.9


# The recipe `train --arch cnn` uses by default: config.RECIPES["cnn"] (measured there).
CNN_RECIPE = {k: v for k, v in RECIPES["cnn"].items() if k != "hidden"}


def build_cnn(
    input_shape: Sequence[int],
    num_classes: int = 10,
    stem: Sequence[tuple[int, int]] = CNN_STEM,
    blocks: Sequence[tuple[int, int]] = CNN_BLOCKS,
    bn: str = "keras",
    bn_momentum: float = CNN_BN_MOMENTUM,
):
    """A small MobileNet-style classifier for images (H, W, C) float32 in [0, 1].

    Per (filters, stride) of `stem`: Conv2D 3×3 → BN → ReLU (stride 1 throughout on inputs
    under CNN_STEM_STRIDE_FROM on either side); then per (filters, stride) of `blocks`:
    DepthwiseConv2D 3×3 → BN → ReLU6, pointwise Conv2D 1×1 → BN → ReLU; then
    GlobalAveragePooling2D → Dense softmax. The 3×3 convolutions pad "same" (a 1×1 one needs no
    padding), and no convolution has a bias (the BN after it carries the shift; folding gives
    it one). Every layer is in tfmot's default 8-bit scheme, and the folded model converted to
    int8 holds only CONV_2D, DEPTHWISE_CONV_2D, MEAN, FULLY_CONNECTED and SOFTMAX.
    """
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
    if len(shape) != 3 or not all(isinstance(d, int) and d >= 1 for d in shape):
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}")
    if bn not in BN_KINDS:
        raise ValueError(f"bn must be one of {BN_KINDS}, got {bn!r}")
    if not 0.0 <= bn_momentum < 1.0:
        raise ValueError(f"bn_momentum must be in [0, 1), got {bn_momentum!r}")
    layers_ok = all(f >= 1 and s >= 1 for f, s in (*stem, *blocks))
    if num_classes < 2 or not stem or not blocks or not layers_ok:
        raise ValueError(
            f"bad shape: num_classes={num_classes}, stem={tuple(stem)}, blocks={tuple(blocks)}"
        )
    if min(shape[:2]) < CNN_STEM_STRIDE_FROM:
        stem = [(filters, 1) for filters, _ in stem]
    k = keras()

    def norm(name):
        cls = k.layers.BatchNormalization if bn == "keras" else custom_bn_class()
        return cls(momentum=bn_momentum, name=name)

    layers = [k.Input(shape=shape, name="pixels")]
    for i, (filters, stride) in enumerate(stem, start=1):
        layers += [
            k.layers.Conv2D(filters, 3, stride, "same", use_bias=False, name=f"stem_conv_{i}"),
            norm(f"stem_bn_{i}"),
            k.layers.ReLU(name=f"stem_relu_{i}"),
        ]
    for i, (filters, stride) in enumerate(blocks, start=1):
        layers += [
            k.layers.DepthwiseConv2D(3, stride, "same", use_bias=False, name=f"dw_{i}"),
            norm(f"dw_bn_{i}"),
            k.layers.ReLU(6.0, name=f"dw_relu6_{i}"),
            k.layers.Conv2D(filters, 1, use_bias=False, name=f"pw_{i}"),
            norm(f"pw_bn_{i}"),
            k.layers.ReLU(name=f"pw_relu_{i}"),
        ]
    layers += [
        k.layers.GlobalAveragePooling2D(name="pool"),
        k.layers.Dense(num_classes, activation="softmax", name="classes"),
    ]
    return k.Sequential(layers, name="bn_cnn")


def compile_model(model, learning_rate: float = 1e-3):
    """Adam and sparse categorical cross-entropy, with accuracy: the article's recipe."""
    k = keras()
    model.compile(
        optimizer=k.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def is_batch_norm(layer) -> bool:
    """True for keras.layers.BatchNormalization and bnpipe's CustomBatchNorm."""
    k = keras()
    return isinstance(layer, (k.layers.BatchNormalization, custom_bn_class()))
