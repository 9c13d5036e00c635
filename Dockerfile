# kafka-ws-bridge container image.
#
#   docker build -t kafka-ws-bridge:local .
#   docker run --rm -p 3002:3002 -e KAFKA_BROKERS=broker:9092 kafka-ws-bridge:local          # serve (default)
#   docker run --rm kafka-ws-bridge:local produce --kafka-brokers broker:9092 --rate 50      # any subcommand
#
# Build stage: the bundled librdkafka is compiled by rdkafka's build script with its own configure/make, so the
# builder needs a C toolchain, make, pkg-config and the OpenSSL and zlib headers (no cmake, no protoc: the
# protobuf schema is compiled by the pure-Rust protox crate).

FROM rust:1-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ make pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependencies first, in their own layer: only Cargo.toml / Cargo.lock changes invalidate it.
COPY Cargo.toml Cargo.lock ./
COPY testkit/Cargo.toml testkit/
COPY bench/Cargo.toml bench/
RUN mkdir -p src testkit/src bench/src/bin/kwb-bench \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > bench/src/bin/kwb-bench/main.rs \
 && echo 'fn main() {}' > bench/src/bin/kwb-replay-bench.rs \
 && touch src/lib.rs testkit/src/lib.rs \
 && cargo fetch --locked \
 && rm -rf src testkit/src bench/src

COPY . .
RUN cargo build --release --locked --bin kafka-ws-bridge \
 && cp target/release/kafka-ws-bridge /usr/local/bin/kafka-ws-bridge

# Runtime stage: the binary links OpenSSL (libssl3) and zlib dynamically; TLS to brokers needs CA certificates.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 kwb \
 && useradd --system --uid 10001 --gid kwb --home-dir /nonexistent --shell /usr/sbin/nologin kwb
COPY --from=builder /usr/local/bin/kafka-ws-bridge /usr/local/bin/kafka-ws-bridge

USER 10001:10001
ENV WEBSOCKET_HOST=0.0.0.0 \
    WEBSOCKET_PORT=3002 \
    LOG_FORMAT=json
EXPOSE 3002

# Liveness without curl: bash's /dev/tcp speaks HTTP/1.1 to /health/live on the local port. (/health/live, not
# /health: /health answers 503 while the brokers are unreachable, which is not a reason to restart the bridge.)
# Needs WEBSOCKET_HOST to include 127.0.0.1 (0.0.0.0, the default here, does).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${WEBSOCKET_PORT:-3002} && printf 'GET /health/live HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && timeout 4 grep -q '\"live\":true' <&3"]

ENTRYPOINT ["/usr/local/bin/kafka-ws-bridge"]
CMD ["serve"]
