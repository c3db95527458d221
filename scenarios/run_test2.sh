#!/usr/bin/env bash
# Scenario test 2: a client that logs in late gets everything sent while it
# was away, in order, then live traffic; after a second absence it gets only
# what it missed then, nothing twice.
#
# usage: run_test2.sh [<port> [<server>]]
# Port 0 (the default) starts a fresh server; a server already listening at
# <server>:<port> (default 127.0.0.1) is used instead and must allow ids 1,2,3.
set -uo pipefail
# shellcheck source=scenarios/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
scenario_begin 2 "a late client gets what it missed, then live messages" "$@"
use_or_start_server

login 1
login 2
send 1 2
send 2 1
send 1 1
login 3 # the server must announce 4 waiting messages and deliver them
send 2 1
send 3 1
send 1 1
logout 3
send 1 1
send 2 1
login 3 # 2 waiting: only what was sent since it left
send 3 1
logout 1 2 3
finish
