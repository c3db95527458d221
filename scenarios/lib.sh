# shellcheck shell=bash
# Helpers of the scenario scripts (scenarios/run_test*.sh); sourced, not run.
#
# A scenario drives the real `server` and `client` binaries. Every client
# runs with `--exit-when-idle` and reads its stdin from a FIFO that the
# scenario feeds, a block of lines at a time, from the client's input file
# scenarios/input/testN/<id>.in. After each block the scenario waits until
# every other online client has printed those lines, so the interleaving of
# senders, and with it every client's stdout, is the same on every run. At
# the end each client's stdout is compared, line by line and in order, with
# scenarios/expected/testN/<id>.out.
#
# Nothing waits by sleeping a fixed time: every wait polls for a condition
# (a line in a file, a process gone) and fails the scenario after
# $HERALD_SCENARIO_TIMEOUT seconds (default 20).

if [[ -z ${EPOCHREALTIME:-} ]]; then
    echo "the scenario scripts need bash 5 or later" >&2
    exit 2
fi

SCENARIOS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$SCENARIOS_DIR")
# Longest any single wait may take, in seconds.
WAIT_SECS=${HERALD_SCENARIO_TIMEOUT:-20}
# The clients' --exit-when-idle: how long a client whose stdin has ended
# keeps listening for stray messages before it quits.
IDLE_MS=${HERALD_SCENARIO_IDLE_MS:-300}
# The ids the scenarios log in as. A server the script did not start itself
# must allow exactly these (test 3 relies on id 4 being refused).
SCENARIO_IDS=(1 2 3)
ID_LIST=$(IFS=,; echo "${SCENARIO_IDS[*]}") # 1,2,3

TEST_NO='?'
VERDICT=           # pass, skip or fail once decided
SIGNAL=            # the signal that interrupted the script, if one did
WORK=              # this run's temporary directory
SERVER_BIN=
CLIENT_BIN=
HOST=              # where clients connect
PORT=
SERVER_PID=        # set only while a server this script started runs
SERVER_LOG=
SERVER_RUNS=0
declare -A CLIENT_PID=()   # id -> pid of its running client
declare -A CLIENT_OUT=()   # id -> file its running client prints to
declare -A CLIENT_ERR=()   # id -> stderr file of its running client
declare -A CHECKED=()      # id -> 1 if its running client's stdout is compared
declare -A FIFO_FD=()      # id -> our write end of its stdin FIFO
declare -A FED=()          # id -> lines of its input file fed so far
declare -A EXPECT=()       # id -> lines its compared stdout should hold by now
declare -A SESSIONS=()     # id -> clients started for it so far

