"""The cost model (models/cost.py): layer shapes and weights from config.json agree with what
both Keras build, and every class of hostile file the issue lists is refused through the CLI in
one line, before TensorFlow, within a small address space and writing nothing."""

from __future__ import annotations

import json
import math
import zipfile

import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error, bnpipe_process, limited, tree

from pipeline.cli import cli
from pipeline.models import cost

# Python, numpy and bnpipe's modules before TensorFlow (≈ 150 MB of address space): every
# refusal here happens before TensorFlow is imported, far below the 1.5 GB of RSS.
SMALL_MEMORY = 448 << 20
DEADLINE = 30  # seconds, the bound; each refusal takes about one


def _layers_of(k):
    """A Functional model with every shape rule: dilation, strides, multipliers, padding, pools,
    Add, Concatenate, Reshape, causal Conv1D, Flatten, global pooling."""
    L = k.layers
    i = k.Input((28, 28, 3))
    a = L.Conv2D(8, 3, padding="same", dilation_rate=2)(i)
    b = L.DepthwiseConv2D(3, depth_multiplier=2, strides=2, use_bias=False)(a)
    c = L.SeparableConv2D(16, 3, padding="same")(b)
    d = L.ZeroPadding2D(((1, 2), (3, 4)))(c)
    e = L.MaxPooling2D(3, strides=2, padding="same")(d)
    f = L.AveragePooling2D(2)(L.BatchNormalization()(e))
    g = L.Conv2D(16, 1)(f)
    h = L.Concatenate()([L.Add()([f, g]), g])
    r = L.MaxPooling1D()(L.Conv1D(4, 2, padding="causal")(L.Reshape((-1, 32))(h)))
    o = L.Dense(10)(L.Concatenate()([L.Flatten()(r), L.GlobalAveragePooling2D()(h)]))
    return k.Model(i, o)


@pytest.mark.parametrize("which", ["tf_keras", "keras3"])
def test_shapes_and_weights_agree_with_keras(keras, k3, which):
    model = _layers_of(keras if which == "tf_keras" else k3)
    seen = {}
    original = cost.Cost.tensor

    def record(self, shape, label):
        seen[label.split("'")[1]] = shape
        return original(self, shape, label)

    cost.Cost.tensor = record
    try:
        found = cost.model_cost(model)
    finally:
        cost.Cost.tensor = original
    truth = {layer.name: tuple(layer.output.shape[1:]) for layer in model.layers}
    assert seen == truth
    assert found.weights == model.count_params()
    outputs = sum(math.prod(s) for s in truth.values())
    # Beyond the outputs: the dilated convolution's padded input, the separable's depthwise part.
    assert found.sample_bytes > 4 * outputs
    assert cost.batch_that_fits(model, 1024) == 1024


def test_batch_shrinks_to_fit_the_budget():
    side = 512  # 512 × 512 × 8 floats: 8 MiB a sample, 128 samples a GiB
    layer = {
        "class_name": "InputLayer",
        "config": {"name": "x", "batch_shape": [None, side, side, 8]},
    }
    dense = {"class_name": "Dense", "config": {"name": "d", "units": 8}}
    config = {"class_name": "Sequential", "config": {"layers": [layer, dense]}}
    per_sample = cost.model_cost(config).sample_bytes
    assert per_sample == 2 * side * side * 8 * 4
    assert cost.batch_that_fits(config, 1024) == cost.ACTIVATION_BUDGET // per_sample < 1024
    assert cost.batch_that_fits(config, 3) == 3


# --- hostile files: each class of the issue, refused before TensorFlow -------------------------


@pytest.fixture(scope="module")
def base_members(tmp_path_factory):
    """The members of a small Keras 3 file (conv, BN, depthwise, dense) to edit."""
    from pipeline.models.keras3_file import keras3

    k3 = keras3()
    L = k3.layers
    model = k3.Sequential(
        [
            k3.Input((8, 8, 1)),
            L.Conv2D(4, 3, padding="same"),
            L.BatchNormalization(),
            L.ReLU(),
            L.DepthwiseConv2D(3, padding="same"),
            L.GlobalAveragePooling2D(),
            L.Dense(10),
        ]
    )
    path = tmp_path_factory.mktemp("base") / "base.keras"
    model.save(path)
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _cfg(layers, i):
    return layers[i]["config"]


