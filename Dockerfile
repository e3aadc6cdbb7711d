# syntax=docker/dockerfile:1
# One image for the whole pipeline: every service binary and
# triggers-provision. The services share one workspace, one dependency tree
# and one librdkafka build, so one image builds once, caches once, and is
# scanned and promoted once; each Deployment picks its binary by `command`.
# Per-service images would save only a few MB each and multiply the build.
#
#   docker build -t triggers:$(git rev-parse --short HEAD) .

# The toolchain the tests run on (rust-version in Cargo.toml is the minimum).
ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

# --- Planner: the dependency recipe (changes only when Cargo.toml/lock do) --
FROM rust:${RUST_VERSION}-${DEBIAN} AS chef
RUN cargo install cargo-chef --locked --version "^0.1"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# --- Builder: dependencies in their own cached layer, then the workspace ---
FROM chef AS builder
# librdkafka (rdkafka-sys, cmake build) and its ssl, sasl, zlib, zstd, curl.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      cmake pkg-config libssl-dev libsasl2-dev zlib1g-dev libzstd-dev libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked \
      -p triggers-gateway -p triggers-router -p triggers-persister -p triggers-deliverer \
      -p triggers-registry -p triggers-core --bins \
 && mkdir -p /out \
 && cp target/release/triggers-gateway target/release/triggers-router \
       target/release/triggers-persister target/release/triggers-deliverer \
       target/release/triggers-registry target/release/triggers-provision /out/

# --- Runtime: Debian slim with librdkafka's shared libraries, non-root -----
FROM debian:${DEBIAN}-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates libssl3 libsasl2-2 libsasl2-modules zlib1g libzstd1 libcurl4 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 triggers \
 && useradd --system --uid 10001 --gid triggers --no-create-home --shell /usr/sbin/nologin triggers
COPY --from=builder /out/ /usr/local/bin/
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# Services read TRIGGERS_CONFIG (the chart mounts its ConfigMap there) and
# TRIGGERS_<SECTION>__<FIELD> from the environment (secrets).
ENV TRIGGERS_CONFIG=/etc/triggers/config.toml
EXPOSE 8080 9102 9103 9104
ENTRYPOINT ["/usr/local/bin/triggers-gateway"]
