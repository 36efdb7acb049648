#!/usr/bin/env bash
# Install bnpipe and run its default pipeline under every Python the README promises.
#
#   bash scripts/check_python_versions.sh [--setup-arm64] [--require-all] [VERSION …]
#
# For each version (default 3.10 3.11 3.12 3.13), one after another:
# 1. find an interpreter: `pythonX.Y` on PATH, else pyenv's newest X.Y.* (a pyenv shim that is
#    not selected fails to run and is passed over); none → "not found", not a failure;
# 2. a venv in the work dir, keyed by the interpreter and a hash of pyproject.toml: a rerun reuses
#    it and reinstalls only bnpipe itself; `pip install` (not editable: the wheel, package data
#    included) of a copy of the source, so the checkout gets no build/ or .egg-info;
# 3. `bnpipe --help`, timed, failing if it imports TensorFlow (the CLI's contract);
# 4. `bnpipe run --artifacts DIR` in a fresh DIR: the default pipeline on the bundled digits;
#    exit 0 and `"passed": true` in verify.json are required.
# verify's default targets are the ones available here: without the arm64 emulator it runs on
# host, host-ref and tflm and lists arm64 as skipped; the table says which targets ran.
# --setup-arm64 runs scripts/setup_arm64_emulator.sh first (no root; cached), so arm64 runs too.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: check_python_versions.sh [--setup-arm64] [--require-all] [VERSION ...]

Install bnpipe (pip, not editable) in a venv per Python version and run `bnpipe --help` and
`bnpipe run` (the default pipeline on the bundled digits); print a table. VERSIONs default to
3.10 3.11 3.12 3.13. A version with no interpreter here is reported as "not found".

Options:
  --setup-arm64   set up the arm64 emulator first, so verify runs on the arm64 target too
  --require-all   a version not found fails the check as well

Environment:
  BNPIPE_PYVERSIONS_DIR  work dir for venvs, logs and run artifacts (default
                         ${BNPIPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bnpipe}/pyversions)

Exit status: 0 when every version found installs, runs and verifies; 1 otherwise (or when no
version was found at all); 2 on bad usage.

Example:
  bash scripts/check_python_versions.sh 3.10 3.13
EOF
}

SETUP_ARM64=0
REQUIRE_ALL=0
VERSIONS=()
for arg in "$@"; do
    case "$arg" in
        -h|--help) usage; exit 0 ;;
        --setup-arm64) SETUP_ARM64=1 ;;
        --require-all) REQUIRE_ALL=1 ;;
        3.[0-9]|3.[0-9][0-9]) VERSIONS+=("$arg") ;;
        *) echo "error: unknown argument '$arg' (expected a version like 3.12, or --help)" >&2
           exit 2 ;;
    esac
