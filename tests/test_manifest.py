"""store/manifest.py: when a stage is up to date, and why `bnpipe run` reruns it when it is not."""

import time

from pipeline.store.manifest import Manifest


def _recorded(tmp_path, params):
    (tmp_path / "model.keras").write_bytes(b"weights")
    m = Manifest(tmp_path)
    m.record("train", {"data": "a" * 64}, params, ["model.keras"], time.time())
    return Manifest(tmp_path)  # read back from manifest.json


def test_a_stage_with_the_same_inputs_options_and_outputs_is_up_to_date(tmp_path):
    m = _recorded(tmp_path, {"arch": "cnn", "epochs": 15})
    assert m.why_stale("train", {"data": "a" * 64}, {"arch": "cnn", "epochs": 15}) is None
    assert m.up_to_date("train", {"data": "a" * 64}, {"arch": "cnn", "epochs": 15})


def test_the_reason_names_what_changed_from_what_to_what(tmp_path):
    m = _recorded(tmp_path, {"arch": "cnn", "epochs": 15})
    # a hand-made `bnpipe train --arch cnn`, then `bnpipe run` with the default recipe
    why = m.why_stale("train", {"data": "a" * 64}, {"arch": "mlp", "epochs": 15})
    assert why == 'its options changed: arch "cnn" → "mlp"'
    why = m.why_stale("train", {"data": "b" * 64}, {"arch": "cnn", "epochs": 15})
    assert why == "its input changed: data aaaaaaaa → bbbbbbbb"
    assert m.why_stale("fold", {}, {}) == "it has not run in this artifacts dir"
    (tmp_path / "model.keras").write_bytes(b"edited")
    assert m.why_stale("train", {"data": "a" * 64}, {"arch": "cnn", "epochs": 15}) == (
        "its output model.keras changed since it ran"
    )
    (tmp_path / "model.keras").unlink()
    assert m.why_stale("train", {"data": "a" * 64}, {"arch": "cnn", "epochs": 15}) == (
        "its output model.keras is missing"
    )
