"""models/door.py: a model file comes through one door — read once, checked, fingerprinted from the
bytes loaded — whichever Keras saved it (pipeline/DESIGN.md, "One door for a model file")."""

import hashlib
import json
import subprocess
import sys
import textwrap

import pytest

from pipeline.core.errors import ModelError

# Counts the opens of one file by the stage run in a fresh interpreter: an audit hook sees every
# open() of Python and of the libraries that go through it (zipfile, h5py is given a path by
# Keras and opens it in C, so the private copy is what Keras opens, never the user's file).
_COUNT_OPENS = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    target = os.path.realpath(sys.argv[1])
    opens = []
    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            if os.path.realpath(os.fsdecode(args[0])) == target:
                opens.append(1)
    sys.addaudithook(hook)
    from pipeline.stages.fold import run_fold
    run_fold(Path(sys.argv[1]), Path(sys.argv[2]), warn=lambda m: None)
    print(len(opens))
    """
)


def _keras3_mlp(path):
    from pipeline.models.keras3_file import keras3

    k3 = keras3()
    k3.utils.set_random_seed(0)
    layers = k3.layers
    model = k3.Sequential(
        [
            k3.Input((64,)),
            layers.Dense(16),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.Dense(10, activation="softmax"),
        ]
    )
    model.save(path)
    return path


def _tf_keras_mlp(path):
    from pipeline.models.article import build_mlp
    from pipeline.models.door import save_model

    return save_model(build_mlp(64, hidden=(16,)), path)


def _keras3_h5(path):
    """A Keras 3 MLP as legacy HDF5 (read through h5file's path: still one open)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "You are saving your model as an HDF5 file"
        return _keras3_mlp(path.with_suffix(".h5"))


@pytest.mark.parametrize(
    "make", [_keras3_mlp, _tf_keras_mlp, _keras3_h5], ids=["keras3", "tf_keras", "keras3_h5"]
)
def test_fold_opens_the_users_file_once_and_records_the_bytes_it_loaded(make, tmp_path):
    src = make(tmp_path / "user.keras")
    out = tmp_path / "art"
    run = subprocess.run(
        [sys.executable, "-c", _COUNT_OPENS, str(src), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    opens = int(run.stdout.split()[-1])
    assert 1 <= opens <= 3  # the bound; measured: 1 (one read of the bytes)
    assert opens == 1 or make is not _keras3_h5  # h5py reads the bytes read, never the file
    record = json.loads((out / "fold.json").read_text())
    assert record["inputs"]["model"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert record["model"] == str(src)


def test_the_models_come_from_the_bytes_read_not_from_a_later_state_of_the_file(tmp_path):
    from pipeline.models.door import ModelFile

    src = _keras3_mlp(tmp_path / "user.keras")
    first = src.read_bytes()
    mf = ModelFile.open(src)
    src.write_bytes(b"replaced after the door read it")  # a file changed under bnpipe's feet
    assert mf.sha256 == hashlib.sha256(first).hexdigest()
    assert mf.bytes() == first
    assert mf.reference().count_params() == mf.tf_keras().count_params() > 0
    assert mf.translation() is mf.translation()  # translated and proved once


@pytest.mark.parametrize(
    "name, content, says",
    [
        ("model.h5", b"\x89HDF\r\n\x1a\n" + bytes(64), "is not an HDF5 file"),
        ("model.bin", b"PK", "does not end in .keras"),
        ("model.keras", bytes(512) + b"\x89HDF\r\n\x1a\n", "legacy HDF5"),
        ("model.keras", b"not a zip", "not a Keras .keras file"),
    ],
)
def test_the_door_refuses_what_it_may_not_load_in_one_line(tmp_path, name, content, says):
    from pipeline.models.door import ModelFile

    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelError) as info:
        ModelFile.open(path)
    assert says in str(info.value) and "\n" not in str(info.value)
