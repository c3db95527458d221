#!/usr/bin/env bash
# Scenario test 3: a client id that is not on the allow-list is refused with
# the server's reason, and the clients that are logged in meanwhile notice
# nothing: they stay connected and keep exchanging messages.
#
# usage: run_test3.sh [<port> [<server>]]
# Port 0 (the default) starts a fresh server; a server already listening at
# <server>:<port> (default 127.0.0.1) is used instead and must allow ids 1,2,3
# and not 4.
set -uo pipefail
# shellcheck source=scenarios/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
scenario_begin 3 "an id off the allow-list is refused, the others are undisturbed" "$@"
use_or_start_server

# refused_login ID: runs a client for ID with its whole input file as stdin;
# it must exit non-zero with the server's reason UNKNOWN_CLIENT on stderr.
refused_login() {
    run_client_once "$1" "$INPUT/$1.in" "$WORK/$1"
    FED[$1]=$(lines_in "$INPUT/$1.in")
    ((EXIT_STATUS != 0)) || fail "client $1, not on the allow-list, exited with status 0" "$WORK/$1.err"
    [[ $(<"$WORK/$1.err") == *UNKNOWN_CLIENT* ]] ||
        fail "client $1's stderr does not give the server's reason UNKNOWN_CLIENT" "$WORK/$1.err"
}

login 1
login 2
login 3
send 1 1
send 2 1
refused_login 4
send 3 1
send 1 1
logout 1 2 3
finish
