"""The `host` and `host-ref` targets: LiteRT in this process, on this CPU.

    host      the default op resolver, which applies the XNNPACK delegate (the fast path a phone
              app gets by default)
    host-ref  OpResolverType.BUILTIN_REF: LiteRT's reference kernels, the numerical truth every
              other target is compared with

Both call the standalone runner's functions (runtimes/device_runner.py) in-process, so the host
runs exactly the code a board runs. Every model file is parsed by `pipeline.tflite_file` first: a
malformed flatbuffer is a ModelError in Python, never a crash in LiteRT's C++ loader. A file can be
well formed and still abort a kernel (a SOFTMAX with beta 0 aborts the reference kernels), so
before a model's first run in this process it is loaded and run once on zeros in a child process
(`probe_in_child`): a crash there is a ModelError here, and the CLI's process lives on. verify
starts that child early (`start_probe`) and waits for it just before the candidates run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np

from pipeline.errors import ModelError, TargetUnavailable
from pipeline.runtimes import RunResult
from pipeline.tfenv import native_noise_filtered
from pipeline.tflite_file import TfliteInfo, parse_tflite, read_tflite

INSTALL_HINT = "pip install ai-edge-litert"
# Model contents whose check is remembered (by sha256); a verify run has about six candidates.
CHECKED_CACHE_SIZE = 32
_checked: OrderedDict[bytes, TfliteInfo] = OrderedDict()


def checked_tflite(path) -> TfliteInfo:
    """read_tflite(path), remembered by the file's content: the same bytes are parsed only once.

    Parsing in Python costs ~0.2 ms per model (~1.4 ms before the bounds-checked reader), a large
    share of what LiteRT needs to run 10,000 digits samples, and verify checks each candidate and
    then runs it on host-ref and host. The key is the sha256 of the bytes read now (not the name or
    the mtime), so a changed file is always parsed again. Returns a copy whose `path` is this path.
    ModelError as read_tflite.
    """
    return _checked_with_key(Path(path))[0]


def _checked_with_key(path: Path) -> tuple[TfliteInfo, bytes]:
    """checked_tflite, and the sha256 of the bytes it checked (the key of the probes, too)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        read_tflite(path)  # raises the ModelError that names what is wrong with the path
        raise ModelError(f"cannot read {path}: {err}") from None  # it could be read after all
    key = hashlib.sha256(data).digest()
    info = _checked.get(key)
    if info is None:
        info = parse_tflite(data, str(path))
        _checked[key] = info
        while len(_checked) > CHECKED_CACHE_SIZE:
            _checked.popitem(last=False)
    else:
        _checked.move_to_end(key)
    return dataclasses.replace(info, path=str(path)), key


def forget_checked() -> None:
    """Drop every remembered check and probe (the next use checks and probes again)."""
    _checked.clear()
    _probed.clear()


def forget_parsed() -> None:
    """Drop the remembered structural checks only; probes stay remembered.

    A verify run parses each candidate once, while a probe is paid once per file per process:
    scripts/measure_verify_overhead.py times the two apart.
    """
    _checked.clear()


# Run by `sys.executable -c` with the runner's directory, then "R:PATH" per model (R = 1 for the
# reference kernels): loads each, runs one sample of zeros, prints "ok" after each. A ValueError
# (the runner's message for what LiteRT refuses cleanly) is left for the real run to report.
_PROBE = (
    "import sys\n"
    "import numpy as np\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "import device_runner as runner\n"
    "for arg in sys.argv[2:]:\n"
    "    ref, path = arg.split(':', 1)\n"
    "    try:\n"
    "        interp = runner.load_interpreter(path, reference=ref == '1')\n"
    "        d = interp.get_input_details()[0]\n"
    "        runner.run_batched(interp, np.zeros((1, *d['shape'][1:]), d['dtype']), batch=1)\n"
    "    except ValueError:\n"
    "        pass\n"
    "    print('ok', flush=True)\n"
)
PROBE_TIMEOUT_S = 120
_probed: set[tuple[bytes, bool]] = set()  # (sha256 of the bytes, reference kernels) that ran


def probe_in_child(models: list[tuple[str | os.PathLike, bool]]) -> None:
    """Load and run each (model, reference kernels?) once, in one child process; ModelError naming
    the first model that crashes it. Remembered by content, so each file is probed once per process.

    One child serves them all (≈ 0.1–0.2 s: Python, numpy and LiteRT start once). The same as
    start_probe(models).wait(); start the probe early to let other work hide its wall time.
    """
    start_probe(models).wait()


