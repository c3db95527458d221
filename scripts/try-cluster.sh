#!/usr/bin/env bash
# Tries a Herald cluster in one command: starts a private PostgreSQL 15
# (initdb in a temporary directory) and NODES `server --database-url` nodes
# on it, on free loopback ports, prints each node's address and a
# `client --servers` line to paste for each client id (each starting on
# another node), and waits; Ctrl-C (or SIGTERM) stops the nodes and
# PostgreSQL and removes the temporary directory. Builds nothing: it runs
# the binaries in target/release, or target/debug when release has none.
#
#   scripts/try-cluster.sh                 # 3 nodes, client ids 1,2,3
#   scripts/try-cluster.sh --nodes 2 --ids alice,bob
#   scripts/try-cluster.sh --check         # self-test: exits 0 or 1
#
# Options:
#   --nodes N           nodes on the one database (default 3)
#   --ids LIST          the nodes' client-id allow-list (default 1,2,3)
#   --database-url URL  use this database (or HERALD_DATABASE_URL) instead of
#                       a private PostgreSQL; it is left as it is, messages
#                       included
#   --check             instead of waiting: a `client --servers` for the
#                       first id on node 1 and one for the second id on
#                       node 2 send each other a line; exit 0 when both
#                       arrive, 1 otherwise, with everything stopped
#
# HERALD_BIN_DIR picks the binaries' directory; WAIT_S (default 30) bounds
# every wait for a process or a line, in seconds. The private PostgreSQL
# needs PostgreSQL 15's programs in $PG_BIN (default
# /usr/lib/postgresql/15/bin; scripts/ensure-postgres.sh installs them as
# root) and python3; as root it runs as the `postgres` user.
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=3
IDS=1,2,3
URL=${HERALD_DATABASE_URL:-}
CHECK=
WAIT_S=${WAIT_S:-30}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case $1 in
        --nodes)
            [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || { echo "error: --nodes wants a positive number, not '${2:-}'" >&2; exit 2; }
            NODES=$2; shift 2 ;;
        --ids)
            [ -n "${2:-}" ] || { echo "error: --ids wants a comma-separated list of client ids" >&2; exit 2; }
            IDS=$2; shift 2 ;;
        --database-url)
            [ -n "${2:-}" ] || { echo "error: --database-url wants a URL" >&2; exit 2; }
            URL=$2; shift 2 ;;
        --check) CHECK=1; shift ;;
        -h | --help) usage ;;
        *) echo "error: unknown argument '$1'" >&2; usage ;;
    esac
done
[[ $WAIT_S =~ ^[1-9][0-9]*$ ]] || { echo "error: WAIT_S wants a positive number of seconds, not '$WAIT_S'" >&2; exit 2; }
IFS=, read -r -a ids <<<"$IDS"
for id in "${ids[@]}"; do
    [ -n "$id" ] || { echo "error: --ids has an empty entry: '$IDS'" >&2; exit 2; }
