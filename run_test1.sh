#!/usr/bin/env bash
# Scenario test 1 under the seed's name; see scenarios/run_test1.sh.
exec "$(dirname "$0")/scenarios/run_test1.sh" "$@"
