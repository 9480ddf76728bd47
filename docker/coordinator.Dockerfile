# syntax=docker/dockerfile:1.7
# demeter-coordinator: forecasts load and right-sizes opted-in FlinkDeployments.
#   docker build -f docker/coordinator.Dockerfile -t demeter-coordinator:dev .
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
    cargo build --release --locked -p demeter-coordinator \
 && install -D -m 0755 target/release/demeter-coordinator /out/bin/demeter-coordinator \
 && mkdir -p /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="demeter-coordinator" \
      org.opencontainers.image.description="Demeter coordinator: forecasting autoscaler for Apache Flink on Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/bin/demeter-coordinator /usr/local/bin/demeter-coordinator
# SQLite data dir (--data-dir default), writable by the nonroot user; Kubernetes mounts a volume over it.
COPY --from=builder --chown=65532:65532 /out/data /var/lib/demeter
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/demeter-coordinator"]
CMD ["run"]
