"""The host's end of `device_runner.py serve`: one runner process answering many requests.

Starting the runner costs more than running a small model where Python is slow to start: under
qemu-user, importing numpy and LiteRT takes ≈ 3-4 s per process, against well under a second of
work per model on bnpipe's test sets. ServedRunner starts the runner once, on the first request,
sends it one JSON request per line and reads one JSON answer per line (the protocol is in
device_runner.py's docstring), and stops it on close() — or when it is garbage-collected or the
interpreter exits, whichever comes first.

Every request builds its own interpreter in the runner, so the answers are the one-shot
command's. What the process shares across requests is only the imported modules; a model that
crashes the runner kills it, which is reported for that model alone (ModelCrashed: bad input,
exit 2) and the next request starts a fresh process. The same class serves the host targets
(`device_runner.py serve` under this python) and TFLM (`tflm_runner.py serve`), so that no model
ever runs in bnpipe's own process.

Only the standard library is imported here.
"""

from __future__ import annotations

import collections
import json
import queue
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Callable

from pipeline.core.children import die_with_parent
from pipeline.core.errors import ModelCrashed, ModelError, TargetUnavailable

# device_runner.py's exit codes (kept in step with EXIT_INTERNAL / EXIT_BAD_INPUT / EXIT_NO_LITERT).
RUNNER_EXIT_INTERNAL = 1
RUNNER_EXIT_BAD_INPUT = 2
RUNNER_EXIT_NO_LITERT = 3
CLOSE_TIMEOUT_S = 30  # an idle runner exits at once when stdin closes; then it is killed
REAP_TIMEOUT_S = 10  # a runner whose stdout closed is dying: wait this long for its exit status
STDERR_LINES = 50  # the runner's last stderr lines kept for error messages


def last_error_line(stderr: str) -> str:
    """The runner's own `error: ...` line if there is one, else the last non-empty line."""
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: ") :]
    return lines[-1] if lines else "no message on stderr"


def how_it_ended(returncode: int | None) -> str:
    """`exit 3` or `signal 6 (SIGABRT)`: a process's end in words."""
    if returncode is None:
        return "still running"
    if returncode >= 0:
        return f"exit {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"
    return f"signal {-returncode} ({name})"


