"""The `ssh:USER@HOST[:PORT]` target: the standalone runner on a real board, over ssh.

The board needs python3 with numpy and LiteRT (`pip install numpy ai-edge-litert`, or the older
`tflite-runtime`) and key-based ssh access; nothing of bnpipe is installed there. Each run makes
a fresh remote dir (`mktemp -d`), copies device_runner.py, the model and the inputs into it with
scp, runs the runner, copies the outputs back and removes the dir.

Settings, besides the constructor's arguments:
    BNPIPE_SSH_PYTHON   the remote python command (default `python3`)
    BNPIPE_SSH_OPTS     extra ssh/scp options, shell-quoted (e.g. `-F /dev/null -o Foo=bar`)

Only the standard library and numpy are imported here (no TensorFlow, no LiteRT).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from pipeline.core.errors import BnpipeError, TargetUnavailable
from pipeline.runtimes import RunResult
from pipeline.runtimes.arm64 import RUNNER, bench_options, last_error_line, model_file, runner_json

DEFAULT_CONNECT_TIMEOUT_S = 10  # a board on the LAN answers in well under a second
DEFAULT_TIMEOUT_S = 600  # a whole run or bench on a slow board
SSH_EXIT_CONNECTION = 255  # ssh's own failures (unreachable, refused, auth) exit 255

_SPEC = re.compile(
    r"^(?P<user>[A-Za-z0-9_.][A-Za-z0-9_.-]*)"
    r"@(?P<host>[A-Za-z0-9_.][A-Za-z0-9_.-]*|\[[0-9A-Fa-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?$"
)
# Imports the runner needs on the board; tflite_runtime stands in for ai_edge_litert.
_PROBE = (
    "import numpy\ntry:\n    import ai_edge_litert\nexcept ImportError:\n    import tflite_runtime"
)


def parse_spec(spec: str) -> tuple[str, str, int]:
    """(user, host, port) from `USER@HOST` or `USER@HOST:PORT`; BnpipeError otherwise."""
    match = _SPEC.match(spec or "")
    port = int(match.group("port") or 22) if match else 0
    if not match or not 1 <= port <= 65535:
        raise BnpipeError(
            f"bad ssh target {spec!r}: expected USER@HOST or USER@HOST:PORT "
            f"(port 1-65535), e.g. pi@raspberrypi.local or root@192.0.2.7:2222"
        )
    return match.group("user"), match.group("host").strip("[]"), port


class SshRuntime:
    """Runs a .tflite model with the board's own LiteRT over ssh. See the module docstring."""

    def __init__(
        self,
        spec: str,
        identity_file: str | None = None,
        remote_python: str | None = None,
        ssh_options: str | None = None,
        reference: bool = False,
        threads: int | None = None,
        batch: int = 1024,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        timeout: float = DEFAULT_TIMEOUT_S,
    ):
        self.user, self.host, self.port = parse_spec(spec)
        self.spec = spec
        self.name = f"ssh:{spec}"
        if identity_file is not None and not Path(identity_file).is_file():
            raise BnpipeError(f"ssh identity file not found: {identity_file!r}")
        self.identity_file = identity_file
        self.remote_python = remote_python or os.environ.get("BNPIPE_SSH_PYTHON") or "python3"
        opts = ssh_options if ssh_options is not None else os.environ.get("BNPIPE_SSH_OPTS", "")
        try:
            self.extra_options = shlex.split(opts)
        except ValueError as err:
            raise BnpipeError(f"cannot parse the ssh options {opts!r}: {err}") from None
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.reference, self.threads, self.batch = reference, threads, batch
        self.connect_timeout, self.timeout = connect_timeout, timeout

    # -- plumbing -------------------------------------------------------------------------------

    def _common_options(self) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout:g}"]
        if self.identity_file:
            opts += ["-i", self.identity_file, "-o", "IdentitiesOnly=yes"]
        return opts + self.extra_options

    def _remote(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # scp needs brackets for IPv6
        return f"{self.user}@{host}:{path}"

    def _python(self) -> str:
        return " ".join(shlex.quote(word) for word in shlex.split(self.remote_python))

    def _exec(self, cmd: list[str], what: str, timeout: float | None = None):
        if shutil.which(cmd[0]) is None:
            raise TargetUnavailable(f"{self.name}: `{cmd[0]}` is not installed on this machine")
        try:
            return subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=timeout or self.timeout,
            )
        except subprocess.TimeoutExpired:
            raise TargetUnavailable(
                f"{self.name}: {what} did not finish within {timeout or self.timeout:g} s"
            ) from None

    def _ssh(self, remote_command: str, what: str, timeout: float | None = None):
        cmd = [
            "ssh",
            "-p",
            str(self.port),
            *self._common_options(),
            f"{self.user}@{self.host}",
            remote_command,
        ]
        return self._exec(cmd, what, timeout)

    def _scp(self, sources: list[str], dest: str, what: str) -> None:
        cmd = ["scp", "-q", "-P", str(self.port), *self._common_options(), *sources, dest]
        self._checked(self._exec(cmd, what), what)

    def _checked(self, proc: subprocess.CompletedProcess, what: str):
        if proc.returncode != 0:
            raise TargetUnavailable(f"{self.name}: {what} failed: {last_error_line(proc.stderr)}")
        return proc

    def _with_remote_dir(
        self, files: dict[str, Path], runner_args: list[str], fetch: str | None, local_dir: Path
    ) -> dict:
        """Copy `files` (remote name → local path) and the runner into a fresh remote dir, run
        the runner there with `runner_args`, copy `fetch` back into local_dir, remove the dir."""
        what = "creating a remote temp dir"
        made = self._checked(
            self._ssh("mktemp -d -t bnpipe.XXXXXX", what, timeout=self.connect_timeout + 30), what
        )
        remote_dir = made.stdout.strip().splitlines()[-1] if made.stdout.strip() else ""
        if not remote_dir.startswith("/"):
            raise TargetUnavailable(f"{self.name}: `mktemp -d` printed {made.stdout!r}, not a path")
        try:
            staged = local_dir / "upload"
            staged.mkdir()
            for name, path in {"device_runner.py": RUNNER, **files}.items():
                shutil.copyfile(path, staged / name)
            self._scp(
                [str(p) for p in sorted(staged.iterdir())],
                self._remote(remote_dir + "/"),
                "copying the model and inputs",
            )
            command = "cd {} && {} device_runner.py {}".format(
                shlex.quote(remote_dir),
                self._python(),
                " ".join(shlex.quote(a) for a in runner_args),
            )
            proc = self._ssh(command, "the device runner")
            if proc.returncode == SSH_EXIT_CONNECTION:
                self._checked(proc, "the device runner")
            if proc.returncode == 127:  # the remote shell found no such command
                raise TargetUnavailable(
                    f"{self.name}: remote python {self.remote_python!r} not found "
                    f"(set BNPIPE_SSH_PYTHON): {last_error_line(proc.stderr)}"
                )
            result = runner_json(proc, self.name)
            if fetch is not None:
                self._scp(
                    [self._remote(f"{remote_dir}/{fetch}")],
                    str(local_dir / fetch),
                    "copying the outputs back",
                )
            return result
        finally:
            # Best effort: a board that went away keeps a few KB in its temp dir.
            self._ssh(
                f"rm -rf {shlex.quote(remote_dir)}",
                "removing the remote temp dir",
                timeout=self.connect_timeout + 30,
            )

    def _kernel_args(self) -> list[str]:
        args = ["--reference"] if self.reference else []
        if self.threads:
            args += ["--threads", str(self.threads)]
        return args

    # -- the Runtime protocol -------------------------------------------------------------------

    def available(self) -> tuple[bool, str]:
        try:
            proc = self._ssh(
                f"{self._python()} -c {shlex.quote(_PROBE)}",
                "the LiteRT check",
                timeout=self.connect_timeout + 30,
            )
        except TargetUnavailable as err:
            return False, str(err)
        if proc.returncode == SSH_EXIT_CONNECTION:
            return False, (
                f"cannot reach {self.name}: {last_error_line(proc.stderr)}; check that the "
                "board is up, that `ssh -o BatchMode=yes USER@HOST` logs in with a key, "
                "and that its python3 has numpy and ai-edge-litert"
            )
        if proc.returncode == 127:  # the remote shell found no such command
            return False, (
                f"remote python {self.remote_python!r} not found on {self.name} "
                f"(set BNPIPE_SSH_PYTHON): {last_error_line(proc.stderr)}"
            )
        if proc.returncode != 0:
            return False, (
                f"{self.remote_python} on {self.name} cannot import numpy and LiteRT "
                f"({last_error_line(proc.stderr)}); there: pip install numpy "
                f"ai-edge-litert, or set BNPIPE_SSH_PYTHON"
            )
        return True, ""

    def run(self, model_path: str, inputs: np.ndarray) -> RunResult:
        """Run every row of `inputs` (model input dtype) on the board. Copies; mutates nothing."""
        model = model_file(model_path, self.name)
        with tempfile.TemporaryDirectory(prefix="bnpipe-ssh-") as tmp:
            x_path = Path(tmp) / "inputs.npy"
            np.save(x_path, np.asarray(inputs), allow_pickle=False)
            result = self._with_remote_dir(
                {"model.tflite": model, "inputs.npy": x_path},
                [
                    "run",
                    "--model",
                    "model.tflite",
                    "--inputs",
                    "inputs.npy",
                    "--outputs",
                    "outputs.npy",
                    "--batch",
                    str(self.batch),
                    *self._kernel_args(),
                ],
                fetch="outputs.npy",
                local_dir=Path(tmp),
            )
            outputs = np.load(Path(tmp) / "outputs.npy", allow_pickle=False)
        info = {**result, "emulated": False, "host": self.host, "port": self.port}
        return RunResult(
            target=self.name,
            outputs=outputs,
            invoke_seconds=float(result["invoke_seconds"]),
            info=info,
        )

    def bench(
        self,
        model_path: str,
        sample: np.ndarray,
        batch_sizes=(1, 32, 1024),
        threads=(1, None),
        warmup: int = 20,
        runs: int = 200,
    ) -> dict:
        """device_runner.bench on the board; the runner's dict plus "emulated": False."""
        model = model_file(model_path, self.name)
        with tempfile.TemporaryDirectory(prefix="bnpipe-ssh-") as tmp:
            x_path = Path(tmp) / "sample.npy"
            np.save(x_path, np.asarray(sample), allow_pickle=False)
            args = [
                "bench",
                "--model",
                "model.tflite",
                "--inputs",
                "sample.npy",
                *bench_options(batch_sizes, threads, warmup, runs),
            ]
            if self.reference:
                args.append("--reference")
            result = self._with_remote_dir(
                {"model.tflite": model, "sample.npy": x_path}, args, fetch=None, local_dir=Path(tmp)
            )
        result.update(emulated=False, host=self.host, port=self.port)
        return result
