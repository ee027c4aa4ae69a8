#!/usr/bin/env bash
# Build hdc-haproxy:2.2, :2.6 and :3.0, the haproxy LTS lines users run, from
# Debian's own packages of bullseye, bookworm and trixie (with their security
# updates): a minimal root made by mmdebstrap, fed to `docker import`, no
# registry needed. Each behaves like hdc-haproxy:latest (haproxy -W -db as
# PID 1, config at /usr/local/etc/haproxy/haproxy.cfg, /run/haproxy and
# /var/lib/haproxy present). Idempotent: an image carrying this VERSION label is
# kept; missing ones are built in parallel.
set -euo pipefail

VERSION="4"   # bump when the images change: older ones are rebuilt
MIRROR="http://deb.debian.org/debian"
SECURITY="http://deb.debian.org/debian-security"
declare -A SUITES=([2.2]=bullseye [2.6]=bookworm [3.0]=trixie)
# bookworm would merge /usr with the usrmerge package, and pull perl (26 MB) with it
declare -A EXTRA=([2.2]="" [2.6]="--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr" [3.0]="")

if ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "build-haproxy-versions: mmdebstrap missing; install it (scripts/setup.sh)" >&2
    exit 1
fi

build() {  # build TAG SUITE: one image, its log in $tmp/TAG.log
    local tag="$1" suite="$2" root="$tmp/$1.tar" started=$SECONDS
    # essential + haproxy: no apt in the image; docs, man pages and locales never unpacked
    mmdebstrap --variant=essential --include=haproxy ${EXTRA[$tag]} \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --skip=cleanup/run --customize-hook='rm -rf "$1/run"/*' \
        --customize-hook='mkdir -p "$1/usr/local/etc/haproxy" "$1/run/haproxy" "$1/run/lock" "$1/var/lib/haproxy"' \
        --customize-hook='cp "$1/etc/haproxy/haproxy.cfg" "$1/usr/local/etc/haproxy/haproxy.cfg"' \
        --customize-hook='rm -rf "$1/var/cache/debconf"/*-old "$1/var/log"/*' \
        "$suite" "$root" "deb $MIRROR $suite main" "deb $SECURITY $suite-security main"
    local full
    full="$(tar -xOf "$root" ./var/lib/dpkg/status |
            awk '/^Package:/{p=($2=="haproxy")} p&&/^Version:/{v=$2} END{print v}')"
    docker import \
        -c 'CMD ["/usr/sbin/haproxy","-W","-db","-f","/usr/local/etc/haproxy/haproxy.cfg"]' \
        -c "LABEL hdc-haproxy-versions=$VERSION hdc-haproxy-debian=$suite hdc-haproxy-package=$full" \
        - "hdc-haproxy:$tag" <"$root" >/dev/null
    rm -f "$root"
    echo "build-haproxy-versions: built hdc-haproxy:$tag (haproxy $full from $suite)" \
         "in $((SECONDS - started)) s"
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
pids=()
for tag in 2.2 2.6 3.0; do
    have="$(docker image inspect -f '{{index .Config.Labels "hdc-haproxy-versions"}}' "hdc-haproxy:$tag" 2>/dev/null || true)"
    if [ "$have" = "$VERSION" ]; then
        echo "build-haproxy-versions: hdc-haproxy:$tag already present"
        continue
    fi
    build "$tag" "${SUITES[$tag]}" >"$tmp/$tag.log" 2>&1 &
    pids+=("$!:$tag")
done
failed=0
for entry in "${pids[@]}"; do
    if wait "${entry%%:*}"; then
        tail -n 1 "$tmp/${entry#*:}.log"
    else
        echo "build-haproxy-versions: hdc-haproxy:${entry#*:} failed; its log:" >&2
        tail -n 30 "$tmp/${entry#*:}.log" >&2
        failed=1
    fi
done
exit "$failed"
