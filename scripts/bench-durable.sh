#!/usr/bin/env bash
# Durable-write benchmark: sustained SEND->SENT throughput with 20 concurrent
# senders against --memory, --sync none and --sync always servers (a fresh
# server per run), backlog replay of 100,000 stored messages, and the raw
# fsync rate of the disk. Prints each run and the median of RUNS (default 3).
#
#   scripts/bench-durable.sh            # release build, 3 runs each
#   RUNS=5 MESSAGES=5000 scripts/bench-durable.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SENDERS=${SENDERS:-20}
MESSAGES=${MESSAGES:-10000}
BACKLOG=${BACKLOG:-100000}
cargo build --release --quiet
BIN=target/release
work=$(mktemp -d "${TMPDIR:-/tmp}/herald-bench.XXXXXX")
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

ids=bench-w,bench-r
for ((i = 0; i < SENDERS; i++)); do ids+=",bench-$i"; done

# start_server ARGS... : starts a server on a free port, sets $port
start_server() {
    rm -rf "$work/data" "$work/out"
    : >"$work/out"
    "$BIN/server" --bind 127.0.0.1 --port 0 --client-ids "$ids" "$@" >"$work/out" 2>"$work/err" &
    server_pid=$!
    for ((t = 0; t < 200; t++)); do
        if read -r line <"$work/out" 2>/dev/null && [ -n "$line" ]; then
            port=${line##*:}
            return
        fi
        kill -0 "$server_pid" 2>/dev/null || { cat "$work/err" >&2; exit 1; }
        sleep 0.05
    done
    echo "server did not start" >&2
    exit 1
}

stop_server() {
    kill "$server_pid" && wait "$server_pid" || true
    server_pid=
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A results
for mode in memory none always; do
    for ((r = 1; r <= RUNS; r++)); do
        case $mode in
            memory) start_server --memory ;;
            *) start_server --data-dir "$work/data" --sync "$mode" ;;
        esac
        line=$("$BIN/bench" --port "$port" durable --senders "$SENDERS" --messages "$MESSAGES")
        echo "[$mode run $r] $line"
        results[$mode]+="$(awk '{for (i=1;i<=NF;i++) if ($(i+1)=="sends/s") print $i}' <<<"$line") "
        stop_server
    done
done
for ((r = 1; r <= RUNS; r++)); do
    # Fill, restart (so nothing is cached in the server), then drain.
    start_server --data-dir "$work/data" --sync always
    "$BIN/bench" --port "$port" catchup --phase fill --messages "$BACKLOG" >/dev/null
    kill "$server_pid" && wait "$server_pid" || true
    "$BIN/server" --bind 127.0.0.1 --port 0 --client-ids "$ids" --data-dir "$work/data" >"$work/out2" 2>>"$work/err" &
    server_pid=$!
    for ((t = 0; t < 200; t++)); do
        line=$(head -n1 "$work/out2" 2>/dev/null || true)
        [ -n "$line" ] && break
        sleep 0.05
    done
    port=${line##*:}
    line=$("$BIN/bench" --port "$port" catchup --phase drain --messages "$BACKLOG")
    echo "[catchup run $r] $line"
    results[catchup]+="$(awk '{print $(NF-1)}' <<<"$line") "
    stop_server
done
fs=$("$BIN/bench" fsync --dir "$work")
echo "$fs"

echo
echo "medians of $RUNS runs:"
for mode in memory none always; do
    printf '  durable --%-7s %10s confirmed sends/s\n' "$mode" "$(tr ' ' '\n' <<<"${results[$mode]}" | grep . | median)"
done
printf '  catchup (always) %10s msgs/s\n' "$(tr ' ' '\n' <<<"${results[catchup]}" | grep . | median)"
