# syntax=docker/dockerfile:1.7
# demeter-agent: the metrics sidecar that runs beside each Flink TaskManager.
#   docker build -f docker/agent.Dockerfile -t demeter-agent:dev .
# Build context: the repository root (see .dockerignore).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
# pkg-config/libssl-dev only matter if a dependency links OpenSSL; the runtime image ships libssl3.
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds; the binary is copied out of the cache.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked -p demeter-agent \
 && install -D -m 0755 target/release/demeter-agent /out/bin/demeter-agent \
 && mkdir -p /out/spool

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="demeter-agent" \
      org.opencontainers.image.description="Demeter metrics agent: scrapes a Flink TaskManager's Prometheus reporter and publishes to NATS JetStream" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/bin/demeter-agent /usr/local/bin/demeter-agent
# Outage spool; in Kubernetes an emptyDir is mounted here (the root filesystem is read-only).
COPY --from=builder --chown=65532:65532 /out/spool /var/spool/demeter
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/demeter-agent"]