def _mlp(layers, inputs: int, widths: list[int]):
    """Replace the layers by Input(inputs) → Dense(w) for w in widths, none of them built."""
    dense = {k: v for k, v in layers[-1].items() if k != "build_config"}
    first = layers[0]
    first["config"]["batch_shape"] = [None, inputs]
    layers[:] = [first]
    for i, width in enumerate(widths):
        layers.append({**dense, "config": {**dense["config"], "name": f"d{i}", "units": width}})


def _insert_zero_padding(layers, pad):
    entry = json.loads(json.dumps(layers[3]))  # the ReLU's entry as a template
    entry.pop("build_config", None)
    entry.update(class_name="ZeroPadding2D", config={"name": "pad", "padding": pad})
    layers.insert(1, entry)


def _too_many(weights: int) -> str:
    return f"declares {weights:,} weights (at most {cost.MAX_WEIGHTS:,})"


BUDGET = "GiB of activations (at most 1.0 GiB: 32 MiB a sample); bnpipe takes small"
HOSTILE = {
    "epsilon-inf": (lambda ls: _cfg(ls, 2).update(epsilon=math.inf), "epsilon = inf"),
    "epsilon-nan": (lambda ls: _cfg(ls, 2).update(epsilon=math.nan), "epsilon = nan"),
    "momentum-inf": (lambda ls: _cfg(ls, 2).update(momentum=-math.inf), "momentum = -inf"),
    "1000-axes": (
        lambda ls: _cfg(ls, 0).update(batch_shape=[None] + [1] * 999),
        "declares an input of 1,000 axes (at most 6)",
    ),
    "batch-axis-0": (
        lambda ls: _cfg(ls, 0).update(batch_shape=[0, 8, 8, 1]),
        "declares a batch axis of 0",
    ),
    "input-axis-0": (
        lambda ls: _cfg(ls, 0).update(batch_shape=[None, 8, 0, 1]),
        "declares an input axis = 0 (from 1 to 1,048,576)",
    ),
    "dilation-2**31": (
        lambda ls: _cfg(ls, 1).update(dilation_rate=[2**31, 2**31]),
        "declares dilation_rate = 2,147,483,648 (from 1 to 1,048,576)",
    ),
    "dilation-huge": (
        lambda ls: _cfg(ls, 1).update(dilation_rate=[100_000, 100_000]),
        BUDGET,
    ),
    "dilation-valid-empty": (
        lambda ls: _cfg(ls, 1).update(dilation_rate=[4, 4], padding="valid"),
        "spans 9 values in axis 1 of an input of 8 without padding: its output would be empty",
    ),
    "zero-padding-3000": (
        lambda ls: _insert_zero_padding(ls, 3000),
        BUDGET,
    ),
    "activations-1024x1024x64": (
        lambda ls: _cfg(ls, 0).update(batch_shape=[None, 1024, 1024, 64]),
        BUDGET,
    ),
    "dense-1e6x1024-unbuilt": (
        lambda ls: _mlp(ls, 1_000_000, [1024, 10]),
        _too_many(1_000_000 * 1024 + 1024 + 1024 * 10 + 10),
    ),
    "weights-bomb-3.5GB": (
        lambda ls: _mlp(ls, 8000, [8000] * 14 + [10]),
        _too_many(14 * (8000 * 8000 + 8000) + 8000 * 10 + 10),
    ),
    "depthwise-multiplier-1e7": (
        lambda ls: _cfg(ls, 4).update(depth_multiplier=10_000_000),
        "declares depth_multiplier = 10,000,000 (from 1 to 65,536)",
    ),
    "depthwise-multiplier-float": (
        lambda ls: _cfg(ls, 4).update(depth_multiplier=1e7),
        "declares depth_multiplier = 10000000.0, not an integer",
    ),
    "reshape-1000-axes": (
        lambda ls: (
            _cfg(ls, 0).update(batch_shape=[None, 64])
            or ls.insert(
                1,
                {
                    **ls[3],
                    "class_name": "Reshape",
                    "config": {"name": "r", "target_shape": [1] * 999},
                },
            )
        ),
        "declares target_shape of 999 axes (at most 5 axes)",
    ),
}


