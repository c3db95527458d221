#!/usr/bin/env bash
# Benchmarks a Herald cluster against one SQLite node, side by side: starts a
# private PostgreSQL 15 (initdb in a temporary directory, fsync and
# synchronous_commit on), then for each of RUNS runs and each workload
# (durable, fanout) a fresh database with NODES `server --database-url`
# nodes driven by `bench --servers` (clients dealt round-robin over the
# nodes), and a fresh `server --data-dir --sync always` driven by the same
# workload; prints every run and the medians. Stops everything it started.
#
#   scripts/bench-cluster.sh                       # 3 nodes, 3 runs
#   scripts/bench-cluster.sh --runs 5 --nodes 2
#   scripts/bench-cluster.sh --setups cluster,pg1,sqlite
#
# Options:
#   --runs N        runs of each workload on each setup (default 3; or RUNS=N)
#   --nodes N       cluster nodes on the one database (default 3)
#   --clients N     bench clients, each sending (default 20)
#   --messages N    messages each client sends (default 10000)
#   --setups LIST   comma-separated, in the order run within each run:
#                   cluster (NODES nodes on PostgreSQL), pg1 (one node on
#                   PostgreSQL), sqlite (one node, --sync always)
#                   (default cluster,sqlite)
#   --workloads L   comma-separated: durable, fanout (default durable,fanout)
#
# Needs PostgreSQL 15's programs in $PG_BIN (default
# /usr/lib/postgresql/15/bin; scripts/ensure-postgres.sh installs them as
# root). PostgreSQL refuses to run as root, so as root it runs as the
# `postgres` user.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
NODES=3
CLIENTS=20
MESSAGES=10000
SETUPS=cluster,sqlite
WORKLOADS=durable,fanout
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin} # also read by scripts/lib/private-pg.sh

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}
positive() { [[ $2 =~ ^[1-9][0-9]*$ ]] || { echo "error: $1 wants a positive number, not '$2'" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
    case $1 in
        --runs) positive "$1" "${2:-}"; RUNS=$2; shift 2 ;;
        --nodes) positive "$1" "${2:-}"; NODES=$2; shift 2 ;;
        --clients) positive "$1" "${2:-}"; CLIENTS=$2; shift 2 ;;
        --messages) positive "$1" "${2:-}"; MESSAGES=$2; shift 2 ;;
        --setups) SETUPS=${2:-}; shift 2 ;;
        --workloads) WORKLOADS=${2:-}; shift 2 ;;
        -h | --help) usage ;;
        *) echo "error: unknown argument '$1'" >&2; usage ;;
    esac
done
positive --runs "$RUNS"
IFS=, read -r -a setups <<<"$SETUPS"
IFS=, read -r -a workloads <<<"$WORKLOADS"
for s in "${setups[@]}"; do
    case $s in cluster | pg1 | sqlite) ;; *) echo "error: unknown setup '$s'" >&2; exit 2 ;; esac
done
for w in "${workloads[@]}"; do
    case $w in durable | fanout) ;; *) echo "error: unknown workload '$w'" >&2; exit 2 ;; esac
done
[ "$CLIENTS" -ge 2 ] || { echo "error: --clients must be at least 2" >&2; exit 2; }

if [ ! -x "$PG_BIN/initdb" ]; then
    scripts/ensure-postgres.sh
fi
cargo build --release --quiet --bins
BIN=$PWD/target/release

work=$(mktemp -d "${TMPDIR:-/tmp}/herald-bench-cluster.XXXXXX")
node_pids=()
. scripts/lib/private-pg.sh
stop_nodes() {
    local pid
    for pid in "${node_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${node_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    node_pids=()
}
cleanup() {
    stop_nodes
    pg_stop
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- PostgreSQL -------------------------------------------------------------
pg_start "$work/pg" -c fsync=on -c synchronous_commit=on -c max_connections=200
pg_port=$PG_PORT
psql() { pg_psql "$@"; }
echo "PostgreSQL $(psql -d postgres -At -c 'SHOW server_version') on 127.0.0.1:$pg_port:" \
    "fsync=$(psql -d postgres -At -c 'SHOW fsync')," \
    "synchronous_commit=$(psql -d postgres -At -c 'SHOW synchronous_commit')"

ids=bench-w,bench-r
for ((i = 0; i < CLIENTS; i++)); do ids+=",bench-$i"; done

# start_node N ARGS...: one server on a free port; appends host:port to $servers.
start_node() {
    local n=$1 out="$work/node$1.out"
    shift
    : >"$out"
    RUST_LOG=warn "$BIN/server" --bind 127.0.0.1 --port 0 --client-ids "$ids" "$@" >"$out" 2>"$work/node$n.err" &
    node_pids+=($!)
    local t line
    for ((t = 0; t < 600; t++)); do
        line=$(head -n1 "$out")
        if [[ $line == "listening on "* ]]; then
            servers+="${servers:+,}${line#listening on }"
            return
        fi
        kill -0 "${node_pids[-1]}" 2>/dev/null || { echo "node $n did not start:" >&2; cat "$work/node$n.err" >&2; exit 1; }
        sleep 0.05
    done
    echo "node $n did not start within 30 s" >&2
    exit 1
}

db_n=0
# start_setup SETUP: a fresh store and its nodes; sets $servers.
start_setup() {
    servers=
    case $1 in
        cluster | pg1)
            db_n=$((db_n + 1))
            psql -d postgres -c "CREATE DATABASE bench$db_n"
            local url="postgres://postgres@127.0.0.1:$pg_port/bench$db_n" n=1 i
            [ "$1" = cluster ] && n=$NODES
            for ((i = 0; i < n; i++)); do start_node "$i" --database-url "$url"; done
            ;;
        sqlite)
            rm -rf "$work/sqlite"
            start_node 0 --data-dir "$work/sqlite" --sync always
            ;;
    esac
}

