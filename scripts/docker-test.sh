#!/usr/bin/env bash
# Builds Herald's Docker image and checks that it works:
#   1. a Docker engine answers (installed with apt-get and started here if
#      none does; what this script starts, it stops at the end);
#   2. the base images rust:1-bookworm and debian:bookworm-slim are there
#      (present, pulled, or local stand-ins: see below);
#   3. `docker build` of the repository's Dockerfile;
#   4. `docker run --rm IMAGE` (scenario tests 1 and 2) and
#      `docker run --rm IMAGE run_both_tests.sh --all` (tests 1 to 4) end with
#      `N passed, 0 failed`;
#   5. a server container on a named volume and a published loopback port:
#      the host's `client` binary chats with it; `docker stop` ends it with
#      exit status 0; a new container on the same volume gives the clients
#      that were away what they missed, and stops with status 0 too.
# One PASS or FAIL line per step, and last `docker: N passed, M failed`; exits
# non-zero if any step failed. Containers, the volume and the image it made
# are removed on every exit path. With the classic builder, the layers with
# the compiled dependencies and crate are kept under the tags
# herald-docker-test-cache:build-*, replacing the previous run's, so the next
# run compiles only what changed (BuildKit keeps a cache of its own).
#
# Base images. When rust:1-bookworm and debian:bookworm-slim cannot be pulled
# (no registry reachable), it builds local STAND-INS under those two tags.
# They are test scaffolding, not the official images:
#   debian:bookworm-slim  `debootstrap --variant=minbase bookworm`, imported
#                         with `docker import` (the root file system is
#                         cached in $HERALD_DOCKER_CACHE, the image kept);
#   rust:1-bookworm       that plus gcc, libc6-dev, this machine's active Rust
#                         toolchain (`rustc --print sysroot`) laid out as the
#                         official image does (RUSTUP_HOME=/usr/local/rustup,
#                         CARGO_HOME=/usr/local/cargo, cargo and rustc in
#                         /usr/local/cargo/bin), the host's trusted CA
#                         certificates and its $CARGO_HOME/config.toml, so
#                         the build inside reaches the crate registry as the
#                         host does. Rebuilt when the host's rustc changes.
# Stand-ins carry the label org.herald.stand-in; a real image, once it can be
# pulled, replaces them. The Dockerfile knows nothing of them.
#
# Environment:
#   HERALD_SKIP_DOCKER=1   skip everything (ignored when CI=true)
#   HERALD_BIN_DIR         where the host's `client` is (default
#                          ${CARGO_TARGET_DIR:-target}/debug; built if missing)
#   HERALD_DOCKER_CACHE    stand-in root file system cache (/var/cache/herald-docker)
#   HERALD_DEBIAN_MIRROR   mirror for debootstrap (http://deb.debian.org/debian)
# Proxy variables (http_proxy, https_proxy, no_proxy and their upper-case
# forms) are passed to every `docker build` as build arguments.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ -n ${HERALD_SKIP_DOCKER:-} && ${HERALD_SKIP_DOCKER} != 0 && ${CI:-} != true ]]; then
    echo "docker: skipped (HERALD_SKIP_DOCKER is set)"
    exit 0
fi

