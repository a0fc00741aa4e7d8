# The bid-logger daemon as a container image, for machines with registry
# access: a Rust builder stage, then a slim Debian runtime with a non-root
# user. (Machines that cannot pull base images use scripts/image, which builds
# an equivalent image FROM scratch around a locally built binary.)
#
#   docker build -t bid-logger .
#   docker run --rm -e BID_LOGGER_DATABASE_URL=postgres://… bid-logger \
#       run --config /etc/bid-logger/bid-logger.toml --connect tcp://bidder-1:5556

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p bid-logger -p bid-logger-tools \
 && strip --strip-debug target/release/bid-logger target/release/bid-logger-tools

# The tools (simulator, demo, benchmark): `docker build --target tools`.
FROM debian:bookworm-slim AS tools
RUN apt-get update \
 && apt-get install -y --no-install-recommends libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent bid-logger
COPY --from=build /src/target/release/bid-logger-tools /usr/bin/bid-logger-tools
COPY --from=build /src/target/release/bid-logger /usr/bin/bid-logger
USER 10001:10001
ENTRYPOINT ["/usr/bin/bid-logger-tools"]
CMD ["--help"]

# The daemon (the default target).
FROM debian:bookworm-slim AS daemon
RUN apt-get update \
 && apt-get install -y --no-install-recommends libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent bid-logger
COPY --from=build /src/target/release/bid-logger /usr/bin/bid-logger
COPY bid-logger.toml /etc/bid-logger/bid-logger.toml
USER 10001:10001
ENV BID_LOGGER_METRICS_ADDR=0.0.0.0:9464
EXPOSE 9464
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/bid-logger"]
CMD ["run", "--config", "/etc/bid-logger/bid-logger.toml"]