done
if [[ ${#VERSIONS[@]} -eq 0 ]]; then
    VERSIONS=(3.10 3.11 3.12 3.13)
fi

REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${BNPIPE_PYVERSIONS_DIR:-${BNPIPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bnpipe}/pyversions}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
export PIP_DISABLE_PIP_VERSION_CHECK=1
unset PYTHONPATH PYTHONHOME BNPIPE_ARTIFACTS VIRTUAL_ENV

now() {  # seconds since the epoch, with decimals where bash has EPOCHREALTIME (bash >= 5)
    local t="${EPOCHREALTIME:-}"
    if [[ -n "$t" ]]; then echo "${t/,/.}"; else date +%s; fi
}
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

sha12() {  # the first 12 hex digits of the sha256 of stdin
    if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi | cut -c1-12
}

usable() {  # usable PYTHON X.Y: runs, is version X.Y, and can make a venv with pip
    "$1" - "$2" >/dev/null 2>&1 <<'EOF'
import sys
import ensurepip, venv  # noqa: F401  (Debian splits these into python3-venv)
sys.exit(f"{sys.version_info[0]}.{sys.version_info[1]}" != sys.argv[1])
EOF
}

find_python() {  # find_python X.Y → the path of a usable interpreter on stdout, or status 1
    local want="$1" cand root v
    local -a cands=()
    if cand="$(command -v "python$want" 2>/dev/null)"; then
        cands+=("$cand")
    fi
    if command -v pyenv >/dev/null 2>&1 && root="$(pyenv root 2>/dev/null)"; then
        # pyenv's own interpreters, newest patch release first; no shim, no PYENV_VERSION needed
        while read -r v; do
            cands+=("$root/versions/$v/bin/python$want")
        done < <(pyenv versions --bare 2>/dev/null | grep -E "^${want//./\\.}\.[0-9]+$" \
                     | sort -t. -k3,3nr || true)
    fi
    for cand in ${cands[@]+"${cands[@]}"}; do
        if usable "$cand" "$want"; then
            echo "$cand"
            return 0
        fi
    done
    return 1
}

if [[ "$SETUP_ARM64" == 1 ]]; then
    echo "== arm64 emulator"
    bash "$REPO/scripts/setup_arm64_emulator.sh"
fi

# A fresh copy of what the package is built from (setuptools writes build/ and *.egg-info
# beside its sources; a stale build/ would also leak deleted modules into the wheel).
SRC="$WORK/src"
rm -rf "$SRC"
mkdir -p "$SRC"
cp -R "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/pipeline" "$SRC/"
find "$SRC" -name __pycache__ -type d -prune -exec rm -rf {} +

ROWS=()
FAILED=0
FOUND=0
MISSING=0
for want in "${VERSIONS[@]}"; do
    echo "== Python $want"
    if ! py="$(find_python "$want")"; then
        echo "   not found (no usable python$want on PATH, none in pyenv)"
        ROWS+=("$want|not found|-|-|-|-|-|-|-")
        MISSING=$((MISSING + 1))
        continue
    fi
    FOUND=$((FOUND + 1))
    full="$("$py" -c 'import platform; print(platform.python_version())')"
    echo "   interpreter: $py ($full)"
    logs="$WORK/logs/$want"
    rm -rf "$logs"
    mkdir -p "$logs"

    # 2. the venv, rebuilt when pyproject.toml or the interpreter changes
    key="$( { cat "$REPO/pyproject.toml"; echo "$py $full"; } | sha12)"
    venv="$WORK/venv-$full-$key"
    for old in "$WORK/venv-$want".*; do
        if [[ -d "$old" && "$old" != "$venv" ]]; then rm -rf "$old"; fi
    done
    t0="$(now)"
    if [[ -f "$venv/.bnpipe-ready" ]]; then
        install="reused"
        if "$venv/bin/python" -m pip install --no-deps --force-reinstall "$SRC" \
                >"$logs/install.log" 2>&1; then ok=1; else ok=0; fi
    else
        install="fresh"
        rm -rf "$venv"
        if "$py" -m venv "$venv" >"$logs/install.log" 2>&1 \
            && "$venv/bin/python" -m pip install --upgrade pip >>"$logs/install.log" 2>&1 \
            && "$venv/bin/python" -m pip install "$SRC" >>"$logs/install.log" 2>&1; then
            ok=1
        else
            ok=0
        fi
    fi
    # The package must come from the venv, not from a checkout on sys.path.
    if [[ "$ok" == 1 ]] && "$venv/bin/python" -m pip check >>"$logs/install.log" 2>&1 \
        && (cd "$logs" && "$venv/bin/python" -c \
            'import pipeline, sys; sys.exit(not pipeline.__file__.startswith(sys.prefix))'); then
        touch "$venv/.bnpipe-ready"
    else
        ok=0
    fi
    install_s="$(since "$t0")"
    if [[ "$ok" == 0 ]]; then
        echo "   install FAILED ($install_s s); pip's last words ($logs/install.log):"
        grep -E "^(ERROR|error)" "$logs/install.log" | tail -5 | sed 's/^/     /' || true
        ROWS+=("$want|$full|FAILED|-|-|-|-|$install_s|-")
        FAILED=$((FAILED + 1))
        continue
    fi
    echo "   install: ok ($install, $install_s s)"

    # 3. --help: timed, and TensorFlow must not be imported
    PYTHONPROFILEIMPORTTIME=1 "$venv/bin/bnpipe" --help >/dev/null 2>"$logs/help-imports.log" \
        || true
    t0="$(now)"
    help_rc=0
    (cd "$logs" && "$venv/bin/bnpipe" --help) >"$logs/help.log" 2>&1 || help_rc=$?
    help_s="$(since "$t0")"
    heavy="$(awk -F'|' 'NF == 3 { gsub(/ /, "", $3); print $3 }' "$logs/help-imports.log" \
             | grep -E '^(tensorflow|tf_keras|keras)(\.|$)' | head -1 || true)"
    if [[ "$help_rc" != 0 ]]; then
        help="exit $help_rc"
    elif [[ -n "$heavy" ]]; then
        help="imports $heavy"
    else
        help="${help_s} s"
    fi
    echo "   bnpipe --help: $help"

    # 4. the default pipeline in a fresh artifacts dir
    art="$WORK/runs/$want"
    rm -rf "$art"
    mkdir -p "$art"
    echo "   bnpipe run --artifacts $art"
    t0="$(now)"
    run_rc=0
    (cd "$art" && "$venv/bin/bnpipe" run --artifacts "$art") >"$logs/run.log" 2>&1 || run_rc=$?
    run_s="$(since "$t0")"
    verdict="$("$venv/bin/python" - "$art/verify.json" "$full" 2>>"$logs/run.log" <<'EOF' || true
import json, sys
try:
    record = json.load(open(sys.argv[1]))
except OSError:
    print("no verify.json|-")
    sys.exit()
ran = []  # verify's targets, in the order they ran (not "tensorflow": the reference's runtime)
for row in record.get("rows", []):
    if row.get("target") not in ran and row.get("target") != "tensorflow":
        ran.append(row.get("target"))
verdict = "pass" if record.get("passed") is True else "FAIL"
if record.get("versions", {}).get("python") != sys.argv[2]:  # ran under another Python
    verdict += " (python " + str(record.get("versions", {}).get("python")) + ")"
print(verdict + "|" + (",".join(map(str, ran)) or "none"))
EOF
)"
    verdict="${verdict:-unreadable|-}"
    targets="${verdict#*|}"
    verdict="${verdict%%|*}"
    echo "   exit $run_rc, verify $verdict on $targets ($run_s s; log $logs/run.log)"
    if [[ "$run_rc" != 0 ]]; then
        tail -3 "$logs/run.log" | sed 's/^/     /'
    fi
    ROWS+=("$want|$full|ok ($install)|$help|$run_rc|$verdict|$targets|$install_s|$run_s")
    if [[ "$help" != *" s" || "$run_rc" != 0 || "$verdict" != pass ]]; then
        FAILED=$((FAILED + 1))
    fi
done

echo
fmt="%-7s %-9s %-13s %-9s %-4s %-8s %-24s %9s %8s\n"
# shellcheck disable=SC2059  # the format is this script's own
printf "$fmt" python version install "--help" run verify "targets" "install s" "run s"
for row in "${ROWS[@]}"; do
    IFS='|' read -r -a f <<<"$row"
    # shellcheck disable=SC2059
    printf "$fmt" "${f[@]}"
done
echo
if [[ "$FOUND" == 0 ]]; then
    echo "no Python of ${VERSIONS[*]} found: nothing was checked"
    exit 1
fi
if [[ "$FAILED" != 0 ]]; then
    echo "FAIL: $FAILED of $FOUND Python version(s) found failed (logs in $WORK/logs)"
    exit 1
fi
if [[ "$MISSING" != 0 && "$REQUIRE_ALL" == 1 ]]; then
    echo "FAIL: $MISSING version(s) not found (--require-all)"
    exit 1
fi
echo "OK: every Python found installs bnpipe, runs the pipeline and passes verify"
