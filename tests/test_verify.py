"""verify: the gates pass on the exported models, fail (exit 1, naming the row) on a model trained
differently, and bad input is exit 2; the LSB columns match a direct computation."""

import json
import shutil
import struct

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
from pipeline.cli import cli
from pipeline.core.config import EXPORT_MODES, ExportConfig, TrainConfig, VerifyConfig
from pipeline.core.errors import GateFailed
from pipeline.core.quantize import to_input
from pipeline.runtimes.host import HostRuntime
from pipeline.runtimes.tflm import TflmRuntime
from pipeline.stages.export import run_export
from pipeline.stages.fold import run_fold
from pipeline.stages.train import train
from pipeline.stages.verify import ModelInputs, run_verify, softmax_gain
from pipeline.store.files import tflite_name
from pipeline.tflite.file import quant_params, read_tflite

TARGETS = "host,host-ref,tflm"
INTEGER_MODES = ("int8", "ptq-int8", "ptq-int16x8")
NOT_ON_TFLM = ("ptq-dynamic", "ptq-float16")  # hybrid FULLY_CONNECTED and float16 DEQUANTIZE
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _copy(exported, tmp_path):
    out = tmp_path / "art"
    shutil.copytree(exported, out)
    return out


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def verified(exported, tmp_path_factory):
    """(artifacts dir, CliRunner result) of `bnpipe verify` on every exported model."""
    out = _copy(exported, tmp_path_factory.mktemp("verify"))
    result = CliRunner().invoke(
        cli, ["verify", "--targets", TARGETS, "-q", "--artifacts", str(out)]
    )
    return out, result


@pytest.fixture(scope="module")
def record(verified):
    return json.loads((verified[0] / "verify.json").read_text())


def test_verify_passes_on_the_exported_models(verified, record):
    _out, result = verified
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("# bnpipe verify: **PASS — fit to ship**\n")
    assert record["passed"] is True and record["failures"] == []


def test_verify_record_and_report(verified, record):
    out, result = verified
    assert result.exit_code == (0 if record["passed"] else 1)
    verdict = "PASS — fit to ship" if record["passed"] else "FAIL — not fit to ship"
    assert (out / "verify.md").read_text().splitlines()[0] == f"# bnpipe verify: **{verdict}**"
    assert result.stdout.startswith(f"# bnpipe verify: **{verdict}**\n")
    assert record["n"] == 360 and record["dataset"]["name"] == "digits"
    assert record["schema_version"] == 1 and set(record["inputs"]) >= {
        "model.keras",
        "folded.keras",
        "data",
    }
    assert record["config"]["targets"] == TARGETS.split(",")


def test_verify_rows_cover_every_candidate_and_target(record):
    got = [(r["candidate"], r["target"]) for r in record["rows"]]
    expected = [("folded.keras", "tensorflow")]
    for mode in sorted(EXPORT_MODES):
        targets = ["host-ref", "host"] + ([] if mode in NOT_ON_TFLM else ["tflm"])
        expected += [(tflite_name(mode), t) for t in targets]
    assert got == expected
    assert sorted((s["candidate"], s["target"]) for s in record["skipped"]) == [
        (tflite_name(m), "tflm") for m in NOT_ON_TFLM
    ]
    assert all(s["reason"].startswith("failed: tflm: ") for s in record["skipped"])
    for r in record["rows"]:
        # Accuracy and agreement hold on every row; the LSB gate is as its own columns say.
        lsb_fails = r["lsb_gated"] and r["lsb_max"] is not None and r["lsb_max"] > r["lsb_allowed"]
        assert r["n"] == 360 and r["failures"] == (["max-lsb"] if lsb_fails else [])
        assert r["accuracy_ci"][0] <= r["accuracy"] <= r["accuracy_ci"][1]
        assert r["diff_ci_pp"][0] <= r["diff_pp"] <= r["diff_ci_pp"][1]
        assert r["agreement"] >= VerifyConfig().min_agreement
        assert sum(r["disagreement_by_class"]) == round((1 - r["agreement"]) * 360)


