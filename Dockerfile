# hookrelay container image: cargo-chef multi-stage build.
#
#   docker build -t hookrelay .
#   docker run -e DATABASE_URL=postgres://user:pass@db:5432/hookrelay \
#              -e HOOKRELAY__AUTH__JWT_SECRET=... -p 8080:8080 hookrelay
#
# The builder is Debian bookworm based so the binary's glibc matches the runtime.

FROM lukemathwalker/cargo-chef:latest-rust-1-bookworm AS chef
WORKDIR /app

# Compute the dependency recipe; it (and so the cook layer below) changes only
# when Cargo.toml or Cargo.lock do.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# Build dependencies first (cached), then the application.
FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json --bin hookrelay
COPY . .
RUN cargo build --release --bin hookrelay

FROM debian:bookworm-slim AS runtime
WORKDIR /app
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin hookrelay
COPY --from=builder /app/target/release/hookrelay /app/hookrelay
# config/default.toml is also compiled into the binary; the directory is here so
# `--config config/<file>.toml` works and as a reference.
COPY config /app/config
USER 10001
ENV HOOKRELAY__SERVER__BIND=0.0.0.0:8080
EXPOSE 8080
# SIGTERM drains for up to ~30 s with the defaults: use `docker stop -t 40`
# (see docs/operations.md, "Graceful shutdown").
ENTRYPOINT ["/app/hookrelay"]
CMD ["serve"]
