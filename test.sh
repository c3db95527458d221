#!/usr/bin/env bash
# Every check the project has: formatting, lints, unit and integration tests.
# This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --locked
