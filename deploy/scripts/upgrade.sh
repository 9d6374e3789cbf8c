#!/usr/bin/env bash
# Rolling upgrade of the compose stack to images already built with a new tag (docs/deploy.md, Upgrades):
#
#   SHUIDIAN_VERSION=1.5.0 deploy/scripts/build-images.sh
#   deploy/scripts/upgrade.sh 1.5.0
#
# 1. The migration job: each service's schema is migrated by a one-off container of its NEW image
#    (`run --rm <service> migrate`), while the old replicas keep serving on the expanded schema. A failed
#    migration stops here, before any old replica was touched.
# 2. One service at a time, backends first and the gateway last: its container is recreated on the new
#    image (the old one gets SIGTERM and 30 s to finish requests and flush its outbox), and the next one
#    waits until this one is healthy on the new version.
#
# COMPOSE overrides the compose command (default: the one `make up` uses). Prints one line per step with
# the time it ended (seconds since the epoch), which tests/deploy/test_upgrade_rolling.py reads.
set -euo pipefail
cd "$(dirname "$0")/../.."
NEW="${1:?usage: deploy/scripts/upgrade.sh NEW_VERSION}"
if [ -z "${COMPOSE:-}" ]; then
  if docker compose version >/dev/null 2>&1; then base="docker compose"; else base="docker-compose"; fi
  COMPOSE="$base --env-file deploy/.env -f deploy/compose.yaml -p shuidian"
fi
SERVICES=(${UPGRADE_SERVICES:-collector billing control alarm insights gateway})
HEALTH_TIMEOUT="${UPGRADE_HEALTH_TIMEOUT:-180}"
export SHUIDIAN_VERSION="$NEW"

now() { date +%s.%N; }
step() { echo "upgrade: $* at $(now)"; }

for service in "${SERVICES[@]}"; do
  $COMPOSE run --rm --no-deps -T "$service" migrate
done
step "migrated to $NEW"

for service in "${SERVICES[@]}"; do
  step "$service replacing"
  $COMPOSE up -d --no-deps "$service" 2>&1 | sed 's/^/  /'
  id="$($COMPOSE ps -q "$service")"
  deadline=$(( $(date +%s) + HEALTH_TIMEOUT ))
  until [ "$(docker inspect -f '{{.State.Health.Status}} {{index .Config.Labels "org.opencontainers.image.version"}}' "$id")" = "healthy $NEW" ]; do
    if [ "$(date +%s)" -ge "$deadline" ] || [ "$(docker inspect -f '{{.State.Status}}' "$id")" = exited ]; then
      echo "upgrade: $service is not healthy on $NEW after ${HEALTH_TIMEOUT} s; its log:" >&2
      docker logs --tail 40 "$id" >&2 || true
      exit 1
    fi
    sleep 1
  done
  step "$service healthy on $NEW"
done
