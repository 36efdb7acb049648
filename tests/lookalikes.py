"""Look-alikes of published pretrained Keras 3 models (MLPerf Tiny's), built offline from seeded
weights: a MobileNetV1-0.25 for visual wake words (27 BNs) whose weight decay left dead pointwise
channels, a ResNet-8 that expects raw 0–255 pixels, and a DS-CNN on MFCC-range features.

The weights are random but shaped like trained ones: He-scaled kernels, and every BN's moving
mean and variance set to the statistics its input really has on the given data (layer after
layer), so activations keep their scale through the depth as after training. A dead channel is
what weight decay leaves of an unused one: its kernel ~1e-32, the BN's moving variance ~1e-17
(its input is constant), its β (not decayed) intact.
"""

from __future__ import annotations

import numpy as np

DEAD_KERNEL = 1e-32
DEAD_VARIANCE = 1e-17
VARIANCE_FLOOR = 1.0  # no BN divides by less than the layer's typical deviation
STRUCTURE_NOISE = 0.3  # the random part of a kernel beside its structured part (_trained_kernel)


def smooth_images(n: int, size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """n uint8 images (n, size, size, channels): low-frequency noise, like photographs more than
    white noise is."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, size // 8 + 1, size // 8 + 1, channels))
    big = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)[:, :size, :size]
    fine = rng.random((n, size, size, channels)) * 0.2
    return np.clip((0.8 * big + fine) * 255, 0, 255).astype(np.uint8)


def _bn(k3, x, name):
    return k3.layers.BatchNormalization(name=name)(x)


def vww_like(k3, size: int = 32, classes: int = 2):
    """MobileNetV1 at width 0.25: conv 3×3/2 then 13 depthwise-separable blocks, each BN'd and
    ReLU'd (1 + 26 = 27 BNs), global average pooling, Dense softmax."""
    inp = k3.Input((size, size, 3), name="input")
    x = k3.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="conv0")(inp)
    x = k3.layers.Activation("relu", name="act0")(_bn(k3, x, "bn0"))
    widths = [16, 32, 32, 64, 64, 128, 128, 128, 128, 128, 128, 256, 256]
    strides = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    for i, (w, s) in enumerate(zip(widths, strides, strict=True), 1):
        x = k3.layers.DepthwiseConv2D(3, s, padding="same", use_bias=False, name=f"dw{i}")(x)
        x = k3.layers.Activation("relu", name=f"dw_act{i}")(_bn(k3, x, f"dw_bn{i}"))
        x = k3.layers.Conv2D(w, 1, use_bias=False, name=f"pw{i}")(x)
        x = k3.layers.Activation("relu", name=f"pw_act{i}")(_bn(k3, x, f"pw_bn{i}"))
    x = k3.layers.GlobalAveragePooling2D(name="pool")(x)
    out = k3.layers.Dense(classes, activation="softmax", name="dense")(x)
    return k3.Model(inp, out, name="vww_like")


def resnet8_like(k3, size: int = 32, classes: int = 10):
    """MLPerf Tiny's ResNet-8 for CIFAR-10: conv 16, three residual stacks (16, 32, 64)."""
    inp = k3.Input((size, size, 3), name="input")
    x = k3.layers.Conv2D(16, 3, padding="same", name="conv0")(inp)
    x = k3.layers.Activation("relu", name="act0")(_bn(k3, x, "bn0"))
    for i, (w, s) in enumerate([(16, 1), (32, 2), (64, 2)], 1):
        y = k3.layers.Conv2D(w, 3, s, padding="same", name=f"c{i}a")(x)
        y = k3.layers.Activation("relu", name=f"a{i}a")(_bn(k3, y, f"bn{i}a"))
        y = k3.layers.Conv2D(w, 3, padding="same", name=f"c{i}b")(y)
        y = _bn(k3, y, f"bn{i}b")
        if s != 1:
            x = k3.layers.Conv2D(w, 1, s, padding="same", name=f"c{i}s")(x)
        x = k3.layers.Activation("relu", name=f"a{i}")(k3.layers.Add(name=f"add{i}")([x, y]))
    x = k3.layers.GlobalAveragePooling2D(name="pool")(x)
    out = k3.layers.Dense(classes, activation="softmax", name="dense")(x)
    return k3.Model(inp, out, name="resnet8_like")


