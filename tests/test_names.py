"""Layer names users write (names.py): renamed to safe ones at the door, for either Keras, and
shown as the user wrote them in the reports; names with control characters refused, escaped."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error, train_and_save, tree

from pipeline.cli import cli
from pipeline.models.names import renamed, safe_names

USER_NAMES = ("hidden layer", "couche_cachée", "sortie finale")

RUN = """
[export]
modes = ["int8"]
qat_epochs = 1
[verify]
targets = ["host-ref"]
# The names are under test here, not the accuracy of a 3-epoch model after one QAT epoch: a
# few of its 360 test samples may change class (0.28 pp each).
max_drop = 3.0
min_agreement = 0.95
[bench]
batch_sizes = [1]
threads = [1]
warmup = 1
runs = 2
rounds = 1
keras_runs = 1
"""


def _mlp(k3, dense: str, bn: str, out: str):
    L = k3.layers
    return k3.Sequential(
        [
            k3.Input((64,)),
            L.Dense(16, name=dense),
            L.BatchNormalization(name=bn),
            L.ReLU(),
            L.Dense(10, activation="softmax", name=out),
        ]
    )


def _with_config(src: Path, dest: Path, edit) -> Path:
    with zipfile.ZipFile(src) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(dest, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dest


def test_safe_names_are_unique_ascii_and_the_rest_is_left_alone():
    layers = [
        {"class_name": "Dense", "name": n, "config": {"name": n}}
        for n in ("hidden layer", "hidden_layer", "couche_cachée", "d")
    ]
    config = {"class_name": "Sequential", "config": {"name": "mon modèle", "layers": layers}}
    names = safe_names(config)
    assert names == {
        "mon modèle": "mon_modele",
        "hidden layer": "hidden_layer_1",  # "hidden_layer" is taken by another layer
        "couche_cachée": "couche_cachee",
    }
    new = renamed(config, names)
    assert [e["config"]["name"] for e in new["config"]["layers"]] == [
        "hidden_layer_1", "hidden_layer", "couche_cachee", "d"
    ]  # fmt: skip
    assert config["config"]["layers"][0]["name"] == "hidden layer"  # not changed


@pytest.mark.parametrize("bad", ["a\x00b", "two\nlines", "\u202eevil"])
def test_a_name_with_control_characters_is_refused_by_position_and_escaped(tmp_path, k3, bad):
    saved = tmp_path / "m.keras"
    _mlp(k3, "d", "bn", "out").save(saved)

    def edit(config):
        layer = config["config"]["layers"][1]
        layer["config"]["name"] = bad

    model = _with_config(saved, tmp_path / "bad.keras", edit)
    out = tmp_path / "a"
    result = CliRunner().invoke(
        cli, ["fold", "--model", str(model), "--artifacts", str(out)], prog_name="bnpipe"
    )
    line = assert_one_line_error(result, fragment="layer 1 (Dense) of the model is named")
    assert repr(bad) in line and line.isprintable(), line
    assert tree(out) == {}


@pytest.mark.slow
def test_names_users_write_go_through_fold_export_and_verify(tmp_path, k3, digits):
    """A Keras 3 MLP whose layers are named `hidden layer`, `couche_cachée`, `sortie finale`:
    `bnpipe run --model` imports, folds, exports and verifies it (exit 0), and fold.json names
    the layers as the user did. The weights are trained under plain names (Keras 3 on TensorFlow
    cannot train with these names either) and copied over."""
    plain = _mlp(k3, "d", "bn", "out")
    train_and_save(k3, plain, digits.x_train, digits.y_train, tmp_path / "plain.keras", epochs=3)
    mine = _mlp(k3, *USER_NAMES)
    mine.set_weights(plain.get_weights())
    mine.save(tmp_path / "mine.keras")
    (tmp_path / "run.toml").write_text(RUN)
    out = tmp_path / "a"
    result = CliRunner().invoke(
        cli,
        ["run", "--model", str(tmp_path / "mine.keras"), "--config", str(tmp_path / "run.toml"),
         "--artifacts", str(out), "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "verdict: PASS" in result.output
    pairs = json.loads((out / "fold.json").read_text())["report"]["pairs"]
    assert [(p["layer"], p["bn"]) for p in pairs] == [("hidden layer", "couche_cachée")]
