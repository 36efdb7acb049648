"""The `arm64` target: LiteRT's aarch64 build under QEMU user-mode emulation.

`scripts/setup_arm64_emulator.sh` unpacks qemu-aarch64, an arm64 Debian python3.11 sysroot and
the aarch64 wheels of numpy and ai-edge-litert into a cache dir. This runtime writes the inputs
to a temporary .npy, has the emulated python run them through `device_runner.py` and reads the
raw outputs back, so the numbers come from the same aarch64 kernels (XNNPACK's NEON paths, or the
reference kernels) that a Cortex-A phone or board would run. Timings are of the emulator, not of
any real chip: use them only to compare models with each other inside one emulated run.

The emulated python takes ≈ 3-4 s to import numpy and LiteRT, more than a small model's whole
run, so one `device_runner.py serve` process (started on the first run() or bench()) answers
every model of a runtime object until close() (see served.py). Each request gets a fresh
interpreter, as the one-shot `run` command would: the outputs are the same bit for bit. A model
that crashes LiteRT in the emulator is a ModelError for that model; the next one gets a new
process. Use the runtime as a context manager, or call close(); it is also closed when collected
and at interpreter exit.

Only the standard library and numpy are imported here (no TensorFlow, no LiteRT).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from pipeline.core.errors import ModelError, TargetUnavailable
from pipeline.runtimes import RunResult
from pipeline.runtimes.served import RUNNER_EXIT_BAD_INPUT, ServedRunner, last_error_line

# The standalone runner, copied or executed as it is by every device target.
RUNNER = Path(__file__).with_name("device_runner.py")
SETUP_SCRIPT = "scripts/setup_arm64_emulator.sh"
# The emulated core. qemu's default (`max`) offers SVE/SME, which XNNPACK then picks and qemu
# emulates slowly: float32 MLP 784-256-128-10 on 2000 rows took 98-190 s of invoke under `max`,
# 11.7 s under cortex-a76 and 6.8 s under cortex-a72 (int8: 1.05 / 0.58 / 0.39 s), with identical
# int8 outputs. Cortex-A76 (Raspberry Pi 5, many phones; has the int8 dot-product instructions)
# is the Cortex-A class bnpipe targets. Override with $BNPIPE_QEMU_CPU or cpu=.
DEFAULT_CPU = "cortex-a76"
DEFAULT_TIMEOUT_S = 900  # per request (start-up included); qemu is ~50x slower than the host


def cache_dir() -> Path:
    """The dir the set-up script fills; the same rule as in the script."""
    root = os.environ.get("BNPIPE_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "bnpipe")
    return Path(root) / "arm64"


def model_file(model_path: str, target: str) -> Path:
    """The model's path, or a ModelError naming the target when there is no such file."""
    model = Path(model_path)
    if not model.is_file():
        raise ModelError(f"{target}: model file not found: {str(model)!r}")
    return model


def bench_options(batch_sizes, threads, warmup: int, runs: int) -> list[str]:
    """The runner's `bench` options for these settings (threads None or 0: LiteRT's default)."""
    return [
        "--batch-sizes",
        ",".join(str(int(b)) for b in batch_sizes),
        "--threads",
        ",".join(str(int(t or 0)) for t in threads),
        "--warmup",
        str(int(warmup)),
        "--runs",
        str(int(runs)),
    ]


def runner_json(proc: subprocess.CompletedProcess, target: str) -> dict:
    """The JSON line a successful runner printed; raise the bnpipe error for a failed one.

    Exit 2 (the runner refused the model or the inputs) → ModelError; anything else (no LiteRT,
    a crash of the emulator, a lost connection) → TargetUnavailable. Messages are one line.
    """
    if proc.returncode == RUNNER_EXIT_BAD_INPUT:
        raise ModelError(f"{target}: {last_error_line(proc.stderr)}")
    if proc.returncode != 0:
        raise TargetUnavailable(
            f"{target}: the device runner failed (exit {proc.returncode}): "
            f"{last_error_line(proc.stderr)}"
        )
    lines = [line for line in (proc.stdout or "").splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise TargetUnavailable(
            f"{target}: the device runner printed no JSON result (stdout: {proc.stdout[-200:]!r})"
        ) from None


def runner_command(
    qemu: Path, cpu: str, sysroot: Path, python: Path, site_packages: Path, args: list[str]
) -> tuple[list[str], dict[str, str], None]:
    """(argv, env, cwd) running `device_runner.py ARGS` with the emulated python.

    The host's Python settings are dropped from the environment: the emulated python must see
    only the sysroot's stdlib and the aarch64 wheels.
    """
    argv = [str(qemu), "-cpu", cpu, "-L", str(sysroot), str(python), str(RUNNER), *args]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONHOME", "PYTHONSTARTUP", "PYTHONPATH", "VIRTUAL_ENV")
    }
    env.update(PYTHONPATH=str(site_packages), PYTHONNOUSERSITE="1")
    return argv, env, None


