#!/usr/bin/env bash
# Try the project as a new user would on a fresh minimal Debian 12: build a minbase
# root with mmdebstrap (nothing else installed), put a clean clone of this
# checkout's HEAD in it, and run, as root in there, scripts/demo.sh, the two
# local image builds (under throwaway names) and scripts/test.sh (extra arguments
# go to pytest). Then list any process still running in the root (a leak; killed),
# unmount everything and delete the root. Exit 0 only when all of it passed.
#
# The root is a chroot that shares this host's network and its running dockerd
# (the socket is bind-mounted, so setup.sh starts no dockerd of its own); /proc,
# /sys (the suite's second dockerd needs /sys/fs/cgroup), /dev and /run/lock (the
# lock by which swarm users of that dockerd take turns) are the host's.
# Paths handed to the host's dockerd (bind mounts) must mean the same file on
# both sides, so TMPDIR is a directory mounted at the same path inside and out.
# Needs: root, git, a running dockerd on /var/run/docker.sock; installs mmdebstrap.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUITE="${HDC_SUITE:-bookworm}"
PATH_IN=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { echo "check-minimal-debian: $*"; }

[ "$(id -u)" = 0 ] || { echo "check-minimal-debian: run as root" >&2; exit 2; }
[ -S /var/run/docker.sock ] && docker info >/dev/null 2>&1 \
    || { echo "check-minimal-debian: no dockerd answers on /var/run/docker.sock; start it first" >&2; exit 2; }
if ! command -v mmdebstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mmdebstrap
fi
if [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]; then
    log "note: uncommitted changes are not part of the check (it clones HEAD)"
fi

work="$(mktemp -d /tmp/hdc-mini.XXXXXX)"
chmod 755 "$work"   # the tests run the tool as nobody on files in TMPDIR
root="$work/root"
share="$work/t"
tag="hdc-mini-check-${work##*.}"
tag="${tag,,}"

cleanup() {
    set +e
    # a process still running in the root was started by this check: name it, then end it
    local pid cmd leaked=()
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        cmd="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")"
        if [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$root" ] && [ -n "$cmd" ]; then
            leaked+=("$pid")
            echo "    $pid $cmd"
        fi
    done
    if [ "${#leaked[@]}" -gt 0 ]; then
        log "FAIL: the processes above were left running in the root; killing them"
        kill -9 "${leaked[@]}" 2>/dev/null
        status=1
        sleep 1
    fi
    docker image rm "$tag-httpd" "$tag-haproxy" >/dev/null 2>&1
    if mountpoint -q "$root"; then
        umount -R "$root" || umount -R -l "$root"
    fi
    if grep -q " $work" /proc/self/mountinfo; then
        log "mounts under $work remain; not deleting it:"
        grep " $work" /proc/self/mountinfo >&2
        exit 1
    fi
    rm -rf --one-file-system "$work"
    exit "$status"
}
status=0
trap cleanup EXIT

log "mmdebstrap --variant=minbase $SUITE $root"
mmdebstrap --quiet --variant=minbase "$SUITE" "$root"
# As in Docker's Debian images: packages start no service in here (docker.io would
# start a dockerd on the host's network and rewrite its iptables chains).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
git clone -q "$REPO" "$root/root/haproxy-docker-config"
git -C "$root/root/haproxy-docker-config" checkout -q --detach "$(git -C "$REPO" rev-parse HEAD)"

mount --bind "$root" "$root"          # a mount point: runc's pivot_root needs the root to be one
mount --make-private "$root"
mount -t proc proc "$root/proc"
for fs in sys dev; do
    mount --rbind "/$fs" "$root/$fs"
    mount --make-rslave "$root/$fs"   # unmounting them later must not reach the host's
done
touch "$root/run/docker.sock"
mount --bind /var/run/docker.sock "$root/run/docker.sock"
mkdir -p "$root/run/lock"            # machine-wide locks (the suite's swarm users take turns by one)
mount --bind /run/lock "$root/run/lock"
mount --make-slave "$root/run/lock"
mkdir -p "$share" "$root$share"
chmod 1777 "$share"   # like /tmp
mount --bind "$share" "$root$share"

# A clean environment, as a fresh root login has, except this network's own way out: its
# proxy variables and pip's index and certificate (a proxy that re-signs TLS), copied in.
env_in=(HOME=/root PATH="$PATH_IN" LANG=C.UTF-8 TERM=dumb TMPDIR="$share")
for var in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_INDEX_URL; do
    if [ -n "${!var:-}" ]; then
        env_in+=("$var=${!var}")
    fi
done
if [ -f "${PIP_CERT:-}" ]; then
    cp "$PIP_CERT" "$root/root/.pip-cert.pem"
    env_in+=(PIP_CERT=/root/.pip-cert.pem)
fi

inside() {  # run a command in the root, from the clone
    chroot "$root" /usr/bin/env -i "${env_in[@]}" /bin/bash -c 'cd /root/haproxy-docker-config && "$@"' bash "$@"
}

step() {  # run one step inside, timed; a failure is counted, the next steps still run
    local name="$1" started=$SECONDS rc=0
    shift
    log "--- $name"
    inside "$@" || rc=$?
    log "--- $name: exit $rc after $((SECONDS - started)) s"
    [ "$rc" -eq 0 ] || status=1
}

step "scripts/demo.sh" scripts/demo.sh
step "image builds (as $tag-*)" \
    bash -c 'scripts/build-test-image.sh "$1-httpd" && scripts/build-haproxy-image.sh "$1-haproxy"' bash "$tag"
step "scripts/test.sh $*" scripts/test.sh "$@"
