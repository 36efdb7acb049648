#!/usr/bin/env bash
# A throw-away sshd on 127.0.0.1 for the tests of the ssh target (tests/test_ssh.py).
#
#   start_test_sshd.sh DIR        start one; DIR receives:
#       port            the port it listens on (127.0.0.1 only)
#       target          USER@127.0.0.1:PORT, a bnpipe `ssh:` target spec
#       client_key      the private key the server accepts (DIR/client_key.pub is authorized)
#       ssh_opts        client options for BNPIPE_SSH_OPTS (config, known_hosts, key)
#       sshd.pid sshd.log sshd_config host_ed25519 known_hosts authorized_keys
#   start_test_sshd.sh stop DIR   stop the one started in DIR
#
# It runs as the current user (root in CI) with its own host key and StrictModes off, so the
# keys can live in any dir. If `sshd` is missing and we are root, openssh-server is installed
# with apt-get (the machine's policy-rc.d, if any, keeps the system service from starting).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: start_test_sshd.sh DIR | stop DIR | --help
Start (or stop) a test sshd on 127.0.0.1 on a free port, with keys and settings in DIR.
Example:
  d=$(mktemp -d) && bash scripts/start_test_sshd.sh "$d" && ssh $(cat "$d/ssh_opts") \
      -p "$(cat "$d/port")" "$(id -un)@127.0.0.1" true
EOF
}
die() { echo "error: $*" >&2; exit 1; }

stop_sshd() {
    local dir="$1" pid
    [[ -f "$dir/sshd.pid" ]] || { echo "no test sshd recorded in $dir"; return 0; }
    pid="$(cat "$dir/sshd.pid")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$dir/sshd.pid"
    echo "stopped test sshd $pid"
}

case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    stop) [[ -n "${2:-}" ]] || { usage >&2; exit 2; }; stop_sshd "$2"; exit 0 ;;
    "") usage >&2; exit 2 ;;
esac
mkdir -p "$1"
DIR="$(cd "$1" && pwd)"

find_sshd() { command -v sshd || { [[ -x /usr/sbin/sshd ]] && echo /usr/sbin/sshd; } || true; }
SSHD="$(find_sshd)"
if [[ -z "$SSHD" ]]; then
    [[ "$(id -u)" == 0 ]] || die "sshd is not installed (apt-get install openssh-server, as root)"
    echo "installing openssh-server" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends openssh-server >"$DIR/apt.log" 2>&1 \
        || { apt-get update -q >>"$DIR/apt.log" 2>&1 \
             && apt-get install -y -q --no-install-recommends openssh-server >>"$DIR/apt.log" 2>&1; } \
        || die "apt-get install openssh-server failed (log: $DIR/apt.log)"
    SSHD="$(find_sshd)"
    [[ -n "$SSHD" ]] || die "openssh-server is installed but no sshd binary was found"
fi
# As root, sshd's privilege separation needs this dir (the init script would create it).
if [[ "$(id -u)" == 0 && ! -d /run/sshd ]]; then mkdir -p /run/sshd && chmod 0755 /run/sshd; fi

[[ -f "$DIR/sshd.pid" ]] && stop_sshd "$DIR" >/dev/null
rm -f "$DIR/host_ed25519" "$DIR/host_ed25519.pub" "$DIR/client_key" "$DIR/client_key.pub"
ssh-keygen -q -t ed25519 -N "" -C bnpipe-test-host -f "$DIR/host_ed25519"
ssh-keygen -q -t ed25519 -N "" -C bnpipe-test-client -f "$DIR/client_key"
cp "$DIR/client_key.pub" "$DIR/authorized_keys"
chmod 600 "$DIR/authorized_keys"

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

for attempt in $(seq 20); do
    PORT=$((20000 + RANDOM % 40000))
    port_in_use "$PORT" && continue
    cat >"$DIR/sshd_config" <<EOF
Port $PORT
ListenAddress 127.0.0.1
HostKey $DIR/host_ed25519
AuthorizedKeysFile $DIR/authorized_keys
PidFile $DIR/sshd.pid
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
X11Forwarding no
AllowTcpForwarding no
# scp (OpenSSH >= 9) speaks SFTP
Subsystem sftp internal-sftp
LogLevel ERROR
EOF
    rm -f "$DIR/sshd.pid"
    # -D: stay in the foreground of a detached session, so a failed bind shows as an exit.
    setsid "$SSHD" -D -f "$DIR/sshd_config" -E "$DIR/sshd.log" </dev/null >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 50); do
        if ! kill -0 "$pid" 2>/dev/null; then break; fi
        if [[ -s "$DIR/sshd.pid" ]] && port_in_use "$PORT"; then
            echo "$PORT" >"$DIR/port"
            echo "$(id -un)@127.0.0.1:$PORT" >"$DIR/target"
            printf -- '-F /dev/null -o StrictHostKeyChecking=yes -o UserKnownHostsFile=%q -i %q -o IdentitiesOnly=yes\n' \
                "$DIR/known_hosts" "$DIR/client_key" >"$DIR/ssh_opts"
            echo "[127.0.0.1]:$PORT $(cat "$DIR/host_ed25519.pub")" >"$DIR/known_hosts"
            echo "test sshd $pid listening on 127.0.0.1:$PORT (stop: bash $0 stop $DIR)"
            exit 0
        fi
        sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    echo "attempt $attempt on port $PORT failed: $(tail -n 1 "$DIR/sshd.log" 2>/dev/null)" >&2
done
die "could not start sshd (log: $DIR/sshd.log)"
