#!/usr/bin/env bash
# WebSocket beside TCP (docs/benchmarks.md): one release server with
# --http-bind, `fanout --messages 5000` three times over TCP and three times
# over WebSocket, alternating, against it. Prints every run with its
# deliveries/s, latency and CPU seconds (the server's from /proc, the load
# generator's from time(1)), then the medians and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
# HERALD_BIN_DIR=DIR: the binaries there instead of a release build; QUICK=1:
# 50 messages per client instead of 5,000 (with both, the smoke run that
# ./test.sh makes of this script; the figures then mean nothing).
if [ -n "${HERALD_BIN_DIR:-}" ]; then
    BIN=$HERALD_BIN_DIR
else
    cargo build --release --quiet --bins
    BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
fi
messages=5000
[ -z "${QUICK:-}" ] || messages=50
work=$(mktemp -d "${TMPDIR:-/tmp}/herald-bench-ws.XXXXXX")
ids=bench-0
for ((i = 1; i < 20; i++)); do ids+=",bench-$i"; done
: >"$work/out"
RUST_LOG=warn "$BIN/server" --client-ids "$ids" --data-dir "$work/data" --port 0 \
    --http-bind 127.0.0.1:0 >"$work/out" 2>"$work/err" &
server_pid=$!
cleanup() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
for ((t = 0; t < 400; t++)); do
    [ "$(wc -l <"$work/out")" -ge 2 ] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/err" >&2; exit 1; }
    sleep 0.05
done
[ "$(wc -l <"$work/out")" -ge 2 ] || { echo "server did not start" >&2; exit 1; }
tcp_port=$(sed -n 1p "$work/out"); tcp_port=${tcp_port##*:}
http_port=$(sed -n 2p "$work/out"); http_port=${http_port##*:}
# The server's user + system CPU seconds so far.
server_cpu() { awk '{print ($14 + $15) / 100}' "/proc/$server_pid/stat"; }
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for ((r = 1; r <= RUNS; r++)); do
    for transport in tcp ws; do
        if [ $transport = tcp ]; then args=(--port "$tcp_port"); else args=(--transport ws --port "$http_port"); fi
        before=$(server_cpu)
        /usr/bin/time -f "%U %S" -o "$work/time" "$BIN/bench" "${args[@]}" --json fanout --messages "$messages" >"$work/json"
        after=$(server_cpu)
        python3 - "$work/json" "$work/time" "$before" "$after" "$transport" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
user, system = map(float, open(sys.argv[2]).read().split()[-2:])
print(f"{sys.argv[5]} {run['deliveries_per_sec']:.0f} deliveries/s"
      f"  p50 {run['latency_us_p50'] / 1000:.1f} ms  p99 {run['latency_us_p99'] / 1000:.1f} ms"
      f"  CPU s: server {float(sys.argv[4]) - float(sys.argv[3]):.2f}, bench {user + system:.2f}")
PY
    done
done | tee "$work/runs"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
median() { sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
tcp=$(awk '$1 == "tcp" {print $2}' "$work/runs" | median)
ws=$(awk '$1 == "ws" {print $2}' "$work/runs" | median)
echo "medians: tcp $tcp, ws $ws, ws/tcp $(python3 -c "print(f'{$ws / $tcp:.2f}')")"
