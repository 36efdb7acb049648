"""`bnpipe fit`: Vela's figures are the `vela` command's, TFLM builds the model in the arena fit
reports, a board too small fails with its shortfall (exit 1), an unknown board is exit 2; and the
firmware kit of a C array registers exactly the model's operators and carries golden vectors that
TFLM reproduces bit for bit from the header's own bytes.

Two tiny int8 models (seeded weights, no training) converted by bnpipe's own converter: a CNN
that holds a REVERSE_V2, which Vela leaves to the CPU with a reason on an Ethos-U55, and an MLP.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import CXX, WARNINGS, run_checked

from pipeline.cli import cli
from pipeline.fit.boards import shipped_boards
from pipeline.fit.vela import options
from pipeline.tflite.file import parse_tflite, read_tflite
from pipeline.tflite.fixed_batch import fixed_batch
from pipeline.tflite.resolver import model_operators

VELA = str(Path(sys.executable).with_name("vela"))
SMALL_RAM_KIB = 1  # the profile too small for any model's arena


@pytest.fixture(scope="module")
def model_file(keras, tf, tmp_path_factory) -> Path:
    """model_int8.tflite of a seeded 16×16 CNN: Conv2D → REVERSE_V2 → pooling → Dense."""
    from pipeline.core.config import ExportConfig
    from pipeline.tflite.convert import convert

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = keras.layers.Lambda(lambda t: tf.reverse(t, axis=[2]))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(10)(x))
    sample = np.random.default_rng(0).random((64, 16, 16, 1), dtype=np.float32)
    out = tmp_path_factory.mktemp("fit")
    (out / "model_int8.tflite").write_bytes(convert(model, "ptq-int8", sample, ExportConfig()))
    mlp = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu")])
    mlp.add(keras.layers.Dense(10))
    flat = sample.reshape(64, -1)[:, :64]
    (out / "model_ptq-int8.tflite").write_bytes(convert(mlp, "ptq-int8", flat, ExportConfig()))
    return out / "model_int8.tflite"


@pytest.fixture(scope="module")
def fitted(model_file, tmp_path_factory):
    """(CliRunner result, fit.json) of `bnpipe fit` on nrf52840, corstone-300 and a profile with
    too little RAM."""
    config = tmp_path_factory.mktemp("config") / "bnpipe.toml"
    config.write_text(
        '[fit]\nboards = ["nrf52840", "corstone-300", "tiny"]\nfirmware_flash_kib = 8\n'
        f'[fit.profiles.tiny]\nkind = "mcu"\nram_kib = {SMALL_RAM_KIB}\nflash_kib = 1024\n'
    )
    out = model_file.parent
    result = CliRunner().invoke(
        cli, ["fit", "--config", str(config), "-q", "--artifacts", str(out)]
    )
    return result, json.loads((out / "fit.json").read_text())


def _entry(record: dict, board: str, model: str = "model_int8.tflite") -> dict:
    (entry,) = [r for r in record["results"] if r["board"] == board and r["model"] == model]
    return entry


@pytest.mark.slow  # the fixture converts two models and runs fit: ≈ 25 s
def test_a_board_too_small_fails_with_its_shortfall(fitted, model_file):
    result, record = fitted
    assert result.exit_code == 1, result.output
    boards = ["nrf52840", "corstone-300", "tiny"]
    assert [(r["model"], r["board"]) for r in record["results"]] == [
        (m, b) for m in ("model_int8.tflite", "model_ptq-int8.tflite") for b in boards
    ]
    assert [r["fits"] for r in record["results"]] == [True, True, False] * 2
    tiny = [_entry(record, "tiny", m) for m in ("model_int8.tflite", "model_ptq-int8.tflite")]
    for entry in tiny:
        short = (entry["ram_bytes"] - SMALL_RAM_KIB * 1024) / 1024
        said = f"{entry['model']} does not fit tiny: RAM {short:,.1f} KiB short"
        assert said in result.output and entry["shortfall"].startswith(said)
    assert record["failures"] == [e["shortfall"] for e in tiny] and not record["passed"]
    nrf = _entry(record, "nrf52840")
    size = model_file.stat().st_size
    assert nrf["flash_bytes"] == size + 8 * 1024 == nrf["model_bytes"] + nrf["firmware_flash_bytes"]
    assert nrf["ram_bytes"] == nrf["arena_bytes"] and nrf["ops"] == model_operators(
        read_tflite(model_file)
    )
    assert nrf["ram_headroom_bytes"] == 256 * 1024 - nrf["ram_bytes"]
    assert (model_file.parent / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| model_int8.tflite | tiny | **NO** |" in (model_file.parent / "fit.md").read_text()


@pytest.mark.slow  # the fixture converts two models and runs fit: ≈ 25 s
def test_vela_figures_equal_the_vela_commands(fitted, model_file, tmp_path):
    """The `vela` command on the same file and configuration: its summary CSV's figures, its
    per-layer table and its CPU operators are fit.json's."""
    npu = _entry(fitted[1], "corstone-300")
    board = shipped_boards()["corstone-300"]
    assert (board.accelerator, board.system_config, board.memory_mode) == (
        "ethos-u55-128",
        "Ethos_U55_High_End_Embedded",
        "Shared_Sram",
    )
    command = [VELA, str(model_file), "--output-dir", str(tmp_path), "--verbose-performance"]
    proc = subprocess.run(
        command + options(board.accelerator, board.system_config, board.memory_mode),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / f"model_int8_summary_{board.system_config}.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert npu["sram_bytes"] == float(row["sram_memory_used"]) * 1024
    assert npu["vela_flash_bytes"] == float(row["off_chip_flash_memory_used"]) * 1024
    assert npu["flash_bytes"] == npu["vela_flash_bytes"] + 8 * 1024
    assert npu["npu_cycles"] == int(row["cycles_npu"])
    assert npu["total_cycles"] == int(row["cycles_total"])
    assert npu["inference_s"] == float(row["inference_time"])
    assert npu["inferences_per_s"] == float(row["inferences_per_second"])
    assert npu["macs"] == int(row["nn_macs"])
    with open(tmp_path / "model_int8_per-layer.csv", newline="") as f:
        layers = list(csv.DictReader(f))
    assert [r["Op Cycles"] for r in npu["layers"]] == [r["Op Cycles"].strip() for r in layers]
    found = re.findall(r"operator: (\w+), ofm: '(.*)'\nReason: (.*)", proc.stdout)
    assert found and [(c["op"], c["name"]) for c in npu["cpu_ops"]] == [f[:2] for f in found]
    assert all(c["reason"].startswith(f[2]) for c, f in zip(npu["cpu_ops"], found, strict=True))
    assert npu["cpu_ops"][0]["op"] == "REVERSE_V2"


@pytest.mark.slow
@pytest.mark.parametrize("model", ["model_int8.tflite", "model_ptq-int8.tflite"])
def test_tflm_builds_the_model_in_the_arena_fit_reports(fitted, model_file, model):
    from pipeline.runtimes.tflm import try_arena

    nrf = _entry(fitted[1], "nrf52840", model)
    assert nrf["arena_bytes"] >= nrf["arena_bytes_used"] > 0
    path = model_file.parent / model
    assert try_arena(path, nrf["arena_bytes"]) == (True, "")
    assert try_arena(path, nrf["arena_bytes"] // 4)[0] is False  # the check can fail


def test_unknown_board_is_exit_2_naming_the_known_ones(tmp_path):
    result = CliRunner().invoke(
        cli, ["fit", "--board", "nrf5284O", "-q", "--artifacts", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert result.output.startswith("Error: unknown board(s) nrf5284O; known: nrf52840, ")
    assert "corstone-300" in result.output and len(result.output.splitlines()) == 1


def test_a_profile_with_a_wrong_key_is_exit_2(tmp_path):
    config = tmp_path / "bnpipe.toml"
    config.write_text('[fit.profiles.mine]\nkind = "mcu"\nram_kib = 64\nflash = 1024\n')
    args = ["fit", "--config", str(config), "--board", "mine", "-q"]
    result = CliRunner().invoke(cli, [*args, "--artifacts", str(tmp_path)])
    assert result.exit_code == 2
    assert "board mine has unknown key(s) flash" in result.output


@pytest.mark.slow  # converts the models
def test_fixed_batch_leaves_vela_nothing_to_warn_about(model_file, tmp_path):
    data = model_file.read_bytes()
    fixed = fixed_batch(data)
    assert len(fixed) == len(data)
    before, after = parse_tflite(data), parse_tflite(fixed)
    # bnpipe reads the shape signature: -1 (any batch) before, 1 after, nothing else changed.
    assert any(t.shape[:1] == [-1] for t in before.tensors)
    assert [[1, *t.shape[1:]] if t.shape[:1] == [-1] else t.shape for t in before.tensors] == [
        t.shape for t in after.tensors
    ]
    (tmp_path / "fixed.tflite").write_bytes(fixed)
    said = {}
    for name in ("model_int8.tflite", "fixed.tflite"):
        path = model_file if name == "model_int8.tflite" else tmp_path / name
        proc = subprocess.run(
            [VELA, str(path), "--output-dir", str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        said[name] = proc.stdout + proc.stderr
    assert "dynamic signature" in said["model_int8.tflite"]  # the converter's -1 batch
    assert "dynamic signature" not in said["fixed.tflite"]


@pytest.mark.slow  # converts the models
def test_c_array_kit_registers_exactly_the_operators_and_golden_vectors_reproduce(
    model_file, tmp_path
):
    from pipeline.runtimes.tflm import TflmRuntime
    from pipeline.tflite.carray import c_array
    from pipeline.tflite.firmware import firmware_kit

    data = fixed_batch(model_file.read_bytes())  # what export puts in the array
    x = np.random.default_rng(1).integers(-128, 128, (3, 16, 16, 1), dtype=np.int8)
    with TflmRuntime() as rt:
        y = rt.run(str(model_file), x).outputs
    arr = c_array(data, model_file.name, arena_bytes=4096, kit=firmware_kit(data, x, y))
    (tmp_path / arr.header_name).write_text(arr.header)
    (tmp_path / arr.source_name).write_text(arr.source)
    ops = model_operators(parse_tflite(data))
    (tmp_path / "main.cc").write_text(_resolver_main(arr.header_name, arr.name, ops))
    run_checked([CXX, "-std=c++11", *WARNINGS, "main.cc", arr.source_name, "-o", "prog"], tmp_path)
    registered = run_checked(["./prog"], tmp_path).stdout.decode().split()
    assert registered[0] == str(len(ops)) and registered[1:] == ops
    # The header's bytes and golden vectors, read back from its source, through TFLM again.
    source = arr.source
    body = source[source.index("{", source.index(f"{arr.name}[]")) : source.index("};")]
    model = tmp_path / "from_header.tflite"
    model.write_bytes(bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", body)))
    assert model.read_bytes() == data  # and the file's outputs (y) from the fixed-batch copy:
    golden = {
        role: np.array(
            re.search(rf"{arr.name}_golden_{role}\[\] = \{{(.*?)\}};", source, re.S)
            .group(1)
            .replace(",", " ")
            .split(),
            dtype=np.int8,
        )
        for role in ("inputs", "outputs")
    }
    with TflmRuntime() as rt:
        again = rt.run(str(model), golden["inputs"].reshape(x.shape)).outputs
    assert np.array_equal(again.reshape(-1), golden["outputs"])
    info = parse_tflite(data)
    scale = info.input_tensor().scale[0]
    assert f"#define MODEL_INT8_TFLITE_INPUT_SCALE {float(np.float32(scale)):.9g}f" in arr.header


def _resolver_main(header: str, name: str, ops: list[str]) -> str:
    """A main whose stand-in resolver prints each operator registered, and the count the header
    declares: a method for an operator not in `ops` fails to compile, a missing one prints less."""
    from pipeline.tflite.resolver import add_method

    methods = "\n".join(f'  void {add_method(op)}() {{ std::printf("{op}\\n"); }}' for op in ops)
    return (
        f'#include <cstdio>\n#include "{header}"\n'
        f"struct Resolver {{\n{methods}\n}};\n"
        f'int main() {{\n  std::printf("%d\\n", {name.upper()}_OP_COUNT);\n'
        f"  Resolver r;\n  {name}_add_ops(r);\n  return 0;\n}}\n"
    )


def test_the_readme_board_table_is_boards_toml():
    import dataclasses

    from pipeline.fit.report import boards_table

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("<!-- boards:start -->\n")[1].split("<!-- boards:end -->")[0]
    boards = {n: dataclasses.asdict(b) for n, b in shipped_boards().items()}
    assert table == boards_table(boards), "README.md's board table differs from boards.toml"


def test_fit_config_reads_boards_allowances_and_profiles(tmp_path):
    from pipeline.core.config import load_run_config

    config = tmp_path / "bnpipe.toml"
    config.write_text(
        '[fit]\nboards = ["mine"]\nfirmware_ram_kib = 16\n'
        '[fit.profiles.mine]\nkind = "mcu"\nram_kib = 64\nflash_kib = 512\n'
    )
    fit = load_run_config(config).fit
    assert fit.boards == ("mine",) and fit.firmware_ram_kib == 16 and fit.firmware_flash_kib == 0
    assert fit.profiles == {"mine": {"kind": "mcu", "ram_kib": 64, "flash_kib": 512}}


@pytest.mark.parametrize(
    "text, message",
    [
        ("[fit]\nfirmware_flash_kib = -1\n", "[fit] firmware_flash_kib must be an integer from 0"),
        ('[fit]\nboards = ["nrf52840", "nope"]\n', "unknown board(s) nope; known: nrf52840,"),
        ('[fit]\nboards = ["x"]\n[fit.profiles.x]\nkind = "npu"\n', "board x kind must be one"),
    ],
)
def test_run_refuses_a_bad_fit_table_before_training(tmp_path, text, message):
    config = tmp_path / "bnpipe.toml"
    config.write_text(text)
    out = tmp_path / "a"
    result = CliRunner().invoke(cli, ["run", "--config", str(config), "--artifacts", str(out)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.splitlines()) == 1
    assert not (out / "model.keras").exists()
