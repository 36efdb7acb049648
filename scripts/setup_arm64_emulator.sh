#!/usr/bin/env bash
# Set up the `arm64` target: aarch64 LiteRT under QEMU user-mode emulation, without root.
#
# Everything lands in one cache dir (see --print-dir); nothing on the system is changed:
#   qemu/           qemu-user >= 10 (Debian bookworm-backports, amd64 .deb unpacked with dpkg -x;
#                   bookworm's own qemu 7.2 segfaults on LiteRT 2.x)
#   sysroot/        Debian bookworm arm64 packages of python3.11 and the libraries it loads
#   site-packages/  the aarch64 wheels of numpy and ai-edge-litert, unzipped
#   apt/            a private apt state: sources.list, lists, cache, an empty dpkg status
#   READY           written last; its presence means the set-up is complete (a re-run exits early)
#
# The Debian mirror is read from this machine's apt configuration, or from $BNPIPE_DEBIAN_MIRROR.
set -euo pipefail

LITERT_VERSION="${BNPIPE_ARM64_LITERT:-2.3.0}"
NUMPY_VERSION="${BNPIPE_ARM64_NUMPY:-2.2.6}"
SUITE=bookworm            # the sysroot's Debian release: its python3.11 fits the cp311 wheels
QEMU_MIN_MAJOR=10         # qemu 7.2 segfaults on LiteRT 2.x; 10.0.2 is the version tried
# arm64 packages unpacked into the sysroot: python3.11 and every shared library that it, the
# stdlib modules bnpipe's runner imports, numpy and LiteRT load (found by running them).
SYSROOT_PACKAGES=(
    libc6 libgcc-s1 libstdc++6 zlib1g libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5
    libcrypt1 libuuid1 libsqlite3-0 libncursesw6 libtinfo6 libreadline8 libdb5.3
    libpython3.11-minimal libpython3.11-stdlib python3.11-minimal
)

CACHE_ROOT="${BNPIPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bnpipe}"
DIR="$CACHE_ROOT/arm64"
STAMP="$DIR/READY"

usage() {
    cat <<EOF
Usage: $(basename "$0") [--help | --print-dir]

Download and unpack, into $DIR
(override with \$BNPIPE_CACHE or \$XDG_CACHE_HOME), an aarch64 Python $SUITE sysroot,
qemu-user >= $QEMU_MIN_MAJOR and the aarch64 wheels of numpy $NUMPY_VERSION and
ai-edge-litert $LITERT_VERSION, so that bnpipe's arm64 target can run .tflite models under
emulation. Needs no root and changes nothing outside that dir. Idempotent: a second run
returns at once. Delete the dir to start over.

Environment:
  BNPIPE_CACHE           cache root (default \${XDG_CACHE_HOME:-\$HOME/.cache}/bnpipe)
  BNPIPE_DEBIAN_MIRROR   Debian mirror URL (default: read from this machine's apt sources)
  BNPIPE_PYTHON          a python with pip, used only to download wheels (default python3)

Example:
  bash scripts/setup_arm64_emulator.sh
EOF
}

case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    --print-dir) echo "$DIR"; exit 0 ;;
    "") ;;
    *) echo "error: unknown argument '$1' (expected --help or --print-dir)" >&2; exit 2 ;;
esac

if [[ -f "$STAMP" ]]; then
    echo "arm64 emulator already set up (delete $STAMP to redo)"
    echo "$DIR"
    exit 0
fi

