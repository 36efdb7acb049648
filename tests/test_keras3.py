"""keras3.py: Keras 3 models built here (never downloaded) are read safely, translated into
tf_keras with identical weight bits and outputs equal to float32 round-off, refused by name when
bnpipe cannot translate them, and written back as Keras 3 files a Keras 3 user loads as they are.

Keras 3 runs in this process beside tf_keras (TF_USE_LEGACY_KERAS=1, set by the pipeline package).
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.errors import ModelError
from pipeline.models.configcheck import SUPPORTED_LAYERS, saved_by
from pipeline.models.keras3 import to_keras3, to_tf_keras
from pipeline.models.keras3_file import load_keras3
from pipeline.models.translation import (
    TRANSLATION_RTOL,
    probe_inputs,
    save_keras3,
    translate_file,
    translation_check,
)

SUPPORTED = ", ".join(SUPPORTED_LAYERS)


def _nontrivial_bn(model, seed: int) -> None:
    """Give every BN of `model` statistics and affine parameters far from their initial values
    (mean 0, variance 1, γ 1, β 0), as training would: a translation that dropped or swapped any
    of them changes the outputs."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ != "BatchNormalization":
            continue
        n = layer.moving_mean.shape[0]
        layer.moving_mean.assign(rng.normal(0.0, 1.0, n).astype(np.float32))
        layer.moving_variance.assign(rng.uniform(0.2, 3.0, n).astype(np.float32))
        if layer.scale:
            layer.gamma.assign(rng.uniform(0.5, 2.0, n).astype(np.float32))
        if layer.center:
            layer.beta.assign(rng.normal(0.0, 0.5, n).astype(np.float32))


def _assert_same_weights(a, b) -> None:
    """Every layer of `a` has, in `b`, a layer of the same name whose weights have the same bits.

    Compared by position (the supported classes create their variables in the same order in both
    Keras), independently of the translation's own match by name."""
    for layer in a.layers:
        wa, wb = layer.get_weights(), b.get_layer(layer.name).get_weights()
        assert len(wa) == len(wb), layer.name
        for x, y in zip(wa, wb, strict=True):
            assert x.dtype == y.dtype == np.float32, layer.name
            assert np.array_equal(x.view(np.uint32), y.view(np.uint32)), layer.name


def _names(model) -> list[str]:
    return [layer.name for layer in model.layers]


