#!/bin/sh
# PostgreSQL for the compose stack. On first start (an empty data volume): a cluster whose superuser
# `postgres` has POSTGRES_PASSWORD, and a role `shuidian` (SHUIDIAN_DB_PASSWORD, no superuser) owning the
# database `shuidian`, where every service keeps its own schema. Network sign-ins use SCRAM passwords.
set -eu
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD (deploy/scripts/init-secrets.sh writes one)}"
: "${SHUIDIAN_DB_PASSWORD:?set SHUIDIAN_DB_PASSWORD (deploy/scripts/init-secrets.sh writes one)}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  umask 077
  pwfile=$(mktemp)
  printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb -D "$PGDATA" -U postgres --pwfile="$pwfile" --auth-local=peer --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  cat >> "$PGDATA/postgresql.conf" <<CONF
listen_addresses = '*'
unix_socket_directories = '/tmp'
wal_level = replica
max_wal_senders = 4
CONF
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  echo "host replication postgres all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  psql -v ON_ERROR_STOP=1 -q -U postgres -d postgres \
    -v pw="$SHUIDIAN_DB_PASSWORD" <<'SQL'
CREATE ROLE shuidian LOGIN PASSWORD :'pw';
CREATE DATABASE shuidian OWNER shuidian;
SQL
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "postgres: initialised $PGDATA"
fi
exec postgres -D "$PGDATA"
