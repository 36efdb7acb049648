"""report.html opened in a real browser (Debian's headless Chromium, tests/browser.py): for a
digits MLP run and a CNN run, no console error, no request leaving the file, every section, charts
of non-zero size, a screenshot; strings from records shown as text, never run; edited records
left out with a note; `bnpipe report` without TensorFlow."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from browser import Browser
from click.testing import CliRunner
from helpers import TINY, assert_one_line_error

from pipeline.cli import cli

pytestmark = pytest.mark.slow

# The cheapest run with every stage: the tests' tiny recipe, QAT 1 epoch, one verify target, a
# few bench runs.
CONFIG = """
[train]
hidden = {hidden}
epochs = {epochs}
batch_size = {batch_size}
learning_rate = {learning_rate}
[export]
modes = ["int8", "float32"]
qat_epochs = 1
[verify]
targets = ["host-ref"]
min_agreement = 0.0
max_drop = 100.0
[bench]
batch_sizes = [1, 8]
threads = [1]
warmup = 1
runs = 4
rounds = 2
keras_runs = 2
"""
# What the page says about itself once loaded: section ids, chart sizes, banner, scripts.
INSPECT = """JSON.stringify({
  sections: [...document.querySelectorAll("section[id]")].map(s => s.id),
  charts: [...document.querySelectorAll("svg.chart")].map(s => {
    const r = s.getBoundingClientRect(); return [r.width, r.height]; }),
  banner: document.querySelector("header.banner").className,
  headline: document.querySelector("header.banner h1").innerText,
  scripts: document.querySelectorAll("script").length,
  handlers: document.querySelectorAll("[onerror],[onload],[onclick]").length,
  text: document.body.innerText,
})"""
FIT = {
    "results": [
        {"model": "model_int8.tflite", "board": "nrf52840", "fits": True,
         "flash_bytes": 15000, "ram_bytes": 3000},
        {"model": "model_int8.tflite", "board": "corstone-300", "fits": False,
         "flash_bytes": 15000, "ram_bytes": 900000, "sram_bytes": 1200, "npu_cycles": 5000},
    ]
}  # fmt: skip
EVIL = "<script>alert(1)</script>"
EVIL_OP = "<img src=x onerror=alert(2)>"  # no "/": the layers table shows the tensor's last part


def _tiny_cnn(path: Path) -> Path:
    """A small MobileNet-style CNN on 8×8×1 digits (conv, depthwise, pointwise, each with BN),
    trained for 2 epochs: `train --arch cnn`'s network is ~100× larger and its export alone
    takes minutes on 2 cores; this one takes the same path through every stage."""
    from pipeline.core.tfenv import keras
    from pipeline.data.dataset import load_dataset

    k = keras()
    k.utils.set_random_seed(0)
    layers = k.layers
    model = k.Sequential(
        [
            k.Input((8, 8, 1)),
            layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem"),
            layers.BatchNormalization(name="bn_stem"),
            layers.ReLU(),
            layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw"),
            layers.BatchNormalization(name="bn_dw"),
            layers.ReLU(6.0),
            layers.Conv2D(16, 1, use_bias=False, name="pw"),
            layers.BatchNormalization(name="bn_pw"),
            layers.ReLU(),
            layers.GlobalAveragePooling2D(name="pool"),
            layers.Dense(10, activation="softmax", name="classes"),
        ]
    )
    data = load_dataset("digits", seed=0, val_fraction=0.1, test_fraction=0.2)
    model.compile(optimizer=k.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(data.x_train.reshape(-1, 8, 8, 1), data.y_train, epochs=2, verbose=0)
    model.save(path)
    return path


def _run(tmp: Path, name: str, *extra: str) -> Path:
    cfg = tmp / "bnpipe.toml"
    cfg.write_text(CONFIG.format(**{**TINY, "hidden": list(TINY["hidden"])}))
    out = tmp / name
    args = ["run", "--config", str(cfg), "--artifacts", str(out), "-q", *extra]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code in (0, 1), result.output  # 1: a gate failed; the report says so
    assert f"report: {out / 'report.html'}" in result.output  # run writes it last, says where
    layers = CliRunner().invoke(cli, ["layers", "--artifacts", str(out), "-q"])
    assert layers.exit_code == 0, layers.output
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"mlp": dir, "cnn": dir}: `bnpipe run` then `bnpipe layers`, once for this file."""
    tmp = tmp_path_factory.mktemp("report")
    cnn = _tiny_cnn(tmp / "cnn.keras")
    return {"mlp": _run(tmp, "mlp"), "cnn": _run(tmp, "cnn", "--model", str(cnn))}


@pytest.fixture(scope="module")
def browser():
    with Browser() as b:
        yield b


def _report(out: Path):
    return CliRunner().invoke(cli, ["report", "--artifacts", str(out)])


def _open(browser, out: Path):
    visit = browser.visit(out / "report.html", INSPECT, screenshot=out / "report.png")
    assert visit.console == [] and visit.requests == [] and visit.dialogs == [], visit
    return visit, json.loads(visit.result)


