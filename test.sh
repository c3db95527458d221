#!/usr/bin/env bash
# Every check the project has: formatting, lints, unit and integration tests
# (with a private PostgreSQL 15, installed by scripts/ensure-postgres.sh, and
# a headless Chromium for the web page, by scripts/ensure-chromium.sh),
# scripts/try-cluster.sh --check (two clients on two cluster nodes), the
# Debian package (scripts/package-test.sh: installed with dpkg, the unit's
# ExecStart run by hand, purged), the
# Docker image (built, its scenario tests run, a server container on a
# volume stopped and restarted; see scripts/docker-test.sh), and the four
# end-to-end scenarios over the real binaries.
# This is the README's test command and what CI runs. HERALD_SKIP_DOCKER=1
# skips the Docker step locally, HERALD_SKIP_PACKAGE=1 the package's; with
# CI=true both always run.
set -euo pipefail
cd "$(dirname "$0")"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== PostgreSQL 15 for tests/postgres.rs (installed with apt-get when missing)"
scripts/ensure-postgres.sh
echo "== Chromium for tests/browser.rs (installed with apt-get when missing)"
scripts/ensure-chromium.sh
echo "== cargo test"
cargo test --locked
echo "== micro-benchmarks, each run once as a test (cargo test --benches)"
cargo test --benches --locked
echo "== try-cluster --check (the debug binaries cargo test just built)"
HERALD_BIN_DIR="${CARGO_TARGET_DIR:-target}/debug" scripts/try-cluster.sh --check
echo "== Debian package (built from the debug binaries cargo test just built; installed, tried as the unit would run it, purged)"
scripts/package-test.sh
echo "== docker (the image; the host's client is the debug one cargo test just built)"
HERALD_BIN_DIR="${CARGO_TARGET_DIR:-target}/debug" scripts/docker-test.sh
echo "== benchmark scripts, smoke runs (the debug binaries cargo test just built; QUICK=1: figures mean nothing)"
HERALD_BIN_DIR="${CARGO_TARGET_DIR:-target}/debug" QUICK=1 RUNS=1 BEFORE="${CARGO_TARGET_DIR:-target}/debug" \
    scripts/bench.sh fsync single durable fanout catchup connections
command -v /usr/bin/time >/dev/null || apt-get install -y -qq time
HERALD_BIN_DIR="${CARGO_TARGET_DIR:-target}/debug" QUICK=1 RUNS=1 scripts/bench-ws.sh
echo "== scenarios (the debug binaries cargo test just built)"
HERALD_BIN_DIR="${CARGO_TARGET_DIR:-target}/debug" ./run_both_tests.sh --all
