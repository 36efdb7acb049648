"""scripts/bench_android.sh end to end against a fake adb, and its output parser.

The fake `adb` (written into tmp_path, first on PATH) keeps a fake phone's file
system in a directory, records every call, and answers `adb shell ... benchmark_model`
with fixture text shaped like the real tool's output. The fixture formats follow
benchmark_model's own logging code (tensorflow/lite/tools/benchmark/benchmark_model.cc,
tensorflow/lite/tools/logging.h, the Stat/StatWithPercentiles OutputToStream of
tensorflow/core/util/stats_calculator.h) and published runs of it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bench_android.sh"
PARSER = REPO / "scripts" / "parse_benchmark_model.py"
BASH = shutil.which("bash")

_spec = importlib.util.spec_from_file_location("parse_benchmark_model", PARSER)
pbm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pbm)

REMOTE = "/data/local/tmp/bnpipe"
GRAPH = f"{REMOTE}/model_int8.tflite"
SERIAL = "R58N12ABCDE"

# --------------------------------------------------------------------------- fixtures
# Current TF 2.x / LiteRT format: every line "INFO: ", statistics with percentiles,
# a blank line after each statistics line (the tool logs it with std::endl).
CURRENT = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Min num runs: [{runs}]
INFO: Num threads: [{threads}]
INFO: Min warmup runs: [{warmup_runs}]
INFO: Graph: [{graph}]
INFO: Report the peak memory footprint: [1]
INFO: #threads used for CPU inference: [{threads}]
INFO: Use xnnpack: [{xnn01}]
INFO: Loaded model {graph}
INFO: Initialized TensorFlow Lite runtime.
{xnn_line}INFO: The input model file size (MB): 0.062128
INFO: Initialized session in {init_ms}ms.
INFO: Running benchmark for at least {warmup_runs} iterations and at least 0.5 seconds but \
terminate if exceeding 150 seconds.
INFO: count={warm_count} first={first} curr={warm_curr} min={warm_min} max={first} avg={warm_avg} \
std={warm_std} p5={warm_min} median={warm_curr} p95={first}

INFO: Running benchmark for at least {runs} iterations and at least 1 seconds but terminate if \
exceeding 150 seconds.
INFO: count={count} first={s_first} curr={s_curr} min={s_min} max={s_max} avg={avg} std={std} \
p5={s_min} median={s_curr} p95={s_max}

INFO: Inference timings in us: Init: {init}, First inference: {first}, Warmup (avg): {warm_avg}, \
Inference (avg): {avg}
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only \
APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your \
discretion.
INFO: Memory footprint delta from the start of the tool (MB): init={mem_init} overall={mem_overall}
INFO: Overall peak memory footprint (MB) via periodic monitoring: {peak}
INFO: Memory status at the end of exeution:
INFO: - VmRSS              : 9 MB
INFO: + RssAnnon           : 4 MB
INFO: + RssFile + RssShmem : 5 MB
"""

# Older TF 2.x: no "INFO: " prefix, no percentiles, a one-sample warm-up printed as
# "count=1 curr=X", the memory line still called "Peak memory footprint".
INFO_LESS = """\
STARTING!
Log parameter values verbosely: [0]
Num threads: [{threads}]
Graph: [{graph}]
#threads used for CPU inference: [{threads}]
Use xnnpack: [{xnn01}]
Loaded model {graph}
The input model file size (MB): 0.062128
Initialized session in {init_ms}ms.
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding \
150 seconds.
count=1 curr={first}

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding \
150 seconds.
count={count} first={s_first} curr={s_curr} min={s_min} max={s_max} avg={avg} std={std}

Inference timings in us: Init: {init}, First inference: {first}, Warmup (avg): {first}, Inference \
(avg): {avg}
Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to \
the actual memory footprint of the model at runtime. Take the information at your discretion.
Peak memory footprint (MB): init={mem_init} overall={mem_overall}
"""

