#!/usr/bin/env bash
# Runs every benchmark workload RUNS times (default 3), each against a fresh
# release-built server on loopback, and prints every run and the medians.
#
#   scripts/bench.sh                 # everything
#   scripts/bench.sh fanout catchup  # some workloads only
#   RUNS=5 scripts/bench.sh durable
#   BEFORE=/path/to/old/bin scripts/bench.sh single   # side by side
#
# With BEFORE set to a directory holding an older `server`, every run is made
# twice, alternating that server and this tree's (the load generator is this
# tree's for both), and each figure is reported as NAME@before / NAME@after.
#
# HERALD_BIN_DIR=DIR uses the binaries there instead of building release
# ones, and QUICK=1 divides every workload's size by 100: together they are
# the smoke run `./test.sh` makes of this script (the figures then mean
# nothing).
#
# Workloads (see docs/benchmarks.md):
#   fanout          20 clients x 20,000 msgs x 100 B, window 64, --memory
#   fanout-always   the same on a durable server, --sync always
#   durable         20 senders x 10,000 msgs: --memory, --sync none, --sync always
#   single          1 sender x 200,000 msgs, window 64, --sync always
#   catchup         100,000 stored msgs replayed from disk after a restart
#   connections     10,000 idle clients, one broadcast, server memory each
#   fsync           the raw fsync rate of the disk under $TMPDIR
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
if [ -n "${HERALD_BIN_DIR:-}" ]; then
    BIN=$(realpath "$HERALD_BIN_DIR")
else
    cargo build --release --quiet --bins
    BIN=$(realpath "${CARGO_TARGET_DIR:-target}")/release
fi
# n COUNT: a workload's size, divided by 100 with QUICK=1.
n() { if [ -n "${QUICK:-}" ]; then echo $(($1 / 100)); else echo "$1"; fi; }
BEFORE=${BEFORE:-}
if [ -n "$BEFORE" ] && [ ! -x "$BEFORE/server" ]; then
    echo "BEFORE=$BEFORE holds no executable server" >&2
    exit 2
fi
variants=(after)
[ -z "$BEFORE" ] || variants=(before after)
server_bin=$BIN/server
sfx=
# use_variant before|after: which server the next start_server runs.
use_variant() {
    if [ -z "$BEFORE" ]; then return; fi
    sfx=@$1
    if [ "$1" = before ]; then server_bin=$BEFORE/server; else server_bin=$BIN/server; fi
}
work=$(mktemp -d "${TMPDIR:-/tmp}/herald-bench.XXXXXX")
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

ids=bench-w,bench-r
for ((i = 0; i < 20; i++)); do ids+=",bench-$i"; done
for ((i = 0; i < 10000; i++)); do ids+=",idle-$i"; done

# start_server [--keep] ARGS...: a server on a free port; sets $port.
# Without --keep the data directory starts empty.
start_server() {
    if [ "${1:-}" = --keep ]; then shift; else rm -rf "$work/data"; fi
    : >"$work/out"
    RUST_LOG=warn "$server_bin" --bind 127.0.0.1 --port 0 --max-connections 20000 --client-ids "$ids" "$@" >"$work/out" 2>>"$work/err" &
    server_pid=$!
    for ((t = 0; t < 400; t++)); do
        line=$(head -n1 "$work/out")
        if [ -n "$line" ]; then
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
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
}
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

declare -A res
record() { res[$1$sfx]+="$2 "; }

# run_load NAME FIELD SERVER-ARGS... -- BENCH-ARGS...
run_load() {
    local name=$1 fld=$2
    shift 2
    local sargs=()
    while [ "$1" != -- ]; do
        sargs+=("$1")
        shift
    done
    shift
    for ((r = 1; r <= RUNS; r++)); do
        for v in "${variants[@]}"; do
            use_variant "$v"
            start_server "${sargs[@]}"
            json=$("$BIN/bench" --port "$port" --json "$@")
            echo "[$name$sfx run $r] $json"
            record "$name" "$(field "$fld" <<<"$json")"
            if [ "$fld" = deliveries_per_sec ]; then record "$name-p99-us" "$(field latency_us_p99 <<<"$json")"; fi
            stop_server
        done
    done
}

workloads=("$@")
[ ${#workloads[@]} -gt 0 ] || workloads=(fanout fanout-always durable single catchup connections fsync)
for w in "${workloads[@]}"; do
    case $w in
        fanout) run_load fanout deliveries_per_sec --memory -- fanout --messages "$(n 20000)" ;;
        fanout-always) run_load fanout-always deliveries_per_sec --data-dir "$work/data" --sync always -- fanout --messages "$(n 20000)" ;;
        durable)
            run_load durable-memory sends_per_sec --memory -- durable --messages "$(n 10000)"
            run_load durable-none sends_per_sec --data-dir "$work/data" --sync none -- durable --messages "$(n 10000)"
            run_load durable-always sends_per_sec --data-dir "$work/data" --sync always -- durable --messages "$(n 10000)"
            ;;
        single) run_load single-always sends_per_sec --data-dir "$work/data" --sync always -- durable --clients 1 --messages "$(n 200000)" ;;
        catchup)
            for ((r = 1; r <= RUNS; r++)); do
                for v in "${variants[@]}"; do
                    use_variant "$v"
                    start_server --data-dir "$work/data" --sync always
                    "$BIN/bench" --port "$port" catchup --phase fill --messages "$(n 100000)" 2>/dev/null
                    stop_server
                    start_server --keep --data-dir "$work/data"
                    json=$("$BIN/bench" --port "$port" --json catchup --phase drain --messages "$(n 100000)")
                    echo "[catchup$sfx run $r] $json"
                    record catchup "$(field msgs_per_sec <<<"$json")"
                    stop_server
                done
            done
            ;;
        connections)
            for ((r = 1; r <= RUNS; r++)); do
                for v in "${variants[@]}"; do
                    use_variant "$v"
                    start_server --memory
                    json=$("$BIN/bench" --port "$port" --json connections --clients "$(n 10000)" --server-pid "$server_pid")
                    echo "[connections$sfx run $r] $json"
                    record connections-ms "$(field broadcast_ms <<<"$json")"
                    record connections-bytes "$(field server_bytes_per_connection <<<"$json")"
                    stop_server
                done
            done
            ;;
        fsync)
            for ((r = 1; r <= RUNS; r++)); do
                json=$("$BIN/bench" --json fsync --dir "$work")
                echo "[fsync run $r] $json"
                sfx= record fsync "$(field fsyncs_per_sec <<<"$json")"
            done
            ;;
        *)
            echo "unknown workload $w" >&2
            exit 2
            ;;
    esac
done

echo
echo "medians of $RUNS runs:"
for k in $(printf '%s\n' "${!res[@]}" | sort); do
    printf '  %-22s %14.1f   (runs: %s)\n' "$k" "$(median <<<"${res[$k]}")" "${res[$k]% }"
done
