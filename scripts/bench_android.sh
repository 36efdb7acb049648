#!/usr/bin/env bash
# Benchmark a .tflite model on an Android phone with TFLite/LiteRT's benchmark_model.
# Run with --help for usage. Exit codes follow bnpipe's contract: 0 success,
# 2 bad input/usage or a failed benchmark (one "Error: ..." line), 130 interrupted.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/bench_android.sh --model MODEL.tflite --benchmark-binary PATH [options]

Benchmarks MODEL on an Android phone over adb with the official TFLite/LiteRT
benchmark_model binary, for every thread count with XNNPACK on and off, pinned to
the big cores with taskset, and writes one JSON file on the host.

The benchmark binary is not shipped with bnpipe. Download the nightly prebuilt
native command-line binary for the phone's ABI from the "Performance
measurement" page of the TensorFlow Lite / LiteRT documentation
(ai.google.dev/edge/litert/models/measurement, section "Native benchmark
binary"):
  arm64-v8a phones:    android_aarch64_benchmark_model
  armeabi-v7a phones:  android_arm_benchmark_model
(not the .apk benchmark apps listed on the same page).

Options:
  --model PATH             the .tflite model, e.g. artifacts/model_int8.tflite (required)
  --benchmark-binary PATH  the downloaded benchmark_model binary (required)
  --serial SERIAL          adb serial of the phone (required if several are attached)
  --out PATH               JSON result file (default: bench_android.json)
  --cores MASK             taskset hex CPU mask, e.g. f0 (default: auto = the CPUs with
                           the highest cpuinfo_max_freq under /sys/devices/system/cpu)
  --runs N                 timed runs per configuration (default: 100)
  --warmup-runs N          warm-up runs per configuration (default: 10)
  --threads "1 4"          space-separated thread counts (default: "1 4")
  -h, --help               show this help

Needs adb (Android platform-tools) and python3 on the host, and a phone with
USB debugging enabled. Files go to /data/local/tmp/bnpipe/ on the phone and are
removed at the end.

Example:
  scripts/bench_android.sh --model artifacts/model_int8.tflite \
      --benchmark-binary ~/Downloads/android_aarch64_benchmark_model --out bench_android.json
EOF
}

die() { # one line on stderr, bnpipe style, then exit 2
  echo "Error: $*" >&2
  exit 2
}

# ---------------------------------------------------------------- arguments
MODEL="" BINARY="" SERIAL="" OUT="bench_android.json" CORES="auto"
RUNS=100        # an int8 MLP runs in microseconds: 100 runs cost well under a second
WARMUP_RUNS=10  # enough for caches, XNNPACK's weight packing and the CPU governor to settle
THREADS="1 4"   # single-threaded latency and a typical big-cluster size

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "option $1 needs a value"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --model) need_value "$@"; MODEL="$2"; shift 2 ;;
    --benchmark-binary) need_value "$@"; BINARY="$2"; shift 2 ;;
    --serial) need_value "$@"; SERIAL="$2"; shift 2 ;;
    --out) need_value "$@"; OUT="$2"; shift 2 ;;
    --cores) need_value "$@"; CORES="$2"; shift 2 ;;
    --runs) need_value "$@"; RUNS="$2"; shift 2 ;;
    --warmup-runs) need_value "$@"; WARMUP_RUNS="$2"; shift 2 ;;
    --threads) need_value "$@"; THREADS="$2"; shift 2 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