# TF 1.x binary: a different summary line and no memory report.
LEGACY = """\
STARTING!
Num runs: [50]
Inter-run delay (seconds): [-1]
Num threads: [1]
Benchmark name: []
Output prefix: []
Warmup runs: [1]
Graph: [mobilenet_v1_1.0_224_quant.tflite]
Input layers: []
Input shapes: []
Use nnapi : [0]
Loaded model mobilenet_v1_1.0_224_quant.tflite
resolved reporter
Initialized session in 4.452ms
Running benchmark for 1 iterations
count=1 curr=146161

Running benchmark for 50 iterations
count=50 first=137789 curr=137254 min=137079 max=143416 avg=137722 std=896

Average inference timings in us: Warmup: 146161, Init: 4452, no stats: 137722
"""

# The binary starts but an op fails during the warm-up: no summary, exit status 1.
INVOKE_FAILURE = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Num threads: [4]
INFO: Graph: [{graph}]
INFO: Use xnnpack: [0]
INFO: Loaded model {graph}
INFO: The input model file size (MB): 0.062128
INFO: Initialized session in 2.15ms.
INFO: Running benchmark for at least 10 iterations and at least 0.5 seconds but terminate if \
exceeding 150 seconds.
ERROR: Node number 2 (FULLY_CONNECTED) failed to invoke.
INFO: count=1 curr=912

ERROR: Benchmarking failed.
"""

HELP_WITH_PEAK = """\
usage: /data/local/tmp/bnpipe/benchmark_model
Flags:
	--num_runs=50	int32	optional	expected number of runs, see also min_secs, max_secs
	--num_threads=-1	int32	optional	number of threads
	--warmup_runs=1	int32	optional	minimum number of runs performed on initialization
	--report_peak_memory_footprint=false	bool	optional	Report the peak memory footprint \
by periodically checking the memory footprint.
	--graph=	string	optional	the path to the TFLite model file
	--use_xnnpack=false	bool	optional	explicitly apply the XNNPACK delegate.
