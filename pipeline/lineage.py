"""A stage run as one transaction with its manifest entry: the files and the record land together.

Every stage, whether a CLI command runs it alone or `bnpipe run` runs it in turn, goes through
`recorded_stage`, so the two paths cannot drift apart: the same inputs are checked, the same
entry is written, the same files commit together or not at all (see artifacts.transaction).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import artifacts
from .errors import GateFailed
from .manifest import Manifest


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
    read = None if reads is None else current_inputs(out, reads, extra_inputs or {})
    t0 = time.time()
    gate: GateFailed | None = None

    def record():
        m = Manifest(out)  # read again: the stage may have run for minutes
        if read is None:
            _forget(out, stage)
        else:
            m.record(stage, read, params, outputs(), t0)

    with artifacts.transaction():
        try:
            yield
        except GateFailed as exc:
            gate = exc
        # Before the renames: a crash between them and record() reruns the stage, never refuses.
        artifacts.before_commit(lambda: _forget(out, stage))
        artifacts.on_success(record)
    if gate is not None:
        raise gate


def _forget(out: Path, stage: str) -> None:
    m = Manifest(out)
    if stage in m.stages:
        m.invalidate(stage)
        m.save()
