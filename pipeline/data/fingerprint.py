"""What a data source is, as a digest: the files behind a `--data` spec and their sha256, so a
record says exactly which data a stage read.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def source_fingerprint(spec: str, test_spec: str | None = None) -> str:
    """sha256 naming what `--data spec [--test-data test_spec]` would read, without reading it.

    Hashes the source's files (the bundled digits file, the cached MNIST, the .npz / .csv, the
    IDX files) rather than the arrays, so that deciding whether training is up to date costs a
    pass over the bytes on disk, not a load, check and split of the whole data set. Train's
    options (seed, fractions) are recorded beside it, so the split needs no place here. A source
    that does not exist yet (MNIST not cached) gets a fingerprint of its own name: training then
    reruns and finds out.
    """
    h = hashlib.sha256(b"bnpipe-source|")
    for role, given in (("data", spec), ("test_data", test_spec)):
        if given is None:
            continue
        h.update(f"{role}|{given}|".encode())
        for path in source_files(str(given)):
            h.update(f"{path.name}|".encode())
            h.update(_file_sha256(path).encode())
    return h.hexdigest()


def source_files(spec: str) -> list[Path]:
    """The files a `--data` spec reads, as far as they exist (none for an unknown name)."""
    from pipeline.data import readers

    if spec == "digits":
        return [p for p in [readers.digits_file()] if p is not None]
    if spec == "mnist":
        cached = readers.find_cached_mnist()
        return [cached] if cached else []
    path = Path(spec)
    if path.is_dir():
        found = []
        for base in readers.IDX_FILES.values():
            found += [path / n for n in readers.idx_candidates(base) if (path / n).is_file()]
        return found
    return [path] if path.is_file() else []


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
