#!/usr/bin/env bash
# Builds the Debian package and tries it on this machine, leaving the
# machine as it found it: installs it with dpkg -i, checks the files
# (binaries, unit, conffile, state directory, the herald user),
# `systemd-analyze verify`s the unit, starts the server with the unit's
# ExecStart line by hand (systemd does not run here) as the herald user
# with a test socket as NOTIFY_SOCKET, checks that READY=1 arrives after
# the `listening on` line, that two herald-clients chat, that SIGTERM
# brings STOPPING=1 and exit 0; then purges the package and removes the
# user and state directory if this script made them.
#
# The package is built from the debug binaries cargo test built
# (`cargo deb --no-build --profile dev`, stripped): it checks the
# packaging, and costs seconds instead of a release build. A release
# package is `cargo deb` (see README, "Operating Herald").
#
# Needs root, dpkg, python3 (the stand-in notify socket), setpriv and
# adduser; installs cargo-deb $CARGO_DEB_VERSION with cargo install when
# missing (about two minutes, once per machine). Refuses to run when a
# herald package, /etc/herald or /usr/bin/herald-server is already here.
# WAIT_S (default 30) bounds every wait, in seconds; HERALD_SKIP_PACKAGE=1
# skips everything (ignored when CI=true), for a machine that must not
# have packages installed, even for seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n ${HERALD_SKIP_PACKAGE:-} && ${HERALD_SKIP_PACKAGE} != 0 && ${CI:-} != true ]]; then
    echo "package-test: skipped (HERALD_SKIP_PACKAGE is set)"
    exit 0
fi

CARGO_DEB_VERSION=3.8.0
WAIT_S=${WAIT_S:-30}
TARGET=${CARGO_TARGET_DIR:-target}

fail() { echo "package-test: FAIL: $*" >&2; exit 1; }
note() { echo "package-test: $*"; }

[ "$(id -u)" = 0 ] || fail "needs root (dpkg -i)"
for tool in dpkg dpkg-deb python3 setpriv adduser; do
    command -v "$tool" >/dev/null || fail "needs $tool"
done
if dpkg-query -W -f='${Status}' herald 2>/dev/null | grep -q installed \
    || [ -e /etc/herald ] || [ -e /usr/bin/herald-server ]; then
    fail "a herald package or its files are already on this machine; not touching them"
fi

if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
    note "installing cargo-deb $CARGO_DEB_VERSION (cargo install --locked)"
    cargo install --locked cargo-deb --version "$CARGO_DEB_VERSION"
fi
[ -x "$TARGET/debug/server" ] && [ -x "$TARGET/debug/client" ] \
    || cargo build --locked --bin server --bin client

tmp=$(mktemp -d)
deb=$tmp/herald.deb
# cargo-deb warns that a dev-profile package is not meant for release.
cargo deb --no-build --profile dev --fast -o "$deb" 2>"$tmp/cargo-deb.err" \
    || { cat "$tmp/cargo-deb.err" >&2; fail "cargo deb"; }

user_existed=; getent passwd herald >/dev/null && user_existed=1
group_existed=; getent group herald >/dev/null && group_existed=1
state_existed=; [ -e /var/lib/herald ] && state_existed=1
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    dpkg --purge herald >/dev/null 2>&1 || true
    [ -n "$user_existed" ] || userdel herald 2>/dev/null || true
    [ -n "$group_existed" ] || groupdel herald 2>/dev/null || true
    [ -n "$state_existed" ] || rm -rf /var/lib/herald
    rm -rf "$tmp"
}
trap cleanup EXIT

# Polls (bounded) until `grep -q PATTERN FILE` holds.
wait_grep() {
    local pattern=$1 file=$2 i
    for ((i = 0; i < WAIT_S * 10; i++)); do
        grep -q -- "$pattern" "$file" 2>/dev/null && return 0
        sleep 0.1
    done
    fail "no '$pattern' in $file within ${WAIT_S}s: $(cat "$file" 2>/dev/null)"
}

note "package contents"
contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/herald-server ./usr/bin/herald-client \
    ./usr/lib/systemd/system/herald.service ./etc/herald/herald.toml \
    ./usr/share/doc/herald/README.md ./usr/share/doc/herald/docs/design.md; do
    grep -q " $f\$" <<<"$contents" || fail "$f is not in the package"
done
[ "$(dpkg-deb -f "$deb" Package)" = herald ] || fail "package name"
dpkg-deb --ctrl-tarfile "$deb" | tar -tf - | grep -q '^./conffiles$' || fail "no conffiles"