# --- the models -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def digits_arrays():
    """scikit-learn's bundled 8×8 digits, scaled to [0, 1] as bnpipe does: (1797, 64) float32."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


@pytest.fixture(scope="session")
def mlp3(k3, digits_arrays):
    """The seed article's MLP in Keras 3, trained 2 epochs on digits (≈ 110 steps of batch 32),
    enough for the BN moving statistics (momentum 0.99) to leave their initial values."""
    L = k3.layers
    k3.utils.set_random_seed(0)
    model = k3.Sequential(
        [
            k3.Input((64,), name="pixels"),
            L.Dense(64, name="dense_1"),
            L.BatchNormalization(name="bn_1"),
            L.ReLU(name="relu_1"),
            L.Dense(64, name="dense_2"),
            L.BatchNormalization(name="bn_2"),
            L.ReLU(name="relu_2"),
            L.Dense(10, activation="softmax", name="classes"),
        ],
        name="bn_mlp",
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = digits_arrays
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    return model


def _functional(k3):
    """BN first, a bias-free Dense, BN(center=False), Dropout, Dense(relu) → BN → Dense, with a
    tensor feeding three consumers, a Concatenate and every ReLU / LeakyReLU / Softmax option."""
    L = k3.layers
    k3.utils.set_random_seed(1)
    x = k3.Input((20,), name="features")
    h = L.BatchNormalization(epsilon=1e-2, momentum=0.9, name="bn_in")(x)
    h = L.Dense(16, use_bias=False, name="dense_nobias")(h)
    h = L.BatchNormalization(center=False, name="bn_nocenter")(h)
    h = L.Dropout(0.3, name="dropout")(h)  # h feeds dense_relu, leaky and concat
    a = L.Dense(16, activation="relu", name="dense_relu")(h)
    a = L.BatchNormalization(scale=False, epsilon=1e-5, name="bn_noscale")(a)
    b = L.LeakyReLU(negative_slope=0.1, name="leaky")(h)
    c = L.Concatenate(name="concat")([a, b, h])
    c = L.ReLU(max_value=6.0, negative_slope=0.05, threshold=0.1, name="relu_capped")(c)
    c = L.Dense(12, name="dense_3")(c)
    c = L.Activation("tanh", name="tanh")(c)
    logits = L.Dense(5, name="logits")(c)
    out = L.Softmax(name="probabilities")(logits)
    model = k3.Model(x, out, name="functional_bn")
    _nontrivial_bn(model, seed=1)
    return model


def _cnn(k3):
    """Conv2D + BN + ReLU, DepthwiseConv2D(depth_multiplier=2) + BN + ReLU6, SeparableConv2D,
    a residual Add, max and average pooling, both global poolings, Concatenate, Dense softmax.
    Input (batch, 12, 12, 3)."""
    L = k3.layers
    k3.utils.set_random_seed(2)
    x = k3.Input((12, 12, 3), name="image")
    h = L.ZeroPadding2D(1, name="pad")(x)  # (14, 14, 3)
    h = L.Conv2D(8, 3, name="conv")(h)  # (12, 12, 8)
    h = L.BatchNormalization(name="bn_conv")(h)
    h = L.ReLU(name="relu")(h)
    d = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", use_bias=False, name="dw")(h)
    d = L.BatchNormalization(name="bn_dw")(d)  # (12, 12, 16)
    d = L.ReLU(max_value=6.0, name="relu6")(d)
    s = L.SeparableConv2D(16, 3, padding="same", activation="relu", name="sep")(d)
    r = L.Add(name="residual")([s, d])  # (12, 12, 16)
    p1 = L.MaxPooling2D(2, name="maxpool")(r)  # (6, 6, 16)
    p2 = L.AveragePooling2D(2, name="avgpool")(r)
    g = L.Concatenate(name="concat")(
        [L.GlobalAveragePooling2D(name="gap")(p1), L.GlobalMaxPooling2D(name="gmp")(p2)]
    )  # (32,)
    out = L.Dense(10, activation="softmax", name="classes")(g)
    model = k3.Model(x, out, name="small_cnn")
    _nontrivial_bn(model, seed=2)
    return model


def _conv1d(k3):
    """The 1-D layers, Flatten and Reshape, and two outputs. Input (batch, 16, 2)."""
    L = k3.layers
    k3.utils.set_random_seed(3)
    x = k3.Input((16, 2), name="signal")
    h = L.Conv1D(4, 3, padding="causal", name="conv1d")(x)  # (16, 4)
    h = L.BatchNormalization(name="bn")(h)
    h = L.MaxPooling1D(2, name="maxpool")(h)  # (8, 4)
    h = L.AveragePooling1D(2, name="avgpool")(h)  # (4, 4)
    flat = L.Flatten(name="flatten")(L.Reshape((2, 8), name="reshape")(h))  # (16,)
    g = L.Concatenate(name="concat")([L.GlobalAveragePooling1D(name="gap")(h), flat])
    score = L.Dense(3, activation="gelu", name="score")(g)
    gate = L.Activation("sigmoid", name="gate")(score)
    model = k3.Model(x, [score, gate], name="signal_1d")
    _nontrivial_bn(model, seed=3)
    return model


BUILDERS = {"functional": _functional, "cnn": _cnn, "conv1d": _conv1d}


@pytest.fixture(scope="session")
def saved(k3, mlp3, tmp_path_factory):
    """Every test model saved by Keras 3, and the MLP saved by tf_keras: {name: path}."""
    from pipeline.core.tfenv import keras

    out = tmp_path_factory.mktemp("keras3_models")
    paths = {"mlp": out / "mlp.keras"}
    mlp3.save(paths["mlp"])
    for name, build in BUILDERS.items():
        paths[name] = out / f"{name}.keras"
        build(k3).save(paths[name])
    tk = keras()
    paths["tf_keras"] = out / "tf_keras.keras"
    tk.Sequential([tk.Input((4,)), tk.layers.Dense(2)]).save(paths["tf_keras"])
    return paths


@pytest.fixture(scope="session")
def translated(saved):
    """translated(kind): translate_file of that saved model on probe inputs, once per session.
    Read-only: a test that changes a model translates its own."""
    import functools

    return functools.cache(lambda kind: translate_file(saved[kind]))


# --- which Keras saved a file ---------------------------------------------------------------------


def test_saved_by_and_import_need_no_tensorflow(saved):
    """In a fresh interpreter: importing the module and reading both files import no Keras or
    TensorFlow (bnpipe --help must stay fast)."""
    code = (
        "import sys, pipeline.models.configcheck as k\n"
        f"print(k.saved_by({str(saved['mlp'])!r}), k.saved_by({str(saved['tf_keras'])!r}))\n"
        "heavy = {'tensorflow', 'keras', 'tf_keras'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split("\n")[:2] == ["keras3 keras2", "[]"]


def _rewrite(src: Path, dest: Path, **members: bytes | None) -> Path:
    """A copy of the zip `src` with members replaced (bytes) or left out (None)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            if info.filename in members:
                if members[info.filename] is not None:
                    zout.writestr(info.filename, members[info.filename])
            else:
                zout.writestr(info, zin.read(info))
    return dest


