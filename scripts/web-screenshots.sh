#!/usr/bin/env bash
# Makes the README's pictures of the web chat page, docs/img/web-chat.png
# (desktop) and docs/img/web-chat-phone.png, from the real page: a headless
# Chromium shows a conversation between two pages and a terminal client on a
# server started for it (the ignored test `readme_screenshots` in
# tests/browser.rs). HERALD_SCREENSHOT_DIR=DIR writes them to DIR instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-chromium.sh
cargo test --test browser readme_screenshots -- --ignored --exact --nocapture