def test_lsb_columns_filled_for_integer_models_only(record):
    for r in record["rows"]:
        mode = r["candidate"].removeprefix("model_").removesuffix(".tflite")
        if mode in INTEGER_MODES:
            assert isinstance(r["lsb_max"], int) and 0 <= r["lsb_share"] <= 1, r
            if r["target"] == "host-ref":
                assert (r["lsb_max"], r["lsb_share"]) == (0, 0.0)
            # max-lsb gates reference kernels (host-ref's, TFLM's), not XNNPACK's
            assert r["lsb_gated"] == (r["target"] in ("host-ref", "tflm")), r
        else:
            assert r["lsb_max"] is None and r["lsb_share"] is None, r
            assert r["lsb_gated"] is False


def test_lsb_gate_passes_optimized_kernels_by_and_reports_them(record):
    """An XNNPACK row whose distance exceeds the allowance still passes (its accuracy and
    agreement are gated); the report says the figure is not gated."""
    from pipeline.report.markdown import verify_markdown
    from pipeline.stages.verify import bit_exact

    assert bit_exact({"kernels": "builtin_ref", "reference": True})
    assert bit_exact({"kernels": "tflm"})
    assert not bit_exact({"kernels": "default (XNNPACK delegate)", "reference": False})
    assert not bit_exact({"reference": False, "machine": "aarch64"})  # arm64 on XNNPACK
    host = next(r for r in record["rows"] if r["target"] == "host" and r["lsb_max"] is not None)
    far = {**host, "lsb_max": host["lsb_allowed"] + 5, "failures": []}
    md = verify_markdown({**record, "rows": [far]}, [])
    assert f"{far['lsb_max']}, not gated" in md


@pytest.mark.parametrize("mode", INTEGER_MODES)
def test_tflm_lsb_matches_a_direct_computation(exported, digits, record, mode):
    """verify's tflm column is max |TFLM − host-ref| over raw outputs, computed here directly."""
    path = exported / tflite_name(mode)
    x = to_input(digits.x_test, quant_params(read_tflite(path).input_tensor()))
    diff = np.abs(
        TflmRuntime().run(str(path), x).outputs.astype(np.int64)
        - HostRuntime(reference=True).run(str(path), x).outputs.astype(np.int64)
    )
    row = next(r for r in record["rows"] if r["candidate"] == path.name and r["target"] == "tflm")
    print(
        f"{mode} on tflm: max {diff.max()} steps from host-ref on {np.mean(diff > 0):.2%} of "
        f"values (allowed {row['lsb_allowed']})"
    )
    assert (row["lsb_max"], row["lsb_share"]) == (int(diff.max()), float(np.mean(diff > 0)))


def test_verify_writes_two_valid_pngs(verified):
    out, _ = verified
    for name in ("verify_accuracy.png", "verify_disagreement.png"):
        width, height = _png_size(out / name)
        assert width > 100 and height > 100
        assert f"![{name[:-4]}]({name})" in (out / "verify.md").read_text()


