#!/usr/bin/env bash
# Build haproxy-docker-config:VERSION and :latest, the tool as an image to run
# beside haproxy (README "The tool as a container"), with no registry: the same
# recipe as the Dockerfile (Python 3.11 on Debian 12, libaugeas0, the wheels of
# the package and its dependencies, a non-root user, ENTRYPOINT the tool), but
# the Debian root comes from mmdebstrap instead of the python image, and the
# wheels are built on this host with the project's .venv.
#
# Two stages, cached by labels like the other images: hdc-tool-base (Debian,
# Python, libaugeas0, the dependencies; 2 to 3 minutes) is rebuilt only when
# pyproject.toml or RECIPE changes; the image on top of it (the package alone,
# seconds) whenever the module changes too. Idempotent and quick when cached.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

IMAGE="haproxy-docker-config"
BASE="hdc-tool-base"   # tagged by its key too, so that worktrees with different pyproject.toml do not rebuild it in turn
RECIPE="2"          # bump when this recipe changes: both stages are rebuilt
SUITE="bookworm"    # Debian 12: Python 3.11, the version the wheels are built for
USER_ID="10001"     # the image's user; give it the socket's group with --group-add
PYTHON="$ROOT/.venv/bin/python"

log() { echo "build-image: $*"; }

if [ ! -x "$PYTHON" ]; then
    echo "build-image: $PYTHON missing; run scripts/setup.sh first" >&2
    exit 1
fi
if [ "$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "3.11" ]; then
    echo "build-image: the wheels are built with $PYTHON, which must be Python 3.11 like the image's Debian $SUITE" >&2
    exit 1
fi
version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' haproxy_docker_config.py)"  # the one source of the version
base_key="$RECIPE-$(sha256sum pyproject.toml | cut -c1-16)"
base_tag="$BASE:$base_key"
app_key="$base_key-$(cat haproxy_docker_config.py pyproject.toml | sha256sum | cut -c1-16)"

label_of() {  # label_of IMAGE LABEL: the label's value, empty when the image is absent
    docker image inspect -f "{{index .Config.Labels \"$2\"}}" "$1" 2>/dev/null || true
}

if [ "$(label_of "$IMAGE:$version" hdc-tool-image)" = "$app_key" ]; then
    docker tag "$IMAGE:$version" "$IMAGE:latest"
    log "$IMAGE:$version already present"
    exit 0
fi

tmp="$(mktemp -d)"
builder="hdc-tool-build-$$"
trap 'docker rm -f "$builder" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
pip_wheel() {  # quiet unless it fails
    if ! "$PYTHON" -m pip wheel -q --disable-pip-version-check --use-pep517 "$@" >"$tmp/pip.log" 2>&1; then
        cat "$tmp/pip.log" >&2
        echo "build-image: pip wheel $* failed (log above)" >&2
        exit 1
    fi
}

# --- stage 1: Debian, Python, libaugeas0 and the dependencies' wheels --------
if [ "$(label_of "$base_tag" hdc-tool-base)" != "$base_key" ]; then
    log "building $base_tag from a Debian $SUITE root (mmdebstrap; 2 to 3 minutes)"
    # the dependencies and the metrics extra (a watcher in a container is where --metrics is used)
    "$PYTHON" -c 'import sys, tomllib; p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(p["dependencies"] + p["optional-dependencies"]["metrics"]))' pyproject.toml >"$tmp/requirements.txt"
    # python-augeas has no wheel on PyPI: it is built here against libaugeas-dev (setup.sh installs it)
    pip_wheel -w "$tmp/wheels" -r "$tmp/requirements.txt"
    # No docs, man pages or locales; the debootstrap way to a merged /usr (the usrmerge
    # package would pull in perl); python3-installer puts the wheels where Debian's
    # python3 looks (/usr/local/lib/python3.11/dist-packages) with their scripts and .pyc.
    if ! mmdebstrap --variant=essential --include=python3,libaugeas0,python3-installer \
            --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
            --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
            --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-include=/usr/share/doc/*/copyright' \
            --customize-hook="copy-in $tmp/wheels /tmp" \
            --customize-hook='chroot "$1" sh -c "for w in /tmp/wheels/*.whl; do python3 -m installer \"\$w\" || exit 1; done"' \
            --customize-hook='rm -rf "$1/tmp/wheels"' \
            --customize-hook="echo 'hdc:x:$USER_ID:$USER_ID:haproxy-docker-config:/home/hdc:/usr/sbin/nologin' >>\"\$1/etc/passwd\"" \
            --customize-hook="echo 'hdc:x:$USER_ID:' >>\"\$1/etc/group\"" \
            --customize-hook="install -d -m 700 -o $USER_ID -g $USER_ID \"\$1/home/hdc\"" \
            "$SUITE" "$tmp/root.tar" </dev/null >"$tmp/mmdebstrap.log" 2>&1; then
        tail -n 30 "$tmp/mmdebstrap.log" >&2
        echo "build-image: mmdebstrap failed (log above)" >&2
        exit 1
    fi
    docker import -c "LABEL hdc-tool-base=$base_key" "$tmp/root.tar" "$base_tag" >/dev/null
    rm -f "$tmp/root.tar"
fi
docker tag "$base_tag" "$BASE:latest"  # the stand-in base image other scripts and tests name

# --- stage 2: the package, its entry point, the user -------------------------
log "building $IMAGE:$version"
previous="$(docker image inspect -f '{{.Id}}' "$IMAGE:$version" 2>/dev/null || true)"
pip_wheel --no-deps -w "$tmp/app" "$ROOT"
docker run --name "$builder" --user 0 --network none -v "$tmp/app:/wheels:ro" --entrypoint /bin/sh "$base_tag" \
    -c 'python3 -m installer /wheels/*.whl && haproxy-docker-config --help >/dev/null' >/dev/null
docker commit \
    -c "USER $USER_ID:$USER_ID" \
    -c 'ENTRYPOINT ["haproxy-docker-config"]' \
    -c 'CMD ["--help"]' \
    -c "LABEL hdc-tool-image=$app_key org.opencontainers.image.version=$version" \
    -c 'LABEL org.opencontainers.image.title=haproxy-docker-config' \
    "$builder" "$IMAGE:$version" >/dev/null
docker tag "$IMAGE:$version" "$IMAGE:latest"
if [ -n "$previous" ]; then  # the build it replaces, unless a container or another tag still uses it
    docker rmi "$previous" >/dev/null 2>&1 || true
fi
log "built $IMAGE:$version and :latest ($(docker image inspect -f '{{.Size}}' "$IMAGE:$version" | awk '{printf "%.0f MB", $1/1e6}'))"
