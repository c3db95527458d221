#!/usr/bin/env bash
# Runs scenario tests 1 and 2, or with --all tests 1 to 4, one after the
# other, and sums up on the last line: `N passed, M failed`. A skipped test
# counts as neither and is listed above that line. Exits non-zero if any test failed.
#
# usage: run_both_tests.sh [--all] [<port> [<server>]]
# The port and server are passed to every test (see scenarios/run_test1.sh).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tests=(1 2)
if [[ ${1:-} == --all ]]; then
    tests=(1 2 3 4)
    shift
fi
log=$(mktemp "${TMPDIR:-/tmp}/herald-tests.XXXXXX") || exit 1
trap 'rm -f "$log"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

passed=0 failed=0 skipped=()
for n in "${tests[@]}"; do
    "$here/scenarios/run_test$n.sh" "$@" | tee "$log"
    status=${PIPESTATUS[0]}
    if ((status != 0)); then
        failed=$((failed + 1))
    elif [[ $(<"$log") == SKIP:* ]]; then
        skipped+=("$n")
    else
        passed=$((passed + 1))
    fi
done
((${#skipped[@]} == 0)) || echo "skipped: test ${skipped[*]}"
echo "$passed passed, $failed failed"
((failed == 0))
