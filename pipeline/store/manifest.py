"""Lineage: what each stage read, with which parameters, and what it wrote (manifest.json).

    {"schema_version": 1, "stages": {"train": {"inputs": {name: sha256}, "params": {...},
      "outputs": {file: sha256}, "versions": {...}, "machine": {...}, "started": …, "ended": …}}}

A stage is up to date when its inputs and parameters are what the manifest recorded and its
outputs are still the files it wrote. A file a stage reads that another stage wrote must still be
what that stage wrote: anything else (edited by hand, copied from another run) is refused.
The manifest itself is read like any file a user could have replaced: one that is not a regular
file, not JSON, or not of the shape above is refused (ArtifactError) before a stage runs.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from pipeline.core.errors import ArtifactError
from pipeline.store import artifacts

MANIFEST_FILE = "manifest.json"
SHA256 = re.compile(r"[0-9a-f]{64}")


class Manifest:
    def __init__(self, out: Path):
        self.out = out
        self.path = out / MANIFEST_FILE
        self.stages: dict[str, dict[str, Any]] = {}
        if os.path.lexists(self.path):  # a directory or a FIFO is refused, not taken as absent
            data = artifacts.read_json(self.path, "manifest")
            self.stages = checked_stages(data, self.path)

    def writer_of(self, file: str) -> tuple[str, str] | None:
        """(stage, sha256) of the stage that last wrote `file`, if any."""
        for stage, entry in self.stages.items():
            if file in entry.get("outputs", {}):
                return stage, entry["outputs"][file]
        return None

    def check_input(self, file: str) -> str:
        """sha256 of artifacts/`file`; ArtifactError if it is not what its writer recorded."""
        path = self.out / file
        if not path.is_file():
            raise ArtifactError(f"{path} does not exist")
        sha = artifacts.sha256_file(path)
        writer = self.writer_of(file)
        if writer and writer[1] != sha:
            raise ArtifactError(
                f"{path} is not the file `bnpipe {writer[0]}` wrote (sha256 "
                f"{sha[:12]}…, manifest {writer[1][:12]}…): edited or copied from "
                f"another run; rerun `bnpipe {writer[0]}`, or pass the file "
                "explicitly to use it anyway"
            )
        return sha

    def check_outputs(self) -> None:
        """ArtifactError naming the first recorded output that exists but is not what was written.

        A missing output is not an error (its stage simply reruns); a changed one is, because a
        later stage would otherwise read a file no stage of this run produced.
        """
        for entry in self.stages.values():
            for file in entry.get("outputs", {}):
                if (self.out / file).is_file():
                    self.check_input(file)

    def up_to_date(self, stage: str, inputs: dict[str, str], params: dict[str, Any]) -> bool:
        return self.why_stale(stage, inputs, params) is None

    def why_stale(self, stage: str, inputs: dict[str, str], params: dict[str, Any]) -> str | None:
        """None if `stage` ran here with these inputs and parameters and its outputs are as it
        wrote them; else why it must run again, in a few words a person reads (which input or
        option changed, from what to what)."""
        entry = self.stages.get(stage)
        if not entry:
            return "it has not run in this artifacts dir"
        before = entry.get("inputs") or {}
        changed = [k for k in sorted({*before, *inputs}) if before.get(k) != inputs.get(k)]
        if changed:
            return "its input changed: " + ", ".join(
                f"{k} {_short(before.get(k))} → {_short(inputs.get(k))}" for k in changed
            )
        old, new = entry.get("params") or {}, _plain(params)
        options = [k for k in sorted({*old, *new}) if old.get(k) != new.get(k)]
        if options:
            return "its options changed: " + ", ".join(
                f"{k} {_shown(old.get(k))} → {_shown(new.get(k))}" for k in options
            )
        for file, sha in entry.get("outputs", {}).items():
            p = self.out / file
            if not p.is_file():
                return f"its output {file} is missing"
            if artifacts.sha256_file(p) != sha:
                return f"its output {file} changed since it ran"
        return None

    def record(
        self,
        stage: str,
        inputs: dict[str, str],
        params: dict[str, Any],
        outputs: list[str],
        started: float,
    ) -> None:
        """Enter the stage and save. Inside a transaction, its outputs are read where they are
        pending (artifacts.current) and the manifest is saved with them."""
        self.stages[stage] = {
            "inputs": inputs,
            "params": _plain(params),
            "outputs": {
                f: artifacts.sha256_file(self.out / f)
                for f in outputs
                if artifacts.current(self.out / f).is_file()
            },
            "versions": artifacts.tool_versions(),
            "machine": artifacts.machine_info(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "ended": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        self.save()

    def invalidate(self, stage: str) -> None:
        self.stages.pop(stage, None)

    def save(self) -> None:
        artifacts.write_json(self.path, {"stages": self.stages})


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(artifacts.jsonable(obj)))


def checked_stages(data: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    """data["stages"] if it has the manifest's shape, else ArtifactError naming the first
    difference: every entry an object whose inputs and outputs map names to sha256 digests, and
    every output a plain file name (a manifest is read from the artifacts dir and names only
    files in it)."""

    def refuse(why: str) -> ArtifactError:
        return ArtifactError(
            f"{path} is not a bnpipe manifest: {why}; move it away (the stages then rerun)"
        )

    stages = data.get("stages", {})
    if not isinstance(stages, dict):
        raise refuse('"stages" is not an object')
    for name, entry in stages.items():
        if not isinstance(entry, dict):
            raise refuse(f"stage {name[:40]!r} is not an object")
        for key in ("inputs", "outputs"):
            table = entry.get(key, {})
            if not isinstance(table, dict) or not all(
                isinstance(v, str) and SHA256.fullmatch(v) for v in table.values()
            ):
                raise refuse(f"the {key} of stage {name[:40]!r} are not sha256 digests by name")
        for file in entry.get("outputs", {}):
            if file in ("", ".", "..") or "/" in file or "\\" in file or "\0" in file:
                raise refuse(f"stage {name[:40]!r} names the output {file[:80]!r}, not a file name")
        if not isinstance(entry.get("params", {}), dict):
            raise refuse(f"the params of stage {name[:40]!r} are not an object")
    return stages


def _short(sha: str | None) -> str:
    """A sha256 as a person compares it (its first 8 hex digits), or "none"."""
    return sha[:8] if isinstance(sha, str) else "none"


def _shown(value: Any) -> str:
    text = json.dumps(value) if value is not None else "unset"
    return text if len(text) <= 40 else text[:37] + "…"