RUN_ID=$$
IMAGE=herald:docker-test-$RUN_ID
VOLUME=herald-docker-test-$RUN_ID
CACHE_DIR=${HERALD_DOCKER_CACHE:-/var/cache/herald-docker}
MIRROR=${HERALD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
STAND_IN_LABEL=org.herald.stand-in
CACHE_TAG=herald-docker-test-cache:build
BASE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
PASSED=0
FAILED=0
CONTAINERS=()   # names of the containers this run made
VOLUME_MADE=
IMAGE_MADE=
DOCKERD_PID=    # set if this run started the engine
CLIENT_FD=      # our write end of a background client's stdin
CLIENT_PID=
START_S=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/herald-docker-test.XXXXXX") || exit 1

PROXY_ARGS=()
for var in http_proxy https_proxy no_proxy all_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY ALL_PROXY; do
    [[ -n ${!var:-} ]] && PROXY_ARGS+=(--build-arg "$var")
done

note() { echo "  $*"; }

pass() {
    PASSED=$((PASSED + 1))
    echo "PASS: $*"
}

# fail WHAT [FILE...]: prints the FAIL line and the end of each FILE.
fail() {
    FAILED=$((FAILED + 1))
    echo "FAIL: $1"
    shift
    local f
    for f; do
        [[ -s $f ]] || continue
        echo "--- ${f#"$WORK"/} (last 30 lines)"
        tail -n 30 "$f" | sed 's/^/    /'
    done
}

# Ends the run after a failed step that later steps depend on.
give_up() {
    exit 1
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    ((status == 0 || FAILED > 0)) || fail "stopped before the end (exit status $status)"
    if [[ -n $CLIENT_PID ]]; then
        kill -TERM "$CLIENT_PID" 2>/dev/null
        wait "$CLIENT_PID" 2>/dev/null
    fi
    if ((${#CONTAINERS[@]})); then
        timeout 60 docker rm -f "${CONTAINERS[@]}" >/dev/null 2>&1
    fi
    [[ -n $VOLUME_MADE ]] && timeout 60 docker volume rm -f "$VOLUME" >/dev/null 2>&1
    [[ -n $IMAGE_MADE ]] && timeout 60 docker rmi "$IMAGE" >/dev/null 2>&1
    if [[ -n $DOCKERD_PID ]]; then
        kill -TERM "$DOCKERD_PID" 2>/dev/null
        wait_until 30 not_running "$DOCKERD_PID" || kill -KILL "$DOCKERD_PID" 2>/dev/null
        wait "$DOCKERD_PID" 2>/dev/null
        note "stopped the Docker engine this run started"
    fi
    if ((status == 0)); then
        rm -rf "$WORK"
    else
        note "logs kept in $WORK"
    fi
    # The closing line, after everything else this script prints.
    echo "docker: $PASSED passed, $FAILED failed ($((SECONDS - START_S)) s)"
    exit "$status"
}
trap cleanup EXIT
trap 'fail "interrupted by SIGINT"; exit 130' INT
trap 'fail "terminated by SIGTERM"; exit 143' TERM

# wait_until SECS COMMAND...: runs COMMAND until it succeeds; returns 1 if it
# still fails after SECS seconds.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

not_running() { ! kill -0 "$1" 2>/dev/null; }

engine_answers() { timeout 20 docker info >/dev/null 2>&1; }

# apt_install PACKAGE...: installs Debian packages (needs root).
apt_install() {
    if ((EUID != 0)); then
        echo "  installing $* needs root" >>"$WORK/apt.log"
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get install -y -q "$@" >>"$WORK/apt.log" 2>&1 && return 0
    timeout 300 apt-get update -q >>"$WORK/apt.log" 2>&1 &&
        timeout 600 apt-get install -y -q "$@" >>"$WORK/apt.log" 2>&1
}

# Step 1: a Docker engine that answers.
ensure_engine() {
    if engine_answers; then
        pass "Docker engine answers (already running)"
        return
    fi
    if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
        apt_install docker.io || { fail "cannot install docker.io with apt-get" "$WORK/apt.log"; give_up; }
        note "installed docker.io"
        # Where a service manager runs, installing the package started it.
        if engine_answers; then
            pass "Docker engine answers (installed here)"
            return
        fi
    fi
    local log=$WORK/dockerd.log
    dockerd </dev/null >"$log" 2>&1 &
    DOCKERD_PID=$!
    if ! wait_until 60 engine_answers; then
        fail "the Docker engine started here did not answer within 60 s" "$log"
        give_up
    fi
    pass "Docker engine answers (started here, pid $DOCKERD_PID, log $log)"
}

image_exists() { timeout 60 docker image inspect "$1" >/dev/null 2>&1; }

# Prints the image's stand-in label, empty for a real image.
stand_in_label() {
    timeout 60 docker image inspect -f "{{ index .Config.Labels \"$STAND_IN_LABEL\" }}" "$1" 2>/dev/null
}

try_pull() { timeout 120 docker pull -q "$1" >>"$WORK/pull.log" 2>&1; }

# ensure_base TAG BUILDER: makes TAG available: a real image already there, a
# pulled one, the stand-in already built (if still current), or BUILDER.
ensure_base() {
    local tag=$1 builder=$2 label
    if image_exists "$tag"; then
        label=$(stand_in_label "$tag")
        if [[ -z $label || $label == '<no value>' ]]; then
            pass "base image $tag (present)"
            return
        fi
    fi
    if try_pull "$tag"; then
        pass "base image $tag (pulled)"
        return
    fi
    if [[ -n ${label:-} ]] && stand_in_current "$tag" "$label"; then
        pass "base image $tag (cached local stand-in: $label)"
        return
    fi
    note "$tag cannot be pulled; building a local stand-in"
    [[ -s $WORK/pull.log ]] && tail -n 1 "$WORK/pull.log" | sed 's/^/    /'
    local t0=$SECONDS
    if "$builder"; then
        pass "base image $tag (local stand-in built in $((SECONDS - t0)) s: $(stand_in_label "$tag"))"
    else
        fail "cannot build a stand-in for $tag" "$WORK/stand-in.log"
        give_up
    fi
}

# stand_in_current TAG LABEL: is the stand-in still what this host would build?
stand_in_current() {
    case $1 in
    rust:*) [[ $2 == "rust stand-in: $(rustc --version 2>/dev/null)" ]] ;;
    *) true ;;
    esac
}

# The debian:bookworm-slim stand-in: a minbase debootstrap, cached as a tar.
build_debian_stand_in() {
    local tarball=$CACHE_DIR/debian-bookworm-minbase.tar root=$WORK/rootfs
    if [[ ! -s $tarball ]]; then
        if ! command -v debootstrap >/dev/null; then
            apt_install debootstrap || { cat "$WORK/apt.log" >>"$WORK/stand-in.log"; return 1; }
        fi
        mkdir -p "$CACHE_DIR" || return 1
        note "debootstrap --variant=minbase bookworm from $MIRROR"
        timeout 1200 debootstrap --variant=minbase bookworm "$root" "$MIRROR" \
            >>"$WORK/stand-in.log" 2>&1 || return 1
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        tar -C "$root" --numeric-owner -cf "$tarball.partial" . &&
            mv "$tarball.partial" "$tarball" || return 1
        rm -rf "$root"
    fi
    timeout 300 docker import \
        --change "ENV PATH=$BASE_PATH" \
        --change 'CMD ["bash"]' \
        --change "LABEL $STAND_IN_LABEL=\"debian stand-in: debootstrap minbase bookworm\"" \
        "$tarball" debian:bookworm-slim >>"$WORK/stand-in.log" 2>&1
}

# The rust:1-bookworm stand-in: debian:bookworm-slim, gcc, libc6-dev and the
# host's active toolchain, CA certificates and cargo configuration.
build_rust_stand_in() {
    local sysroot name version ctx=$WORK/rust-stand-in ca cargo_home
    sysroot=$(rustc --print sysroot) && version=$(rustc --version) || return 1
    name=${sysroot##*/}
    ca=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
    cargo_home=${CARGO_HOME:-$HOME/.cargo}
    mkdir -p "$ctx" && cp "$ca" "$ctx/ca-certificates.crt" || return 1
    : >"$ctx/config.toml"
    [[ -f $cargo_home/config.toml ]] && cp "$cargo_home/config.toml" "$ctx/config.toml"
    cat >"$ctx/Dockerfile" <<EOF
# Test scaffolding: a local stand-in for the official rust:1-bookworm image.
FROM debian:bookworm-slim
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev \\
    && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV RUSTUP_HOME=/usr/local/rustup \\
    CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:$BASE_PATH
COPY toolchain /usr/local/rustup/toolchains/$name
COPY config.toml /usr/local/cargo/config.toml
RUN mkdir -p /usr/local/cargo/bin \\
    && ln -s /usr/local/rustup/toolchains/$name/bin/* /usr/local/cargo/bin/ \\
    && cargo --version && rustc --version
LABEL $STAND_IN_LABEL="rust stand-in: $version"
EOF
    note "toolchain $name ($version) from $sysroot"
    # The build context: the files above plus the toolchain (without its
    # HTML documentation) under toolchain/, streamed as one tar.
    tar -cf - -C "$ctx" Dockerfile ca-certificates.crt config.toml \
        -C "$sysroot" --exclude=./share/doc --transform='s,^\.,toolchain,' . |
        timeout 1800 docker build "${PROXY_ARGS[@]}" -t rust:1-bookworm - >>"$WORK/stand-in.log" 2>&1
}

# Step 3: the image, from the repository's Dockerfile.
build_image() {
    local t0=$SECONDS
    IMAGE_MADE=1
    if timeout 2400 docker build "${PROXY_ARGS[@]}" -t "$IMAGE" . >"$WORK/build.log" 2>&1; then
        pass "docker build -t $IMAGE . ($((SECONDS - t0)) s)"
        keep_build_cache
    else
        fail "docker build -t $IMAGE . (status $?, $((SECONDS - t0)) s)" "$WORK/build.log"
        give_up
    fi
}

# Keeps the build stage's two layers that cost minutes, the compiled
# dependencies and the compiled crate, under $CACHE_TAG-dependencies and
# $CACHE_TAG-crate, so that removing the image at the end leaves them as the
# next run's cache, and removes what those tags named before: one set of
# cache layers at a time. The classic builder names each step's image in its
# log; BuildKit keeps a cache of its own and is left alone.
keep_build_cache() {
    keep_layer 'RUN find src benches' "$CACHE_TAG-crate" &&
        keep_layer 'RUN mkdir -p src/bin' "$CACHE_TAG-dependencies" &&
        note "build cache kept as $CACHE_TAG-dependencies and $CACHE_TAG-crate"
}

# keep_layer STEP TAG: tags the image made by the Dockerfile step starting
# with STEP (the first id after it in the build log) as TAG; removes the
# image TAG named before, if it was another one.
keep_layer() {
    local id old
    id=$(awk -v step="$1" 'index($0, ": " step) && /^Step [0-9]+\/[0-9]+ : / { found = 1; next }
              found && /^ ---> [0-9a-f]+$/ { print $2; exit }' "$WORK/build.log")
    [[ -n $id ]] || return 1
    old=$(timeout 60 docker image inspect -f '{{.Id}}' "$2" 2>/dev/null)
    timeout 60 docker tag "$id" "$2" || return 1
    if [[ -n $old && $old != "$(timeout 60 docker image inspect -f '{{.Id}}' "$2" 2>/dev/null)" ]]; then
        timeout 60 docker rmi "$old" >/dev/null 2>&1
    fi
    return 0
}

# run_scenarios WHAT EXPECTED_PASSED [ARG...]: docker run --rm IMAGE ARG...
# must end with `EXPECTED_PASSED passed, 0 failed` and exit 0.
run_scenarios() {
    local what=$1 want=$2 name=herald-docker-test-$RUN_ID-run$((PASSED + FAILED))
    shift 2
    local log=$WORK/$name.log t0=$SECONDS status last
    CONTAINERS+=("$name")
    timeout 300 docker run --rm --name "$name" "$IMAGE" "$@" >"$log" 2>&1
    status=$?
    last=$(tail -n 1 "$log")
    if ((status == 0)) && [[ $last == "$want passed, 0 failed" ]]; then
        pass "docker run --rm $IMAGE${*:+ $*} ($what: all $want passed; $((SECONDS - t0)) s)"
    else
        fail "docker run --rm $IMAGE${*:+ $*} ($what): exit status $status, last line '$last'" "$log"
    fi
}

# Where the host's client binary is; built with cargo if missing.
find_client() {
    local dir=${HERALD_BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}
    CLIENT=$dir/client
    [[ -x $CLIENT ]] && return 0
    if [[ -z ${HERALD_BIN_DIR:-} ]]; then
        note "no $CLIENT: cargo build --locked --bin client"
        timeout 1200 cargo build --locked --bin client >"$WORK/cargo.log" 2>&1 && [[ -x $CLIENT ]] && return 0
    fi
    fail "no client binary at $CLIENT" "$WORK/cargo.log"
    return 1
}

# start_server NAME: a server container on the volume, published on a free
# loopback port of the host; sets PORT. Waits for its `listening on` line.
start_server() {
    local name=$1
    CONTAINERS+=("$name")
    timeout 60 docker run -d --name "$name" -v "$VOLUME:/data" -p 127.0.0.1::5000 "$IMAGE" \
        server --client-ids 1,2,3 --port 5000 --bind 0.0.0.0 >"$WORK/$name.id" 2>&1 ||
        { fail "docker run -d $name" "$WORK/$name.id"; return 1; }
    if ! wait_until 30 server_listening "$name" || ! container_running "$name"; then
        timeout 30 docker logs "$name" >"$WORK/$name.log" 2>&1
        fail "server container $name is not running and listening 30 s after its start" "$WORK/$name.log"
        return 1
    fi
    PORT=$(timeout 30 docker port "$name" 5000/tcp | head -n 1)
    PORT=${PORT##*:}
    [[ $PORT =~ ^[0-9]+$ ]] || { fail "no published port for $name"; return 1; }
}

container_running() {
    [[ $(timeout 10 docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null) == true ]]
}

# Has the server in container $1 printed its `listening on` line, or has it
# stopped (no use waiting any more)?
server_listening() {
    timeout 10 docker logs "$1" 2>/dev/null | grep -q '^listening on 0.0.0.0:5000$' ||
        ! container_running "$1"
}

# stop_server NAME: docker stop, which must end the server with status 0.
stop_server() {
    local name=$1 code
    timeout 60 docker stop -t 20 "$name" >/dev/null 2>&1
    code=$(timeout 30 docker wait "$name" 2>/dev/null)
    timeout 30 docker logs "$name" >"$WORK/$name.log" 2>&1
    if [[ $code == 0 ]]; then
        pass "docker stop $name: the server exited with status 0"
    else
        fail "docker stop $name: the server exited with status '${code:-unknown}'" "$WORK/$name.log"
        return 1
    fi
}

# client ID NAME [LINE...]: runs the host's client for ID against PORT,
# sends the LINEs, and waits until it quits by itself (all lines confirmed,
# then 500 ms without a message); its output goes to $WORK/NAME.out, .err.
client() {
    local id=$1 name=$2
    shift 2
    if (($#)); then printf '%s\n' "$@"; fi |
        timeout 30 "$CLIENT" --client-id "$id" --server-ip 127.0.0.1 --port "$PORT" \
            --exit-when-idle 500 --no-reconnect >"$WORK/$name.out" 2>"$WORK/$name.err"
}

has_line() { grep -qxF -- "$2" "$1" 2>/dev/null; }

# Step 5a: clients on the host chat with a server in a container.
chat() {
    local fifo=$WORK/2.fifo
    # Client 3 logs in once and leaves: it is away for everything below.
    client 3 c3-first || { fail "client 3 could not log in and out (port $PORT)" "$WORK/c3-first.err"; return 1; }
    # Client 2 stays online, its stdin a FIFO we hold open.
    mkfifo "$fifo" && exec {CLIENT_FD}<>"$fifo" || { fail "cannot make the FIFO $fifo"; return 1; }
    timeout 60 "$CLIENT" --client-id 2 --server-ip 127.0.0.1 --port "$PORT" \
        --exit-when-idle 500 --no-reconnect <"$fifo" >"$WORK/c2.out" 2>"$WORK/c2.err" {CLIENT_FD}>&- &
    CLIENT_PID=$!
    wait_until 20 grep -q '^logged in as 2;' "$WORK/c2.err" ||
        { fail "client 2 did not log in within 20 s" "$WORK/c2.err"; return 1; }
    client 1 c1-first 'hello from 1' ||
        { fail "client 1 could not send its line" "$WORK/c1-first.err"; return 1; }
    wait_until 20 has_line "$WORK/c2.out" '1: hello from 1' ||
        { fail "client 2 did not get client 1's line within 20 s" "$WORK/c2.out" "$WORK/c2.err"; return 1; }
    echo 'hi from 2' >&"$CLIENT_FD"
    exec {CLIENT_FD}>&-
    wait_until 30 not_running "$CLIENT_PID" ||
        { fail "client 2 did not quit within 30 s of its stdin ending" "$WORK/c2.err"; return 1; }
    wait "$CLIENT_PID"
    local status=$?
    CLIENT_PID=
    ((status == 0)) || { fail "client 2 exited with status $status" "$WORK/c2.err"; return 1; }
    pass "host clients chat with the server container on 127.0.0.1:$PORT (1 -> 2, then 2 sends while 1 and 3 are away)"
}

# Step 5c: after the restart, the clients that were away get what they missed.
catch_up() {
    client 3 c3-back && client 1 c1-back ||
        { fail "clients 3 and 1 could not log in to the new container" "$WORK/c3-back.err" "$WORK/c1-back.err"; return 1; }
    local want3 want1
    want3=$'1: hello from 1\n2: hi from 2'
    want1='2: hi from 2'
    if [[ $(<"$WORK/c3-back.out") == "$want3" && $(<"$WORK/c1-back.out") == "$want1" ]] &&
        grep -q '^logged in as 3; 2 message' "$WORK/c3-back.err" &&
        grep -q '^logged in as 1; 1 message' "$WORK/c1-back.err"; then
        pass "after the restart on the same volume, client 3 got the 2 messages it missed and client 1 the 1 it missed"
    else
        fail "the clients that were away did not get exactly what they missed" \
            "$WORK/c3-back.out" "$WORK/c3-back.err" "$WORK/c1-back.out" "$WORK/c1-back.err"
    fi
}

persistence() {
    find_client || return 1
    timeout 60 docker volume create "$VOLUME" >/dev/null 2>&1 ||
        { fail "docker volume create $VOLUME"; return 1; }
    VOLUME_MADE=1
    start_server "herald-docker-test-$RUN_ID-server1" || return 1
    chat || return 1
    stop_server "herald-docker-test-$RUN_ID-server1" || return 1
    start_server "herald-docker-test-$RUN_ID-server2" || return 1
    catch_up
    stop_server "herald-docker-test-$RUN_ID-server2"
}

ensure_engine
ensure_base debian:bookworm-slim build_debian_stand_in
ensure_base rust:1-bookworm build_rust_stand_in
build_image
run_scenarios "scenario tests 1 and 2" 2
run_scenarios "scenario tests 1 to 4" 4 run_both_tests.sh --all
persistence
((FAILED == 0))
