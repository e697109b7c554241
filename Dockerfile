# Builds the sluice daemon. The image runs `sluice server` with the config/ folder of the
# repository; mount your own at /etc/sluice to replace it.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY bench bench
COPY src src
COPY migrations migrations
COPY config config
RUN cargo build --release --locked

FROM debian:bookworm-slim
# pg_dump and mysqldump take the backups of targets before changes (backup_required).
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client mariadb-client \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --home /var/lib/sluice --create-home sluice
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
COPY config /etc/sluice
USER sluice
WORKDIR /var/lib/sluice
ENV SLUICE__SERVER__REST_ADDR=0.0.0.0:8080 SLUICE__SERVER__GRPC_ADDR=0.0.0.0:50051
EXPOSE 8080 50051
ENTRYPOINT ["sluice"]
CMD ["server", "--config-dir", "/etc/sluice"]
