"""lineage.recorded_stage: a stage's files and its manifest entry land together or not at all,
even when the manifest is what cannot be written."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from helpers import limited, tree

from pipeline.core.errors import ArtifactError
from pipeline.store import artifacts
from pipeline.store.lineage import recorded_stage

# A stage that writes one small file, run in a child whose file-size limit the manifest (a
# kilobyte and more: versions, machine, digests) exceeds and the stage's file does not.
STAGE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from pipeline.store import artifacts
    from pipeline.store.lineage import recorded_stage

    out = Path(sys.argv[1])
    with recorded_stage(out, "fold", {"strict": False}, lambda: ["fold.json"], reads=[]):
        artifacts.write_text(out / "fold.json", "{}")
    """
)


def test_a_manifest_that_cannot_be_written_keeps_the_stages_files_out(tmp_path):
    out = tmp_path / "a"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", STAGE, str(out)],
        capture_output=True,
        text=True,
        preexec_fn=limited(file_size=1000),
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        f"pipeline.core.errors.ArtifactError: cannot write {out / 'manifest.json'}: File too large"
    )
    assert tree(out) == {}  # no fold.json without its record, no temporary file


def test_a_manifest_replaced_by_a_directory_mid_stage_lands_nothing(tmp_path):
    out = tmp_path / "a"
    out.mkdir()
    manifest = out / "manifest.json"
    manifest.write_text(json.dumps({"stages": {}}))
    stage = recorded_stage(out, "fold", {"strict": False}, lambda: ["fold.json"], reads=[])
    with pytest.raises(ArtifactError) as info, stage:
        artifacts.write_text(out / "fold.json", "{}")
        manifest.unlink()
        manifest.mkdir()  # someone else's doing, while the stage ran
    assert str(info.value) == f"cannot write {manifest}: it is a directory"
    assert tree(out) == {"manifest.json/": ""}


def test_the_record_lands_with_the_files_and_names_their_digests(tmp_path):
    out = tmp_path / "a"
    with recorded_stage(out, "fold", {"strict": True}, lambda: ["fold.json"], reads=[]):
        artifacts.write_text(out / "fold.json", "{}")
        assert not (out / "manifest.json").exists()  # nothing lands before the commit
    entry = json.loads((out / "manifest.json").read_text())["stages"]["fold"]
    assert entry["outputs"] == {"fold.json": artifacts.sha256_file(out / "fold.json")}
    assert entry["params"] == {"strict": True} and entry["inputs"] == {}
