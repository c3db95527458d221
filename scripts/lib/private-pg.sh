# A private PostgreSQL 15 for scripts, sourced (not run) by
# scripts/bench-cluster.sh and scripts/try-cluster.sh: initdb in a directory
# the caller owns (trust authentication, superuser `postgres`), started on a
# free loopback port with its socket in that directory, stopped by pg_stop.
# PostgreSQL refuses to run as root, so as root its programs run as the
# `postgres` user.
#
#   . scripts/lib/private-pg.sh
#   trap 'pg_stop; rm -rf "$work"' EXIT   # pg_stop is safe before pg_start and twice
#   pg_start "$work/pg" -c fsync=on       # sets PG_PORT; extra words go to postgres
#   pg_psql -d postgres -c 'CREATE DATABASE herald'
#
# pg_start wants DIR's parent to be the caller's own temporary directory: as
# root it opens that parent to `postgres` for passing through (mode 0711).
# Needs PostgreSQL 15's programs in $PG_BIN (default
# /usr/lib/postgresql/15/bin) and python3 (to find a free port).

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_PORT=
PG_DIR=

# pg_as CMD...: CMD as `postgres` when root, else as ourselves.
pg_as() {
    if [ "$(id -u)" = 0 ]; then
        setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
    else
        "$@"
    fi
}

# A free TCP port on loopback (the kernel's pick; PostgreSQL binds it next).
pg_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# pg_start DIR [POSTGRES-OPTION...]: initdb in DIR/data and start it on
# 127.0.0.1:$PG_PORT; on failure prints PostgreSQL's log and returns 1.
pg_start() {
    local dir=$1
    shift
    mkdir -p "$dir/sock" || return 1
    if [ "$(id -u)" = 0 ]; then
        chmod 0711 "$(dirname "$dir")" || return 1 # postgres may pass through, not list
        chown -R postgres:postgres "$dir" || return 1
    fi
    # Set before anything runs, so that pg_stop in a trap stops a server
    # that started even if pg_ctl was interrupted.
    PG_DIR=$dir
    pg_as "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; return 1; }
    PG_PORT=$(pg_free_port) || return 1
    local opts="-p $PG_PORT -h 127.0.0.1 -k $dir/sock $*"
    pg_as "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o "$opts" start >/dev/null ||
        { cat "$dir/server.log" >&2; return 1; }
}

# pg_stop: stops the server pg_start started (fast shutdown), if any.
pg_stop() {
    [ -n "$PG_DIR" ] || return 0
    pg_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    PG_DIR=
}

# pg_psql ARGS...: psql as `postgres` on the private server, stopping at the
# first error.
pg_psql() {
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"
}
