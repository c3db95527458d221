#!/usr/bin/env bash
# Makes sure Debian's Chromium is installed: tests/browser.rs drives a
# headless `chromium` over the DevTools protocol to check the web chat page
# in a real browser. When it is missing, installs the `chromium` package
# with apt-get (needs root). Nothing is downloaded by the tests themselves.
set -euo pipefail

if command -v chromium >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "error: chromium is missing and installing it needs root: apt-get install chromium" >&2
    exit 1
fi
echo "installing chromium (for tests/browser.rs)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    chromium fonts-dejavu-core >/dev/null
command -v chromium >/dev/null