def test_saved_by_reads_the_config_when_metadata_is_missing(saved, tmp_path):
    bare = _rewrite(saved["cnn"], tmp_path / "bare.keras", **{"metadata.json": None})
    assert saved_by(bare) == "keras3"


def test_saved_by_refuses_unreadable_and_contradictory_files(saved, tmp_path):
    not_zip = tmp_path / "text.keras"
    not_zip.write_text("hello")
    with pytest.raises(
        ModelError, match=r"text\.keras is not a Keras \.keras file \(expected a zip"
    ):
        saved_by(not_zip)
    no_config = _rewrite(saved["mlp"], tmp_path / "noconfig.keras", **{"config.json": None})
    with pytest.raises(ModelError, match=r"has no config\.json; it is not a Keras \.keras file"):
        saved_by(no_config)
    lying = _rewrite(
        saved["mlp"], tmp_path / "lying.keras", **{"metadata.json": b'{"keras_version": "2.21.0"}'}
    )
    with pytest.raises(ModelError) as info:
        saved_by(lying)
    assert str(info.value) == (
        f"{lying} is inconsistent: metadata.json (keras_version 2.21.0) says keras2, "
        "config.json's form says keras3"
    )


# --- translation: same architecture, same weight bits, same outputs ------------------------------


def test_the_article_mlp_translates_exactly(mlp3, translated, digits_arrays, k3, keras):
    bn = mlp3.get_layer("bn_1")
    # Trained: the statistics are the data's, not the initial zeros and ones.
    assert np.max(np.abs(bn.moving_mean.numpy())) > 0.1
    assert np.max(np.abs(bn.moving_variance.numpy() - 1.0)) > 0.1
    t = translated("mlp")
    assert isinstance(t.model3, k3.Sequential) and isinstance(t.model2, keras.Sequential)
    assert _names(t.model2) == _names(mlp3) == _names(t.model3)
    assert t.model2.inputs[0].name.startswith("pixels")
    _assert_same_weights(mlp3, t.model2)
    assert t.check.max_rel_diff <= TRANSLATION_RTOL
    assert set(t.check.layer_rel_diffs) == set(_names(mlp3))
    # On real digits too, and the decision is the same for every sample.
    x = digits_arrays[0][:512]
    assert translation_check(t.model3, t.model2, x).max_rel_diff <= TRANSLATION_RTOL
    assert np.array_equal(np.argmax(mlp3(x), 1), np.argmax(t.model2(x), 1))


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_functional_graphs_translate_exactly(kind, translated, keras):
    """Residual Add, Concatenate, multi-consumer tensors, two outputs: loaded from the Keras 3
    file, translated, and checked at every layer and output on probe inputs in [0, 1)."""
    t = translated(kind)
    assert type(t.model2) is not keras.Sequential and type(t.model2).__name__ == "Functional"
    assert _names(t.model2) == _names(t.model3)
    _assert_same_weights(t.model3, t.model2)
    assert t.check.samples == 256
    assert t.check.max_rel_diff <= TRANSLATION_RTOL
    assert len(t.check.output_rel_diffs) == (2 if kind == "conv1d" else 1)


