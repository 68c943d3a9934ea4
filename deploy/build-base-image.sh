#!/usr/bin/env bash
# Builds the image `python:3.11-slim` locally, without a registry, so that an unchanged
# `FROM python:3.11-slim` (deploy/Dockerfile) resolves on machines that cannot reach
# Docker Hub (see shared/containers.md): Debian bookworm (Python 3.11) made by mmdebstrap,
# with pip usable system-wide, then `docker import`ed under that name.
#
# - The host's locally added CA certificates (/usr/local/share/ca-certificates) are copied
#   into the image at build time, because package downloads may go through a
#   TLS-intercepting proxy; they live only in the image, never in the repository.
# - /usr/lib/python3.*/EXTERNALLY-MANAGED is removed, so pip installs system-wide.
#
# Idempotent: does nothing when the image exists already. Needs root (mmdebstrap, docker).
# Environment: DOCKER (the docker CLI, default `docker`; DOCKER_HOST is honoured),
# IMAGE (default python:3.11-slim), DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR.
set -euo pipefail

DOCKER=${DOCKER:-docker}
IMAGE=${IMAGE:-python:3.11-slim}
SUITE=bookworm # Python 3.11
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
HOST_CA_DIR=/usr/local/share/ca-certificates

say() { echo "build-base-image: $*"; }

if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
    say "$IMAGE exists already; nothing to do"
    exit 0
fi
for tool in mmdebstrap "$DOCKER"; do
    command -v "$tool" >/dev/null || { say "error: $tool not found (apt-get install mmdebstrap docker.io)" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/raftmq-base-image.XXXXXX")
trap 'rm -rf "$work"' EXIT

ca_count=$(find "$HOST_CA_DIR" -name '*.crt' 2>/dev/null | wc -l)
say "mmdebstrap $SUITE (minbase + python3, pip, ca-certificates) from $DEBIAN_MIRROR"
say "copying $ca_count locally added CA certificate(s) from $HOST_CA_DIR into the image"
# Runs under sh with the chroot in $1.
copy_host_cas="mkdir -p \"\$1$HOST_CA_DIR\" && if [ -d $HOST_CA_DIR ]; then find $HOST_CA_DIR -name '*.crt' -exec cp {} \"\$1$HOST_CA_DIR/\" ';'; fi"
started=$SECONDS
mmdebstrap --variant=minbase --quiet \
    --include=python3,python3-pip,python-is-python3,ca-certificates \
    --customize-hook="$copy_host_cas" \
    --customize-hook='chroot "$1" update-ca-certificates --fresh >/dev/null' \
    --customize-hook='rm -f "$1"/usr/lib/python3.*/EXTERNALLY-MANAGED' \
    --customize-hook='chroot "$1" pip --version' \
    "$SUITE" "$work/base.tar" \
    "deb $DEBIAN_MIRROR $SUITE main" \
    "deb $DEBIAN_MIRROR $SUITE-updates main" \
    "deb $DEBIAN_SECURITY_MIRROR $SUITE-security main"
say "root file system: $(du -h "$work/base.tar" | cut -f1) in $((SECONDS - started)) s"

# The settings a Docker Hub python image has (PATH, a UTF-8 locale, python as the command).
say "docker import $work/base.tar $IMAGE"
"$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "raftmq deploy/build-base-image.sh: Debian $SUITE minbase with python3 and pip" \
    "$work/base.tar" "$IMAGE" >/dev/null
say "done: $("$DOCKER" image inspect --format '{{.Id}} {{.Size}} bytes' "$IMAGE")"