note "dpkg -i"
dpkg -i "$deb" >"$tmp/dpkg.out" 2>&1 || { cat "$tmp/dpkg.out" >&2; fail "dpkg -i"; }
for f in /usr/bin/herald-server /usr/bin/herald-client; do
    [ -x "$f" ] || fail "$f is not installed"
done
[ -f /usr/lib/systemd/system/herald.service ] || fail "the unit is not installed"
dpkg-query -W -f='${Conffiles}\n' herald | grep -q '/etc/herald/herald.toml' \
    || fail "/etc/herald/herald.toml is not a conffile"
getent passwd herald | grep -q ':/usr/sbin/nologin$' || fail "no herald system user"
[ "$(stat -c '%U:%G %a' /var/lib/herald)" = "herald:herald 750" ] \
    || fail "state directory: $(stat -c '%U:%G %a' /var/lib/herald)"
/usr/bin/herald-server --version | grep -q . || fail "herald-server --version"

if command -v systemd-analyze >/dev/null; then
    note "systemd-analyze verify"
    systemd-analyze verify /usr/lib/systemd/system/herald.service \
        || fail "systemd-analyze verify herald.service"
fi

# The unit's ExecStart, and --port 0 after it (flags win over the file).
exec_start=$(sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/herald.service)
read -r -a argv <<<"$exec_start"
argv+=(--port 0)

note "the stand-in notify socket"
chmod 755 "$tmp"
python3 - "$tmp/notify" "$tmp/notified" "$((WAIT_S * 3))" <<'PY' &
import os, socket, sys, time
path, out, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o666)
end = time.monotonic() + limit
with open(out, "a") as f:
    while time.monotonic() < end:
        s.settimeout(max(0.1, end - time.monotonic()))
        try:
            data = s.recv(4096)
        except socket.timeout:
            break
        f.write(data.decode() + "--\n")
        f.flush()
PY
pids+=($!)
for ((i = 0; i < WAIT_S * 10; i++)); do [ -S "$tmp/notify" ] && break; sleep 0.1; done
[ -S "$tmp/notify" ] || fail "the notify socket did not appear"

note "starting: ${argv[*]} (as herald)"
(cd /var/lib/herald && exec env RUST_LOG=info NOTIFY_SOCKET="$tmp/notify" \
    setpriv --reuid=herald --regid=herald --init-groups "${argv[@]}") \
    >"$tmp/stdout" 2>"$tmp/stderr" </dev/null &
server=$!
pids+=("$server")
wait_grep '^READY=1$' "$tmp/notified"
# The server writes its start lines before it sends READY=1.
grep -q '^listening on 127.0.0.1:' "$tmp/stdout" || fail "READY=1 before the listening line"
grep -q '^STATUS=listening on 127.0.0.1:' "$tmp/notified" || fail "no STATUS"
port=$(sed -n 's/^listening on 127.0.0.1:\([0-9]*\)$/\1/p' "$tmp/stdout")
[ "$(stat -c %U /proc/"$server")" = herald ] || fail "the server does not run as herald"

note "two herald-clients on port $port"
/usr/bin/herald-client --client-id 2 --port "$port" </dev/null >"$tmp/c2.out" 2>"$tmp/c2.err" &
pids+=($!)
c2=$!
wait_grep "^logged in as 2" "$tmp/c2.err"
printf 'hello from the package\n' | /usr/bin/herald-client --client-id 1 --port "$port" \
    >"$tmp/c1.out" 2>"$tmp/c1.err" &
pids+=($!)
c1=$!
wait_grep '^1: hello from the package$' "$tmp/c2.out"
kill -TERM "$c1" "$c2"

note "SIGTERM"
kill -TERM "$server"
for ((i = 0; i < WAIT_S * 10; i++)); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
kill -0 "$server" 2>/dev/null && fail "the server did not stop within ${WAIT_S}s"
status=0; wait "$server" || status=$?
[ "$status" = 0 ] || fail "the server exited $status: $(cat "$tmp/stderr")"
wait_grep '^STOPPING=1$' "$tmp/notified"
# The conffile's data directory, relative to the unit's working directory.
[ "$(stat -c %U /var/lib/herald/herald-data/herald.db 2>/dev/null)" = herald ] \
    || fail "no /var/lib/herald/herald-data/herald.db owned by herald"

trap - EXIT
cleanup
if dpkg-query -W -f='${Status}' herald 2>/dev/null | grep -q installed \
    || [ -e /etc/herald ] || [ -e /usr/bin/herald-server ]; then
    fail "the package is still installed after purge"
fi
note "ok"
