"""Child processes that die with bnpipe, however bnpipe ends (`kill -9` included).

A runtime's runner (LiteRT, TFLM, qemu-user running the arm64 runner) notices that bnpipe is gone
only when it next reads its stdin, which can be seconds away while it imports LiteRT or runs a
batch under emulation. Linux's parent-death signal ends it at once: `die_with_parent()` is a
`preexec_fn` that asks the kernel (prctl PR_SET_PDEATHSIG) to send the child SIGKILL when its
parent goes, then checks that the parent has not already gone (the request would come too late
for a parent that died between fork and prctl). It survives `exec`, so it holds for qemu itself.

The kernel sends the signal when the *thread* that started the child ends, not only the process:
a runner started by a worker thread dies with that thread. bnpipe's runners are started by the
main thread or by verify's lane threads, which live until the stage's runners are done; a served
runner found dead between requests is started afresh (served.py).

Elsewhere than Linux the function is None and children are started as before. The child runs
only a pre-resolved C call and two system calls before exec: nothing that takes a lock another
thread of bnpipe could hold when it forked.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h
ORPHANED_EXIT = 125  # the child's exit when its parent was gone before prctl took effect


def _prctl():
    """libc's prctl, resolved in the parent (never between fork and exec), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _prctl()


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` for subprocess.Popen / run: the child is killed (SIGKILL) when this process
    (strictly: the calling thread) ends; None where Linux's prctl is not available."""
    if _PRCTL is None:
        return None
    parent, prctl = os.getpid(), _PRCTL

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(ORPHANED_EXIT)

    return preexec