class _Process:
    """One running `serve` process, with threads draining its stdout (answers, into a queue) and
    its stderr (the last lines, for messages), so that neither pipe can fill up and block it."""

    def __init__(self, argv: list[str], env: dict[str, str] | None, cwd: str | None):
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            preexec_fn=die_with_parent(),  # killed with bnpipe, even by kill -9 (qemu too)
        )
        self.ready = False  # its ready line was read
        self.answers: queue.Queue[str | None] = queue.Queue()
        self.stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self.threads = [
            threading.Thread(
                target=self._drain,
                daemon=True,
                name="bnpipe-runner-stdout",
                args=(self.popen.stdout, self.answers.put, True),
            ),
            threading.Thread(
                target=self._drain,
                daemon=True,
                name="bnpipe-runner-stderr",
                args=(self.popen.stderr, self.stderr.append, False),
            ),
        ]
        for thread in self.threads:
            thread.start()

    @staticmethod
    def _drain(pipe, put: Callable, mark_end: bool) -> None:
        for raw in iter(pipe.readline, b""):
            put(raw.decode("utf-8", errors="replace"))
        if mark_end:  # None in the answer queue: stdout closed
            put(None)

    def next_line(self, deadline: float) -> str | None:
        """The next line on stdout; None when stdout closed; TimeoutError past the deadline."""
        while True:
            try:
                line = self.answers.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError from None
            if line is None or line.strip():
                return line

    def send(self, request: dict) -> None:
        try:
            self.popen.stdin.write((json.dumps(request) + "\n").encode("utf-8"))
            self.popen.stdin.flush()
        except OSError:  # it died (broken pipe): the wait for its answer finds out how
            pass

    def reap(self) -> str:
        """Wait for a process whose stdout closed; its end in words and its last stderr line."""
        try:
            self.popen.wait(timeout=REAP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self._join()
        return f"{how_it_ended(self.popen.returncode)}: {last_error_line(''.join(self.stderr))}"

    def stop(self, kill: bool) -> None:
        """Close stdin and let it exit (kill=False), or kill it; wait for it either way."""
        if self.popen.poll() is None:
            if not kill:
                try:
                    self.popen.stdin.close()
                except OSError:
                    pass
                try:
                    self.popen.wait(timeout=CLOSE_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    kill = True
            if kill:
                self.popen.kill()
                self.popen.wait()
        self._join()

    def _join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=REAP_TIMEOUT_S)
        for pipe in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            try:
                pipe.close()
            except OSError:
                pass


class ServedRunner:
    """`device_runner.py serve`, started on the first request (or by start()) and kept for the
    next ones.

    command() → (argv, env, cwd) of the serve process (env None: this process's); target names
    the target in messages, and runner the process; timeout bounds start-up plus one request, in
    seconds. Thread-safe: requests are answered one at a time. close() is idempotent; a closed
    runner starts again on the next request.
    """

    def __init__(
        self,
        command: Callable[[], tuple[list[str], dict | None, str | None]],
        target: str,
        timeout: float,
        runner: str = "the device runner",
    ):
        self.command, self.target, self.timeout = command, target, timeout
        self.runner = runner
        self.last_crash = ""  # how the last process that died on a request ended, in words
        self._lock = threading.Lock()
        self._state = {"process": None}  # shared with the finalizer, which must not hold self
        self.starts = 0  # processes started so far (one more after each crash or close())
        self.ready_seconds = 0.0  # time requests spent waiting for a started process to be ready
        self.requests = 0  # requests sent so far; each carries its number as its id
        weakref.finalize(self, _stop, self._state, False)

    @property
    def process(self) -> subprocess.Popen | None:
        """The current serve process (None before the first request and after close())."""
        proc = self._state["process"]
        return proc.popen if proc is not None else None

    def start(self) -> None:
        """Start the process now, if none runs, without waiting for it to be ready: its start-up
        then overlaps whatever the caller does before the first request. OSError passes through."""
        with self._lock:
            proc = self._state["process"]
            if proc is None or proc.popen.poll() is not None:
                self._spawn()

    def request(self, request: dict, what: str) -> dict:
        """The runner's result for one request ({"command": "run", ...} without "id").

        `what` names the request's model in messages. ModelError when the runner refused the
        request (exit 2); ModelCrashed when it died on it (a signal, or an exit without an
        answer); TargetUnavailable when the runner cannot start, has no LiteRT, fails for
        another reason or does not answer within the timeout.
        """
        with self._lock:
            deadline = time.monotonic() + self.timeout
            proc = self._started(deadline)
            self.requests += 1
            request = {**request, "id": self.requests}
            try:
                proc.send(request)
                line = proc.next_line(deadline)
            except TimeoutError:
                self._drop(kill=True)
                raise TargetUnavailable(
                    f"{self.target}: {self.runner} did not answer within "
                    f"{self.timeout:g} s ({what})"
                ) from None
            except BaseException:  # Ctrl-C while it works: stop it now, not after the request
                self._drop(kill=True)
                raise
            if line is None:  # it died on this request: the request's fault, not the target's
                self._state["process"] = None
                self.last_crash = proc.reap()
                raise ModelCrashed(
                    f"{self.target}: {self.runner} crashed on {what} ({self.last_crash}); the "
                    "file is malformed or uses an operator in a way the kernels do not accept"
                )
            return self._result(line, request["id"])

    def close(self) -> None:
        """Stop the runner: close its stdin and wait for it to exit (killed after
        CLOSE_TIMEOUT_S). Idempotent."""
        with self._lock:
            self._drop(kill=False)

    def abort(self) -> None:
        """Kill the runner now, without waiting for the request another thread may be waiting
        on (that request then fails): for Ctrl-C while several runners work at once."""
        _stop(self._state, kill=True)

    def __enter__(self) -> ServedRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------

    def _spawn(self) -> _Process:
        """A new process (the old one, if any, stopped); its ready line is not read yet."""
        if self._state["process"] is not None:
            self._drop(kill=True)
        argv, env, cwd = self.command()
        try:
            proc = _Process(argv, env, cwd)
        except OSError as err:
            raise TargetUnavailable(f"{self.target}: cannot start {argv[0]}: {err}") from None
        self._state["process"] = proc
        self.starts += 1
        return proc

    def _started(self, deadline: float) -> _Process:
        """The running process, started (and its ready line read) if there is none."""
        proc = self._state["process"]
        if proc is not None and proc.ready and proc.popen.poll() is None:
            return proc
        if proc is None or (proc.ready and proc.popen.poll() is not None):
            # none yet, or it died between requests (killed from outside): start afresh
            proc = self._spawn()
        t0 = time.monotonic()
        try:
            line = proc.next_line(deadline)
        except TimeoutError:
            self._drop(kill=True)
            raise TargetUnavailable(
                f"{self.target}: {self.runner} did not start within {self.timeout:g} s"
            ) from None
        except BaseException:  # Ctrl-C while it starts
            self._drop(kill=True)
            raise
        if line is None:
            self._state["process"] = None
            raise TargetUnavailable(f"{self.target}: {self.runner} failed ({proc.reap()})")
        try:
            ready = json.loads(line)
        except json.JSONDecodeError:
            ready = None
        if not isinstance(ready, dict) or ready.get("ready") is not True:
            self._drop(kill=True)
            raise TargetUnavailable(
                f"{self.target}: {self.runner} printed "
                f"{line.strip()[:200]!r} instead of its ready line"
            )
        proc.ready = True
        self.ready_seconds += time.monotonic() - t0
        return proc

    def _result(self, line: str, request_id: int) -> dict:
        try:
            reply = json.loads(line)
            ok, answered = reply["ok"], reply["id"]
        except (json.JSONDecodeError, KeyError, TypeError):
            self._drop(kill=True)
            raise TargetUnavailable(
                f"{self.target}: {self.runner} answered {line.strip()[:200]!r}, not a JSON reply"
            ) from None
        if answered != request_id:
            self._drop(kill=True)
            raise TargetUnavailable(
                f"{self.target}: {self.runner} answered request "
                f"{answered!r} when {request_id} was asked"
            )
        if ok:
            return reply["result"]
        message = " ".join(str(reply.get("error", "no message")).split())
        code = reply.get("exit")
        if code == RUNNER_EXIT_BAD_INPUT:
            raise ModelError(f"{self.target}: {message}")
        raise TargetUnavailable(f"{self.target}: {self.runner} failed (exit {code}): {message}")

    def _drop(self, kill: bool) -> None:
        _stop(self._state, kill)


def _stop(state: dict, kill: bool) -> None:
    proc, state["process"] = state["process"], None
    if proc is not None:
        proc.stop(kill=kill)