def test_the_browser_check_sees_requests_console_errors_and_dialogs(browser, tmp_path):
    """The negative control: what the other tests assert absent, the harness does see."""
    page = tmp_path / "control.html"
    page.write_text(
        '<!doctype html><img src="http://example.com/x.png">'
        '<script>console.error("boom"); alert("hi")</script>'
    )
    visit = browser.visit(page, "document.images.length")
    assert visit.requests == ["http://example.com/x.png"]
    assert "boom" in visit.console and any("ERR_NAME_NOT_RESOLVED" in c for c in visit.console)
    assert visit.dialogs == ["hi"]


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_report_of_a_run_renders_every_section_offline(runs, browser, arch):
    out = runs[arch]
    if arch == "mlp":
        (out / "fit.json").write_text(json.dumps(FIT))  # the fit stage's contract (DESIGN.md)
    result = _report(out)
    assert result.exit_code == 0, result.output
    _, page = _open(browser, out)
    expected = {"lineage", "fold", "export", "verify", "layers", "bench"}
    expected |= {"fit"} if arch == "mlp" else set()
    assert set(page["sections"]) == expected
    # fold, export, verify, layers ×2, bench ×2 (fit ×2): each drawn, none of zero size
    assert len(page["charts"]) == 7 + (2 if arch == "mlp" else 0)
    assert all(w > 0 and h > 0 for w, h in page["charts"]), page["charts"]
    passed = json.loads((out / "verify.json").read_text())["passed"]
    assert page["banner"] == f"banner {'ship' if passed else 'noship'}"
    assert page["headline"].startswith("Ship: " if passed else "Do not ship: ")
    assert page["scripts"] == 0
    png = (out / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_strings_from_records_show_as_text_and_never_run(runs, browser, tmp_path):
    out = tmp_path / "evil"
    shutil.copytree(runs["mlp"], out)
    fold = json.loads((out / "fold.json").read_text())
    fold["report"]["pairs"][0]["bn"] = EVIL
    (out / "fold.json").write_text(json.dumps(fold))
    layers = json.loads((out / "layers.json").read_text())
    layers["layers"][0]["tensor"] = f"model/{EVIL_OP}/MatMul"
    (out / "layers.json").write_text(json.dumps(layers))
    result = _report(out)
    assert result.exit_code == 0, result.output
    assert "fold.json is not the file `bnpipe fold` wrote" in result.stderr  # named, not refused
    _, page = _open(browser, out)
    assert EVIL in page["text"] and EVIL_OP in page["text"]
    assert page["scripts"] == 0 and page["handlers"] == 0


def test_edited_records_lose_their_section_with_a_note(runs, browser, tmp_path):
    out = tmp_path / "edited"
    shutil.copytree(runs["mlp"], out)
    (out / "verify.json").write_text(json.dumps({"passed": True, "rows": "many"}))
    (out / "bench.json").write_text("{ not json")
    result = _report(out)
    assert result.exit_code == 0, result.output
    _, page = _open(browser, out)
    assert "verify" not in page["sections"] and "bench" not in page["sections"]
    assert {"fold", "export", "layers", "notes"} <= set(page["sections"])
    assert page["headline"] == "No verdict"
    assert "bench.json was left out: " in page["text"]
    assert "verify.json is not of the shape bnpipe writes" in page["text"]


def test_nothing_readable_is_one_line_exit_2(tmp_path):
    (tmp_path / "train.json").write_text("[1, 2]")
    assert_one_line_error(_report(tmp_path), fragment="holds no bnpipe record to report on")


def test_report_imports_no_tensorflow(runs):
    code = (
        "import sys; from click.testing import CliRunner; from pipeline.cli import cli; "
        f"r = CliRunner().invoke(cli, ['report', '--artifacts', {str(runs['cnn'])!r}]); "
        "assert r.exit_code == 0, r.output; "
        "assert 'tensorflow' not in sys.modules and 'numpy' not in sys.modules, 'imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _leaves(obj, path=()):
    """Every path to a value inside a JSON document."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _leaves(value, (*path, i))
    if path:
        yield path


def _replace(document, path, value) -> None:
    """document[path…] = value, unless an earlier edit removed the place."""
    try:
        for step in path[:-1]:
            document = document[step]
        document[path[-1]] = value
    except (KeyError, IndexError, TypeError):
        pass


def test_records_edited_at_random_never_break_the_page(runs, tmp_path):
    """Seeded edits of a run's records (a value replaced by another type, a huge number, NaN,
    markup): the page is built or, with nothing readable, ArtifactError; never another error."""
    import random

    from pipeline.core.errors import ArtifactError
    from pipeline.report.html import RECORDS, build_page

    rng = random.Random(0)
    odd = ["x", None, -1, 1e308, float("nan"), [], {}, "<b>", True, [1, "a"], 10**30]
    for _ in range(60):
        out = tmp_path / "edited"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(runs["mlp"], out)
        present = [f for f in RECORDS.values() if (out / f).is_file()]
        for name in rng.sample(present, 3):
            record = json.loads((out / name).read_text())
            paths = list(_leaves(record))
            for path in rng.sample(paths, min(6, len(paths))):
                _replace(record, path, json.loads(json.dumps(rng.choice(odd))))
            (out / name).write_text(json.dumps(record))
        try:
            assert "<!doctype html>" in build_page(out).html
        except ArtifactError:
            pass
