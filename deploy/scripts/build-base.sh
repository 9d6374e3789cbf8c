#!/usr/bin/env bash
# Build the base image every Shuidian image starts FROM, from Debian packages only: no container
# registry needed. debootstrap makes a minimal Debian root with Python 3.11 (Debian's python3), which
# `docker import` turns into an image.
#
#   deploy/scripts/build-base.sh [IMAGE] [TARBALL]
#
# IMAGE defaults to shuidian/base:bookworm. TARBALL, when given, caches the root file system: an
# existing one is imported without running debootstrap again. Set DEBIAN_MIRROR to use a mirror of
# your own. Where the host trusts a CA bundle of its own (a TLS-inspecting proxy), it is copied into
# the image as /etc/ssl/certs/build-ca-bundle.crt, which the image build's pip uses; otherwise that
# file is Debian's bundle.
set -euo pipefail
IMAGE="${1:-shuidian/base:bookworm}"
TARBALL="${2:-}"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DOCKER="${DOCKER:-docker}"
HOST_CA="${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

if [ -z "$TARBALL" ] || [ ! -s "$TARBALL" ]; then
  command -v debootstrap >/dev/null || { echo "build-base: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
  ROOT="$(mktemp -d)"
  trap 'rm -rf "$ROOT"' EXIT
  # python3-venv brings ensurepip (pip for the build stage); tzdata for Asia/Shanghai; ca-certificates for TLS.
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,tzdata \
    "$SUITE" "$ROOT" "$MIRROR" >&2
  # Security updates for later `apt-get install`s (the infrastructure images).
  printf 'deb %s %s main\ndeb %s %s-updates main\ndeb http://deb.debian.org/debian-security %s-security main\n' \
    "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" "$SUITE" > "$ROOT/etc/apt/sources.list"
  if [ -s "$HOST_CA" ]; then
    cp "$HOST_CA" "$ROOT/etc/ssl/certs/build-ca-bundle.crt"
  else
    cp "$ROOT/etc/ssl/certs/ca-certificates.crt" "$ROOT/etc/ssl/certs/build-ca-bundle.crt"
  fi
  # What a server image never needs: package caches, documentation, man pages, other locales.
  chroot "$ROOT" apt-get clean
  rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* \
         "$ROOT"/var/cache/debconf/*-old "$ROOT"/var/log/*.log
  find "$ROOT/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'C.*' -exec rm -rf {} +
  if [ -z "$TARBALL" ]; then
    TARBALL="$ROOT.tar"
    trap 'rm -rf "$ROOT" "$ROOT.tar"' EXIT
  fi
  tar --numeric-owner -C "$ROOT" -cf "$TARBALL" .
fi

"$DOCKER" import \
  --change 'ENV LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1' \
  --change 'CMD ["python3"]' \
  --message "Debian $SUITE minbase + python3 (deploy/scripts/build-base.sh)" \
  "$TARBALL" "$IMAGE" >/dev/null
echo "$IMAGE"
