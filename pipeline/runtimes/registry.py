"""Target names → runtime objects, and which of them can run here.

    host  host-ref  tflm  arm64     fixed names (TARGETS)
    ssh:USER@HOST[:PORT]            a board over ssh

Each runtime module is imported only when its target is asked for. None of them imports LiteRT
or TFLM into this process: every model runs in a child process (host, host-ref and tflm under
this python; arm64 under qemu; ssh on the board).
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.core.errors import BnpipeError, TargetUnavailable
from pipeline.core.interrupts import raise_pending

TARGETS = ("host", "host-ref", "tflm", "arm64")
DEFAULT_TARGETS = ("host", "host-ref", "tflm", "arm64")  # every target that needs no address
SSH_PREFIX = "ssh:"
_VALID = ", ".join(TARGETS) + f", {SSH_PREFIX}USER@HOST[:PORT]"


def _unknown(name: str) -> BnpipeError:
    return BnpipeError(f"unknown target {name!r}: expected one of {_VALID}")


def get_runtime(name: str):
    """A new runtime object for the target `name`. BnpipeError for an unknown name or a bad
    ssh address."""
    name = (name or "").strip()
    if name == "host":
        from pipeline.runtimes.host import HostRuntime

        return HostRuntime()
    if name == "host-ref":
        from pipeline.runtimes.host import HostRuntime

        return HostRuntime(reference=True)
    if name == "tflm":
        from pipeline.runtimes.tflm import TflmRuntime

        return TflmRuntime()
    if name == "arm64":
        from pipeline.runtimes.arm64 import Arm64Runtime

        return Arm64Runtime()
    if name.startswith(SSH_PREFIX):
        from pipeline.runtimes.ssh import SshRuntime

        return SshRuntime(name[len(SSH_PREFIX) :])
    raise _unknown(name)


def check_name(name: str) -> None:
    """BnpipeError for a name get_runtime would refuse (unknown, or a bad ssh address), without
    making its runtime: `bnpipe run` checks verify's and bench's targets before train starts."""
    name = (name or "").strip()
    if name in TARGETS:
        return
    if name.startswith(SSH_PREFIX):
        from pipeline.runtimes.ssh import parse_spec

        parse_spec(name[len(SSH_PREFIX) :])
        return
    raise _unknown(name)


def start_all(runtimes: Iterable) -> None:
    """Start the child processes of the runtimes that keep one (host, host-ref, tflm) without
    waiting for them, so that their start-up overlaps the caller's work before the first run.
    Runtimes without a start() start on their first run. Pair with close_all()."""
    for runtime in runtimes:
        start = getattr(runtime, "start", None)
        if start is not None:
            start()


def abort_all(runtimes: Iterable) -> None:
    """Kill the child processes of the runtimes that keep one, even mid-request (see
    ServedRunner.abort); the requests under way fail. Pair with close_all()."""
    for runtime in runtimes:
        abort = getattr(getattr(runtime, "server", None), "abort", None)
        if abort is not None:
            abort()


def close_all(runtimes: Iterable) -> None:
    """Stop whatever the runtimes keep running between models (arm64: its emulated runner).

    Runtimes without a close() hold nothing open. Every runtime is closed even if one fails; the
    first failure is raised after.
    """
    first = None
    for runtime in runtimes:
        close = getattr(runtime, "close", None)
        if close is None:
            continue
        try:
            close()
        except Exception as exc:  # close the others first
            first = first or exc
    if first is not None:
        raise first


def parse_targets(text: str | None) -> list[str]:
    """Target names from a comma-separated list, in order, without duplicates.

    None or "" (or only commas and blanks) → DEFAULT_TARGETS. Every name is checked here, so a
    typo fails before any model is run: BnpipeError naming it and listing the valid targets.
    """
    names: list[str] = []
    for part in (text or "").split(","):
        name = part.strip()
        if not name or name in names:
            continue
        if name.startswith(SSH_PREFIX):
            from pipeline.runtimes.ssh import parse_spec

            parse_spec(name[len(SSH_PREFIX) :])  # BnpipeError for a malformed address
        elif name not in TARGETS:
            raise _unknown(name)
        names.append(name)
    return names or list(DEFAULT_TARGETS)


def resolve(targets: Iterable[str] | str | None, explicit: bool):
    """(runtimes available here, [(name, reason)] of those skipped), in the order given.

    targets: names (or a comma-separated string, or None for the defaults). explicit=True means
    the user named these targets: an unavailable one is then an error (TargetUnavailable with
    its set-up instructions), not a silent skip. Each runtime serves every model of the run; pass
    them to close_all() at the end.
    """
    names = (
        parse_targets(targets)
        if targets is None or isinstance(targets, str)
        else parse_targets(",".join(targets))
    )
    runtimes, skipped = [], []
    for name in names:
        runtime = get_runtime(name)
        ok, reason = runtime.available()
        if ok:
            runtimes.append(runtime)
        elif explicit:
            raise TargetUnavailable(f"target {name} is not available: {reason}")
        else:
            skipped.append((name, reason))
    return runtimes, skipped


def in_lanes(lanes: list, work) -> dict:
    """{runtime name: work(runtime)}, each in a thread of its own; the first exception (or
    Ctrl-C here) kills every runtime's child, so the other lanes end at once, and is raised."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    pool = ThreadPoolExecutor(max_workers=max(1, len(lanes)), thread_name_prefix="bnpipe-lane")
    try:
        futures = {rt.name: pool.submit(work, rt) for rt in lanes}
        pending = set(futures.values())
        while pending:  # short waits: Ctrl-C lands between them
            _, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
            raise_pending()  # one a finalizer run by this thread swallowed
            for future in futures.values():
                if future.done() and future.exception() is not None:
                    raise future.exception()
        return {name: future.result() for name, future in futures.items()}
    except BaseException:
        abort_all(lanes)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
