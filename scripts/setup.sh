#!/usr/bin/env bash
# Prepare a fresh Debian/Ubuntu machine (as root) to build, test and demo the
# project: system packages, the .venv with the project installed editable,
# a running dockerd and the local test image. Idempotent and quick to re-run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Every command the scripts, the tests and the tool call beyond a minbase Debian (which already has
# coreutils, util-linux's setpriv, libc-bin's ldd, tar, grep, dpkg, start-stop-daemon, service):
#   haproxy                            haproxy (and Debian's init script, `service haproxy ...`)
#   docker, dockerd, containerd, runc  docker.io (the tests start a second dockerd)
#   busybox                            busybox-static (the test image)
#   mmdebstrap                         mmdebstrap, debian-archive-keyring (the haproxy version images)
#   ip                                 iproute2 (the second dockerd's bridge)
#   ps                                 procps (Debian's haproxy init script: `service haproxy status`)
#   curl                               curl (demo.sh)
#   python3 -m venv, cc, pkg-config    python3-venv, python3-dev, gcc, pkg-config, libaugeas-dev
#                                      (pip builds python-augeas), libaugeas0 (at run time)
#   docker-compose                     docker-compose (Compose 1.29: the examples/ projects, tests/test_examples.py)
#   zsh                                zsh (the zsh completion, tests/test_ship.py)
#   man                                man-db (the man page test renders the page with man)
#   systemd-analyze                    systemd (only for `systemd-analyze verify` of examples/host's unit;
#                                      nothing is started: where systemd is not PID 1 it stays unused)
#   git                                git (bench/provenance.py and tests/test_docs.py: the commit a figure was measured on)
#   openssl                            openssl (the TLS tests make their own CA and certificates)
APT_PACKAGES=(haproxy libaugeas0 libaugeas-dev pkg-config docker.io busybox-static iproute2 procps
              python3-venv python3-dev gcc curl mmdebstrap debian-archive-keyring docker-compose zsh man-db
              systemd git openssl)

log() { echo "setup: $*"; }

# --- apt packages (only when something is missing) -------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The haproxy package may start a system-wide haproxy on install; the tests
# and demo start their own instances, so make sure no service one lingers.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now haproxy >/dev/null 2>&1 || true
elif [ -f /run/haproxy.pid ] && command -v service >/dev/null 2>&1; then
    service haproxy stop >/dev/null 2>&1 || true
fi

# --- virtualenv ---------------------------------------------------------------
if [ ! -x "$ROOT/.venv/bin/python" ]; then
    py=python3
    if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        py=/usr/bin/python3
    fi
    log "creating .venv with $py"
    "$py" -m venv "$ROOT/.venv"
fi
if [ -f "$ROOT/pyproject.toml" ]; then
    # Skip pip (slow: it builds the editable wheel) when pyproject.toml is
    # unchanged since the last successful install and the entry point exists.
    stamp="$ROOT/.venv/.hdc-installed"
    want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ] \
        || [ ! -x "$ROOT/.venv/bin/haproxy-docker-config" ]; then
        log "pip install -e '.[test,metrics]'"
        "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check -e "$ROOT[test,metrics]"
        echo "$want" >"$stamp"
    fi
else
    log "no pyproject.toml yet; skipping pip install"
fi

# --- dockerd ------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
    log "starting dockerd (log: /var/log/hdc-dockerd.log)"
    nohup dockerd >/var/log/hdc-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do
        if docker info >/dev/null 2>&1; then
            break
        fi
        sleep 1
    done
    if ! docker info >/dev/null 2>&1; then
        echo "setup: dockerd did not come up within 60 s; log tail:" >&2
        tail -n 40 /var/log/hdc-dockerd.log >&2 || true
        exit 1
    fi
fi

# --- test image ---------------------------------------------------------------
"$ROOT/scripts/build-test-image.sh"
"$ROOT/scripts/build-haproxy-image.sh"
"$ROOT/scripts/build-haproxy-versions.sh"
"$ROOT/scripts/build-image.sh"    # the tool's own image, for tests/test_image.py
"$ROOT/scripts/build-python-image.sh"  # the stand-in base that tests/test_image.py builds the Dockerfile on
log "ok"