# The classes that took gigabytes before the refusal run in a child process with a small address
# space; the others (a value TensorFlow cannot represent) are refused in-process alike.
IN_A_CHILD = {
    "activations-1024x1024x64",
    "dense-1e6x1024-unbuilt",
    "depthwise-multiplier-1e7",
    "dilation-huge",
    "weights-bomb-3.5GB",
    "zero-padding-3000",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_model_is_one_line_in_bounded_memory(base_members, tmp_path, case):
    edit, fragment = HOSTILE[case]
    config = json.loads(base_members["config.json"])
    edit(config["config"]["layers"])
    path = tmp_path / f"{case}.keras"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in base_members.items():
            zf.writestr(name, json.dumps(config) if name == "config.json" else data)
    out = tmp_path / "a"
    args = ["fold", "--model", path, "--artifacts", out]
    if case in IN_A_CHILD:
        result = bnpipe_process(
            *args, timeout=DEADLINE, preexec_fn=limited(address_space=SMALL_MEMORY)
        )
        assert result.exit_code == 2, result.stderr
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
        assert fragment in result.stderr, result.stderr
    else:
        result = CliRunner().invoke(cli, [str(a) for a in args], prog_name="bnpipe")
        assert_one_line_error(result, fragment=fragment)
    assert tree(out) == {}


def _sequential_built_from_the_model(config, tmp_path):
    """No InputLayer: Keras 3 builds the Sequential from its own build_config."""
    layers = config["config"]["layers"]
    _mlp(layers, 1, [1024, 10])
    del layers[0]
    config["build_config"] = {"input_shape": [None, 1_000_000]}


def _functional_orphan_built(config, tmp_path):
    """Dense layers no node calls, each built (weights allocated) from its build_config alone:
    each within the bound on one layer, together over MAX_WEIGHTS."""
    from pipeline.models.keras3_file import keras3

    k3 = keras3()
    i = k3.Input((8,))
    k3.Model(i, k3.layers.Dense(10)(i)).save(tmp_path / "functional.keras")
    with zipfile.ZipFile(tmp_path / "functional.keras") as zf:
        functional = json.loads(zf.read("config.json"))
    for i in range(3):
        orphan = json.loads(json.dumps(functional["config"]["layers"][1]))
        orphan["config"].update(name=f"orphan{i}", units=1024)
        if "name" in orphan:  # Keras 3 names an entry twice: the two must agree (models/dag.py)
            orphan["name"] = f"orphan{i}"
        orphan.update(inbound_nodes=[], build_config={"input_shape": [None, 60_000]})
        functional["config"]["layers"].append(orphan)
    config.clear()
    config.update(functional)


@pytest.mark.parametrize(
    "build", [_sequential_built_from_the_model, _functional_orphan_built], ids=["seq", "orphan"]
)
def test_dense_layers_built_but_never_called(base_members, tmp_path, build):
    config = json.loads(base_members["config.json"])
    build(config, tmp_path)
    path = tmp_path / "unbuilt.keras"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in base_members.items():
            zf.writestr(name, json.dumps(config) if name == "config.json" else data)
    out = tmp_path / "a"
    result = bnpipe_process(
        "fold", "--model", path, "--artifacts", out,
        timeout=DEADLINE, preexec_fn=limited(address_space=SMALL_MEMORY),
    )  # fmt: skip
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert "weights (at most" in result.stderr, result.stderr
    assert tree(out) == {}
