"""Graphs that are not DAGs (dag.py) are refused from config.json before any Keras loader sees
them, in either Keras's form and inside nested models; and a loader that loops anyway is stopped
by the time bound (deadline.py).

The end-to-end cases are files saved by the real Keras and edited as a hostile user would: a
cycle, a layer fed its own output, an inbound node index past the end. tf_keras's loader spins
for ever on each of them, so they run in a child process with a deadline.
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error, bnpipe_process, tree

from pipeline.cli import cli
from pipeline.core.deadline import bounded
from pipeline.core.errors import ModelError
from pipeline.models.dag import check_graph

DEADLINE = 30  # seconds: issue 24's bound for the refusal (it takes about one)


def _save(lib, path: Path) -> Path:
    """A small Functional model (x → d1 → bn → out) saved by `lib` (tf_keras or Keras 3)."""
    L = lib.layers
    x = lib.Input((8,), name="x")
    h = L.BatchNormalization(name="bn")(L.Dense(4, name="d1")(x))
    lib.Model(x, L.Dense(3, activation="softmax", name="out")(h)).save(path)
    return path


def _history(entry: dict, call: int = 0) -> list:
    """The [layer, node, tensor] the first input of `entry`'s call reads, either form (mutable)."""
    node = entry["inbound_nodes"][call]
    return node["args"][0]["config"]["keras_history"] if isinstance(node, dict) else node[0]


EDITS = {
    "cycle": (lambda layers: _history(layers[1]).__setitem__(0, "out"), "(a cycle)"),
    "self-loop": (
        lambda layers: _history(layers[1]).__setitem__(0, "d1"),
        "call 0 of layer 'd1' takes its own output",
    ),
    "dangling-node": (
        lambda layers: _history(layers[2]).__setitem__(1, 99),
        "call 0 of layer 'bn' takes node 99 of layer 'd1', which has 1 node(s)",
    ),
    "dangling-tensor": (
        lambda layers: _history(layers[2]).__setitem__(2, 5),
        "takes output 5 of layer 'd1', which has 1",
    ),
    "unknown-layer": (
        lambda layers: _history(layers[3]).__setitem__(0, "nowhere"),
        "takes the output of unknown layer 'nowhere'",
    ),
}