log() { echo "[setup-arm64] $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

for tool in apt-get dpkg dpkg-deb; do
    command -v "$tool" >/dev/null || die "'$tool' is needed (a Debian/Ubuntu host) but was not found"
done
PYTHON="${BNPIPE_PYTHON:-python3}"
"$PYTHON" -m pip --version >/dev/null 2>&1 \
    || die "'$PYTHON -m pip' does not work; set BNPIPE_PYTHON to a python that has pip"

# --- the Debian mirror: env override, else the machine's own apt sources ---------------------
find_mirror() {
    # deb822 stanzas (*.sources): the URIs of a stanza whose Suites has the plain release name;
    # one-line format (*.list): "deb [opts] URI SUITE COMPONENTS...".
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        awk -v suite="$SUITE" '
            function flush() { if (ok && uri != "") { print uri; found = 1; exit } ok = 0; uri = "" }
            /^[[:space:]]*$/ { flush(); next }
            /^[[:space:]]*#/ { next }
            tolower($1) == "uris:" { uri = $2 }
            tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
            END { if (!found) flush() }
        ' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] || continue
        awk -v suite="$SUITE" '
            $1 == "deb" { n = 2; if ($2 ~ /^\[/) { while (n <= NF && $n !~ /\]$/) n++; n++ }
                          if ($(n + 1) == suite) print $n }
        ' "$f"
    done
}
MIRROR="${BNPIPE_DEBIAN_MIRROR:-$(find_mirror | head -n 1)}"
MIRROR="${MIRROR%/}"
[[ -n "$MIRROR" ]] || die "no Debian mirror for '$SUITE' in /etc/apt/sources.list{,.d}; set BNPIPE_DEBIAN_MIRROR"
log "Debian mirror: $MIRROR"

mkdir -p "$DIR"/{apt/lists/partial,apt/cache/archives/partial,debs,wheels}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
SIGNED=""
[[ -f "$KEYRING" ]] && SIGNED="[signed-by=$KEYRING] "
cat >"$DIR/apt/sources.list" <<EOF
deb ${SIGNED}$MIRROR $SUITE main
deb ${SIGNED}$MIRROR $SUITE-updates main
deb ${SIGNED}$MIRROR $SUITE-backports main
EOF
: >"$DIR/apt/status"   # an empty dpkg status: nothing counts as installed, nothing is touched

APT_OPTS=(
    -o "Dir::Etc::SourceList=$DIR/apt/sources.list"
    -o Dir::Etc::SourceParts=/dev/null
    -o Dir::Etc::Preferences=/dev/null
    -o Dir::Etc::PreferencesParts=/dev/null
    -o "Dir::State::Lists=$DIR/apt/lists"
    -o "Dir::State::status=$DIR/apt/status"
    -o "Dir::Cache=$DIR/apt/cache"
    -o APT::Architectures=arm64,amd64
    -o APT::Architecture=amd64
    -o Acquire::Languages=none
    -o APT::Sandbox::User="$(id -un)"   # the _apt user cannot write into a home dir cache
    -o Debug::NoLocking=1
)

log "apt-get update (private lists in $DIR/apt)"
apt-get "${APT_OPTS[@]}" -q update >"$DIR/apt/update.log" 2>&1 \
    || { tail -n 5 "$DIR/apt/update.log" >&2; die "apt-get update failed (log: $DIR/apt/update.log)"; }

# --- qemu-user from backports ------------------------------------------------------------------
if [[ ! -x "$DIR/qemu/usr/bin/qemu-aarch64" ]]; then
    log "downloading qemu-user from $SUITE-backports"
    rm -rf "$DIR/qemu" "$DIR/qemu.tmp" "$DIR/debs/qemu"
    mkdir -p "$DIR/debs/qemu"
    (cd "$DIR/debs/qemu" && apt-get "${APT_OPTS[@]}" -q download "qemu-user:amd64/$SUITE-backports" >/dev/null) \
        || die "apt-get download qemu-user/$SUITE-backports failed"
    mkdir -p "$DIR/qemu.tmp"
    for deb in "$DIR"/debs/qemu/*.deb; do dpkg -x "$deb" "$DIR/qemu.tmp"; done
    # The .deb holds a static emulator for every architecture (~360 MB); keep only aarch64.
    mkdir -p "$DIR/qemu/usr/bin"
    mv "$DIR/qemu.tmp/usr/bin/qemu-aarch64" "$DIR/qemu/usr/bin/qemu-aarch64"
    rm -rf "$DIR/qemu.tmp"
fi
QEMU="$DIR/qemu/usr/bin/qemu-aarch64"
[[ -x "$QEMU" ]] || die "qemu-user .deb did not contain usr/bin/qemu-aarch64"
QEMU_VERSION="$("$QEMU" --version | head -n 1)"
QEMU_MAJOR="$(sed -E 's/.*version ([0-9]+).*/\1/' <<<"$QEMU_VERSION")"
[[ "$QEMU_MAJOR" =~ ^[0-9]+$ && "$QEMU_MAJOR" -ge "$QEMU_MIN_MAJOR" ]] \
    || die "need qemu-user >= $QEMU_MIN_MAJOR, got: $QEMU_VERSION"
log "$QEMU_VERSION"

# --- the arm64 sysroot -------------------------------------------------------------------------
SYSROOT="$DIR/sysroot"
log "downloading ${#SYSROOT_PACKAGES[@]} arm64 packages"
rm -rf "$DIR/debs/arm64" "$SYSROOT"
mkdir -p "$DIR/debs/arm64" "$SYSROOT"
(cd "$DIR/debs/arm64" && apt-get "${APT_OPTS[@]}" -q download "${SYSROOT_PACKAGES[@]/%/:arm64}" >/dev/null) \
    || die "apt-get download of the arm64 packages failed"
for deb in "$DIR"/debs/arm64/*.deb; do dpkg -x "$deb" "$SYSROOT"; done
[[ -x "$SYSROOT/usr/bin/python3.11" ]] || die "the sysroot has no usr/bin/python3.11"

# --- the aarch64 wheels ------------------------------------------------------------------------
# pip matches --platform tags literally, so list every manylinux glibc level up to bookworm's 2.36.
PLATFORMS=(--platform manylinux2014_aarch64)
for minor in $(seq 17 36); do PLATFORMS+=(--platform "manylinux_2_${minor}_aarch64"); done
log "downloading the aarch64 wheels: numpy $NUMPY_VERSION, ai-edge-litert $LITERT_VERSION"
rm -rf "$DIR/wheels" "$DIR/site-packages"
mkdir -p "$DIR/wheels" "$DIR/site-packages"
# --no-deps: ai_edge_litert.interpreter needs only numpy; its other requirements (protobuf,
# flatbuffers, tqdm, ...) serve the converter and model tools, which the runner never imports.
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --implementation cp --abi cp311 "${PLATFORMS[@]}" -d "$DIR/wheels" \
    "numpy==$NUMPY_VERSION" "ai-edge-litert==$LITERT_VERSION" \
    || die "pip download of the aarch64 wheels failed"
for whl in "$DIR"/wheels/*.whl; do "$PYTHON" -m zipfile -e "$whl" "$DIR/site-packages"; done

# --- verify ------------------------------------------------------------------------------------
log "verifying: importing numpy and ai_edge_litert under emulation"
VERIFY="$(PYTHONPATH="$DIR/site-packages" PYTHONNOUSERSITE=1 "$QEMU" -L "$SYSROOT" \
    "$SYSROOT/usr/bin/python3.11" -c '
import platform, numpy, ai_edge_litert
from ai_edge_litert.interpreter import Interpreter
print(platform.machine(), numpy.__version__, ai_edge_litert.__version__)')" \
    || die "the emulated python could not import numpy and ai_edge_litert"
log "emulated: $VERIFY"
[[ "$VERIFY" == "aarch64 $NUMPY_VERSION $LITERT_VERSION" ]] || die "unexpected verification output: $VERIFY"

# The apt lists and .debs are only needed to build; keep the dir small.
rm -rf "$DIR/apt/lists" "$DIR/apt/cache" "$DIR/debs" "$DIR/wheels"

cat >"$STAMP.tmp" <<EOF
qemu=$QEMU
sysroot=$SYSROOT
python=$SYSROOT/usr/bin/python3.11
site_packages=$DIR/site-packages
qemu_version=$QEMU_VERSION
numpy_version=$NUMPY_VERSION
litert_version=$LITERT_VERSION
EOF
mv "$STAMP.tmp" "$STAMP"
echo "arm64 emulator ready"
echo "$DIR"
