# Herald broker image.
#   docker build -t herald .
#   docker run --rm herald                 # scenario tests 1 and 2 (run_both_tests.sh)
#   docker run --rm herald run_both_tests.sh --all
#   docker run --rm -p 5000:5000 herald server --client-ids 1,2,3 --port 5000 --bind 0.0.0.0
# The server listens on loopback unless given --bind: inside a container it
# needs --bind 0.0.0.0 to be reachable through a published port (-p).
# The server's data lives in the volume /data (the working directory, so the
# default --data-dir ./herald-data is /data/herald-data).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bins

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