label() {
    case $1 in
        cluster) echo "$NODES node$([ "$NODES" = 1 ] || echo s), PostgreSQL" ;;
        pg1) echo "1 node, PostgreSQL" ;;
        sqlite) echo "1 node, SQLite --sync always" ;;
    esac
}

results="$work/results.jsonl"
: >"$results"
echo "$RUNS runs; each: ${workloads[*]} with $CLIENTS clients x $MESSAGES msgs of 100 B, window 64, on: ${setups[*]}"
for ((r = 1; r <= RUNS; r++)); do
    for w in "${workloads[@]}"; do
        for s in "${setups[@]}"; do
            start_setup "$s"
            json=$("$BIN/bench" --servers "$servers" --json "$w" --clients "$CLIENTS" --messages "$MESSAGES" 2>"$work/bench.err") || {
                echo "bench $w failed on $s (run $r): $(cat "$work/bench.err")" >&2
                for f in "$work"/node*.err; do echo "== ${f##*/}" >&2; tail -n 20 "$f" >&2; done
                exit 1
            }
            stop_nodes
            echo "[$s run $r] $json"
            python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["setup"]=sys.argv[2]; d["run"]=int(sys.argv[3]); print(json.dumps(d))' \
                "$json" "$s" "$r" >>"$results"
        done
    done
done

echo
echo "medians of $RUNS runs (this machine: $(nproc) cores, shared by the nodes, PostgreSQL and the load generator):"
python3 - "$results" "$SETUPS" "$(label cluster)" "$(label pg1)" "$(label sqlite)" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
setups = sys.argv[2].split(",")
labels = {"cluster": sys.argv[3], "pg1": sys.argv[4], "sqlite": sys.argv[5]}

def med(workload, setup, field, scale=1.0):
    vals = [r[field] for r in rows if r["workload"] == workload and r["setup"] == setup
            and r[field] is not None and (r["nodes"] > 1 or not field.startswith("cross"))]
    if not vals:
        return "-", ""
    runs = " · ".join(f"{v / scale:,.{0 if scale == 1 else 1}f}" for v in vals)
    return f"{statistics.median(vals) / scale:,.{0 if scale == 1 else 1}f}", runs

lines = [
    ("durable", "confirmed sends/s", "sends_per_sec", 1),
    ("durable", "latency p99 (ms)", "latency_us_p99", 1000),
    ("durable", "cross-node latency p50 (ms)", "cross_node_latency_us_p50", 1000),
    ("durable", "cross-node latency p99 (ms)", "cross_node_latency_us_p99", 1000),
    ("fanout", "deliveries/s", "deliveries_per_sec", 1),
    ("fanout", "cross-node deliveries/s", "cross_node_deliveries_per_sec", 1),
    ("fanout", "latency p50 (ms)", "latency_us_p50", 1000),
    ("fanout", "latency p99 (ms)", "latency_us_p99", 1000),
    ("fanout", "cross-node latency p50 (ms)", "cross_node_latency_us_p50", 1000),
    ("fanout", "cross-node latency p99 (ms)", "cross_node_latency_us_p99", 1000),
]
present = {r["workload"] for r in rows}
width = max(len(labels[s]) for s in setups) + 2
print(f"  {'':38}" + "".join(f"{labels[s]:>{width}}" for s in setups))
for workload, name, field, scale in lines:
    if workload not in present:
        continue
    meds = [med(workload, s, field, scale) for s in setups]
    print(f"  {workload + ' ' + name:38}" + "".join(f"{m:>{width}}" for m, _ in meds))
    for s, (m, runs) in zip(setups, meds):
        if runs and " · " in runs:
            print(f"  {'':40}{s}: {runs}")
EOF