def test_same_int8_file_under_two_names_gives_identical_rows(exported, tmp_path):
    """Known answer: a file compared with itself on host-ref is 0 steps away; XNNPACK (host) is
    within the 1-step rounding the default gate allows, and identically so under both names."""
    out = _copy(exported, tmp_path)
    a, b = out / "a_int8.tflite", out / "b_int8.tflite"
    shutil.copy(out / tflite_name("int8"), a)
    shutil.copy(out / tflite_name("int8"), b)
    result = CliRunner().invoke(
        cli,
        [
            "verify",
            "--tflite",
            str(a),
            "--tflite",
            str(b),
            "--targets",
            "host,host-ref",
            "-q",
            "--artifacts",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("# bnpipe verify: **PASS — fit to ship**\n")
    assert (
        result.stdout.rstrip().splitlines()[-1].startswith("PASS: every gate holds on 360 samples")
    )
    record = json.loads((out / "verify.json").read_text())
    assert record["passed"] is True and record["failures"] == []
    rows = {(r["candidate"], r["target"]): r for r in record["rows"]}
    assert set(rows) == {(n, t) for n in (a.name, b.name) for t in ("host-ref", "host")}
    for name in (a.name, b.name):
        assert (rows[name, "host-ref"]["lsb_max"], rows[name, "host-ref"]["lsb_share"]) == (0, 0.0)
        assert rows[name, "host"]["lsb_max"] <= 1
    for t in ("host-ref", "host"):
        ra, rb = rows[a.name, t], rows[b.name, t]
        assert [
            ra[k] for k in ("accuracy", "agreement", "lsb_max", "lsb_share", "lsb_allowed")
        ] == [rb[k] for k in ("accuracy", "agreement", "lsb_max", "lsb_share", "lsb_allowed")]


def test_model_inputs_are_the_float_path_bits_made_once_per_quantization(exported, digits):
    """What verify feeds every target: for each exported model's input tensor, the table lookup of
    the pixel codes gives exactly to_input's float path, and one quantization is made once."""
    assert digits.x_test_codes is not None
    inputs = ModelInputs(digits.x_test, digits.x_test_codes, digits.preprocessing.code_values())
    made = {}
    for mode in sorted(EXPORT_MODES):
        tensor = quant_params(read_tflite(exported / tflite_name(mode)).input_tensor())
        xin = inputs.for_tensor(tensor)
        assert xin.dtype == np.dtype(tensor["dtype"]) and xin.shape == digits.x_test.shape
        np.testing.assert_array_equal(xin, to_input(digits.x_test, tensor), err_msg=mode)
        key = (tensor["dtype"], tensor["scale"], tensor["zero_point"])
        assert made.setdefault(key, xin) is xin, f"{mode}: {key} quantized a second time"
    assert made[("float32", None, None)] is digits.x_test  # float models take x itself
    assert {k[0] for k in made} == {"float32", "int8", "int16"}


def _tflm_steps(path, x) -> int:
    return int(
        np.abs(
            TflmRuntime().run(str(path), x).outputs.astype(np.int64)
            - HostRuntime(reference=True).run(str(path), x).outputs.astype(np.int64)
        ).max()
    )


def test_softmax_moves_a_probability_by_at_most_half_the_largest_logit_change():
    """The bound behind softmax_gain, checked on the function itself: logits each moved by at most
    δ move no probability by more than δ/2, and δ/2 is approached (so δ/4, the slope of one
    logit alone, would be too tight when every logit moves)."""

    def softmax(z):
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    rng = np.random.default_rng(0)
    delta = 0.05
    z = rng.normal(scale=3.0, size=(20_000, 10))
    moves = rng.choice([-delta, 0.0, delta], size=z.shape)
    assert np.abs(softmax(z + moves) - softmax(z)).max() <= delta / 2
    # Two even classes pushed apart: p0 = σ(2δ) − 1/2 ≈ δ/2 − δ³/24.
    worst = softmax(np.array([delta, -delta])) - softmax(np.zeros(2))
    assert delta / 4 < worst[0] <= delta / 2
    assert worst[0] > 0.99 * delta / 2


@pytest.mark.parametrize("mode", INTEGER_MODES)
def test_lsb_allowance_is_the_softmax_gain(exported, record, mode):
    """The gate counts --max-lsb in logit steps: allowed output steps = max_lsb · ceil(s_logits /
    (2 · s_out)) + slack (SOFTMAX moves a probability by at most half the largest logit change;
    slack: 1/256 of probability for the
    softmax kernels' own differences, i.e. 1 int8 step or 128 int16 steps), from the scales."""
    info = read_tflite(exported / tflite_name(mode))
    softmax = info.operators[-1]
    assert softmax.op == "SOFTMAX"
    s_in, s_out = (
        info.tensors[softmax.inputs[0]].scale[0],
        info.tensors[softmax.outputs[0]].scale[0],
    )
    gain = max(1, int(np.ceil(s_in / (2 * s_out) - 1e-9)))
    assert softmax_gain(info) == gain
    for r in record["rows"]:
        if r["candidate"] == info.path.split("/")[-1]:
            slack = max(1, int(np.floor((1 / 256) / s_out + 1e-6)))
            assert slack == (1 if mode != "ptq-int16x8" else 128)
            assert r["lsb_allowed"] == VerifyConfig().max_lsb * gain + slack


def test_lsb_gate_fails_naming_the_row_and_the_distance(exported, digits, tmp_path):
    """--max-lsb 0 allows one output step (the softmax's own rounding): TFLM's distance from
    host-ref on the post-training int8 model (measured: 9 steps; the QAT file's is 1) fails it
    on tflm, and only there."""
    out = _copy(exported, tmp_path)
    path = out / tflite_name("ptq-int8")
    steps = _tflm_steps(
        path, to_input(digits.x_test, quant_params(read_tflite(path).input_tensor()))
    )
    assert steps > 1
    with pytest.raises(GateFailed) as info:
        run_verify(out, config=VerifyConfig(targets=("host-ref", "tflm"), max_lsb=0), tflite=[path])
    assert info.value.failures == [
        f"{path.name} on tflm: outputs differ from host-ref by {steps} "
        "quantization steps (allowed 1)"
    ]
    rec = json.loads((out / "verify.json").read_text())
    assert rec["passed"] is False
    assert [r["failures"] for r in rec["rows"]] == [[], ["max-lsb"]]


@pytest.fixture(scope="module")
def other_int8(tmp_path_factory):
    """model_int8.tflite of a model trained differently: seed 1 and a single epoch."""
    out = tmp_path_factory.mktemp("other")
    train(TrainConfig(hidden=(16, 16), epochs=1, seed=1), out, quiet=True)
    run_fold(out / "model.keras", out, warn=lambda message: None)
    run_export(out / "folded.keras", out, config=ExportConfig(modes=("int8",), qat_epochs=1))
    return out / tflite_name("int8")


def test_a_model_trained_differently_fails_the_gate(exported, other_int8, tmp_path):
    out = _copy(exported, tmp_path)
    candidate = out / "other_int8.tflite"
    shutil.copy(other_int8, candidate)
    result = CliRunner().invoke(
        cli,
        [
            "verify",
            "--tflite",
            str(candidate),
            "--targets",
            "host,host-ref",
            "-q",
            "--artifacts",
            str(out),
        ],
    )
    line = assert_one_line_error(result, code=1)
    assert "other_int8.tflite on host-ref: agrees with the original on " in line
    assert "other_int8.tflite on host: agrees with the original on " in line
    assert result.stdout.startswith("# bnpipe verify: **FAIL — not fit to ship**")
    rec = json.loads((out / "verify.json").read_text())
    assert rec["passed"] is False
    assert [(r["candidate"], r["target"]) for r in rec["rows"]] == [
        ("other_int8.tflite", "host-ref"),
        ("other_int8.tflite", "host"),
    ]
    for r in rec["rows"]:
        assert "min-agreement" in r["failures"]
        assert r["agreement"] < VerifyConfig().min_agreement
    assert rec["failures"] and all(
        f.startswith("other_int8.tflite on host") for f in rec["failures"]
    )


def _crafted(tmp_path, exported):
    rng = np.random.default_rng(0)
    good = (exported / tflite_name("int8")).read_bytes()
    return {
        "random.tflite": rng.integers(0, 256, 2048, dtype=np.uint8).tobytes(),
        "truncated.tflite": good[: len(good) - 100],
        "header-only.tflite": good[:8] + rng.integers(0, 256, 40, dtype=np.uint8).tobytes(),
    }


def test_the_runtimes_start_while_the_reference_model_loads_and_predicts(
    exported, tmp_path, monkeypatch
):
    """verify starts the child process of every runtime right after the structural checks, so that
    their start-up overlaps the reference model's loading and predictions; each child then serves
    every candidate. (The real start runs; the wrapper only logs.)"""
    from pipeline.runtimes.served import ServedRunner

    out = _copy(exported, tmp_path)
    events, runners = [], []
    real_start = ServedRunner.start

    def start(self):
        real_start(self)
        events.append(f"started {self.target}")
        runners.append(self)

    monkeypatch.setattr(ServedRunner, "start", start)
    paths = [out / tflite_name("int8"), out / tflite_name("float32")]
    run_verify(
        out,
        config=VerifyConfig(targets=("host-ref", "host", "tflm")),
        tflite=paths,
        progress=events.append,
    )
    assert events[:4] == [
        "started host-ref",
        "started host",
        "started tflm",
        "reference: model.keras on TensorFlow (host)",
    ]
    lines = events[4:]  # the targets work at once: each one's lines in order, theirs interleaved
    for t in ("host-ref", "host", "tflm"):
        assert [line for line in lines if line.endswith(f" on {t}")] == [
            f"{p.name} on {t}" for p in paths
        ]
    assert len(lines) == 6
    assert [r.starts for r in runners] == [1, 1, 1]  # one child per target for both candidates
    assert all(r.process is None for r in runners)  # closed at the end


def test_the_targets_run_at_once_and_the_rows_keep_one_order(exported, tmp_path, monkeypatch):
    """Each target's child serves the candidates in turn while the other targets' children work
    (the emulator's lane no longer adds up with the rest); the rows come out in the order of one
    target after the other, host-ref first, whatever finished first."""
    import threading
    import time

    from pipeline.runtimes.served import ServedRunner

    out = _copy(exported, tmp_path)
    real_request = ServedRunner.request
    lock, state = threading.Lock(), {"now": 0, "most": 0}

    def request(self, req, what):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        try:
            time.sleep(0.3)  # long enough for the other lanes' requests to be under way too
            return real_request(self, req, what)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(ServedRunner, "request", request)
    paths = [out / tflite_name("int8"), out / tflite_name("float32")]
    result = run_verify(
        out, config=VerifyConfig(targets=("host", "tflm", "host-ref")), tflite=paths
    )
    assert state["most"] == 3  # all three targets had a request under way at one moment
    candidate_rows = [(r.candidate, r.target) for r in result.rows if r.target != "tensorflow"]
    assert candidate_rows == [(p.name, t) for p in paths for t in ("host-ref", "host", "tflm")]


def test_a_model_that_crashes_a_runtime_is_exit_2_not_a_failed_gate(exported, tmp_path):
    """TFLM trusts the declared shapes: a hidden activation declared 8,208 wide (LiteRT works its
    width out itself) makes TFLM's FULLY_CONNECTED write past the arena, and the TFLM child dies by
    SIGSEGV. That is bad input (exit 2, one line naming the file), never a failed gate (exit 1) and
    never a crash of bnpipe: verify runs in this very process."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    out = _copy(exported, tmp_path)
    model = fb.ModelT.InitFromPackedBuf(bytearray((out / tflite_name("int8")).read_bytes()), 0)
    graph = model.subgraphs[0]
    hidden = graph.tensors[graph.operators[0].outputs[0]]
    width = int(hidden.shape[1]) + 256 * 32
    hidden.shape, hidden.shapeSignature = [1, width], [-1, width]
    path = tmp_path / "wide.tflite"
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    result = CliRunner().invoke(
        cli, ["verify", "--tflite", str(path), "--targets", TARGETS, "-q", "--artifacts", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert assert_one_line_error(result) == (
        f"Error: tflm: the TFLM runner crashed on {path} (signal 11 (SIGSEGV): no message on "
        "stderr); the file is malformed or uses an operator in a way the kernels do not accept"
    )
    assert not (out / "verify.json").exists()


def test_crafted_tflite_files_exit_2_before_writing(exported, tmp_path):
    out = _copy(exported, tmp_path)
    for name, data in _crafted(tmp_path, exported).items():
        path = tmp_path / name
        path.write_bytes(data)
        result = CliRunner().invoke(
            cli,
            [
                "verify",
                "--tflite",
                str(path),
                "--targets",
                "host-ref",
                "-q",
                "--artifacts",
                str(out),
            ],
        )
        assert assert_one_line_error(result).startswith(f"Error: {path} "), name
        assert not (out / "verify.json").exists()


def test_data_with_another_feature_count_exits_2_with_both_numbers(exported, tmp_path):
    out = _copy(exported, tmp_path)
    rng = np.random.default_rng(0)
    csv = tmp_path / "ten.csv"
    rows = [[i % 10, *rng.integers(0, 256, 10)] for i in range(200)]
    csv.write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")
    result = CliRunner().invoke(
        cli, ["verify", "--data", str(csv), "--targets", "host-ref", "-q", "--artifacts", str(out)]
    )
    assert (
        assert_one_line_error(result)
        == "Error: the data has 10 features per sample (shape (10,)) but the model takes input "
        "shape (64,) (64 values)"
    )
    assert not (out / "verify.json").exists()


def test_unreachable_ssh_target_asked_for_exits_2(exported, tmp_path):
    out = _copy(exported, tmp_path)
    result = CliRunner().invoke(
        cli, ["verify", "--targets", "ssh:nobody@127.0.0.1:1", "-q", "--artifacts", str(out)]
    )
    line = assert_one_line_error(result)
    assert line.startswith(
        "Error: target ssh:nobody@127.0.0.1:1 is not available: cannot reach "
        "ssh:nobody@127.0.0.1:1: "
    )
    assert "port 1: Connection refused" in line
    assert not (out / "verify.json").exists()


def test_arm64_target_not_set_up_exits_2_with_the_set_up_command(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("BNPIPE_CACHE", str(tmp_path / "empty-cache"))
    out = _copy(exported, tmp_path)
    result = CliRunner().invoke(
        cli, ["verify", "--targets", "host,arm64", "-q", "--artifacts", str(out)]
    )
    assert assert_one_line_error(result) == (
        f"Error: target arm64 is not available: the arm64 emulator is not set up in "
        f"{tmp_path / 'empty-cache' / 'arm64'}: run `bash scripts/setup_arm64_emulator.sh` "
        "(no root needed; about a minute)"
    )


def test_no_tflite_to_verify_is_exit_2_not_a_pass(exported, tmp_path):
    """After an export that wrote nothing, folded.keras alone is no deployable model: verify
    must not call it fit to ship."""
    out = _copy(exported, tmp_path)
    for path in out.glob("*.tflite"):
        path.unlink()
    result = CliRunner().invoke(cli, ["verify", "-q", "--artifacts", str(out)])
    assert_one_line_error(
        result, message=f"no .tflite file to verify in {out}; run `bnpipe export` first or pass "
        "--tflite",
    )  # fmt: skip
    assert not (out / "verify.json").exists()


def test_a_failure_is_listed_once_in_verify_md(record):
    """A runtime that refuses an integer file is a failed gate; verify.md does not list it under
    "Not run" as well. A runtime that was simply not there still is."""
    from pipeline.report.markdown import verify_markdown

    refused = {"candidate": "model_int8.tflite", "target": "host", "reason": "failed: refused"}
    absent = {"candidate": "*", "target": "arm64", "reason": "qemu-aarch64 not found"}
    failure = "model_int8.tflite on host: failed: refused"
    md = verify_markdown({**record, "skipped": [refused, absent], "failures": [failure]}, [])
    assert md.count("failed: refused") == 1 and f"- {failure}" in md
    assert "Not run:" in md and "- arm64 (*): qemu-aarch64 not found" in md
