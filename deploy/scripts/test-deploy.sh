#!/usr/bin/env bash
# `make test-deploy`: the deployment tests (tests/deploy) against a Docker engine of their own. Unless
# DOCKER_HOST names one, a dockerd is started here on a private socket and data root (overlay2, or vfs
# where overlay is not allowed; no iptables, no default bridge) and stopped at the end with everything
# it ran: nothing is left behind. Every image is built once (the base from Debian packages, cached for
# this run only) and the tests reuse them.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-.venv/bin/python}"
WORK="$(mktemp -d /tmp/shuidian-deploy-XXXXXX)"
DOCKERD_PID=""

cleanup() {
  if [ -n "$DOCKERD_PID" ]; then
    docker ps -aq | xargs -r docker rm -f >/dev/null 2>&1 || true  # our own engine's containers only
    kill "$DOCKERD_PID" 2>/dev/null || true
    wait "$DOCKERD_PID" 2>/dev/null || true
  fi
  # Mounts the engine left under its private roots (network namespaces, overlay layers).
  awk -v root="$WORK" 'index($2, root) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

start_dockerd() {
  local driver="$1"
  dockerd --data-root "$WORK/root" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" \
    -H "unix://$WORK/docker.sock" --storage-driver="$driver" --iptables=false --bridge=none \
    > "$WORK/dockerd-$driver.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 60); do
    DOCKER_HOST="unix://$WORK/docker.sock" docker info >/dev/null 2>&1 && return 0
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 0.5
  done
  kill "$DOCKERD_PID" 2>/dev/null || true
  wait "$DOCKERD_PID" 2>/dev/null || true
  DOCKERD_PID=""
  return 1
}

if [ -z "${DOCKER_HOST:-}" ]; then
  command -v dockerd >/dev/null || { echo "test-deploy: needs a Docker engine (apt-get install docker.io)" >&2; exit 1; }
  start_dockerd overlay2 || { rm -rf "$WORK/root" "$WORK/exec"; start_dockerd vfs; } \
    || { cat "$WORK"/dockerd-*.log >&2; echo "test-deploy: dockerd did not start" >&2; exit 1; }
  export DOCKER_HOST="unix://$WORK/docker.sock"
fi

export SHUIDIAN_VERSION="${SHUIDIAN_VERSION:-test}" SHUIDIAN_TEST_DEPLOY=1
started=$(date +%s)
BASE_TARBALL="$WORK/base.tar" deploy/scripts/build-images.sh
echo "test-deploy: images built in $(( $(date +%s) - started )) s" >&2
tested=$(date +%s)
status=0
SHUIDIAN_DEPLOY_REPORT="$WORK/figures.jsonl" "$PYTHON" -m pytest tests/deploy -q || status=$?
# What the tests measured (the rolling upgrade's outage per service, the backup's size, …): docs/deploy.md.
[ -s "$WORK/figures.jsonl" ] && sed 's/^/test-deploy: measured /' "$WORK/figures.jsonl" >&2
echo "test-deploy: tests in $(( $(date +%s) - tested )) s, $(( $(date +%s) - started )) s with the images" >&2
exit "$status"