class Arm64Runtime:
    """Runs .tflite models with aarch64 LiteRT under qemu-user. See the module docstring.

    reference=True selects the builtin reference kernels instead of XNNPACK; threads=None lets
    LiteRT choose; batch is the rows per invoke; cpu is the qemu core model (see DEFAULT_CPU);
    timeout bounds each run() or bench() (the emulator's start included), in seconds.
    """

    name = "arm64"

    def __init__(
        self,
        reference: bool = False,
        threads: int | None = None,
        batch: int = 1024,
        timeout: float = DEFAULT_TIMEOUT_S,
        directory: str | os.PathLike | None = None,
        cpu: str | None = None,
    ):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.cpu = cpu or os.environ.get("BNPIPE_QEMU_CPU") or DEFAULT_CPU
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.cpu):
            raise TargetUnavailable(
                f"arm64: bad qemu cpu model {self.cpu!r}: expected a name such as {DEFAULT_CPU} "
                f"(qemu-aarch64 -cpu help lists them)"
            )
        self.reference = reference
        self.threads = threads
        self.batch = batch
        self.timeout = timeout
        self.dir = Path(directory) if directory is not None else cache_dir()
        self.stamp = self.dir / "READY"
        self.qemu = self.dir / "qemu" / "usr" / "bin" / "qemu-aarch64"
        self.sysroot = self.dir / "sysroot"
        self.python = self.sysroot / "usr" / "bin" / "python3.11"
        self.site_packages = self.dir / "site-packages"
        # A partial, not a bound method: the runner must not keep this object alive, so that
        # dropping the runtime stops its emulator.
        self.server = ServedRunner(
            functools.partial(
                runner_command,
                self.qemu,
                self.cpu,
                self.sysroot,
                self.python,
                self.site_packages,
                ["serve"],
            ),
            target="arm64",
            timeout=timeout,
        )

    def available(self) -> tuple[bool, str]:
        if not self.stamp.is_file():
            return False, (
                f"the arm64 emulator is not set up in {self.dir}: run "
                f"`bash {SETUP_SCRIPT}` (no root needed; about a minute)"
            )
        missing = [str(p) for p in (self.qemu, self.python, self.site_packages) if not p.exists()]
        if missing:
            return False, (
                f"the arm64 emulator in {self.dir} is incomplete "
                f"(missing {missing[0]}): delete {self.stamp} and run `bash {SETUP_SCRIPT}` again"
            )
        return True, ""

    def setup_info(self) -> dict[str, str]:
        """The key=value facts the set-up script wrote into its stamp (versions, paths)."""
        info = {}
        for line in self.stamp.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                info[key.strip()] = value.strip()
        return info

    def _require(self) -> None:
        ok, why = self.available()
        if not ok:
            raise TargetUnavailable(why)

    def runner_command(self, args: list[str]) -> tuple[list[str], dict[str, str], None]:
        """(argv, env, cwd) of `device_runner.py ARGS` in this emulator, e.g. a one-shot `run`."""
        return runner_command(
            self.qemu, self.cpu, self.sysroot, self.python, self.site_packages, args
        )

    def start(self) -> None:
        """Start the emulated runner now (≈ 3-4 s to import numpy and LiteRT under qemu) without
        waiting for it, so that its start-up overlaps other work; a no-op when not set up."""
        if self.available()[0]:
            self.server.start()

    def close(self) -> None:
        """Stop the emulated runner (if one is running). Idempotent; a later run() restarts it."""
        self.server.close()

    def __enter__(self) -> Arm64Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _emulator_info(self) -> dict:
        return {
            "emulated": True,
            "qemu_cpu": self.cpu,
            "qemu_version": self.setup_info().get("qemu_version", "unknown"),
        }

    def run(self, model_path: str, inputs: np.ndarray) -> RunResult:
        """Run every row of `inputs` (model input dtype) under emulation. Mutates nothing."""
        self._require()
        model = model_file(model_path, "arm64")
        inputs = np.asarray(inputs)
        with tempfile.TemporaryDirectory(prefix="bnpipe-arm64-") as tmp:
            x_path, y_path = Path(tmp) / "inputs.npy", Path(tmp) / "outputs.npy"
            np.save(x_path, inputs, allow_pickle=False)
            result = self.server.request(
                {
                    "command": "run",
                    "model": str(model.resolve()),
                    "inputs": str(x_path),
                    "outputs": str(y_path),
                    "reference": bool(self.reference),
                    "threads": self.threads or None,
                    "batch": int(self.batch),
                },
                what=model.name,
            )
            outputs = np.load(y_path, allow_pickle=False)
        info = {**result, "emulated": True, "machine": "aarch64", **self._emulator_info()}
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
        """device_runner.bench under emulation; the runner's dict plus "emulated": True.

        Its peak RSS figures are the serving process's: "served_before" says how many requests
        it had answered before this one."""
        self._require()
        model = model_file(model_path, "arm64")
        with tempfile.TemporaryDirectory(prefix="bnpipe-arm64-") as tmp:
            x_path = Path(tmp) / "sample.npy"
            np.save(x_path, np.asarray(sample), allow_pickle=False)
            result = self.server.request(
                {
                    "command": "bench",
                    "model": str(model.resolve()),
                    "inputs": str(x_path),
                    "batch_sizes": [int(b) for b in batch_sizes],
                    "threads": [int(t or 0) for t in threads],
                    "warmup": int(warmup),
                    "runs": int(runs),
                    "reference": bool(self.reference),
                },
                what=model.name,
            )
        result.update(self._emulator_info())
        return result