def _edited(src: Path, dest: Path, edit) -> Path:
    with zipfile.ZipFile(src) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    config = json.loads(members["config.json"])
    edit(config["config"]["layers"])
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(dest, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dest


@pytest.mark.parametrize("saver", ["tf_keras", "keras3"])
@pytest.mark.parametrize("case", ["cycle", "self-loop", "dangling-node"])
def test_a_graph_that_is_not_a_dag_is_refused_in_seconds(tmp_path, keras, k3, saver, case):
    """The three graphs that made `bnpipe fold` spin for ever (tf_keras) or answer with the
    whole node in the message (Keras 3): exit 2, one line, nothing written, well inside the
    bound (the refusal reads config.json only)."""
    saved = _save(keras if saver == "tf_keras" else k3, tmp_path / "good.keras")
    edit, fragment = EDITS[case]
    model = _edited(saved, tmp_path / f"{case}.keras", edit)
    out, args = tmp_path / "a", ["fold", "--model", model, "--artifacts", tmp_path / "a"]
    if saver == "tf_keras":  # the loader that spun: a child process, killed at the deadline
        result = bnpipe_process(*args, timeout=DEADLINE)
    else:  # Keras 3's loader ends by itself: in process, which is quicker
        t0 = time.monotonic()
        result = CliRunner().invoke(cli, [str(a) for a in args], prog_name="bnpipe")
        assert time.monotonic() - t0 < DEADLINE
    assert_one_line_error(result, fragment="is not a DAG of its layers")
    assert fragment in result.stderr
    assert tree(out) == {}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_every_kind_of_broken_graph_is_named_in_either_form(tmp_path, keras, k3, case):
    edit, fragment = EDITS[case]
    for lib in (keras, k3):
        saved = _save(lib, tmp_path / "m.keras")
        with zipfile.ZipFile(saved) as zf:
            config = json.loads(zf.read("config.json"))
        check_graph(config)  # as saved: a DAG
        edit(config["config"]["layers"])
        with pytest.raises(ModelError, match="is not a DAG") as info:
            check_graph(config, saved)
        assert fragment in str(info.value) and "\n" not in str(info.value)


def _k3_tensor(layer: str, node: int = 0, tensor: int = 0) -> dict:
    history = [layer, node, tensor]
    return {"class_name": "__keras_tensor__", "config": {"keras_history": history}}


def _k3_layer(name: str, cls: str, *calls) -> dict:
    nodes = [{"args": [args], "kwargs": {}} for args in calls]
    return {"class_name": cls, "name": name, "config": {"name": name}, "inbound_nodes": nodes}


def _k3_model(name: str, layers: list, outputs) -> dict:
    config = {"name": name, "layers": layers, "input_layers": ["x", 0, 0]}
    return {"class_name": "Functional", "config": {**config, "output_layers": outputs}}


def _base(second_input: dict) -> dict:
    """A nested Functional model with two outputs; its d2 reads `second_input`."""
    x = {"class_name": "InputLayer", "name": "x", "config": {"name": "x"}, "inbound_nodes": []}
    layers = [x, _k3_layer("d1", "Dense", _k3_tensor("x")), _k3_layer("d2", "Dense", second_input)]
    return _k3_model("base", layers, [["d1", 0, 0], ["d2", 0, 0]])


def _outer(base: dict, *reads) -> dict:
    """x → base (called twice) → Concatenate of `reads` (tensors of base's calls)."""
    x = {"class_name": "InputLayer", "name": "x", "config": {"name": "x"}, "inbound_nodes": []}
    base = {**base, "name": "base"}
    base["inbound_nodes"] = [{"args": [_k3_tensor("x")], "kwargs": {}} for _ in range(2)]
    cat = _k3_layer("cat", "Concatenate", [_k3_tensor("base", n, t) for n, t in reads])
    return _k3_model("outer", [x, base, cat], ["cat", 0, 0])


def test_nested_models_and_shared_layers_are_checked_as_keras_numbers_them():
    """A nested model's two outputs and two calls (Keras 3 numbers both from 0), a layer applied to
    its own earlier call (A(A(x)), legitimate) pass; a cycle inside the nested model, or a
    reference past its outputs or calls, is refused."""
    check_graph(_outer(_base(_k3_tensor("x")), (0, 0), (0, 1), (1, 1)))
    twice = _k3_layer("d1", "Dense", _k3_tensor("x"), _k3_tensor("d1", 0))
    x = {"class_name": "InputLayer", "name": "x", "config": {"name": "x"}, "inbound_nodes": []}
    check_graph(_k3_model("shared", [x, twice], ["d1", 1, 0]))
    with pytest.raises(ModelError, match=r"model 'base' .* takes its own output"):
        check_graph(_outer(_base(_k3_tensor("d2")), (0, 0)))
    with pytest.raises(ModelError, match="takes output 2 of layer 'base', which has 2"):
        check_graph(_outer(_base(_k3_tensor("x")), (0, 2)))
    with pytest.raises(ModelError, match="takes node 2 of layer 'base', which has 2 node"):
        check_graph(_outer(_base(_k3_tensor("x")), (2, 0)))
    ahead = _k3_layer("d1", "Dense", _k3_tensor("d1", 1), _k3_tensor("x"))
    with pytest.raises(ModelError, match="wait for one another"):  # call 0 needs call 1
        check_graph(_k3_model("ahead", [x, ahead], ["d1", 1, 0]))


def test_a_name_with_control_characters_is_shown_escaped():
    x = {"class_name": "InputLayer", "name": "x", "config": {"name": "x"}, "inbound_nodes": []}
    layer = _k3_layer("a\nb\u202e", "Dense", _k3_tensor("x\x00"))
    with pytest.raises(ModelError) as info:
        check_graph(_k3_model("m", [x, layer], ["x", 0, 0]))
    message = str(info.value)
    assert "'a\\nb\\u202e'" in message and "'x\\x00'" in message
    assert message.isprintable()


def test_the_time_bound_stops_tf_keras_looping_on_a_cycle(tmp_path, keras):
    """The bound's own proof, on the loader that hung: tf_keras's load_model of a cyclic file,
    called directly (past the graph check), ends as a ModelError at the bound."""
    model = _edited(_save(keras, tmp_path / "m.keras"), tmp_path / "c.keras", EDITS["cycle"][0])
    t0 = time.monotonic()
    stopped = "Keras's loader took longer than 2 s and was stopped"
    with pytest.raises(ModelError, match=stopped), bounded(2, "Keras's loader"):
        keras.models.load_model(model, compile=False, safe_mode=True)
    assert time.monotonic() - t0 < 10


def test_the_time_bound_outlasts_a_library_that_swallows_exceptions():
    """A loop that catches Exception (as libraries do around a step) still ends: the bound raises
    a BaseException, again every second; after the block the timer is off."""
    import signal

    t0 = time.monotonic()
    with pytest.raises(ModelError, match=r"took longer than 0\.2 s"), bounded(0.2, "the loop"):
        while True:
            try:
                time.sleep(0.01)
            except Exception:  # what a careless library does
                continue
    assert time.monotonic() - t0 < 5
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    with bounded(5, "a quick call"):
        pass  # usable again, and ends without an error
