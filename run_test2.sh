#!/usr/bin/env bash
# Scenario test 2 under the seed's name; see scenarios/run_test2.sh.
exec "$(dirname "$0")/scenarios/run_test2.sh" "$@"
