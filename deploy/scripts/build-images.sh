#!/usr/bin/env bash
# Build every image of the stack from this checkout: the base (once, from Debian packages, unless
# BASE_IMAGE exists already), PostgreSQL, Mosquitto and Prometheus, and one image per service.
#
#   SHUIDIAN_VERSION=1.4.0 deploy/scripts/build-images.sh [NAME ...]
#
# Tags: shuidian/<name>:$SHUIDIAN_VERSION (default dev). BASE_TARBALL caches the base's root file system.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION="${SHUIDIAN_VERSION:-dev}"
BASE_IMAGE="${BASE_IMAGE:-shuidian/base:bookworm}"
DOCKER="${DOCKER:-docker}"
REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
NAMES=("$@")
[ ${#NAMES[@]} -gt 0 ] || NAMES=(postgres mosquitto prometheus collector billing control alarm insights gateway simulator)

if ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  DOCKER="$DOCKER" deploy/scripts/build-base.sh "$BASE_IMAGE" "${BASE_TARBALL:-}"
fi
# The classic builder: what Debian's docker.io has, and all a multi-stage recipe needs. Host networking:
# the build reaches the package mirrors and PyPI without a bridge.
export DOCKER_BUILDKIT=0
for name in "${NAMES[@]}"; do
  case "$name" in
    postgres|mosquitto|prometheus) args=(-f deploy/infra.Dockerfile --target "$name") ;;
    *) args=(-f deploy/Dockerfile --build-arg "SERVICE=$name" --build-arg "REVISION=$REVISION"
             --build-arg "CREATED=$CREATED") ;;
  esac
  echo "build-images: shuidian/$name:$VERSION" >&2
  "$DOCKER" build --quiet --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "VERSION=$VERSION" \
    "${args[@]}" -t "shuidian/$name:$VERSION" . >/dev/null
done
