#!/usr/bin/env bash
# Build hdc-python:3.11-slim-bookworm, a local stand-in for the official python:3.11-slim-bookworm
# that the Dockerfile starts from, so that tests/test_image.py can build the Dockerfile with no
# registry (`docker build --build-arg PYTHON_IMAGE=hdc-python:3.11-slim-bookworm .`).
#
# What the Dockerfile relies on, as the official image has it: Debian 12 with apt and its sources,
# Python 3.11 and its headers as `python3`/`python`, with `pip` that may install into the system (PEP 668's marker is
# removed, as the official image has none), groupadd/useradd, CA certificates. The differences:
# Debian's python3 (3.11.2) in /usr instead of a CPython built into /usr/local, and this host's CA
# bundle (which pip needs where a proxy re-signs TLS). Made with mmdebstrap; cached by a label.
set -euo pipefail

IMAGE="${1:-hdc-python:3.11-slim-bookworm}"
RECIPE="2"          # bump when this recipe changes
SUITE="bookworm"

have="$(docker image inspect -f '{{index .Config.Labels "hdc-python-image"}}' "$IMAGE" 2>/dev/null || true)"
if [ "$have" = "$RECIPE" ]; then
    echo "build-python-image: $IMAGE already present"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
ca=()  # this host's CA bundle, when it has one (a proxy that re-signs TLS is in it)
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    ca=(--customize-hook='copy-in /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs')
fi
echo "build-python-image: building $IMAGE from a Debian $SUITE root (mmdebstrap; 1 to 2 minutes)"
# minbase: apt, passwd (groupadd, useradd) and the rest of Priority: required, like debian:bookworm-slim
if ! mmdebstrap --variant=minbase --include=python3,python3-dev,python3-pip,python-is-python3,ca-certificates \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
        "${ca[@]}" \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/*' \
        "$SUITE" "$tmp/root.tar" </dev/null >"$tmp/mmdebstrap.log" 2>&1; then
    tail -n 30 "$tmp/mmdebstrap.log" >&2
    echo "build-python-image: mmdebstrap failed (log above)" >&2
    exit 1
fi
docker import -c "LABEL hdc-python-image=$RECIPE" -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' \
    "$tmp/root.tar" "$IMAGE" >/dev/null
echo "build-python-image: built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