def dscnn_like(k3, frames: int = 49, coefficients: int = 10, classes: int = 12):
    """MLPerf Tiny's DS-CNN for keyword spotting: conv 10×4/2, four depthwise-separable blocks."""
    inp = k3.Input((frames, coefficients, 1), name="input")
    x = k3.layers.Conv2D(64, (10, 4), strides=2, padding="same", name="conv0")(inp)
    x = k3.layers.Activation("relu", name="act0")(_bn(k3, x, "bn0"))
    for i in range(1, 5):
        x = k3.layers.DepthwiseConv2D(3, padding="same", name=f"dw{i}")(x)
        x = k3.layers.Activation("relu", name=f"dw_act{i}")(_bn(k3, x, f"dw_bn{i}"))
        x = k3.layers.Conv2D(64, 1, name=f"pw{i}")(x)
        x = k3.layers.Activation("relu", name=f"pw_act{i}")(_bn(k3, x, f"pw_bn{i}"))
    x = k3.layers.GlobalAveragePooling2D(name="pool")(x)
    out = k3.layers.Dense(classes, activation="softmax", name="dense")(x)
    return k3.Model(inp, out, name="dscnn_like")


def _trained_kernel(rng, kernel: np.ndarray, depthwise: bool) -> np.ndarray:
    """A kernel of kernel's shape that, like a trained one and unlike white noise, keeps most of
    its input's structure: a smoothing (depthwise) or channel-mixing identity-like (others) part
    plus He-scaled noise. Pure noise through 27 BNs is chaotic: an int8 error grows to the size
    of the signal (measured: 7 dB at the output), which no trained model does."""
    fan_in = int(np.prod(kernel.shape[:-1])) if not depthwise else int(np.prod(kernel.shape[:2]))
    noise = rng.normal(size=kernel.shape) * np.sqrt(2.0 / fan_in)
    if depthwise:
        base = np.ones(kernel.shape) / np.prod(kernel.shape[:2])
    else:
        cin, cout = int(np.prod(kernel.shape[:-1])), kernel.shape[-1]
        base = np.eye(cin, cout) + np.eye(cin, cout, k=-cout if cin > cout else cout)[:cin, :cout]
        base = base.reshape(kernel.shape)
    return (base + STRUCTURE_NOISE * noise).astype(np.float32)


def pretrain_like(k3, model, x: np.ndarray, seed: int = 0, dead: int = 0) -> None:
    """Give `model` (mutated) trained-looking weights for inputs x (float32, as the model is fed):
    He-scaled kernels, BN γ near 1 and β near 0, each BN's moving statistics those of its input
    on x. With dead > 0, that many output channels of every third pointwise convolution are
    dead (see the module docstring)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = layer.get_weights()
        if ws and type(layer).__name__ != "BatchNormalization":
            ws[0] = _trained_kernel(rng, ws[0], type(layer).__name__ == "DepthwiseConv2D")
            ws[1:] = [(rng.normal(size=w.shape) * 0.05).astype(np.float32) for w in ws[1:]]
            layer.set_weights(ws)
    dead_layers = {f"pw{i}" for i in range(2, 14, 3)} if dead else set()  # pw2, pw5, pw8, pw11
    for layer in model.layers:
        if type(layer).__name__ != "BatchNormalization":
            continue
        probe = k3.Model(model.inputs, layer.input)
        z = np.asarray(probe(x, training=False), np.float64).reshape(-1, layer.input.shape[-1])
        gamma = rng.uniform(0.5, 1.5, z.shape[1])
        beta = rng.normal(size=z.shape[1]) * 0.1
        # Statistics near the input's, not equal to them: a BN fitted exactly to random
        # features divides near-constant channels by a tiny deviation and so amplifies any
        # error in them; training does not leave such channels.
        mean = z.mean(axis=0)
        var = np.maximum(z.var(axis=0), VARIANCE_FLOOR * float(np.mean(z.var(axis=0))))
        producer = layer.name.replace("_bn", "")  # pw_bn3 normalizes pw3
        if producer in dead_layers:
            channels = rng.choice(z.shape[1], size=dead, replace=False)
            pw = model.get_layer(producer)
            kernel = pw.get_weights()
            kernel[0][..., channels] = DEAD_KERNEL * rng.normal(size=(*kernel[0].shape[:-1], dead))
            pw.set_weights(kernel)
            mean[channels], var[channels] = 0.0, DEAD_VARIANCE
            beta[channels] = np.abs(beta[channels]) + 0.05  # β is not decayed: a constant output
        layer.set_weights([a.astype(np.float32) for a in (gamma, beta, mean, var)])
