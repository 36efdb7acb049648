#!/usr/bin/env python3
"""How long `bnpipe fit` takes for nine Ethos-U configurations on a ~250 KB int8 model.

    PYTHONPATH=. python scripts/measure_fit.py [--dir DIR]

Builds a seeded CNN (no training: the NPU's cost does not depend on the weights' values) of about
250,000 weights, converts it with bnpipe's own converter (post-training int8), writes a
bnpipe.toml with nine profiles (Ethos-U55-32…256, U65-256/512, U85-256…1024; Vela's usual
system config and memory mode for each family) and times `bnpipe fit` on them in a child process,
start-up included. Prints the wall time, each compile's time and the figures of every board.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FAMILIES = {  # accelerator prefix → (system config, memory mode), as boards.toml's NPU boards
    "ethos-u55": ("Ethos_U55_High_End_Embedded", "Shared_Sram"),
    "ethos-u65": ("Ethos_U65_High_End", "Dedicated_Sram_384KB"),
    "ethos-u85": ("Ethos_U85_SYS_DRAM_Mid", "Dedicated_Sram_384KB"),
}
NINE = ["u55-32", "u55-64", "u55-128", "u55-256", "u65-256", "u65-512", "u85-256", "u85-512"]
NINE.append("u85-1024")


def make_model(dest: Path) -> int:
    """A 28×28 CNN of ~250 K weights as model_int8.tflite in `dest`; its size in bytes."""
    from pipeline.core.config import ExportConfig
    from pipeline.core.tfenv import keras
    from pipeline.tflite.convert import convert

    k = keras()
    k.utils.set_random_seed(0)
    inp = k.Input((28, 28, 1))
    x = k.layers.Conv2D(32, 3, padding="same", activation="relu")(inp)
    x = k.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(x)
    x = k.layers.Conv2D(128, 3, strides=2, padding="same", activation="relu")(x)
    x = k.layers.Conv2D(128, 3, padding="same", activation="relu")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    model = k.Model(inp, k.layers.Dense(10)(x))
    sample = np.random.default_rng(0).random((100, 28, 28, 1), dtype=np.float32)
    data = convert(model, "ptq-int8", sample, ExportConfig())
    (dest / "model_int8.tflite").write_bytes(data)
    return len(data)


def profiles() -> str:
    lines = ["[fit]", f"boards = {json.dumps(NINE)}"]
    for name in NINE:
        accelerator = f"ethos-{name}"
        system, memory = FAMILIES[accelerator.rsplit("-", 1)[0]]
        lines += [
            f"[fit.profiles.{name}]",
            'kind = "ethos-u"',
            f'accelerator = "{accelerator}"',
            f'system_config = "{system}"',
            f'memory_mode = "{memory}"',
            "ram_kib = 4096",
            "flash_kib = 1048576",
        ]
    return "\n".join(lines) + "\n"


def main(directory: Path) -> None:
    size = make_model(directory)
    config = directory / "bnpipe.toml"
    config.write_text(profiles())
    command = [sys.executable, "-m", "pipeline.cli", "fit", "--config", str(config), "-q"]
    t0 = time.perf_counter()
    proc = subprocess.run([*command, "--artifacts", str(directory)], capture_output=True)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr.decode()
    record = json.loads((directory / "fit.json").read_text())
    print(f"model_int8.tflite: {size:,} bytes; `bnpipe fit` on nine configurations: {wall:.1f} s")
    for r in record["results"]:
        print(
            f"  {r['board']:>9}: Vela {r['vela_seconds']:.2f} s, SRAM {r['sram_bytes'] / 1024:.1f}"
            f" KiB, flash {r['vela_flash_bytes'] / 1024:.1f} KiB, {r['npu_cycles']:,} NPU cycles,"
            f" {r['inference_s'] * 1e3:.3f} ms, {len(r['cpu_ops'])} CPU ops"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="Where to write [a temp dir].")
    args = parser.parse_args()
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
        main(args.dir)
    else:
        with tempfile.TemporaryDirectory(prefix="bnpipe-measure-fit-") as tmp:
            main(Path(tmp))