# scenario_begin N TITLE [<port> [<server>]]: parses the arguments, makes the
# temporary directory, installs the cleanup trap and finds the binaries.
scenario_begin() {
    TEST_NO=$1
    TEST_TITLE=$2
    shift 2
    if (($# > 2)) || [[ ! ${1:-0} =~ ^[0-9]{1,5}$ ]] || ((10#${1:-0} > 65535)); then
        echo "usage: $0 [<port> [<server>]]   (port 0, the default, starts a fresh server)" >&2
        exit 2
    fi
    ARG_PORT=$((10#${1:-0}))
    ARG_SERVER=${2:-127.0.0.1}
    INPUT=$SCENARIOS_DIR/input/test$TEST_NO
    EXPECTED=$SCENARIOS_DIR/expected/test$TEST_NO
    START_US=$(now_us)
    trap on_exit EXIT
    trap 'SIGNAL=SIGINT; exit 130' INT
    trap 'SIGNAL=SIGTERM; exit 143' TERM
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/herald-test$TEST_NO.XXXXXX") || fail "cannot make a temporary directory"
    find_binaries
}

now_us() { echo "${EPOCHREALTIME//[!0-9]/}"; }

elapsed() {
    local us=$(($(now_us) - START_US))
    printf '%d.%02d s' $((us / 1000000)) $((us % 1000000 / 10000))
}

note() { echo "test $TEST_NO: $*" >&2; }

pass() {
    VERDICT=pass
    echo "PASS: test $TEST_NO ($TEST_TITLE; $(elapsed))"
    exit 0
}

skip() {
    VERDICT=skip
    echo "SKIP: $*"
    exit 0
}

# fail REASON [FILE...]: prints the FAIL line, the diff of every compared
# stdout so far that differs from its expected file, then the given files.
fail() {
    VERDICT=fail
    echo "FAIL: test $TEST_NO: $1"
    shift
    [[ -n $WORK ]] && show_diffs started
    local f
    for f; do
        [[ -s $f ]] || continue
        echo "--- ${f#"$WORK"/} (last 30 lines)"
        tail -n 30 "$f"
    done
    exit 1
}

on_exit() {
    local status=$?
    trap - EXIT INT TERM
    stop_everything
    if [[ -n $SIGNAL ]]; then
        echo "FAIL: test $TEST_NO: interrupted by $SIGNAL"
    elif [[ -z $VERDICT ]]; then
        echo "FAIL: test $TEST_NO: stopped before the end (exit status $status)"
        ((status != 0)) || status=1
    fi
    if [[ $VERDICT == fail || -z $VERDICT ]]; then
        [[ -n $WORK ]] && echo "--- logs kept in $WORK"
    elif [[ -n $WORK ]]; then
        rm -rf "$WORK"
    fi
    exit "$status"
}

# Ends every process this script started: clients get EOF on stdin and
# SIGTERM (they QUIT politely), the server SIGTERM; SIGKILL for whatever is
# still there after a few seconds.
stop_everything() {
    local pid
    close_fifos
    FIFO_FD=()
    local pids=("${CLIENT_PID[@]}" ${SERVER_PID:+"$SERVER_PID"})
    ((${#pids[@]})) || return 0
    kill -TERM "${pids[@]}" 2>/dev/null
    for pid in "${pids[@]}"; do
        wait_exit "$pid" 5 || { kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; }
    done
    CLIENT_PID=()
    SERVER_PID=
}

# wait_for COMMAND...: runs COMMAND until it succeeds; returns 1 if it still
# fails after $WAIT_SECS seconds.
wait_for() {
    local deadline=$(($(now_us) + WAIT_SECS * 1000000))
    until "$@"; do
        (($(now_us) < deadline)) || return 1
        sleep 0.01
    done
}

# wait_exit PID [SECS]: waits until PID (a child of this shell) has exited and
# sets EXIT_STATUS; returns 1 if it still runs after SECS (default
# $WAIT_SECS) seconds.
wait_exit() {
    local deadline=$(($(now_us) + ${2:-$WAIT_SECS} * 1000000))
    while kill -0 "$1" 2>/dev/null; do
        (($(now_us) < deadline)) || return 1
        sleep 0.01
    done
    wait "$1" 2>/dev/null
    EXIT_STATUS=$?
}

# Where the binaries are: $HERALD_BIN_DIR, else target/release, else
# target/debug of this repository, else the PATH.
find_binaries() {
    local dir
    if [[ -n ${HERALD_BIN_DIR:-} ]]; then
        [[ -x $HERALD_BIN_DIR/server && -x $HERALD_BIN_DIR/client ]] ||
            fail "HERALD_BIN_DIR=$HERALD_BIN_DIR holds no executable server and client"
        SERVER_BIN=$HERALD_BIN_DIR/server
        CLIENT_BIN=$HERALD_BIN_DIR/client
        return
    fi
    for dir in "$REPO_ROOT/target/release" "$REPO_ROOT/target/debug"; do
        if [[ -x $dir/server && -x $dir/client ]]; then
            SERVER_BIN=$dir/server
            CLIENT_BIN=$dir/client
            return
        fi
    done
    if ! SERVER_BIN=$(command -v server) || ! CLIENT_BIN=$(command -v client); then
        fail "no server and client binaries: build them (cargo build --release) or set HERALD_BIN_DIR"
    fi
}

# spawn COMMAND...: runs COMMAND (call it with & and redirections) without
# our ends of the clients' FIFOs, so a client sees EOF as soon as we close
# its FIFO.
spawn() {
    close_fifos
    exec "$@"
}

# Closes this shell's ends of all the clients' FIFOs.
close_fifos() {
    local fd
    for fd in "${FIFO_FD[@]}"; do
        exec {fd}>&-
    done
}

# listening HOST PORT: does something accept TCP connections there?
listening() {
    (($2 != 0)) || return 1
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' probe "$1" "$2" 2>/dev/null
}

# start_server ARG...: starts the server binary with ARGs and waits for its
# `listening on <ip>:<port>` line, which sets HOST and PORT. Returns 1, with
# EXIT_STATUS and SERVER_LOG set, if the server exits instead.
start_server() {
    SERVER_RUNS=$((SERVER_RUNS + 1))
    local out=$WORK/server.$SERVER_RUNS.out
    SERVER_LOG=$WORK/server.$SERVER_RUNS.log
    : >"$out" # exists before the server writes, for server_ready to read
    RUST_LOG=${RUST_LOG:-info} spawn "$SERVER_BIN" "$@" </dev/null >"$out" 2>"$SERVER_LOG" &
    SERVER_PID=$!
    wait_for server_ready "$out" ||
        fail "the server printed no 'listening on' line within ${WAIT_SECS}s" "$out" "$SERVER_LOG"
    if [[ -z $PORT ]]; then
        wait_exit "$SERVER_PID"
        SERVER_PID=
        return 1
    fi
}

server_ready() {
    local line
    PORT=
    if IFS= read -r line <"$1" && [[ $line =~ ^listening\ on\ \[?([^]]*)\]?:([0-9]+)$ ]]; then
        HOST=${BASH_REMATCH[1]}
        PORT=${BASH_REMATCH[2]}
        return 0
    fi
    ! kill -0 "$SERVER_PID" 2>/dev/null
}

# Uses the server listening at the scenario's <server>:<port> if there is
# one, after draining whatever backlog it still holds for our ids; otherwise
# starts a fresh in-memory server for our ids on <port>.
use_or_start_server() {
    if listening "$ARG_SERVER" "$ARG_PORT"; then
        HOST=$ARG_SERVER
        PORT=$ARG_PORT
        note "using the server already listening at $HOST:$PORT"
        drain_backlog
    else
        start_server --port "$ARG_PORT" --bind 127.0.0.1 --memory \
            --client-ids "$ID_LIST" ||
            fail "the server exited with status $EXIT_STATUS at start" "$SERVER_LOG"
    fi
}

# Logs each of our ids in once and out again, so that messages an earlier
# run left unacknowledged on a reused server do not show up in this one.
drain_backlog() {
    local id
    for id in "${SCENARIO_IDS[@]}"; do
        run_client_once "$id" /dev/null "$WORK/drain.$id"
        ((EXIT_STATUS == 0)) ||
            fail "client $id could not log in to the server at $HOST:$PORT (it must allow ids $ID_LIST)" "$WORK/drain.$id.err"
    done
}

# run_client_once ID STDIN_FILE PREFIX: runs a client for ID with that stdin
# until it exits by itself; stdout and stderr go to PREFIX.out and
# PREFIX.err, the exit status to EXIT_STATUS.
run_client_once() {
    spawn "$CLIENT_BIN" --client-id "$1" --server-ip "$HOST" --port "$PORT" \
        --exit-when-idle "$IDLE_MS" <"$2" >"$3.out" 2>"$3.err" &
    CLIENT_PID[$1]=$!
    wait_exit "${CLIENT_PID[$1]}" || fail "client $1 did not exit within ${WAIT_SECS}s" "$3.err"
    unset 'CLIENT_PID[$1]'
}

lines_in() { echo $(($(wc -l <"$1"))); }

# login ID [unchecked]: starts a client for ID reading its FIFO and waits
# until it is logged in. Its stdout goes to $WORK/ID.out, which collects all
# its sessions and is compared at the end; the server must announce exactly
# the messages sent since ID last left, and the client must print them.
# With `unchecked`, its stdout goes to $WORK/ID.unchecked.out instead and
# neither the backlog nor what it prints is checked.
login() {
    local id=$1 mode=${2:-checked}
    [[ -z ${CLIENT_PID[$id]:-} ]] || fail "scenario error: client $id is already running"
    local fifo=$WORK/$id.fifo fd printed
    [[ -p $fifo ]] || mkfifo "$fifo" || fail "cannot make $fifo"
    SESSIONS[$id]=$((${SESSIONS[$id]:-0} + 1))
    CLIENT_ERR[$id]=$WORK/$id.${SESSIONS[$id]}.err
    CLIENT_OUT[$id]=$WORK/$id.out
    CHECKED[$id]=1
    if [[ $mode == unchecked ]]; then
        CLIENT_OUT[$id]=$WORK/$id.unchecked.out
        CHECKED[$id]=0
    fi
    : >>"${CLIENT_OUT[$id]}"
    : >"${CLIENT_ERR[$id]}" # exists before the client writes, for logged_in to read
    printed=$(lines_in "${CLIENT_OUT[$id]}")
    exec {fd}<>"$fifo"
    FIFO_FD[$id]=$fd
    spawn "$CLIENT_BIN" --client-id "$id" --server-ip "$HOST" --port "$PORT" \
        --exit-when-idle "$IDLE_MS" <"$fifo" >>"${CLIENT_OUT[$id]}" 2>"${CLIENT_ERR[$id]}" &
    CLIENT_PID[$id]=$!
    wait_for logged_in "$id" ||
        fail "client $id did not log in within ${WAIT_SECS}s" "${CLIENT_ERR[$id]}" "$SERVER_LOG"
    ((${CHECKED[$id]})) || return 0
    local pending=$((${EXPECT[$id]:-0} - printed))
    ((WELCOME_PENDING == pending)) ||
        fail "client $id logged in with $WELCOME_PENDING message(s) waiting, expected $pending" "${CLIENT_ERR[$id]}"
    wait_printed "$id" "its backlog"
}

logged_in() {
    local err=${CLIENT_ERR[$1]}
    if [[ $(<"$err") =~ logged\ in\ as\ $1\;\ ([0-9]+)\ message ]]; then
        WELCOME_PENDING=${BASH_REMATCH[1]}
        return 0
    fi
    kill -0 "${CLIENT_PID[$1]}" 2>/dev/null ||
        fail "client $1 exited before it was logged in" "$err" "$SERVER_LOG"
    return 1
}

# wait_printed ID WHAT [SENDER]: waits until client ID has printed all it
# should; WHAT says what for. While it waits, client ID and the client
# SENDER, if given, must keep running.
wait_printed() {
    wait_for printed_all "$1" "${3:-}" ||
        fail "client $1 printed $(lines_in "${CLIENT_OUT[$1]}") of ${EXPECT[$1]:-0} lines within ${WAIT_SECS}s (waiting for $2)" \
            "${CLIENT_ERR[$1]}" ${3:+"${CLIENT_ERR[$3]}"} "$SERVER_LOG"
}

printed_all() {
    local id printed
    printed=$(lines_in "${CLIENT_OUT[$1]}") # empty if a Ctrl-C killed wc
    ((${printed:-0} >= ${EXPECT[$1]:-0})) && return 0
    for id in "$1" ${2:+"$2"}; do
        kill -0 "${CLIENT_PID[$id]}" 2>/dev/null ||
            fail "client $id exited early" "${CLIENT_ERR[$id]}" "$SERVER_LOG"
    done
    return 1
}

# send ID COUNT: feeds client ID the next COUNT lines of its input file, then
# waits until every other online client (but an unchecked one) printed them.
# One such client at least must be online: it is what shows the lines are
# stored, so that lines sent next come after them in the server's order.
send() {
    local id=$1 count=$2 line other delivered=0 witnesses=0
    local -a block
    [[ -n ${FIFO_FD[$id]:-} ]] || fail "scenario error: client $id is not running"
    mapfile -t -s "${FED[$id]:-0}" -n "$count" block <"$INPUT/$id.in"
    ((${#block[@]} == count)) || fail "scenario error: $INPUT/$id.in has too few lines"
    FED[$id]=$((${FED[$id]:-0} + count))
    for line in "${block[@]}"; do
        [[ -n $line ]] && delivered=$((delivered + 1))
    done
    printf '%s\n' "${block[@]}" >&"${FIFO_FD[$id]}"
    for other in "${SCENARIO_IDS[@]}"; do
        [[ $other == "$id" ]] && continue
        EXPECT[$other]=$((${EXPECT[$other]:-0} + delivered))
        if [[ -n ${CLIENT_PID[$other]:-} ]] && ((${CHECKED[$other]:-0})); then
            wait_printed "$other" "line ${FED[$id]} of client $id" "$id"
            witnesses=$((witnesses + 1))
        fi
    done
    ((witnesses > 0)) || fail "scenario error: no compared client is online to receive client $id's lines"
}

# logout ID...: ends the clients' stdin and waits until each has quit by
# itself (which it does only once all its lines are confirmed) with status 0.
logout() {
    local id fd
    for id; do
        fd=${FIFO_FD[$id]}
        exec {fd}>&-
        unset 'FIFO_FD[$id]'
    done
    for id; do
        wait_exit "${CLIENT_PID[$id]}" ||
            fail "client $id did not quit within ${WAIT_SECS}s after its stdin ended" "${CLIENT_ERR[$id]}"
        unset 'CLIENT_PID[$id]'
        ((EXIT_STATUS == 0)) ||
            fail "client $id exited with status $EXIT_STATUS" "${CLIENT_ERR[$id]}" "$SERVER_LOG"
    done
}

# Stops the server this script started (SIGTERM) and checks it exits 0.
stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    kill -TERM "$SERVER_PID"
    wait_exit "$SERVER_PID" || fail "the server did not stop within ${WAIT_SECS}s of SIGTERM" "$SERVER_LOG"
    SERVER_PID=
    ((EXIT_STATUS == 0)) || fail "the server exited with status $EXIT_STATUS on SIGTERM" "$SERVER_LOG"
}

# Kills the server this script started with SIGKILL.
crash_server() {
    disown "$SERVER_PID" # an intended death: no "Killed" job notice
    kill -KILL "$SERVER_PID"
    wait_exit "$SERVER_PID" || fail "the server survived SIGKILL for ${WAIT_SECS}s"
    SERVER_PID=
}

# Checks that the scenario fed every line of every input file and that each
# compared stdout equals its expected file; then passes.
finish() {
    local in id
    for in in "$INPUT"/*.in; do
        id=${in##*/}
        id=${id%.in}
        (($(lines_in "$in") == ${FED[$id]:-0})) ||
            fail "scenario error: fed ${FED[$id]:-0} of the $(lines_in "$in") lines of ${in#"$REPO_ROOT"/}"
    done
    stop_server
    show_diffs all >"$WORK/diffs"
    [[ -s $WORK/diffs ]] && fail "stdout differs from the expected output"
    pass
}

# show_diffs all|started: prints a unified diff for every expected file the
# matching client stdout ($WORK/<id>.out) does not equal; prints nothing when
# all match. `all` takes the stdout of a client that never ran as empty,
# `started` skips such clients.
show_diffs() {
    local exp id out
    for exp in "$EXPECTED"/*.out; do
        [[ -e $exp ]] || continue
        id=${exp##*/}
        id=${id%.out}
        out=$WORK/$id.out
        if [[ ! -e $out ]]; then
            [[ $1 == all ]] || continue
            : >"$out"
        fi
        diff -u --label "${exp#"$REPO_ROOT"/}" --label "client $id stdout" "$exp" "$out"
    done
}
