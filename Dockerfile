# peerlog in a container: built in one stage, run in another as an unprivileged user, its
# data in a volume.
#
#   docker build -t peerlog .
#   docker run -d --name peerlog --network host -v peerlog:/var/lib/peerlog peerlog
#   docker exec peerlog peerlog open      # the web UI link (on the host: 127.0.0.1:7777)
#
# --network host: the API and web UI listen on the host's 127.0.0.1:7777, as without a
# container (the API stays on loopback), and libp2p sees the real interfaces, which the
# NAT traversal and mDNS need. The same arguments as the system unit (config/peerlog.service).

FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p peerlog \
 && install -D -m 0755 target/release/peerlog /out/peerlog

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 peerlog \
 && useradd --system --uid 10001 --gid peerlog --home-dir /var/lib/peerlog --shell /usr/sbin/nologin peerlog \
 && install -d -o peerlog -g peerlog -m 0700 /var/lib/peerlog
COPY --from=build /out/peerlog /usr/local/bin/peerlog
USER peerlog:peerlog
ENV PEERLOG_DATA_DIR=/var/lib/peerlog
VOLUME ["/var/lib/peerlog"]
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s CMD ["peerlog", "status", "--data-dir", "/var/lib/peerlog"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["peerlog"]
CMD ["daemon"]
