"""Arm's Vela compiler for an Ethos-U NPU, run in a child process, and what it computed.

Vela (PyPI `ethos-u-vela`) is run as its own command line under this python (`python -c` its
`main`), with a timeout, in a scratch dir: a model that crashes or hangs it costs the child, never
bnpipe. It is given a copy of the file with a fixed batch of 1 (tflite/fixed_batch.py), so it
has no dynamic batch axis to warn about. Its figures are read from the files it writes, never
recomputed:

    <stem>_summary_<system config>.csv   SRAM and flash used (KiB), cycles, inference time, MACs
    <stem>_per-layer.csv                 one row per NPU operator (--verbose-performance)

and the operators it leaves to the CPU, with its reason, from its warnings on stdout:

    Warning (supported operators) operator: REVERSE_V2, ofm: 'model/lambda/ReverseV2'
    Reason: Unsupported reverse mask.
    Axis attribute is not supported.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.errors import ModelCrashed, ModelError, TargetUnavailable

TIMEOUT_S = 300  # one compile: bnpipe's models take under a second, a 250 KB CNN about two
CONFIG_FILE = "Arm/vela.ini"  # Vela's own system configs and memory modes (shipped with it)
INSTALL_HINT = "pip install ethos-u-vela"
_MAIN = "import sys; from ethosu.vela.vela import main; sys.exit(main(sys.argv[1:]))"
_CPU_WARNING = re.compile(
    r"^Warning \(supported operators\) operator: (?P<op>\w+), ofm: '(?P<name>.*)'$\n"
    r"(?P<reason>(?:^(?!Warning|\s*$).*$\n?)*)",
    re.MULTILINE,
)


@dataclass(kw_only=True)
class VelaResult:
    """Vela's figures for one model on one accelerator configuration."""

    summary: dict[str, str]  # the summary CSV's one row, as Vela wrote it
    layers: list[dict[str, str]]  # the per-layer CSV's rows
    cpu_ops: list[dict[str, str]]  # {"op", "name", "reason"} of each operator left to the CPU
    seconds: float  # the compile's wall time, the child's start-up included
    figures: dict[str, Any] = field(default_factory=dict)  # the summary's numbers (figures())


def vela_version() -> str:
    try:
        return importlib.metadata.version("ethos-u-vela")
    except importlib.metadata.PackageNotFoundError:
        return ""


def options(accelerator: str, system_config: str, memory_mode: str) -> list[str]:
    """The Vela command-line options bnpipe compiles with (a test runs `vela` with the same)."""
    return [
        "--config",
        CONFIG_FILE,
        "--accelerator-config",
        accelerator,
        "--system-config",
        system_config,
        "--memory-mode",
        memory_mode,
    ]


def compile_for(
    data: bytes, stem: str, accelerator: str, system_config: str, memory_mode: str
) -> VelaResult:
    """Compile the model `data` (bytes of a .tflite, batch fixed by the caller or not) with Vela.

    TargetUnavailable when Vela is not installed; ModelCrashed when it crashes or overruns
    TIMEOUT_S; ModelError when it refuses the model or the configuration (its last line)."""
    import time

    if importlib.util.find_spec("ethosu") is None:
        raise TargetUnavailable(
            f"Vela (ethos-u-vela) is not installed for {sys.executable}: {INSTALL_HINT}"
        )
    with tempfile.TemporaryDirectory(prefix="bnpipe-vela-") as tmp:
        model = Path(tmp) / f"{stem}.tflite"
        model.write_bytes(data)
        out = Path(tmp) / "out"
        command = [sys.executable, "-c", _MAIN, str(model), "--output-dir", str(out)]
        command += options(accelerator, system_config, memory_mode)
        command += ["--verbose-performance"]
        t0 = time.perf_counter()
        proc = _run(command, tmp, stem)
        seconds = time.perf_counter() - t0
        summary = _read_csv(out / f"{stem}_summary_{system_config}.csv", proc, stem)
        layers = _read_csv(out / f"{stem}_per-layer.csv", proc, stem, many=True)
    return VelaResult(
        summary=summary[0],
        layers=layers,
        cpu_ops=cpu_operators(proc.stdout),
        seconds=seconds,
        figures=figures(summary[0]),
    )


def _run(command: list[str], cwd: str, stem: str) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(
            command,
            cwd=cwd,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise ModelCrashed(f"vela: compiling {stem} took more than {TIMEOUT_S} s") from None
    if proc.returncode < 0:
        raise ModelCrashed(f"vela crashed compiling {stem} (signal {-proc.returncode})")
    if proc.returncode != 0:
        raise ModelError(f"vela refused {stem}: {_last_line(proc)}")
    return proc


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    return (lines[-1] if lines else f"exit code {proc.returncode}")[:300]


def _read_csv(path: Path, proc, stem: str, many: bool = False) -> list[dict[str, str]]:
    if not path.is_file() and many:  # no operator on the NPU: no per-layer table
        return []
    if not path.is_file():
        raise ModelError(f"vela wrote no {path.name} for {stem}: {_last_line(proc)}")
    with path.open(newline="") as f:
        rows = [
            {k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(f)
        ]
    if not rows and not many:
        raise ModelError(f"vela's {path.name} for {stem} is empty")
    return rows


def cpu_operators(stdout: str) -> list[dict[str, str]]:
    """Each operator Vela's warnings place on the CPU: its TFLite type, output tensor, reason."""
    return [
        {
            "op": m["op"],
            "name": m["name"],
            "reason": " ".join(ln.strip() for ln in m["reason"].splitlines()).removeprefix(
                "Reason: "
            ),
        }
        for m in _CPU_WARNING.finditer(stdout)
    ]


def figures(summary: dict[str, str]) -> dict[str, Any]:
    """The summary row's figures fit.json carries. Vela states memory in KiB (multiples of
    1/128 KiB, so bytes are exact); flash is whatever holds the weights and command stream."""

    def kib(key: str) -> int:
        return round(float(summary.get(key) or 0) * 1024)

    return {
        "sram_bytes": kib("sram_memory_used"),
        "flash_bytes": kib("off_chip_flash_memory_used")
        + kib("on_chip_flash_memory_used")
        + kib("dram_memory_used"),
        "npu_cycles": int(float(summary["cycles_npu"])),
        "total_cycles": int(float(summary["cycles_total"])),
        "inference_s": float(summary["inference_time"]),
        "inferences_per_s": float(summary["inferences_per_second"]),
        "macs": int(float(summary["nn_macs"])),
        "clock_hz": float(summary["core_clock"]),
        "accelerator": summary["accelerator_configuration"],
        "system_config": summary["system_config"],
        "memory_mode": summary["memory_mode"],
    }
