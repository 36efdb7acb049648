"""Stage 6: will each integer model fit each board asked for, and how fast does it run there.

For every integer `.tflite` (mcu.is_integer) and every board (fit/boards.py):
- a microcontroller (TFLite Micro on its CPU): flash = the model's bytes + the firmware
  allowance; RAM = the tensor arena TFLM built the model in (fit/mcu.py) + the allowance; the
  operators its firmware must register;
- an Ethos-U NPU: Vela compiles a fixed-batch copy (tflite/fixed_batch.py) with the board's
  accelerator, system config and memory mode (fit/vela.py); SRAM and flash used, cycles,
  inference time, MACs and the operators left to the CPU are Vela's own figures.
A model fits when both stay within the board's budgets. Writes fit.json, fit.md and fit.png,
then raises GateFailed (exit 1) naming every model and board that does not fit, and by how much.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.config import FitConfig
from pipeline.core.errors import BnpipeError, GateFailed, ModelError
from pipeline.core.safeio import regular_file
from pipeline.fit.boards import Board, resolve
from pipeline.store import artifacts, files
from pipeline.tflite.file import read_tflite


@dataclass(kw_only=True)
class FitResult:
    record: dict[str, Any]
    record_path: Path
    report_path: Path
    plot_path: Path
    failures: list[str]
    seconds: float


def run_fit(
    artifacts_dir: Path,
    *,
    config: FitConfig | None = None,
    tflite: list[Path] | None = None,
    say: Callable[[str], None] = lambda message: None,
) -> FitResult:
    """Check every integer model against every board of `config`; write fit.json, fit.md and
    fit.png. BnpipeError (exit 2) for no board, an unknown one or no integer model; GateFailed
    (exit 1), after the files are written, when a model does not fit a board. Not a transaction
    of its own, like verify: the stage table's commits the reports, then raises the gate."""
    from pipeline.fit.mcu import is_integer

    t0 = time.perf_counter()
    config = config or FitConfig()
    if not config.boards:
        raise BnpipeError("no board to fit: pass --board NAME (repeatable) or set [fit] boards")
    boards = resolve(config.boards, config.profiles)
    out = artifacts_dir
    paths = [Path(p) for p in tflite] if tflite else [out / n for n in files.tflite_files(out)]
    infos = {p: read_tflite(regular_file(p, "model file", ModelError)) for p in paths}
    models = [p for p, info in infos.items() if is_integer(info)]
    if not models:
        raise BnpipeError(
            f"no integer .tflite among {', '.join(p.name for p in paths) or 'none'} in {out}: "
            "run `bnpipe export` (mode int8) first or pass --tflite"
        )
    results = []
    for p in models:
        results += _model_results(p, infos[p], boards, config, say)
    failures = [r["shortfall"] for r in results if not r["fits"]]
    record = {
        "stage": "fit",
        "config": dataclasses.asdict(config),
        "boards": {b.name: dataclasses.asdict(b) for b in boards},
        "vela_version": _vela_version(boards),
        "results": results,
        "passed": not failures,
        "failures": failures,
        "timings": {"total_s": time.perf_counter() - t0},
    }
    result = _write(out, record, models, t0)
    if failures:
        raise GateFailed(
            f"{len(failures)} model/board pair(s) do not fit: " + "; ".join(failures), failures
        )
    return result


def _vela_version(boards: list[Board]) -> str | None:
    from pipeline.fit.vela import vela_version

    return vela_version() if any(b.npu for b in boards) else None


def _model_results(path: Path, info, boards: list[Board], config: FitConfig, say) -> list[dict]:
    """One entry per board for the model at `path`: the TFLM arena measured once, Vela run
    once per distinct NPU configuration."""
    from pipeline.fit.mcu import measure_arena
    from pipeline.tflite.fixed_batch import fixed_batch
    from pipeline.tflite.resolver import model_operators, resolver_lines

    allowance = (config.firmware_flash_kib * 1024, config.firmware_ram_kib * 1024)
    arena, compiled, entries = None, {}, []
    for board in boards:
        if board.npu:
            key = (board.accelerator, board.system_config, board.memory_mode)
            if key not in compiled:
                say(f"fit: Vela compiles {path.name} for {board.accelerator} ({board.name})")
                compiled[key] = _compile(fixed_batch(path.read_bytes()), path, key)
            entries.append(_npu_entry(path, board, compiled[key], allowance))
            continue
        if arena is None:
            say(f"fit: measuring the TFLM arena of {path.name}")
            arena = measure_arena(path, info)
        ops = model_operators(info)
        entry = {
            "model_bytes": info.size_bytes,
            "arena_bytes": arena.bytes,
            "arena_bytes_used": arena.used,
            "ops": ops,
            "op_resolver": resolver_lines(ops),
        }
        flash, ram = info.size_bytes + allowance[0], arena.bytes + allowance[1]
        entries.append(_entry(path, board, flash, ram, allowance, entry))
    return entries


def _compile(data: bytes, path: Path, key: tuple[str, str, str]):
    from pipeline.fit.vela import compile_for

    return compile_for(data, path.stem, *key)


def _npu_entry(path: Path, board: Board, vela, allowance: tuple[int, int]) -> dict:
    f = vela.figures
    extra = {
        "sram_bytes": f["sram_bytes"],
        "vela_flash_bytes": f["flash_bytes"],
        **{k: f[k] for k in ("npu_cycles", "total_cycles", "inference_s", "inferences_per_s")},
        **{k: f[k] for k in ("macs", "clock_hz", "accelerator", "system_config", "memory_mode")},
        "cpu_ops": vela.cpu_ops,
        "vela_seconds": vela.seconds,
        "layers": vela.layers,
    }
    flash, ram = f["flash_bytes"] + allowance[0], f["sram_bytes"] + allowance[1]
    return _entry(path, board, flash, ram, allowance, extra)


def _entry(path: Path, board: Board, flash: int, ram: int, allowance, extra: dict) -> dict:
    """The contract's keys first (model, board, fits, flash_bytes, ram_bytes), then the rest."""
    needs = (("flash", flash, board.flash_bytes), ("RAM", ram, board.ram_bytes))
    short = [
        f"{what} {_kib(need - budget)} short (needs {_kib(need)} of {_kib(budget)})"
        for what, need, budget in needs
        if need > budget
    ]
    entry = {
        "model": path.name,
        "board": board.name,
        "fits": not short,
        "flash_bytes": flash,
        "ram_bytes": ram,
        "kind": board.kind,
        "flash_budget_bytes": board.flash_bytes,
        "ram_budget_bytes": board.ram_bytes,
        "flash_headroom_bytes": board.flash_bytes - flash,
        "ram_headroom_bytes": board.ram_bytes - ram,
        "firmware_flash_bytes": allowance[0],
        "firmware_ram_bytes": allowance[1],
        **extra,
    }
    if short:
        entry["shortfall"] = f"{path.name} does not fit {board.name}: " + ", ".join(short)
    return entry


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB"


def _write(out: Path, record: dict, models: list[Path], t0: float) -> FitResult:
    from pipeline.fit.report import fit_markdown, fit_plot

    plot = fit_plot(record, out / files.FIT_PLOT)
    inputs = {p.name: artifacts.sha256_file(p) for p in models}
    record_path = artifacts.write_json(out / files.FIT_RECORD, record, inputs=inputs)
    report_path = artifacts.write_text(out / files.FIT_REPORT, fit_markdown(record, plot.name))
    return FitResult(
        record=record,
        record_path=record_path,
        report_path=report_path,
        plot_path=plot,
        failures=record["failures"],
        seconds=time.perf_counter() - t0,
    )
