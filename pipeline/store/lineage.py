"""A stage run as one transaction with its manifest entry: the files and the record land together.

Every stage, whether a CLI command runs it alone or `bnpipe run` runs it in turn, goes through
`recorded_stage`, so the two paths cannot drift apart: the same inputs are checked, the same
entry is written, the same files commit together or not at all (see artifacts.transaction).

The order that makes "together" hold: the manifest is read (and refused if it is not one) before
the stage runs; the new manifest is written beside the stage's files, to a temporary file, before
any rename (a full disk fails it then, and nothing lands); at the commit the stage's old entry is
dropped first, then the files are renamed, and the new manifest last. A crash between two renames
leaves files without an entry (the stage reruns), never an entry that does not match its files.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.core.errors import GateFailed
from pipeline.store import artifacts
from pipeline.store.manifest import Manifest


def current_inputs(out: Path, reads: list[str], extra: dict[str, str]) -> dict[str, str]:
    """{file: sha256} of the artifacts in `reads` that exist, each checked against the manifest
    (ArtifactError naming one that is not what its writer wrote), plus `extra` (e.g. the data
    source's fingerprint). A missing file is left to the stage, which says what makes it."""
    man = Manifest(out)
    present = [f for f in reads if (Path(out) / f).is_file()]
    return {**{f: man.check_input(f) for f in present}, **extra}


@contextlib.contextmanager
def recorded_stage(
    out: Path,
    stage: str,
    params: Any,
    outputs: Callable[[], list[str]],
    *,
    reads: list[str] | None,
    extra_inputs: dict[str, str] | None = None,
) -> Iterator[None]:
    """Run the block as one stage: its files and its manifest entry land together, or nothing does.

    `reads`: the artifacts it reads by default; each must still be what the manifest says its
    writer wrote (ArtifactError naming the file otherwise), and their sha256 become the stage's
    recorded inputs with `extra_inputs`. `reads=None`: the user passed files or data explicitly,
    so nothing is checked and the stage's entry is dropped: its outputs have no lineage, and
    `bnpipe run` reruns it. `outputs()` names the files written (called once the block is done).
    A GateFailed from the block is raised after the commit: a failed gate's report is a result.
    """
    manifest = Manifest(out)  # one that is not a manifest is refused before the stage runs
    read = None if reads is None else current_inputs(out, reads, extra_inputs or {})
    t0 = time.time()
    gate: GateFailed | None = None
    with artifacts.transaction():
        try:
            yield
        except GateFailed as exc:
            gate = exc
        if read is not None:  # saved into the transaction, after the stage's files: renamed last
            manifest.record(stage, read, params, outputs(), t0)
        # Before the renames: a crash between them reruns the stage, never refuses it.
        artifacts.before_commit(lambda: _forget(out, stage))
    if gate is not None:
        raise gate


def _forget(out: Path, stage: str) -> None:
    m = Manifest(out)
    if stage in m.stages:
        m.invalidate(stage)
        m.save()