"""
HELP_WITHOUT_PEAK = (
    "\n".join(line for line in HELP_WITH_PEAK.splitlines() if "report_peak" not in line) + "\n"
)

# Numbers per (threads, xnnpack) so that every configuration parses differently.
NUMBERS = {
    (1, True): dict(
        init=3245,
        init_ms=3.245,
        first=8901,
        warm_avg=1234.5,
        warm_count=10,
        warm_curr=1105,
        warm_min=1098,
        warm_std=2340,
        count=912,
        s_first=1180,
        s_curr=1090,
        s_min=1052,
        s_max=1411,
        avg=1100.2,
        std=41,
        mem_init=2.125,
        mem_overall=3.5,
        peak=7.2,
    ),
    (1, False): dict(
        init=2106,
        init_ms=2.106,
        first=5120,
        warm_avg=2480.6,
        warm_count=10,
        warm_curr=2401,
        warm_min=2390,
        warm_std=812,
        count=420,
        s_first=2430,
        s_curr=2388,
        s_min=2351,
        s_max=2702,
        avg=2395.7,
        std=63,
        mem_init=1.875,
        mem_overall=2.75,
        peak=6.4,
    ),
    (4, True): dict(
        init=3310,
        init_ms=3.31,
        first=7702,
        warm_avg=690.3,
        warm_count=10,
        warm_curr=405,
        warm_min=399,
        warm_std=2190,
        count=2488,
        s_first=431,
        s_curr=398,
        s_min=380,
        s_max=1211,
        avg=402.25,
        std=18,
        mem_init=2.25,
        mem_overall=4.125,
        peak=8.1,
    ),
    (4, False): dict(
        init=2150,
        init_ms=2.15,
        first=4870,
        warm_avg=1010.9,
        warm_count=10,
        warm_curr=960,
        warm_min=941,
        warm_std=1170,
        count=1052,
        s_first=970,
        s_curr=948,
        s_min=930,
        s_max=1320,
        avg=951.8,
        std=37,
        mem_init=1.875,
        mem_overall=3.0,
        peak=6.9,
    ),
}


def render(template: str, threads: int, xnnpack: bool, runs=100, warmup_runs=10) -> str:
    xnn_line = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n" if xnnpack else ""
    return template.format(
        graph=GRAPH,
        threads=threads,
        xnn01=int(xnnpack),
        xnn_line=xnn_line,
        runs=runs,
        warmup_runs=warmup_runs,
        **NUMBERS[(threads, xnnpack)],
    )


# --------------------------------------------------------------------------- fake adb
FAKE_ADB = r'''#!/usr/bin/env python3
"""Fake adb for tests: a directory stands in for the phone; every call is recorded."""
import json, os, shlex, shutil, sys

state = os.environ["FAKE_ADB_DIR"]
config = json.load(open(os.path.join(state, "config.json")))
root = os.path.join(state, "device")
args = sys.argv[1:]
with open(os.path.join(state, "calls.jsonl"), "a") as log:
    log.write(json.dumps(args) + "\n")

def local(path):
    return os.path.join(root, path.lstrip("/"))

serial = None
if args[:1] == ["-s"]:
    serial, args = args[1], args[2:]
if args == ["devices"]:
    print("List of devices attached")
    for name, status in config["devices"]:
        print(f"{name}\t{status}")
    print()
    sys.exit(0)
ready = [name for name, status in config["devices"] if status == "device"]
if serial is None and len(ready) != 1 or serial is not None and serial not in ready:
    print("adb: device not found or more than one device", file=sys.stderr)
    sys.exit(1)
if args[0] == "push":
    src, dst = args[1], args[2]
    os.makedirs(os.path.dirname(local(dst)), exist_ok=True)
    shutil.copyfile(src, local(dst))
    print(f"{src}: 1 file pushed, 0 skipped.")
    sys.exit(0)
if args[0] != "shell":
    print(f"fake adb: unsupported command {args}", file=sys.stderr)
    sys.exit(1)

words = shlex.split(" ".join(args[1:]))
if words[:2] == ["mkdir", "-p"]:
    os.makedirs(local(words[2]), exist_ok=True)
elif words[:2] == ["chmod", "+x"]:
    os.chmod(local(words[2]), 0o755)
elif words[:2] == ["rm", "-rf"]:
    shutil.rmtree(local(words[2]), ignore_errors=True)
elif words[0] == "getprop":
    print(config["props"][words[1]])
elif words[0] == "ls":
    print("\n".join(sorted(os.listdir(local(words[1])))))
elif words[0] == "cat":
    if not os.path.isfile(local(words[1])):
        print(f"cat: {words[1]}: No such file or directory", file=sys.stderr)
        sys.exit(1)
    sys.stdout.write(open(local(words[1])).read())
elif any(w.endswith("/benchmark_model") for w in words):
    binary = next(w for w in words if w.endswith("/benchmark_model"))
    if not os.access(local(binary), os.X_OK):
        print(f"/system/bin/sh: {binary}: can't execute: Permission denied", file=sys.stderr)
        sys.exit(126)
    if "--help" in words:
        sys.stderr.write(config["help"])
        sys.exit(1)
    flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
    if not os.path.isfile(local(flags["graph"])):
        print(f"ERROR: Could not open '{flags['graph']}'.", file=sys.stderr)
        sys.exit(1)
    key = f"t{flags['num_threads']}_x{flags['use_xnnpack']}"
    sys.stdout.write(open(os.path.join(state, "fixtures", key + ".txt")).read())
    sys.exit(config.get("exit", {}).get(key, 0))
else:
    print(f"fake adb: unsupported shell command {words}", file=sys.stderr)
    sys.exit(1)
'''

BIG_LITTLE = {n: (1804800 if n < 4 else 2419200) for n in range(8)}  # 4 little + 4 big
PRIME_CORE = {**BIG_LITTLE, 7: 2841600}  # one faster prime core


class Phone:
    """The fake adb's state dir: configuration, fake file system, call log, fixtures."""

    def __init__(
        self,
        tmp_path: Path,
        devices=((SERIAL, "device"),),
        freqs=BIG_LITTLE,
        help_text=HELP_WITH_PEAK,
        template=CURRENT,
    ):
        self.dir = tmp_path / "fake_adb"
        self.bin = tmp_path / "bin"
        self.root = self.dir / "device"
        for d in (self.bin, self.root, self.dir / "fixtures"):
            d.mkdir(parents=True)
        adb = self.bin / "adb"
        adb.write_text(FAKE_ADB)
        adb.chmod(adb.stat().st_mode | stat.S_IXUSR)
        self.config = {
            "devices": [list(d) for d in devices],
            "props": {"ro.product.model": "Pixel 7", "ro.product.cpu.abi": "arm64-v8a"},
            "help": help_text,
            "exit": {},
        }
        self.save()
        cpu = self.root / "sys/devices/system/cpu"
        for n, f in freqs.items():
            (cpu / f"cpu{n}/cpufreq").mkdir(parents=True)
            (cpu / f"cpu{n}/cpufreq/cpuinfo_max_freq").write_text(f"{f}\n")
        (cpu / "cpufreq").mkdir()  # entries that are not CPUs must be ignored
        (cpu / "cpuidle").mkdir()
        (cpu / "possible").write_text("0-7\n")
        for threads, xnnpack in NUMBERS:
            self.fixture(threads, xnnpack, render(template, threads, xnnpack))

    def save(self):
        (self.dir / "config.json").write_text(json.dumps(self.config))

    def fixture(self, threads, xnnpack, text, exit_code=0):
        key = f"t{threads}_x{'true' if xnnpack else 'false'}"
        (self.dir / "fixtures" / f"{key}.txt").write_text(text)
        self.config["exit"][key] = exit_code
        self.save()

    def calls(self):
        return [json.loads(line) for line in (self.dir / "calls.jsonl").read_text().splitlines()]

    def bench_calls(self):
        return [c for c in self.calls() if "--graph=" in " ".join(c)]

    def env(self, path=None):
        env = dict(os.environ)
        env["FAKE_ADB_DIR"] = str(self.dir)
        env["PATH"] = path if path is not None else f"{self.bin}{os.pathsep}{env['PATH']}"
        return env


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "model_int8.tflite"
    model.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4)
    binary = tmp_path / "android_aarch64_benchmark_model"
    binary.write_bytes(b"\x7fELF\x02\x01\x01 fake benchmark_model")
    return model, binary


