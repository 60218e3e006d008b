# smarthomed in a container: `docker build -t smarthomed .`, then see README.md,
# "Install", for `docker run`. Data lives in the /var/lib/smarthomed volume; the config
# is mounted read-only at /etc/smarthomed/smarthomed.toml, secrets as files under
# /etc/smarthomed/credentials (CREDENTIALS_DIRECTORY).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
# ca-certificates: Slack, Firebase and OpenWeatherMap over HTTPS; tini: PID 1 that
# forwards signals and reaps what the supervisor's children leave behind.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/smarthomed --shell /usr/sbin/nologin smarthomed \
    && install -d -o smarthomed -g smarthomed -m 0700 /var/lib/smarthomed \
    && install -d -m 0755 /etc/smarthomed /etc/smarthomed/credentials
COPY --from=build /src/target/release/smarthomed /usr/bin/smarthomed
COPY smarthomed.example.toml /etc/smarthomed/smarthomed.toml
USER smarthomed
WORKDIR /var/lib/smarthomed
VOLUME ["/var/lib/smarthomed"]
ENV SMARTHOMED_CONFIG=/etc/smarthomed/smarthomed.toml \
    CREDENTIALS_DIRECTORY=/etc/smarthomed/credentials
# MQTT, MQTT over WebSocket, MQTT over TLS, secure WebSocket, /metrics and /healthz.
EXPOSE 1883 8083 8883 8884 9898
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/bin/smarthomed"]
CMD ["run"]