def start_probe(models: list[tuple[str | os.PathLike, bool]]) -> Probe:
    """Start the probe of probe_in_child in a child process and return at once; Probe.wait() gives
    its verdict. Models already probed in this process (by content) are not run again."""
    todo, keys = [], []
    for path, reference in models:
        key = (hashlib.sha256(Path(path).read_bytes()).digest(), bool(reference))
        if key not in _probed and key not in keys:
            todo.append((Path(path), bool(reference)))
            keys.append(key)
    if not todo:
        return Probe([], [], None)
    runner_dir = str(Path(__file__).resolve().parent)  # where device_runner.py lives
    proc = subprocess.Popen(
        [sys.executable, "-c", _PROBE, runner_dir, *[f"{int(ref)}:{path}" for path, ref in todo]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    return Probe(todo, keys, proc)


def _stop(proc: subprocess.Popen) -> None:
    """Kill the child if it still runs, read its pipes to the end and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


class Probe:
    """A probe under way in a child process (start_probe). wait() for its verdict.

    A probe dropped without wait() (an error came first) has its child killed and reaped, and
    remembers nothing: only wait() records which models ran.
    """

    def __init__(self, todo: list[tuple[Path, bool]], keys: list, proc: subprocess.Popen | None):
        self.models = todo  # (path, reference kernels?) the child runs: those not probed before
        self._keys, self._proc = keys, proc
        self._error: ModelError | None = None
        self._reaper = weakref.finalize(self, _stop, proc) if proc is not None else None

    def wait(self) -> None:
        """Block until the child is done (at most PROBE_TIMEOUT_S more); ModelError naming the first
        model that crashed it, or when it timed out. A second wait() gives the same verdict."""
        if self._proc is not None:
            self._error = self._verdict(self._proc)  # an interrupt here leaves it to wait for again
            self._proc = None
        if self._error is not None:
            raise self._error

    def _verdict(self, proc: subprocess.Popen) -> ModelError | None:
        try:
            out, err = proc.communicate(timeout=PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._reaper()
            return ModelError(
                f"loading {', '.join(str(p) for p, _ in self.models)} in LiteRT took "
                f"more than {PROBE_TIMEOUT_S} s"
            )
        self._reaper.detach()
        done = out.split().count("ok")
        _probed.update(self._keys[:done])
        if done == len(self.models):
            return None
        path, reference = self.models[done]
        kernels = "reference" if reference else "default (XNNPACK)"
        how = (
            f"signal {-proc.returncode}"
            if proc.returncode < 0
            else f"exit {proc.returncode}: {(err.strip().splitlines() or ['no message'])[-1]}"
        )
        return ModelError(
            f"{path} crashes LiteRT's {kernels} kernels when loaded and run once on "
            f"zeros ({how}); the file is malformed or uses an operator in a way the "
            "kernels do not accept"
        )


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _runner():
    """device_runner, imported on first use (it imports LiteRT at module level)."""
    from pipeline.runtimes import device_runner

    return device_runner


class HostRuntime:
    """LiteRT on the host CPU, in-process.

    reference=False: the default kernels (XNNPACK delegate), target name "host".
    reference=True: the builtin reference kernels, target name "host-ref".
    threads=None lets LiteRT choose; batch is the rows per invoke (inputs are run in batches,
    never one Python call per sample).
    """

    def __init__(
        self, reference: bool = False, threads: int | None = None, batch: int | None = None
    ):
        if threads is not None and int(threads) < 0:
            raise ValueError(f"threads must be None or >= 0, got {threads}")
        if batch is not None and int(batch) < 1:
            raise ValueError(f"batch must be None or >= 1, got {batch}")
        self.reference = bool(reference)
        self.threads = int(threads) if threads else None
        self.batch = int(batch) if batch is not None else None
        self.name = "host-ref" if self.reference else "host"

    @property
    def kernels(self) -> str:
        return "builtin_ref" if self.reference else "default (XNNPACK delegate)"

    def available(self) -> tuple[bool, str]:
        try:
            import ai_edge_litert  # noqa: F401
            from ai_edge_litert.interpreter import OpResolverType  # noqa: F401
        except ImportError as err:
            return False, f"{self.name}: LiteRT is not importable ({err}): {INSTALL_HINT}"
        return True, ""

    def _check(self, model_path) -> Path:
        """Structural check of the file before any interpreter sees it (ModelError if bad)."""
        ok, why = self.available()
        if not ok:
            raise TargetUnavailable(why)
        path = Path(model_path)
        _, key = _checked_with_key(path)
        if (key, self.reference) not in _probed:  # else the bytes just checked ran in a probe
            probe_in_child([(path, self.reference)])
        return path

    def run(self, model_path: str, inputs: np.ndarray) -> RunResult:
        """Run every row of `inputs` (model input dtype) in batched invokes. Copies; mutates nothing.

        outputs: (N, *output features), the raw output tensor values (int8 codes for an int8 model).
        """
        runner = _runner()
        path = self._check(model_path)
        batch = self.batch or runner.DEFAULT_BATCH
        try:
            with native_noise_filtered():  # LiteRT's "Created … XNNPACK delegate" line
                interp = runner.load_interpreter(
                    path, reference=self.reference, threads=self.threads
                )
                outputs, seconds = runner.run_batched(interp, np.asarray(inputs), batch=batch)
        except ValueError as err:  # the runner's one message for a bad file, dtype or shape
            raise ModelError(f"{self.name}: {_one_line(err)}") from None
        info = {
            **runner.environment(),
            "kernels": self.kernels,
            "reference": self.reference,
            "threads": self.threads,
            "batch": batch,
            "n": int(outputs.shape[0]),
            "emulated": False,
        }
        return RunResult(
            target=self.name, outputs=outputs, invoke_seconds=float(seconds), info=info
        )

    def bench(self, model_path: str, sample: np.ndarray, **kw) -> dict:
        """device_runner.bench for this target's kernels; keyword arguments pass through.

        threads defaults to (self.threads,) when the runtime was given a thread count.
        """
        runner = _runner()
        path = self._check(model_path)
        if self.threads and "threads" not in kw:
            kw["threads"] = (self.threads,)
        try:
            with native_noise_filtered():
                result = runner.bench(path, np.asarray(sample), reference=self.reference, **kw)
        except ValueError as err:
            raise ModelError(f"{self.name}: {_one_line(err)}") from None
        result.update(target=self.name, kernels=self.kernels, emulated=False)
        return result