def run_script(phone, *args, path=None):
    return subprocess.run(
        [BASH, str(SCRIPT), *map(str, args)],
        cwd=REPO,
        env=phone.env(path),
        capture_output=True,
        text=True,
        timeout=60,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_config(threads, xnnpack, mask="f0", peak=True, runs=100, warmup_runs=10):
    n = NUMBERS[(threads, xnnpack)]
    flag = " --report_peak_memory_footprint=true" if peak else ""
    return {
        "threads": threads,
        "xnnpack": xnnpack,
        "init_us": n["init"],
        "first_inference_us": n["first"],
        "warmup_avg_us": n["warm_avg"],
        "steady_avg_us": n["avg"],
        "std_us": n["std"],
        "memory_init_mb": n["mem_init"],
        "memory_overall_mb": n["mem_overall"],
        "peak_memory_mb": n["peak"],
        "steady": {
            "count": n["count"],
            "first": n["s_first"],
            "curr": n["s_curr"],
            "min": n["s_min"],
            "max": n["s_max"],
            "avg": n["avg"],
            "std": n["std"],
            "p5": n["s_min"],
            "median": n["s_curr"],
            "p95": n["s_max"],
        },
        "warmup": {
            "count": n["warm_count"],
            "first": n["first"],
            "curr": n["warm_curr"],
            "min": n["warm_min"],
            "max": n["first"],
            "avg": n["warm_avg"],
            "std": n["warm_std"],
            "p5": n["warm_min"],
            "median": n["warm_curr"],
            "p95": n["first"],
        },
        "output_format": "current",
        "command": (
            f"adb -s {SERIAL} shell taskset {mask} {REMOTE}/benchmark_model "
            f"--graph={GRAPH} --num_threads={threads} --num_runs={runs} "
            f"--warmup_runs={warmup_runs} --use_xnnpack={str(xnnpack).lower()}{flag}"
        ),
    }


# --------------------------------------------------------------------------- script
def test_help_says_where_to_get_the_binary():
    result = subprocess.run(
        [BASH, str(SCRIPT), "--help"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    for text in (
        "Performance",
        "measurement",
        "android_aarch64_benchmark_model",
        "android_arm_benchmark_model",
        "--cores",
        "cpuinfo_max_freq",
        "Example:",
    ):
        assert text in result.stdout


def test_end_to_end_writes_exact_json(tmp_path, files):
    model, binary = files
    phone = Phone(tmp_path)
    out = tmp_path / "result.json"
    result = run_script(phone, "--model", model, "--benchmark-binary", binary, "--out", out)
    assert result.returncode == 0, result.stderr

    assert json.loads(out.read_text()) == {
        "schema_version": 1,
        "tool": "scripts/bench_android.sh",
        "device": {
            "serial": SERIAL,
            "model": "Pixel 7",
            "abi": "arm64-v8a",
            "cores_mask": "f0",
            "cores_mask_source": "auto",
            "cpu_max_freq_khz": {f"cpu{n}": f for n, f in BIG_LITTLE.items()},
        },
        "model": {
            "file": "model_int8.tflite",
            "sha256": sha256(model),
            "size_bytes": model.stat().st_size,
        },
        "benchmark_binary": {"file": "android_aarch64_benchmark_model", "sha256": sha256(binary)},
        "settings": {"num_runs": 100, "warmup_runs": 10, "report_peak_memory_footprint": True},
        "configurations": [
            expected_config(1, True),
            expected_config(1, False),
            expected_config(4, True),
            expected_config(4, False),
        ],
    }

    calls = phone.calls()
    assert calls[0] == ["devices"]
    assert ["-s", SERIAL, "push", str(binary), f"{REMOTE}/benchmark_model"] in calls
    assert ["-s", SERIAL, "push", str(model), GRAPH] in calls
    assert ["-s", SERIAL, "shell", "chmod", "+x", f"{REMOTE}/benchmark_model"] in calls
    assert ["-s", SERIAL, "shell", "getprop", "ro.product.model"] in calls
    assert ["-s", SERIAL, "shell", "getprop", "ro.product.cpu.abi"] in calls
    assert [
        "-s",
        SERIAL,
        "shell",
        "cat",
        "/sys/devices/system/cpu/cpu7/cpufreq/cpuinfo_max_freq",
    ] in calls
    assert [" ".join(c[3:]) for c in phone.bench_calls()] == [
        expected_config(t, x)["command"].split(" shell ", 1)[1]
        for t, x in [(1, True), (1, False), (4, True), (4, False)]
    ]
    # The remote dir is removed at the end, and nothing else is left on the phone.
    assert calls[-1] == ["-s", SERIAL, "shell", "rm", "-rf", REMOTE]
    assert not (phone.root / REMOTE.lstrip("/")).exists()
    assert "wrote" in result.stderr


def test_explicit_serial_cores_threads_and_runs(tmp_path, files):
    model, binary = files
    phone = Phone(tmp_path, devices=[("emulator-5554", "device"), (SERIAL, "device")])
    out = tmp_path / "r.json"
    result = run_script(
        phone,
        "--model",
        model,
        "--benchmark-binary",
        binary,
        "--out",
        out,
        "--serial",
        SERIAL,
        "--cores",
        "0x30",
        "--threads",
        "1",
        "--runs",
        "20",
        "--warmup-runs",
        "3",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["device"]["cores_mask"] == "30"
    assert data["device"]["cores_mask_source"] == "--cores"
    assert data["device"]["cpu_max_freq_khz"] == {}
    assert data["settings"] == {
        "num_runs": 20,
        "warmup_runs": 3,
        "report_peak_memory_footprint": True,
    }
    assert data["configurations"] == [
        expected_config(1, True, mask="30", runs=20, warmup_runs=3),
        expected_config(1, False, mask="30", runs=20, warmup_runs=3),
    ]
    # --cores given: the CPU frequencies are not read.
    assert not any("cpuinfo_max_freq" in " ".join(c) for c in phone.calls())
    assert all(c[:2] == ["-s", SERIAL] for c in phone.calls()[1:])


def test_auto_cores_picks_the_fastest_cpus_and_warns_about_oversubscription(tmp_path, files):
    model, binary = files
    phone = Phone(tmp_path, freqs=PRIME_CORE)
    out = tmp_path / "r.json"
    result = run_script(phone, "--model", model, "--benchmark-binary", binary, "--out", out)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["device"]["cores_mask"] == "80"
    assert all(" ".join(c[3:]).startswith("taskset 80 ") for c in phone.bench_calls())
    assert "warning: 4 threads on 1 core(s) of mask 80" in result.stderr


def test_peak_flag_left_out_for_binaries_without_it(tmp_path, files):
    model, binary = files
    phone = Phone(tmp_path, help_text=HELP_WITHOUT_PEAK, template=INFO_LESS)
    out = tmp_path / "r.json"
    result = run_script(
        phone, "--model", model, "--benchmark-binary", binary, "--out", out, "--threads", "4"
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["settings"]["report_peak_memory_footprint"] is False
    n = NUMBERS[(4, True)]
    assert data["configurations"][0] == {
        "threads": 4,
        "xnnpack": True,
        "init_us": n["init"],
        "first_inference_us": n["first"],
        "warmup_avg_us": n["first"],
        "steady_avg_us": n["avg"],
        "std_us": n["std"],
        "memory_init_mb": n["mem_init"],
        "memory_overall_mb": n["mem_overall"],
        "peak_memory_mb": None,
        "steady": {
            "count": n["count"],
            "first": n["s_first"],
            "curr": n["s_curr"],
            "min": n["s_min"],
            "max": n["s_max"],
            "avg": n["avg"],
            "std": n["std"],
        },
        "warmup": {
            "count": 1,
            "curr": n["first"],
            "first": n["first"],
            "min": n["first"],
            "max": n["first"],
            "avg": n["first"],
            "std": 0,
        },
        "output_format": "current",
        "command": expected_config(4, True, peak=False)["command"],
    }
    assert not any("report_peak" in " ".join(c) for c in phone.bench_calls())


def test_binary_failure_names_the_configuration(tmp_path, files):
    model, binary = files
    phone = Phone(tmp_path)
    phone.fixture(4, False, INVOKE_FAILURE.format(graph=GRAPH), exit_code=1)
    out = tmp_path / "r.json"
    result = run_script(phone, "--model", model, "--benchmark-binary", binary, "--out", out)
    assert result.returncode == 2
    error_lines = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    assert error_lines == [
        "Error: benchmark_model did not finish for threads=4 xnnpack=false: the binary reported: "
        "ERROR: Node number 2 (FULLY_CONNECTED) failed to invoke. | ERROR: Benchmarking failed. "
        "(adb exit status 1)"
    ]
    assert not out.exists()
    assert not (phone.root / REMOTE.lstrip("/")).exists()  # cleaned up on failure too


def test_nonzero_exit_after_a_summary_is_a_failure(tmp_path, files):
    model, binary = files
    phone = Phone(tmp_path)
    phone.fixture(1, True, render(CURRENT, 1, True), exit_code=1)
    out = tmp_path / "r.json"
    result = run_script(phone, "--model", model, "--benchmark-binary", binary, "--out", out)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "Error: benchmark_model exited with status 1 for threads=1 xnnpack=true: no error message"
    )
    assert not out.exists()


def test_no_device_attached(tmp_path, files):
    model, binary = files
    phone = Phone(tmp_path, devices=[])
    result = run_script(phone, "--model", model, "--benchmark-binary", binary)
    assert result.returncode == 2
    assert result.stderr == (
        "Error: no Android device attached (adb devices lists none in state "
        "'device'); connect a phone with USB debugging enabled\n"
    )
    assert phone.calls() == [["devices"]]


def test_unauthorized_device_is_named(tmp_path, files):
    model, binary = files
    phone = Phone(tmp_path, devices=[(SERIAL, "unauthorized")])
    result = run_script(phone, "--model", model, "--benchmark-binary", binary)
    assert result.returncode == 2
    assert f"not ready: {SERIAL} (unauthorized)" in result.stderr


def test_two_devices_need_serial(tmp_path, files):
    model, binary = files
    phone = Phone(tmp_path, devices=[("emulator-5554", "device"), (SERIAL, "device")])
    result = run_script(phone, "--model", model, "--benchmark-binary", binary)
    assert result.returncode == 2
    assert result.stderr == (
        f"Error: 2 devices attached (emulator-5554 {SERIAL}); choose one with --serial\n"
    )


def test_missing_adb(tmp_path, files):
    model, binary = files
    phone = Phone(tmp_path)
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    result = run_script(phone, "--model", model, "--benchmark-binary", binary, path=str(empty))
    assert result.returncode == 2
    assert result.stderr == (
        "Error: adb not found on PATH; install Android SDK platform-tools and add them to PATH\n"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "Error: --model is required"),
        (
            ["--model", "nope.tflite", "--benchmark-binary", "x"],
            "Error: --model: no such file: nope.tflite",
        ),
        (["--runs", "0"], "Error: --runs: expected a positive integer, got '0'"),
        (["--threads", "1 four"], "Error: --threads: expected positive integers"),
        (
            ["--cores", "zz"],
            "Error: --cores: expected a non-zero hex CPU mask such as f0, got 'zz'",
        ),
        (["--bogus"], "Error: unknown option '--bogus'"),
        (["--out", "no/such/dir/r.json"], "Error: --out: directory does not exist: no/such/dir"),
    ],
)
def test_bad_arguments(tmp_path, files, args, message):
    model, binary = files
    phone = Phone(tmp_path)
    base = (
        [] if not args or args[0] == "--model" else ["--model", model, "--benchmark-binary", binary]
    )
    result = run_script(phone, *base, *args)
    assert result.returncode == 2
    assert result.stderr.startswith(message)
    assert len(result.stderr.splitlines()) == 1
    assert not (phone.dir / "calls.jsonl").exists()  # rejected before adb is touched


# --------------------------------------------------------------------------- parser
def test_parse_current_format():
    parsed = pbm.parse(render(CURRENT, 1, True))
    assert parsed == {
        "format": "current",
        "init_us": 3245,
        "first_inference_us": 8901,
        "warmup_avg_us": 1234.5,
        "steady_avg_us": 1100.2,
        "std_us": 41,
        "memory_init_mb": 2.125,
        "memory_overall_mb": 3.5,
        "peak_memory_mb": 7.2,
        "model_size_mb": 0.062128,
        "warmup": {
            "count": 10,
            "first": 8901,
            "curr": 1105,
            "min": 1098,
            "max": 8901,
            "avg": 1234.5,
            "std": 2340,
            "p5": 1098,
            "median": 1105,
            "p95": 8901,
        },
        "steady": {
            "count": 912,
            "first": 1180,
            "curr": 1090,
            "min": 1052,
            "max": 1411,
            "avg": 1100.2,
            "std": 41,
            "p5": 1052,
            "median": 1090,
            "p95": 1411,
        },
        "runs_requested": [
            {"min_iterations": 10, "min_secs": 0.5, "max_secs": 150},
            {"min_iterations": 100, "min_secs": 1, "max_secs": 150},
        ],
        "params": {
            "Log parameter values verbosely": "0",
            "Min num runs": "100",
            "Num threads": "1",
            "Min warmup runs": "10",
            "Graph": GRAPH,
            "Report the peak memory footprint": "1",
            "#threads used for CPU inference": "1",
            "Use xnnpack": "1",
        },
    }


def test_parse_info_less_format_with_single_sample_warmup():
    parsed = pbm.parse(render(INFO_LESS, 4, False))
    n = NUMBERS[(4, False)]
    assert (
        parsed["init_us"],
        parsed["first_inference_us"],
        parsed["warmup_avg_us"],
        parsed["steady_avg_us"],
        parsed["std_us"],
    ) == (n["init"], n["first"], n["first"], n["avg"], n["std"])
    assert (parsed["memory_init_mb"], parsed["memory_overall_mb"], parsed["peak_memory_mb"]) == (
        n["mem_init"],
        n["mem_overall"],
        None,
    )
    assert parsed["warmup"] == {
        "count": 1,
        "curr": n["first"],
        "first": n["first"],
        "min": n["first"],
        "max": n["first"],
        "avg": n["first"],
        "std": 0,
    }
    assert parsed["params"]["Use xnnpack"] == "0"


def test_parse_legacy_tf1_format():
    parsed = pbm.parse(LEGACY)
    assert parsed["format"] == "legacy"
    assert (
        parsed["init_us"],
        parsed["first_inference_us"],
        parsed["warmup_avg_us"],
        parsed["steady_avg_us"],
        parsed["std_us"],
    ) == (4452, 146161, 146161, 137722, 896)
    assert parsed["memory_init_mb"] is None and parsed["runs_requested"] == []
    assert parsed["params"]["Use nnapi"] == "0"


def test_parse_logcat_prefix_scientific_notation_and_all_same():
    text = (
        "01-02 10:00:00.000  4321  4321 I tflite  : Running benchmark for at least 1 iterations "
        "and at least 0.5 seconds but terminate if exceeding 150 seconds.\n"
        "I tflite  : count=5 curr=1357602(all same)\r\n"
        "I tflite  : count=50 first=1249964 curr=1240143 min=1238588 max=1252566 "
        "avg=1.24027e+06 std=2565 p5=1238753 median=1239807 p95=1247415\r\n"
        "I tflite  : Inference timings in us: Init: 5579, First inference: 1357602, "
        "Warmup (avg): 1.3576e+06, Inference (avg): 1.24027e+06\r\n"
        "I tflite  : Memory footprint delta from the start of the tool (MB): "
        "init=6.36328 overall=109.832\r\n"
    )
    parsed = pbm.parse(text)
    assert parsed["warmup_avg_us"] == 1357600.0
    assert parsed["steady_avg_us"] == 1240270.0
    assert parsed["std_us"] == 2565
    assert parsed["warmup"] == {
        "count": 5,
        "curr": 1357602,
        "all_same": True,
        "first": 1357602,
        "min": 1357602,
        "max": 1357602,
        "avg": 1357602,
        "std": 0,
    }
    assert (parsed["memory_init_mb"], parsed["memory_overall_mb"]) == (6.36328, 109.832)


@pytest.mark.parametrize(
    "text, why",
    [
        (
            INVOKE_FAILURE.format(graph=GRAPH),
            "the binary reported: ERROR: Node number 2 (FULLY_CONNECTED) failed to invoke. | "
            "ERROR: Benchmarking failed.",
        ),
        (
            "INFO: STARTING!\nERROR: Could not open '/x.tflite'.\n"
            "ERROR: Failed to mmap model /x.tflite\n",
            "the binary reported: ERROR: Could not open '/x.tflite'. | "
            "ERROR: Failed to mmap model /x.tflite",
        ),
        (
            "/system/bin/sh: /data/local/tmp/bnpipe/benchmark_model: "
            "not executable: 32-bit ELF file\n",
            "the binary reported: /system/bin/sh: /data/local/tmp/bnpipe/benchmark_model: "
            "not executable: 32-bit ELF file",
        ),
        ("", "the output is empty"),
        ("hello\nworld\n", "no 'Inference timings in us' line; last line: 'world'"),
    ],
)
def test_parse_errors_name_the_configuration(text, why):
    with pytest.raises(pbm.ParseError) as info:
        pbm.parse(text, "threads=4 xnnpack=false")
    assert str(info.value) == f"benchmark_model did not finish for threads=4 xnnpack=false: {why}"


def test_parser_cli_reads_stdin_and_file(tmp_path):
    text = render(CURRENT, 4, True)
    from_stdin = subprocess.run(
        [sys.executable, str(PARSER)], input=text, capture_output=True, text=True, timeout=30
    )
    assert from_stdin.returncode == 0
    assert json.loads(from_stdin.stdout) == pbm.parse(text)
    path = tmp_path / "out.txt"
    path.write_text(INVOKE_FAILURE.format(graph=GRAPH))
    from_file = subprocess.run(
        [sys.executable, str(PARSER), "--label", "threads=4 xnnpack=false", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert from_file.returncode == 2
    assert from_file.stdout == ""
    assert from_file.stderr.startswith(
        "Error: benchmark_model did not finish for threads=4 xnnpack=false: the binary reported: "
    )
    missing = subprocess.run(
        [sys.executable, str(PARSER), str(tmp_path / "nope.txt")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 2
    assert missing.stderr.startswith("Error: cannot read ")
