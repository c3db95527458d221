#!/usr/bin/env bash
# Scenario test 4: what the server confirmed survives kill -9. A server on a
# temporary --data-dir stores messages from 1 and 2 (both quit only once
# every line is confirmed), is killed with SIGKILL and restarted on the same
# directory; client 3, away all along, gets every confirmed message, then a
# live one sent after the restart.
#
# usage: run_test4.sh [<port> [<server>]]
# This test always starts its own server, since it must kill it: on <port>,
# or on a free port when a server already listens at <server>:<port>.
set -uo pipefail
# shellcheck source=scenarios/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
scenario_begin 4 "confirmed messages survive kill -9 and a restart" "$@"

port=$ARG_PORT
if listening "$ARG_SERVER" "$port"; then
    note "a server already listens at $ARG_SERVER:$port; this test needs its own, so it uses a free port"
    port=0
fi
server_args=(--port "$port" --bind 127.0.0.1 --data-dir "$WORK/data" --client-ids "$ID_LIST")
start_server "${server_args[@]}" ||
    fail "the server exited with status $EXIT_STATUS at start" "$SERVER_LOG"

login 1
login 2
send 1 2
send 2 2
send 1 1
logout 1 2 # they quit only once the server confirmed (SENT) every line
crash_server
start_server "${server_args[@]}" ||
    fail "the server did not restart on its data directory (exit status $EXIT_STATUS)" "$SERVER_LOG"
login 3 # must announce all 5 confirmed messages
# kill -9 may lose the latest acks, so client 1 may legitimately get 2's
# messages again: what it prints now is not compared.
login 1 unchecked
send 1 1
logout 1 3
finish