def test_shared_layers_and_two_inputs_translate(k3, keras):
    """A Dense called on two tensors stays one layer with two calls (one set of weights), in
    both directions; two inputs and two outputs keep their order."""
    L = k3.layers
    k3.utils.set_random_seed(4)
    a, b = k3.Input((6,), name="a"), k3.Input((6,), name="b")
    shared = L.Dense(4, name="shared")
    second = shared(L.ReLU(name="relu")(b))
    model3 = k3.Model([a, b], [L.Add(name="add")([shared(a), second]), second], name="twins")
    model2 = to_tf_keras(model3)
    assert len(model2.get_layer("shared").inbound_nodes) == 2
    assert [t.name.split(":")[0] for t in model2.inputs] == ["a", "b"]
    x = probe_inputs(model3)
    check = translation_check(model3, model2, x)
    assert len(check.output_rel_diffs) == 2 and check.max_rel_diff <= TRANSLATION_RTOL
    # A layer with two calls has no single output to compare: the outputs cover it.
    assert set(check.layer_rel_diffs) == {"relu", "add"}
    back = to_keras3(model2)
    assert _names(back) == _names(model3) and back.count_params() == model3.count_params()
    assert translation_check(model3, back, x).max_rel_diff <= TRANSLATION_RTOL


def test_layer_options_survive_translation(translated):
    """The options bnpipe cares about reach the tf_keras layers (not only the outputs)."""
    model2 = translated("functional").model2
    assert model2.get_layer("leaky").get_config()["alpha"] == pytest.approx(0.1)
    relu = model2.get_layer("relu_capped").get_config()
    assert (relu["max_value"], relu["negative_slope"], relu["threshold"]) == pytest.approx(
        (6.0, 0.05, 0.1)
    )
    bn = model2.get_layer("bn_in").get_config()
    assert (bn["epsilon"], bn["momentum"]) == (1e-2, 0.9)
    assert model2.get_layer("bn_nocenter").center is False
    assert model2.get_layer("bn_noscale").scale is False
    assert model2.get_layer("dense_nobias").use_bias is False
    assert model2.get_layer("dropout").rate == 0.3


def test_a_wrong_translation_fails_the_check(translated):
    """Negative control: a 1 % error in one BN channel's variance (≈ 0.5 % in that channel's
    output) is caught at that BN, at each layer after it and at the output."""
    model3 = translated("functional").model3
    model2 = to_tf_keras(model3)  # its own copy, to be spoiled
    weights = model2.get_layer("bn_noscale").get_weights()  # β, mean, variance (scale=False)
    weights[-1][3] *= 1.01
    model2.get_layer("bn_noscale").set_weights(weights)
    with pytest.raises(ModelError) as info:
        translation_check(model3, model2, probe_inputs(model3))
    message = str(info.value)
    assert message.startswith("translation differs from the original: model output: ")
    assert "layer 'bn_noscale': relative difference" in message
    assert "layer 'dense_nobias'" not in message  # upstream of the error: still equal


# --- refusals -------------------------------------------------------------------------------------


def _lambda(k3):
    x = k3.Input((4,), name="x")
    return k3.Model(x, k3.layers.Lambda(lambda t: t * 2.0, name="double")(x))


def _lstm(k3):
    return k3.Sequential([k3.Input((5, 4)), k3.layers.LSTM(3, name="lstm_1"), k3.layers.Dense(2)])


def _embedding(k3):
    L = k3.layers
    return k3.Sequential([k3.Input((5,)), L.Embedding(10, 3, name="emb"), L.Flatten(), L.Dense(2)])


def _custom(k3):
    @k3.saving.register_keras_serializable(package="thirdparty")
    class Scale(k3.layers.Layer):
        def call(self, inputs):
            return inputs * 2.0

    return k3.Sequential([k3.Input((4,)), k3.layers.Dense(3, name="d"), Scale(name="scale")])


