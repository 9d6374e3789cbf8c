# The infrastructure of the compose stack, from Debian packages on the same base as the services (no
# container registry needed): docker build -f deploy/infra.Dockerfile --target postgres|mosquitto|prometheus .
ARG BASE_IMAGE=shuidian/base:bookworm

FROM ${BASE_IMAGE} AS postgres
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* \
 && mkdir -p /data && chown postgres:postgres /data
COPY deploy/postgres/entrypoint.sh /usr/local/bin/shuidian-postgres
ENV PATH=/usr/lib/postgresql/15/bin:/usr/sbin:/usr/bin:/sbin:/bin PGDATA=/data/pgdata PGHOST=/tmp
VOLUME ["/data"]
USER postgres
# SIGINT is PostgreSQL's fast shutdown: open transactions roll back, everything committed is on disk.
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s CMD ["pg_isready", "-h", "127.0.0.1", "-U", "postgres"]
ENTRYPOINT ["/usr/local/bin/shuidian-postgres"]

FROM ${BASE_IMAGE} AS mosquitto
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends mosquitto >/dev/null \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* \
 && mkdir -p /data && chown mosquitto:mosquitto /data
COPY deploy/mosquitto/ /etc/mosquitto/shuidian/
VOLUME ["/data"]
USER mosquitto
HEALTHCHECK --interval=5s --timeout=5s --start-period=20s \
  CMD ["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 1883), 3)"]
ENTRYPOINT ["/etc/mosquitto/shuidian/entrypoint.sh"]

FROM ${BASE_IMAGE} AS prometheus
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* /usr/share/prometheus/*.d \
 && mkdir -p /data && chown prometheus:prometheus /data
COPY deploy/prometheus/ /etc/prometheus/shuidian/
VOLUME ["/data"]
USER prometheus
ENTRYPOINT ["/usr/bin/prometheus", "--config.file=/etc/prometheus/shuidian/prometheus.yml", \
            "--storage.tsdb.path=/data", "--storage.tsdb.retention.time=30d", "--web.listen-address=:9090"]
