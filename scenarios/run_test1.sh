#!/usr/bin/env bash
# Scenario test 1: three clients online exchange messages; each sees every
# other's, in the one order the server gave them, and never its own.
#
# usage: run_test1.sh [<port> [<server>]]
# Port 0 (the default) starts a fresh server; a server already listening at
# <server>:<port> (default 127.0.0.1) is used instead and must allow ids 1,2,3.
set -uo pipefail
# shellcheck source=scenarios/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
scenario_begin 1 "three clients online see each other's messages, never their own" "$@"
use_or_start_server

login 1
login 2
login 3
send 1 2
send 2 3 # the second of these lines is empty: the client does not send it
send 3 1
send 1 1
send 3 1
send 2 1
logout 1 2 3
finish