REFUSED = {
    "lambda": (_lambda, "'double' (Lambda)", "'double' (Lambda)"),
    "lstm": (_lstm, "'lstm_1' (LSTM)", "'lstm_1' (LSTM)"),
    "embedding": (_embedding, "'emb' (Embedding)", "'emb' (Embedding)"),
    # The file gives the registered name; the object its class.
    "custom": (
        _custom,
        f"'scale' (thirdparty>Scale, a custom class from module {__name__!r})",
        f"'scale' (Scale, a custom class from module {__name__!r})",
    ),
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_unsupported_layers_are_refused_by_name(kind, k3, tmp_path):
    build, in_file, in_memory = REFUSED[kind]
    model = build(k3)
    path = tmp_path / f"{kind}.keras"
    model.save(path)
    with pytest.raises(ModelError) as info:
        load_keras3(path)
    if kind == "lambda":  # named as carrying code, whichever Keras wrote the file
        assert str(info.value) == (
            f"{path} holds Lambda layer(s) double, which carry Python code; bnpipe refuses them "
            "(replace them with built-in layers)"
        )
    else:
        assert str(info.value) == (
            f"{path}: layer {in_file} cannot be exported; supported: {SUPPORTED}"
        )
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    with pytest.raises(ModelError) as info:
        to_tf_keras(model)
    assert str(info.value) == f"layer {in_memory} cannot be exported; supported: {SUPPORTED}"


def test_custom_classes_are_refused_before_deserializing(k3, tmp_path):
    """The registered class is importable here, so Keras would load the file: bnpipe's refusal
    comes from reading config.json first, not from a failed deserialization."""
    path = tmp_path / "custom.keras"
    _custom(k3).save(path)
    assert k3.models.load_model(path, safe_mode=True).get_layer("scale") is not None
    with pytest.raises(ModelError, match=r"'scale' \(thirdparty>Scale, a custom class from"):
        load_keras3(path)


def test_custom_functions_and_names_are_refused(k3, tmp_path):
    L = k3.layers

    @k3.saving.register_keras_serializable(package="thirdparty")
    def doubled(x):
        return 2.0 * x

    path = tmp_path / "fn.keras"
    k3.Sequential([k3.Input((4,)), L.Dense(3, activation=doubled, name="d")]).save(path)
    with pytest.raises(ModelError) as info:
        load_keras3(path)
    assert str(info.value) == (
        f"{path}: layer 'd' (Dense) holds the custom function 'thirdparty>doubled'; "
        "bnpipe loads only Keras's own objects (no custom code)"
    )
    with pytest.raises(ModelError, match=r"does not end in \.keras"):
        load_keras3(tmp_path / "model.h5")


def _functional_config(**layer) -> bytes:
    layer = {"module": "keras.layers", "class_name": "Dense", "registered_name": None, **layer}
    model = {"module": "keras.src.models.functional", "class_name": "Functional"}
    return json.dumps({**model, "config": {"name": "m", "layers": [layer]}}).encode()


CRAFTED = {
    "not json": (b"{", "cannot read config.json (Expecting property name"),
    "deep": (b"[" * 100_000, "cannot read config.json"),
    "deep but parseable": (b"[" * 200 + b"]" * 200, "config.json (nested deeper than 64 levels)"),
    "a list": (b"[]", "holds a 'None' model (module 'None')"),
    "another package's model": (
        b'{"class_name": "Functional", "module": "keras_hub.models", "config": {}}',
        "holds a 'Functional' model (module 'keras_hub.models'); bnpipe translates Keras",
    ),
    "an object from os": (
        _functional_config(
            config={"name": "d", "kernel_initializer": {"class_name": "system", "module": "os"}}
        ),
        "layer 'd' (Dense) holds the custom object system, a custom class from module 'os'",
    ),
    "a lying module": (
        _functional_config(registered_name="evil>Dense", config={"name": "d"}),
        "layer 'd' (evil>Dense, a custom class from module 'keras.layers') cannot be exported",
    ),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_configs_are_refused_in_one_line(case, saved, tmp_path):
    """config.json is untrusted: whatever it holds, load_keras3 answers with one ModelError line
    before Keras sees the file."""
    body, expected = CRAFTED[case]
    path = _rewrite(saved["mlp"], tmp_path / "crafted.keras", **{"config.json": body})
    with pytest.raises(ModelError) as info:
        load_keras3(path)
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "layer, message",
    [
        (
            lambda L: L.Dense(3, activation="hard_sigmoid", name="d"),
            "layer 'd' (Dense) has activation 'hard_sigmoid', which bnpipe does not translate",
        ),
        (
            lambda L: L.Dense(3, dtype="mixed_float16", name="d"),
            "layer 'd' (Dense) has dtype policy 'mixed_float16'; bnpipe translates float32 "
            "models only",
        ),
    ],
    ids=["hard_sigmoid", "mixed_float16"],
)
def test_options_without_an_exact_equivalent_are_refused(layer, message, k3):
    """Keras 3's hard_sigmoid is relu6(x + 3)/6, tf_keras's clip(0.2·x + 0.5): same name, other
    maths. Mixed precision would change every weight's dtype."""
    model = k3.Sequential([k3.Input((4,)), layer(k3.layers)])
    with pytest.raises(ModelError) as info:
        to_tf_keras(model)
    assert str(info.value).startswith(message)


# --- back to Keras 3 ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mlp", *sorted(BUILDERS)])
def test_round_trip_to_a_keras3_file(kind, translated, k3, tmp_path):
    """tf_keras translation → Keras 3 file → plain keras.models.load_model in safe mode: the same
    outputs as the tf_keras model, and the original's class, names and weight bits; the same
    bytes when saved again."""
    original, model2 = translated(kind).model3, translated(kind).model2
    path = save_keras3(to_keras3(model2), tmp_path / "back.keras")
    loaded = k3.models.load_model(path, safe_mode=True)
    assert type(loaded) is type(original)
    assert _names(loaded) == _names(original)
    _assert_same_weights(original, loaded)
    assert saved_by(path) == "keras3"
    x = probe_inputs(original)
    assert translation_check(model2, loaded, x).max_rel_diff <= TRANSLATION_RTOL

    again = save_keras3(to_keras3(model2), tmp_path / "again.keras")
    assert again.read_bytes() == path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        assert "date_saved" not in json.loads(zf.read("metadata.json"))
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        config = json.loads(zf.read("config.json"))
    ids = _shared_ids(config)  # numbered, not id()s (see the next test)
    assert sorted(set(ids)) == list(range(1, len(set(ids)) + 1))


def test_save_keras3_takes_object_ids_out(mlp3, k3, tmp_path):
    """A model built in Keras 3 shares its dtype policy between layers, and Keras writes that
    object's id() (a memory address, new in every process) into config.json: save_keras3 numbers
    shared objects 1, 2, … instead, and Keras still loads the model."""
    mlp3.save(tmp_path / "plain.keras")
    with zipfile.ZipFile(tmp_path / "plain.keras") as zf:
        raw = _shared_ids(json.loads(zf.read("config.json")))
    assert raw and min(raw) > 1000  # addresses
    path = save_keras3(mlp3, tmp_path / "ours.keras")
    assert save_keras3(mlp3, tmp_path / "again.keras").read_bytes() == path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        ids = _shared_ids(json.loads(zf.read("config.json")))
    assert len(ids) == len(raw) and sorted(set(ids)) == list(range(1, len(set(raw)) + 1))
    _assert_same_weights(mlp3, k3.models.load_model(path, safe_mode=True))


def _shared_ids(node) -> list[int]:
    if isinstance(node, dict):
        own = [node["shared_object_id"]] if "shared_object_id" in node else []
        return own + [i for v in node.values() for i in _shared_ids(v)]
    if isinstance(node, list):
        return [i for v in node for i in _shared_ids(v)]
    return []


def test_folded_model_is_written_back_as_keras3(mlp3, digits_arrays, k3, tmp_path):
    """The fold stage's path for a Keras 3 input: translate, fold (tf_keras), write back with
    to_keras3; a Keras 3 user loads the folded file and gets the original's outputs."""
    from pipeline.core.config import FOLD_RTOL
    from pipeline.stages.fold import fold_model

    folded2, pairs, skipped = fold_model(to_tf_keras(mlp3), strict=True)
    assert [(p.layer, p.bn) for p in pairs] == [("dense_1", "bn_1"), ("dense_2", "bn_2")]
    assert not skipped
    path = save_keras3(to_keras3(folded2), tmp_path / "folded.keras")
    folded3 = k3.models.load_model(path, safe_mode=True)
    assert _names(folded3) == ["dense_1", "relu_1", "dense_2", "relu_2", "classes"]
    x = digits_arrays[0][:512]
    a, b = np.asarray(mlp3(x), np.float64), np.asarray(folded3(x), np.float64)
    assert np.max(np.abs(a - b)) / np.max(np.abs(a)) <= FOLD_RTOL


# --- quantization-aware training accepts the translation ------------------------------------------


def test_tfmot_quantizes_the_translation(mlp3, digits_arrays):
    """tensorflow-model-optimization refuses Keras 3 models; the translation (folded, as export
    gives it) is wrapped layer by layer and runs."""
    import tensorflow_model_optimization as tfmot

    from pipeline.stages.fold import fold_model

    folded2, _, _ = fold_model(to_tf_keras(mlp3), strict=True)
    qat = tfmot.quantization.keras.quantize_model(folded2)
    wrapped = [layer.layer.name for layer in qat.layers if hasattr(layer, "quantize_config")]
    assert wrapped == ["dense_1", "relu_1", "dense_2", "relu_2", "classes"]
    out = np.asarray(qat(digits_arrays[0][:32], training=False))
    assert out.shape == (32, 10) and np.allclose(out.sum(axis=1), 1.0, atol=1e-5)


def _two_outputs(k3):
    L = k3.layers
    x = k3.Input((64,), name="pixels")
    h = L.ReLU(name="relu")(L.BatchNormalization(name="bn")(L.Dense(16, name="dense")(x)))
    heads = [L.Dense(10, activation="softmax", name="a")(h), L.Dense(3, name="b")(h)]
    return k3.Model(x, heads, name="two_heads")


def _spatial_output(keras):
    L = keras.layers
    return keras.Sequential(
        [keras.Input((8, 8, 1)), L.Conv2D(10, 3, name="conv"), L.BatchNormalization(name="bn")]
    )


@pytest.mark.parametrize(
    ("build", "commands", "fragments"),
    [
        (
            lambda k3, keras: _two_outputs(k3),
            ("run", "export"),
            ("1 input(s) and 2 output(s) ((None, 10), (None, 3))", "take one input and one output"),
        ),
        # One output of any shape is taken (a reconstruction, a raw output: analysis/tasks.py);
        # with class ids as data, `run` cannot tell which task it is and asks for it.
        (
            lambda k3, keras: _spatial_output(keras),
            ("run",),
            ("cannot tell the task of output bn (shape (6, 6, 10)", "--task bn="),
        ),
    ],
    ids=["keras3-two-outputs", "tf_keras-spatial-output"],
)
def test_models_the_stages_cannot_judge_are_refused_in_one_line(
    build, commands, fragments, k3, keras, tmp_path
):
    """`run --model` refuses before it writes anything, and `export --model` the same way for
    several outputs (fold takes any graph: test_fold.py::test_run_fold_on_functional_layouts)."""
    from click.testing import CliRunner
    from helpers import assert_one_line_error

    from pipeline.cli import cli

    path = tmp_path / "model.keras"
    build(k3, keras).save(path)
    for command in commands:
        out = tmp_path / command
        args = [command, "--model", str(path), "--artifacts", str(out), "-q"]
        result = CliRunner().invoke(cli, args)
        message = assert_one_line_error(result)
        assert all(f in message for f in fragments), message
        # Several outputs are refused before anything is written; an output whose task only
        # the user can say is asked for by verify, after the stages before it have landed.
        written = [p for p in out.rglob("*") if p.suffix in (".keras", ".json", ".tflite")]
        assert not written or "--task" in message
        assert not (out / "verify.json").exists()


# --- a model used as a layer: a pretrained base inside a classifier ------------------------------


def _transfer_model(k3, functional_outer: bool, inner_name: str = "c1"):
    """A "pretrained base" (a Sequential of Conv → BN → ReLU) and a Functional block (1×1 Conv →
    BN) called as layers of the classifier, the transfer-learning layout."""
    L = k3.layers
    k3.utils.set_random_seed(7)
    base = k3.Sequential(
        [k3.Input((8, 8, 1)), L.Conv2D(4, 3, name=inner_name), L.BatchNormalization(name="bn1"),
         L.ReLU(name="r1")], name="base")  # fmt: skip
    block_in = k3.Input((6, 6, 4))
    block_out = L.BatchNormalization(name="bn2")(L.Conv2D(4, 1, name="c2")(block_in))
    block = k3.Model(block_in, block_out, name="block")
    head = [L.GlobalAveragePooling2D(name="gap"), L.Dense(10, activation="softmax", name="out")]
    if functional_outer:
        x = k3.Input((8, 8, 1), name="img")
        model = k3.Model(x, head[1](head[0](block(base(x)))), name="transfer")
    else:
        model = k3.Sequential([k3.Input((8, 8, 1)), base, block, *head], name="transfer")
    for inner in (base, block):
        _nontrivial_bn(inner, seed=3)
    return model


@pytest.mark.parametrize("functional_outer", [True, False], ids=["functional", "sequential"])
def test_models_inside_a_model_translate_flat_and_exactly(k3, functional_outer):
    model3 = _transfer_model(k3, functional_outer)
    model2 = to_tf_keras(model3)
    names = [layer.name for layer in model2.layers]
    assert names[1:] == ["c1", "bn1", "r1", "c2", "bn2", "gap", "out"]  # no "base" or "block"
    check = translation_check(model3, model2, probe_inputs(model3))
    assert check.max_rel_diff <= TRANSLATION_RTOL
    assert {"c1", "bn1", "c2", "bn2", "out"} <= set(check.layer_rel_diffs)  # probed one by one
    assert [layer.name for layer in model3.layers][-2:] == ["gap", "out"]  # the original kept


def test_a_model_inside_a_model_folds_through_the_cli(k3, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import cli

    path = tmp_path / "transfer.keras"
    _transfer_model(k3, functional_outer=True).save(path)
    out = tmp_path / "a"
    result = CliRunner().invoke(cli, ["fold", "--model", str(path), "--artifacts", str(out), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "fold.json").read_text())["report"]
    assert report["passed"] and report["output_max_rel_diff"] <= 1e-5
    assert sorted(p["bn"] for p in report["pairs"]) == ["bn1", "bn2"]
    folded = load_keras3(out / "folded.keras")  # the user's Keras, flat, without a BN
    assert not [la for la in folded.layers if type(la).__name__ == "BatchNormalization"]


def test_what_a_model_inside_holds_is_checked_like_the_rest(k3, tmp_path):
    L = k3.layers
    inner = k3.Sequential([k3.Input((64,)), L.Dense(8, name="d"), L.LayerNormalization(name="ln")])
    path = tmp_path / "m.keras"
    k3.Sequential([k3.Input((64,)), inner, L.Dense(10, name="out")]).save(path)
    with pytest.raises(ModelError, match=r"layer 'ln' \(LayerNormalization\) cannot be exported"):
        load_keras3(path)


def test_a_name_inside_and_outside_gets_the_inner_models_name_in_front(k3):
    """A base saved in one session and a head built in another can both hold a "dense"; Keras
    allows it (a name is unique per model), the flat model needs one of them renamed."""
    clash = _transfer_model(k3, functional_outer=True, inner_name="out")  # "out" twice
    model2 = to_tf_keras(clash)
    assert [layer.name for layer in model2.layers][1:4] == ["base_out", "bn1", "r1"]
    assert model2.layers[-1].name == "out"  # the outer model's own keeps its name
    check = translation_check(clash, model2, probe_inputs(clash))
    assert check.max_rel_diff <= TRANSLATION_RTOL and "base_out" in check.layer_rel_diffs


def test_a_tf_keras_model_inside_a_model_is_refused_by_name(keras, tmp_path):
    """tf_keras files are loaded as they are, and a model is not a layer export converts: the
    refusal names it (Keras 3 files are flattened instead)."""
    from pipeline.models.door import load_model

    L = keras.layers
    inner = keras.Sequential([keras.Input((64,)), L.Dense(8), L.BatchNormalization()], name="inner")
    path = tmp_path / "nested.keras"
    keras.Sequential([keras.Input((64,)), inner, L.Dense(10)]).save(path)
    with pytest.raises(ModelError, match=r"layer 'inner' \(Sequential\) cannot be exported"):
        load_model(path)


def test_a_keras_without_the_graph_walk_flattening_uses_is_named(k3, monkeypatch):
    """flatten_nested walks a Functional model with Keras 3's internal _run_through_graph; a
    Keras version without it gets a one-line refusal, not an AttributeError (exit 70)."""
    import keras.src.ops.function as function

    model3 = _transfer_model(k3, functional_outer=True)
    monkeypatch.delattr(function.Function, "_run_through_graph")
    with pytest.raises(ModelError, match=r"^model 'transfer' cannot be flattened with Keras 3"):
        to_tf_keras(model3)