[[ -n "$MODEL" ]] || die "--model is required (a .tflite file, e.g. artifacts/model_int8.tflite)"
[[ -n "$BINARY" ]] || die "--benchmark-binary is required (see --help for where to download it)"
[[ -f "$MODEL" ]] || die "--model: no such file: $MODEL"
[[ "$MODEL" == *.tflite ]] || die "--model: expected a .tflite file, got: $MODEL"
[[ -f "$BINARY" ]] || die "--benchmark-binary: no such file: $BINARY"
if [[ "$OUT" == */* ]]; then
  [[ -d "${OUT%/*}" ]] || die "--out: directory does not exist: ${OUT%/*}"
fi
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "--runs: expected a positive integer, got '$RUNS'"
[[ "$WARMUP_RUNS" =~ ^[0-9]+$ ]] || die "--warmup-runs: expected a non-negative integer, got '$WARMUP_RUNS'"
read -r -a THREAD_LIST <<<"$THREADS"
[[ ${#THREAD_LIST[@]} -gt 0 ]] || die "--threads: expected thread counts such as \"1 4\", got '$THREADS'"
for t in "${THREAD_LIST[@]}"; do
  [[ "$t" =~ ^[1-9][0-9]*$ ]] || die "--threads: expected positive integers such as \"1 4\", got '$THREADS'"
done
if [[ "$CORES" != auto ]]; then
  CORES="${CORES#0x}"
  [[ "$CORES" =~ ^[0-9a-fA-F]+$ && ! "$CORES" =~ ^0+$ ]] \
    || die "--cores: expected a non-zero hex CPU mask such as f0, got '$CORES'"
fi

# Only builtins above this line, so a missing adb is reported even on a bare PATH.
command -v adb >/dev/null 2>&1 \
  || die "adb not found on PATH; install Android SDK platform-tools and add them to PATH"
command -v python3 >/dev/null 2>&1 || die "python3 not found on PATH (needed to parse the results)"

HERE="${BASH_SOURCE[0]%/*}"
[[ "$HERE" != "${BASH_SOURCE[0]}" ]] || HERE="."
PARSER="$HERE/parse_benchmark_model.py"
[[ -f "$PARSER" ]] || die "parser not found next to this script: $PARSER"

# ---------------------------------------------------------------- device
# `adb devices` prints "List of devices attached" then "SERIAL<TAB>STATE" lines.
DEVICES_TEXT="$(adb devices 2>&1)" || die "'adb devices' failed: ${DEVICES_TEXT//$'\n'/ }"
READY=() NOT_READY=()
while IFS=$'\t' read -r serial state _; do
  serial="${serial//$'\r'/}" state="${state//$'\r'/}"
  [[ -n "$serial" && -n "$state" && "$serial" != List* && "$serial" != \** ]] || continue
  if [[ "$state" == device ]]; then READY+=("$serial"); else NOT_READY+=("$serial ($state)"); fi
done <<<"$DEVICES_TEXT"

if [[ -n "$SERIAL" ]]; then
  found=0
  for s in "${READY[@]+"${READY[@]}"}"; do
    if [[ "$s" == "$SERIAL" ]]; then found=1; fi
  done
  [[ $found -eq 1 ]] || die "device '$SERIAL' is not attached and ready (adb devices lists: ${READY[*]:-none}${NOT_READY[*]:+; not ready: ${NOT_READY[*]}})"
elif [[ ${#READY[@]} -eq 0 ]]; then
  die "no Android device attached (adb devices lists none in state 'device'${NOT_READY[*]:+; not ready: ${NOT_READY[*]}}); connect a phone with USB debugging enabled"
elif [[ ${#READY[@]} -gt 1 ]]; then
  die "${#READY[@]} devices attached (${READY[*]}); choose one with --serial"
else
  SERIAL="${READY[0]}"
fi

ADB=(adb -s "$SERIAL")
# adb shell may end lines with \r (old devices without the shell protocol).
dev() { "${ADB[@]}" shell "$@" | tr -d '\r'; }

REMOTE_DIR=/data/local/tmp/bnpipe
MODEL_NAME="${MODEL##*/}"
REMOTE_BINARY="$REMOTE_DIR/benchmark_model"
REMOTE_MODEL="$REMOTE_DIR/$MODEL_NAME"
WORK="$(mktemp -d)"
REMOTE_CREATED=0

cleanup() {
  local rc=$?
  if [[ $REMOTE_CREATED -eq 1 ]]; then
    "${ADB[@]}" shell rm -rf "$REMOTE_DIR" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

DEVICE_MODEL="$(dev getprop ro.product.model)" || die "adb shell getprop failed on $SERIAL"
DEVICE_ABI="$(dev getprop ro.product.cpu.abi)" || die "adb shell getprop failed on $SERIAL"

# ---------------------------------------------------------------- big cores
# The big (fast) cores are those with the highest cpuinfo_max_freq; pinning to them
# with taskset removes big.LITTLE scheduling noise (see benchmark_model's README).
CPU_FREQS=""  # "cpuN=kHz" pairs, recorded in the JSON
if [[ "$CORES" == auto ]]; then
  best=0 mask=0
  cpus="$(dev ls /sys/devices/system/cpu)" || die "cannot list /sys/devices/system/cpu on $SERIAL; pass --cores MASK"
  declare -A FREQ=()
  for cpu in $cpus; do
    [[ "$cpu" =~ ^cpu([0-9]+)$ ]] || continue
    n="${BASH_REMATCH[1]}"
    f="$(dev cat "/sys/devices/system/cpu/cpu$n/cpufreq/cpuinfo_max_freq" 2>/dev/null)" || continue
    [[ "$f" =~ ^[0-9]+$ ]] || continue
    FREQ[$n]="$f"
    CPU_FREQS+="cpu$n=$f "
    if (( f > best )); then best="$f"; fi
  done
  [[ $best -gt 0 ]] || die "could not read cpuinfo_max_freq for any CPU under /sys/devices/system/cpu on $SERIAL; pass --cores MASK"
  for n in "${!FREQ[@]}"; do
    if (( FREQ[$n] == best )); then mask=$(( mask | (1 << n) )); fi
  done
  CORES="$(printf '%x' "$mask")"
  CORES_SOURCE="auto"
else
  CORES_SOURCE="--cores"
fi
CORE_COUNT=0
for (( bits = 16#$CORES; bits > 0; bits >>= 1 )); do (( CORE_COUNT += bits & 1 )) || true; done
for t in "${THREAD_LIST[@]}"; do
  if (( t > CORE_COUNT )); then
    echo "warning: $t threads on $CORE_COUNT core(s) of mask $CORES: threads will share cores" >&2
  fi
done

# ---------------------------------------------------------------- push
"${ADB[@]}" shell mkdir -p "$REMOTE_DIR" >/dev/null || die "cannot create $REMOTE_DIR on $SERIAL"
REMOTE_CREATED=1
"${ADB[@]}" push "$BINARY" "$REMOTE_BINARY" >/dev/null || die "adb push of the benchmark binary to $SERIAL failed"
"${ADB[@]}" push "$MODEL" "$REMOTE_MODEL" >/dev/null || die "adb push of the model to $SERIAL failed"
"${ADB[@]}" shell chmod +x "$REMOTE_BINARY" >/dev/null || die "chmod +x $REMOTE_BINARY failed on $SERIAL"

# --report_peak_memory_footprint exists only in newer binaries; ask the binary itself.
# (--help makes benchmark_model print its flags and exit non-zero, hence `|| true`.)
HELP_TEXT="$(dev "$REMOTE_BINARY" --help 2>&1 || true)"
PEAK_FLAG=()
if [[ "$HELP_TEXT" == *report_peak_memory_footprint* ]]; then
  PEAK_FLAG=(--report_peak_memory_footprint=true)
fi

# ---------------------------------------------------------------- run
CONFIG_FILES=()
i=0
for t in "${THREAD_LIST[@]}"; do
  for xnn in true false; do
    label="threads=$t xnnpack=$xnn"
    cmd=(taskset "$CORES" "$REMOTE_BINARY" "--graph=$REMOTE_MODEL" "--num_threads=$t"
         "--num_runs=$RUNS" "--warmup_runs=$WARMUP_RUNS" "--use_xnnpack=$xnn"
         "${PEAK_FLAG[@]+"${PEAK_FLAG[@]}"}")
    echo "running $label: ${cmd[*]}" >&2
    raw="$WORK/run$i.txt"
    rc=0
    "${ADB[@]}" shell "${cmd[*]}" >"$raw" 2>&1 || rc=$?
    if ! python3 "$PARSER" --label "$label" "$raw" >"$WORK/run$i.json" 2>"$WORK/run$i.err"; then
      die "$(sed -e 's/^Error: //' "$WORK/run$i.err" | head -n 1) (adb exit status $rc)"
    fi
    if [[ $rc -ne 0 ]]; then
      die "benchmark_model exited with status $rc for $label: $(grep -m 1 -E 'ERROR|Failed|failed' "$raw" | tr -d '\r' || echo 'no error message')"
    fi
    printf '%s\n%s\n%s\n' "$t" "$xnn" "${cmd[*]}" >"$WORK/run$i.meta"
    CONFIG_FILES+=("$WORK/run$i")
    i=$((i + 1))
  done
done

# ---------------------------------------------------------------- JSON
# Only file names (no host paths) go into the result.
python3 - "$OUT" "$MODEL" "$BINARY" "$SERIAL" "$DEVICE_MODEL" "$DEVICE_ABI" "$CORES" \
  "$CORES_SOURCE" "$CPU_FREQS" "$RUNS" "$WARMUP_RUNS" "${#PEAK_FLAG[@]}" "${CONFIG_FILES[@]}" <<'PY'
import hashlib, json, os, sys

(out, model, binary, serial, device_model, abi, cores, cores_source, cpu_freqs, runs,
 warmup_runs, peak_flag, *configs) = sys.argv[1:]

def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

configurations = []
for base in configs:
    with open(base + ".meta") as handle:
        threads, xnnpack, command = handle.read().split("\n")[:3]
    with open(base + ".json") as handle:
        parsed = json.load(handle)
    configurations.append({
        "threads": int(threads),
        "xnnpack": xnnpack == "true",
        "init_us": parsed["init_us"],
        "first_inference_us": parsed["first_inference_us"],
        "warmup_avg_us": parsed["warmup_avg_us"],
        "steady_avg_us": parsed["steady_avg_us"],
        "std_us": parsed["std_us"],
        "memory_init_mb": parsed["memory_init_mb"],
        "memory_overall_mb": parsed["memory_overall_mb"],
        "peak_memory_mb": parsed["peak_memory_mb"],
        "steady": parsed["steady"],
        "warmup": parsed["warmup"],
        "output_format": parsed["format"],
        "command": f"adb -s {serial} shell {command}",
    })

result = {
    "schema_version": 1,
    "tool": "scripts/bench_android.sh",
    "device": {
        "serial": serial,
        "model": device_model,
        "abi": abi,
        "cores_mask": cores,
        "cores_mask_source": cores_source,
        "cpu_max_freq_khz": {k: int(v) for k, v in (p.split("=") for p in cpu_freqs.split())},
    },
    "model": {"file": os.path.basename(model), "sha256": sha256(model),
              "size_bytes": os.path.getsize(model)},
    "benchmark_binary": {"file": os.path.basename(binary), "sha256": sha256(binary)},
    "settings": {"num_runs": int(runs), "warmup_runs": int(warmup_runs),
                 "report_peak_memory_footprint": peak_flag != "0"},
    "configurations": configurations,
}
tmp = out + ".tmp"
with open(tmp, "w") as handle:
    json.dump(result, handle, indent=2)
    handle.write("\n")
os.replace(tmp, out)  # atomic: a reader never sees half a file
PY
echo "wrote $OUT (${#CONFIG_FILES[@]} configurations on $DEVICE_MODEL, cores $CORES)" >&2
