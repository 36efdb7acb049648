"""artifacts.py: atomic writes, hashes, the JSON record. No TensorFlow needed."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from pipeline.core.errors import ArtifactError
from pipeline.store import artifacts
from pipeline.store.artifacts import TMP_PREFIX, atomic_path


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(TMP_PREFIX))


# --- atomic_path ------------------------------------------------------------------------------


def test_atomic_path_replaces_dest_on_success(tmp_path):
    dest = tmp_path / "out.json"
    dest.write_text("old")
    with atomic_path(dest) as tmp:
        assert tmp.parent == tmp_path  # same directory: the rename stays on one file system
        assert tmp.name.startswith(TMP_PREFIX) and tmp.suffix == ".json"
        tmp.write_text("new")
        assert dest.read_text() == "old"  # nothing visible until the block completes
    assert dest.read_text() == "new"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_atomic_path_keeps_old_file_and_removes_temp_when_block_raises(tmp_path, exc_type):
    dest = tmp_path / "model.keras"
    dest.write_bytes(b"good model")
    with pytest.raises(exc_type), atomic_path(dest) as tmp:
        tmp.write_bytes(b"half a mod")
        raise exc_type()
    assert dest.read_bytes() == b"good model"
    assert _leftovers(tmp_path) == []


def test_atomic_path_creates_nothing_when_block_raises_and_dest_is_new(tmp_path):
    dest = tmp_path / "sub" / "new.bin"
    with pytest.raises(ValueError), atomic_path(dest) as tmp:
        tmp.write_bytes(b"x")
        raise ValueError("boom")
    assert not dest.exists()
    assert _leftovers(dest.parent) == []


def test_atomic_path_temp_removed_even_if_writer_deleted_or_never_wrote(tmp_path):
    dest = tmp_path / "a.txt"
    with (
        pytest.raises(ArtifactError, match=f"^cannot write {dest}: disk full$"),
        atomic_path(dest) as tmp,
    ):
        tmp.unlink()  # a writer that cleaned up after itself before failing
        raise OSError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_suffix_override(tmp_path):
    with atomic_path(tmp_path / "noext", suffix=".keras") as tmp:
        assert tmp.suffix == ".keras"
        tmp.write_text("x")
    assert (tmp_path / "noext").read_text() == "x"


def test_write_bytes_and_text_are_atomic_and_create_dirs(tmp_path):
    dest = artifacts.write_text(tmp_path / "a" / "b.md", "héllo\n")
    assert dest.read_bytes() == "héllo\n".encode()
    artifacts.write_bytes(dest, b"\x00\x01")
    assert dest.read_bytes() == b"\x00\x01"
    assert _leftovers(dest.parent) == []


# --- hashes -----------------------------------------------------------------------------------


def test_sha256_known_vector_and_file_matches_bytes(tmp_path):
    # FIPS 180-2 test vector for "abc".
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert artifacts.sha256_bytes(b"abc") == abc
    f = tmp_path / "abc"
    f.write_bytes(b"abc")
    assert artifacts.sha256_file(f) == abc
    big = os.urandom((1 << 20) * 2 + 17)  # crosses the 1 MiB read-chunk boundary twice
    f.write_bytes(big)
    assert artifacts.sha256_file(f) == hashlib.sha256(big).hexdigest()


# --- the JSON record --------------------------------------------------------------------------


def test_write_json_has_schema_versions_inputs_and_record(tmp_path):
    import numpy as np

    dest = artifacts.write_json(
        tmp_path / "stage.json",
        {
            "stage": "x",
            "value": np.float32(0.5),
            "arr": np.arange(3),
            "path": tmp_path / "m",
            "nan": float("nan"),
        },
        inputs={"model": "ab" * 32},
    )
    rec = json.loads(dest.read_text())
    assert rec["schema_version"] == artifacts.SCHEMA_VERSION == 1
    assert rec["inputs"] == {"model": "ab" * 32}
    assert set(rec["versions"]) == {"python", *artifacts.TRACKED_PACKAGES}
    assert rec["versions"]["tensorflow"] is not None and rec["versions"]["numpy"] == np.__version__
    assert rec["stage"] == "x" and rec["value"] == 0.5 and rec["arr"] == [0, 1, 2]
    assert rec["path"] == str(tmp_path / "m")
    assert rec["nan"] is None  # NaN is not JSON
    assert {"cpu", "cores", "machine"} <= set(rec["machine"])
    assert _leftovers(tmp_path) == []


def test_write_json_without_inputs_records_empty_inputs(tmp_path):
    rec = json.loads(artifacts.write_json(tmp_path / "r.json", {}).read_text())
    assert rec["inputs"] == {}


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(ArtifactError, match=r"missing\.json does not exist"):
        artifacts.read_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ArtifactError, match=r"bad\.json is not readable JSON"):
        artifacts.read_json(bad)


# --- where artifacts go -----------------------------------------------------------------------


def test_artifacts_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv(artifacts.ARTIFACTS_ENV, raising=False)
    assert str(artifacts.artifacts_dir()) == "artifacts"
    monkeypatch.setenv(artifacts.ARTIFACTS_ENV, str(tmp_path / "env"))
    assert artifacts.artifacts_dir() == tmp_path / "env"
    assert artifacts.artifacts_dir(tmp_path / "flag") == tmp_path / "flag"  # the flag wins
    assert not (tmp_path / "env").exists()  # looked up, not created


def test_require_file_says_what_to_run(tmp_path):
    with pytest.raises(ArtifactError) as info:
        artifacts.require_file(tmp_path / "model.keras", "model", "run `bnpipe train` first")
    assert (
        str(info.value)
        == f"model {tmp_path / 'model.keras'} does not exist; run `bnpipe train` first"
    )


def test_ensure_dir_failure_is_an_artifact_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ArtifactError, match="cannot create the artifacts directory"):
        artifacts.ensure_dir(blocker / "sub")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_artifacts_get_the_mode_of_a_new_file(tmp_path, umask):
    # Regression: mkstemp's owner-only 0600 leaked into every artifact.
    import stat

    old = os.umask(umask)
    try:
        dest = artifacts.write_text(tmp_path / "r.json", "{}")
        plain = tmp_path / "plain"
        plain.write_text("")  # what open() makes under the same umask
    finally:
        os.umask(old)
    assert stat.S_IMODE(dest.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask


# --- transaction: a stage's files land together or not at all -------------------------------------


def test_transaction_holds_every_rename_until_it_ends(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    done = []
    with artifacts.transaction():
        artifacts.write_text(a, "new a")
        artifacts.write_text(b, "new b")
        assert a.read_text() == "old a" and not b.exists()  # nothing visible yet
        assert artifacts.sha256_file(a) == artifacts.sha256_bytes(b"new a")  # hashes see the new
        artifacts.on_success(lambda: done.append(a.read_text()))
        assert done == []
    assert a.read_text() == "new a" and b.read_text() == "new b"
    assert done == ["new a"]  # after the renames
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, RuntimeError])
def test_transaction_interrupted_between_two_files_keeps_both_old(tmp_path, exc_type):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    b.write_text("old b")
    done = []
    with pytest.raises(exc_type), artifacts.transaction():
        artifacts.write_text(a, "new a")
        artifacts.on_success(lambda: done.append(1))
        raise exc_type()  # Ctrl-C between the first file and the second
    assert (a.read_text(), b.read_text()) == ("old a", "old b")
    assert done == [] and _leftovers(tmp_path) == []


def test_nested_transactions_commit_with_the_outermost(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    with pytest.raises(KeyboardInterrupt), artifacts.transaction():
        with artifacts.transaction():
            artifacts.write_text(a, "inner")
        assert not a.exists()  # the inner block ended, but the stage has not
        artifacts.write_text(b, "outer")
        raise KeyboardInterrupt
    assert not a.exists() and not b.exists() and _leftovers(tmp_path) == []
    with artifacts.transaction(), artifacts.transaction():
        artifacts.write_text(a, "inner")
        artifacts.write_text(a, "inner, again")  # the second write of a file wins
    assert a.read_text() == "inner, again" and _leftovers(tmp_path) == []


def test_export_interrupted_between_its_files_leaves_every_file_as_it_was(
    exported, tmp_path, monkeypatch
):
    """Ctrl-C after the .tflite files were written and before export.json: none of them moves."""
    import shutil

    from pipeline.core.config import ExportConfig
    from pipeline.stages.export import run_export

    out = tmp_path / "a"
    shutil.copytree(exported, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = artifacts.write_json
    written = []

    def interrupted_write_json(dest, *args, **kwargs):
        written.extend(p.name for p in out.iterdir() if p.name.startswith(TMP_PREFIX))
        raise KeyboardInterrupt

    monkeypatch.setattr(artifacts, "write_json", interrupted_write_json)
    with pytest.raises(KeyboardInterrupt):
        run_export(out / "folded.keras", out, config=ExportConfig(modes=("float32", "ptq-int8")))
    assert len(written) == 2  # both .tflite files had been written in full when Ctrl-C came
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.setattr(artifacts, "write_json", real)


def test_machine_info_records_the_kernel_relevant_cpu_features():
    from pathlib import Path

    info = artifacts.machine_info()
    assert info["cores"] == os.cpu_count() and info["cpu"]
    text = Path("/proc/cpuinfo").read_text()
    line = next(ln for ln in text.splitlines() if ln.split(":")[0].strip() in ("flags", "Features"))
    present = set(line.split(":", 1)[1].split())
    assert info["cpu_flags"] == [f for f in artifacts.KERNEL_FLAGS if f in present]
    assert info["cpu_flags"]  # any CPU this runs on has one of SSE4/AVX/ASIMD
