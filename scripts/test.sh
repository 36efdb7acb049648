#!/usr/bin/env bash
# The whole test suite on a fresh machine: what README's quickstart (b) and CI (.ci/run) run.
#
#   bash scripts/test.sh [--fast] [pytest args…]
#
# --fast: the inner loop: lint, types and the tests that neither train, convert, start processes
# nor use the emulator (pytest -m fast: tests/conftest.py's FAST_FILES); no system set-up.
#
# 1. a virtual environment .venv with bnpipe and its test extras (pip, from pyproject.toml);
# 2. ruff (lint and format of the whole repo) and mypy (the typed modules listed under
#    [tool.mypy]), both configured in pyproject.toml; findings fail;
# 3. the arm64 emulator (qemu-user + an arm64 Python sysroot + aarch64 LiteRT) in the user's
#    cache dir — no root needed, idempotent, seconds when already built;
# 4. openssh-server when `sshd` is missing (apt-get, as root) for the ssh target's loopback tests;
#    chromium when it is missing (apt-get, as root): the browser report.html's tests open it in;
# 5. pytest, everything included: nothing is skipped in CI (CI=true), on BNPIPE_TEST_WORKERS
#    processes (default 2; 1 runs it in this process), each test file whole on one of them so a
#    file's expensive fixtures are made once.
set -euo pipefail
cd "$(dirname "$0")/.."

FAST=0
if [[ "${1:-}" == "--fast" ]]; then
    FAST=1
    shift
fi

PY="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
    echo "== creating .venv"
    "$PY" -m venv .venv
fi
echo "== installing bnpipe and its test dependencies"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy

if [[ "$FAST" == 1 ]]; then
    echo "== pytest (fast tier)"
    exec .venv/bin/python -m pytest -n "${BNPIPE_TEST_WORKERS:-2}" --dist loadfile \
        -m fast "$@"
fi

echo "== arm64 emulator"
bash scripts/setup_arm64_emulator.sh

if ! command -v sshd >/dev/null 2>&1 && [[ ! -x /usr/sbin/sshd ]]; then
    if [[ "$(id -u)" == 0 ]]; then
        echo "== installing openssh-server (for the ssh target's tests on 127.0.0.1)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null
    else
        echo "note: sshd is missing and this is not root; install openssh-server for the ssh tests" >&2
    fi
fi

if ! command -v chromium >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]]; then
        echo "== installing chromium (report.html's tests open it in a headless browser)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "note: chromium is missing and this is not root; install it for the report tests" >&2
    fi
fi

echo "== pytest"
WORKERS="${BNPIPE_TEST_WORKERS:-2}"
if [[ "$WORKERS" == 1 ]]; then
    exec .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/python -m pytest -n "$WORKERS" --dist loadfile --durations=25 "$@"
