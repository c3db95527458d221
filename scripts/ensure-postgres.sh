#!/usr/bin/env bash
# Makes sure PostgreSQL 15's programs are installed: tests/postgres.rs starts
# its own private server from /usr/lib/postgresql/15/bin (initdb, postgres,
# pg_isready). When they are missing, installs Debian's postgresql-15 with
# apt-get (needs root), without leaving a system cluster running: the
# package's automatic `main` cluster is switched off before installing, and
# any cluster it made anyway is stopped and dropped.
set -euo pipefail

BIN=/usr/lib/postgresql/15/bin
if [ -x "$BIN/initdb" ] && [ -x "$BIN/postgres" ] && [ -x "$BIN/pg_isready" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "error: PostgreSQL 15 is missing ($BIN/initdb) and installing it needs root: apt-get install postgresql-15" >&2
    exit 1
fi
echo "installing PostgreSQL 15 (for tests/postgres.rs)"
# A drop-in that createcluster.conf includes, not the conffile itself, so
# that dpkg has no conffile of its own to ask about.
mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/no-main-cluster.conf
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    postgresql-15 >/dev/null
# A package that made a cluster anyway: stop and drop it.
if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters --no-header 2>/dev/null | while read -r ver name _; do
        pg_dropcluster --stop "$ver" "$name" || true
    done
fi
test -x "$BIN/initdb"
