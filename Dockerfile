# Herald broker image.
#   docker build -t herald .
#   docker run --rm herald                 # scenario tests 1 and 2 (run_both_tests.sh)
#   docker run --rm herald run_both_tests.sh --all
#   docker run --rm -p 127.0.0.1:5000:5000 -v herald-data:/data herald \
#       server --client-ids 1,2,3 --port 5000 --bind 0.0.0.0
# The server's data lives in the volume /data (the working directory, so the
# default --data-dir ./herald-data is /data/herald-data). Inside a container
# the server must listen on 0.0.0.0 to be reachable through a published port,
# so pass --bind 0.0.0.0 explicitly.

FROM rust:1-bookworm AS build
WORKDIR /src

# The dependencies first, in a layer of their own: the manifest and lock file
# with empty stand-ins for the crate's targets, so that a change under src/
# does not rebuild them. Cargo.toml names each benchmark under [[bench]], and
# cargo wants every one of them to exist: a stand-in for each name found there.
# --no-default-features leaves out the load generator's dependencies.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin benches \
    && touch src/lib.rs \
    && echo 'fn main() {}' >src/bin/server.rs \
    && echo 'fn main() {}' >src/bin/client.rs \
    && for b in $(sed -n '/^\[\[bench\]\]/{n;s/^name = "\(.*\)"$/\1/p}' Cargo.toml); do \
           echo 'fn main() {}' >"benches/$b.rs"; \
       done \
    && cargo build --release --locked --no-default-features --bin server --bin client \
    && rm -rf src benches

# Then the crate itself. COPY keeps the files' modification times, which can
# be older than the empty stand-ins built above: touch them so that cargo
# rebuilds the crate instead of keeping the stand-ins.
COPY src ./src
COPY benches ./benches
RUN find src benches -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --no-default-features --bin server --bin client

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin herald \
    && mkdir /data \
    && chown herald:herald /data
COPY --from=build /src/target/release/server /src/target/release/client /usr/local/bin/
COPY run_both_tests.sh run_test1.sh run_test2.sh /opt/herald/
COPY scenarios /opt/herald/scenarios
ENV HERALD_BIN_DIR=/usr/local/bin \
    PATH=/opt/herald:$PATH
USER herald
WORKDIR /data
VOLUME /data
EXPOSE 5000
CMD ["run_both_tests.sh"]