done
[ ${#ids[@]} -gt 0 ] || { echo "error: --ids is empty" >&2; exit 2; }
if [ -n "$CHECK" ] && { [ "$NODES" -lt 2 ] || [ ${#ids[@]} -lt 2 ]; }; then
    echo "error: --check needs at least 2 nodes and 2 ids" >&2
    exit 2
fi

target=${CARGO_TARGET_DIR:-target}
if [ -n "${HERALD_BIN_DIR:-}" ]; then
    BIN=$HERALD_BIN_DIR
elif [ -x "$target/release/server" ] && [ -x "$target/release/client" ]; then
    BIN=$target/release
elif [ -x "$target/debug/server" ] && [ -x "$target/debug/client" ]; then
    BIN=$target/debug
else
    echo "error: no server and client in $target/release or $target/debug: run cargo build --release" >&2
    exit 1
fi
[ -x "$BIN/server" ] && [ -x "$BIN/client" ] ||
    { echo "error: no server and client in $BIN: run cargo build --release" >&2; exit 1; }
BIN=$(cd "$BIN" && pwd)

work=$(mktemp -d "${TMPDIR:-/tmp}/herald-try-cluster.XXXXXX")
pids=() # every node and client, stopped by cleanup
. scripts/lib/private-pg.sh

# now_us: the wall clock in microseconds.
now_us() { echo "${EPOCHREALTIME//[.,]/}"; }

# stop_pids: SIGTERM to every process started, then SIGKILL to any still
# there after WAIT_S seconds.
stop_pids() {
    local pid deadline=$(($(now_us) + WAIT_S * 1000000))
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && [ "$(now_us)" -lt "$deadline" ]; do sleep 0.05; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    pids=()
}
cleanup() {
    trap '' INT TERM # a second Ctrl-C must not cut the cleanup short
    [ -n "$CHECK" ] || echo "stopping the nodes and PostgreSQL"
    stop_pids
    pg_stop
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_until SECONDS CMD...: polls CMD until it succeeds (0) or SECONDS pass (1).
wait_until() {
    local deadline=$(($(now_us) + $1 * 1000000))
    shift
    until "$@"; do
        [ "$(now_us)" -lt "$deadline" ] || return 1
        sleep 0.05
    done
}

# --- the database -----------------------------------------------------------
if [ -z "$URL" ]; then
    if [ ! -x "$PG_BIN/initdb" ]; then
        echo "error: PostgreSQL 15 is missing ($PG_BIN/initdb): run scripts/ensure-postgres.sh as root (or apt-get install postgresql-15), or give --database-url" >&2
        exit 1
    fi
    pg_start "$work/pg"
    pg_psql -d postgres -c 'CREATE DATABASE herald'
    URL=postgres://postgres@127.0.0.1:$PG_PORT/herald
    echo "PostgreSQL (private, in $work/pg): $URL"
else
    echo "database: $URL"
fi

# --- the nodes --------------------------------------------------------------
nodes=() # host:port of each node
listening() { [[ $(head -n1 "$1") == "listening on "* ]]; }
gone() { ! kill -0 "$1" 2>/dev/null; }
listening_or_gone() { listening "$2" || gone "$1"; }
for ((n = 1; n <= NODES; n++)); do
    : >"$work/node$n.out"
    "$BIN/server" --bind 127.0.0.1 --port 0 --client-ids "$IDS" --database-url "$URL" \
        >"$work/node$n.out" 2>"$work/node$n.log" &
    pids+=($!)
    wait_until "$WAIT_S" listening_or_gone "$!" "$work/node$n.out" || true
    if ! listening "$work/node$n.out"; then
        echo "error: node $n did not start:" >&2
        cat "$work/node$n.log" >&2
        exit 1
    fi
    line=$(head -n1 "$work/node$n.out")
    nodes+=("${line#listening on }")
done

# servers_from K: the nodes' addresses starting at node K (0-based), wrapping.
servers_from() {
    local i list=
    for ((i = 0; i < NODES; i++)); do list+="${list:+,}${nodes[(($1 + i) % NODES)]}"; done
    echo "$list"
}

if [ -z "$CHECK" ]; then
    for ((n = 1; n <= NODES; n++)); do
        echo "node $n: ${nodes[n - 1]}  (log: $work/node$n.log)"
    done
    echo
    echo "Paste these in two or three more terminals, then type in one:"
    for ((k = 0; k < ${#ids[@]}; k++)); do
        echo "  $BIN/client --client-id ${ids[k]} --servers $(servers_from "$k")"
    done
    echo
    echo "Ctrl-C here stops the nodes and PostgreSQL and removes $work."
    # Back here when a node exits by itself (or on a signal, through the trap).
    wait -n "${pids[@]}" || true
    for ((n = 1; n <= NODES; n++)); do
        kill -0 "${pids[n - 1]}" 2>/dev/null && continue
        echo "error: node $n exited:" >&2
        tail -n 20 "$work/node$n.log" >&2
    done
    exit 1
fi

# --- the self-test ----------------------------------------------------------
a=${ids[0]} b=${ids[1]}
mkfifo "$work/a.in" "$work/b.in"
# Opened read-write so that opening does not wait for a reader; the clients
# must not inherit them (their stdin ends when these close).
exec 3<>"$work/a.in" 4<>"$work/b.in"
: >"$work/a.out" && : >"$work/a.err" && : >"$work/b.out" && : >"$work/b.err"
"$BIN/client" --client-id "$a" --servers "$(servers_from 0)" --exit-when-idle 300 \
    <"$work/a.in" >"$work/a.out" 2>"$work/a.err" 3>&- 4>&- &
pids+=($!) && a_pid=$!
"$BIN/client" --client-id "$b" --servers "$(servers_from 1)" --exit-when-idle 300 \
    <"$work/b.in" >"$work/b.out" 2>"$work/b.err" 3>&- 4>&- &
pids+=($!) && b_pid=$!

fail() {
    echo "check failed: $*" >&2
    local f
    for f in "$work"/a.err "$work"/b.err "$work"/node*.log; do
        echo "== ${f##*/}" >&2
        tail -n 20 "$f" >&2
    done
    exit 1
}
has_line() { grep -qxF -- "$2" "$1"; }
logged_in() { grep -q "^logged in as " "$1"; }
logged_in_or_gone() { logged_in "$2" || gone "$1"; }

wait_until "$WAIT_S" logged_in_or_gone "$a_pid" "$work/a.err" || true
logged_in "$work/a.err" || fail "client $a did not log in to ${nodes[0]}"
wait_until "$WAIT_S" logged_in_or_gone "$b_pid" "$work/b.err" || true
logged_in "$work/b.err" || fail "client $b did not log in to ${nodes[1]}"
echo "client $a on node 1 (${nodes[0]}), client $b on node 2 (${nodes[1]})"

# A token of this run, so that a backlog left by an earlier run on the same
# database cannot pass for these lines.
run=${work##*.}
line_a="hello from $a through node 1 ($run)"
echo "$line_a" >&3
wait_until "$WAIT_S" has_line "$work/b.out" "$a: $line_a" || fail "client $b did not print '$a: $line_a' within $WAIT_S s"
echo "client $b printed: $a: $line_a"
line_b="hello from $b through node 2 ($run)"
echo "$line_b" >&4
wait_until "$WAIT_S" has_line "$work/a.out" "$b: $line_b" || fail "client $a did not print '$b: $line_b' within $WAIT_S s"
echo "client $a printed: $b: $line_b"

# Both stdins end: each client quits by itself once its line is confirmed.
exec 3>&- 4>&-
for who in "$a:$a_pid" "$b:$b_pid"; do
    wait_until "$WAIT_S" gone "${who##*:}" || fail "client ${who%:*} did not exit within $WAIT_S s of its stdin's end"
    status=0
    wait "${who##*:}" || status=$?
    [ "$status" = 0 ] || fail "client ${who%:*} exited with status $status"
done
if grep -q "^next server:" "$work/a.err" "$work/b.err"; then
    fail "a client moved to another node"
fi
echo "check passed: $NODES nodes on one database, a line each way between node 1 and node 2"
