"""A path the user gives that bnpipe may not reach (a directory above it closed to the user) is
exit 2 with one line, as any other bad input: the model, the data. Run in a child process
without the capabilities that let root through any permission (tests run as root)."""

from __future__ import annotations

import pytest
from helpers import assert_one_line_error, bnpipe_process, without_root_privileges, write_npz

DEADLINE = 60


@pytest.mark.parametrize(
    "args",
    [
        ["fold", "--model", "{closed}/model.keras"],
        ["train", "--data", "{closed}/data.npz", "--epochs", "1"],
    ],
    ids=["model", "data"],
)
def test_a_path_under_a_closed_directory_is_one_line(tmp_path, args):
    closed = tmp_path / "closed"
    closed.mkdir()
    (closed / "model.keras").write_bytes(b"PK\x05\x06" + bytes(18))  # never read
    write_npz(closed / "data.npz")
    closed.chmod(0o000)
    try:
        out = tmp_path / "a"
        result = bnpipe_process(
            *[a.format(closed=closed) for a in args], "--artifacts", out,
            timeout=DEADLINE, preexec_fn=without_root_privileges,
        )  # fmt: skip
    finally:
        closed.chmod(0o755)
    line = assert_one_line_error(result)
    assert "ermission denied" in line and str(closed) in line, line
    assert not out.exists()
