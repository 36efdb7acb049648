"""Runtime children die with bnpipe (core/children.py): `kill -9` of a running `bnpipe verify`
leaves no runner behind — not LiteRT's on the host, not qemu running the arm64 runner.

The children are found in /proc (every process whose parent chain leads to bnpipe), so the test
sees what a user's `ps` would. A killed child may stay a zombie until init reaps it: a zombie
runs nothing and counts as gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.core.children import die_with_parent

LEFT_AFTER_S = 1.0  # issue 24: no runner may be left this long after bnpipe is killed


def _processes() -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, state)} of every process now."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it ended while we looked
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        found[int(entry.name)] = (int(fields[1]), fields[0])
    return found


def _descendants(root: int) -> set[int]:
    table = _processes()
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie)."""
    state = _processes().get(pid)
    return state is not None and state[1] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture
def arm64_ready():
    from pipeline.runtimes.arm64 import Arm64Runtime

    ok, why = Arm64Runtime().available()
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the set-up first: {why}")
        pytest.skip(why)


@pytest.mark.parametrize("target", ["host", "arm64"])
def test_kill_9_of_verify_leaves_no_runner(exported, tmp_path, request, target):
    if target == "arm64":
        request.getfixturevalue("arm64_ready")
    out = tmp_path / "a"
    shutil.copytree(exported, out)
    marker = "qemu-aarch64" if target == "arm64" else "device_runner.py"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "verify", "--targets", target,
         "--tflite", str(out / "model_int8.tflite"), "-q", "--artifacts", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline, runners = time.monotonic() + 180, set()
        while not runners and time.monotonic() < deadline and proc.poll() is None:
            runners = {p for p in _descendants(proc.pid) if marker in _cmdline(p)}
            time.sleep(0.05)
        assert runners, f"verify ended ({proc.poll()}) before its {target} runner was seen"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        time.sleep(LEFT_AFTER_S)
        left = {p: _cmdline(p)[:120] for p in runners if _alive(p)}
        assert not left, f"runners outlived bnpipe by {LEFT_AFTER_S} s: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _descendants(proc.pid):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_child_whose_parent_is_already_gone_does_not_start():
    """The check after prctl: a child whose parent ended before the parent-death signal was
    asked for would never get it, so it exits at once instead of running orphaned. Simulated by
    a preexec_fn made for another parent (the pid of this test's own parent)."""
    import pipeline.core.children as children

    hook = die_with_parent()
    assert hook is not None  # Linux: the tests run there
    real = os.getpid
    try:
        os.getpid = os.getppid  # the hook is made "in" a process that is not the child's parent
        foreign = die_with_parent()
    finally:
        os.getpid = real
    done = subprocess.run(["sleep", "5"], preexec_fn=foreign, timeout=10)
    assert done.returncode == children.ORPHANED_EXIT
    assert subprocess.run(["true"], preexec_fn=hook, timeout=10).returncode == 0
