#!/usr/bin/env bash
# Build hdc-haproxy:latest, HAProxy in a container like the official image
# (master-worker in the foreground as PID 1, config at
# /usr/local/etc/haproxy/haproxy.cfg), from Debian's own haproxy binary and the
# libraries it links: no registry needed. Idempotent.
set -euo pipefail

IMAGE="${1:-hdc-haproxy:latest}"   # another name: a throwaway build (scripts/check-minimal-debian.sh)
VERSION="1"
have="$(docker image inspect -f '{{index .Config.Labels "hdc-haproxy-image"}}' "$IMAGE" 2>/dev/null || true)"
if [ "$have" = "$VERSION" ]; then
    echo "build-haproxy-image: $IMAGE already present"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
root="$tmp/rootfs"
mkdir -p "$root/usr/sbin" "$root/usr/local/etc/haproxy" "$root/tmp" "$root/run/haproxy" "$root/var/lib/haproxy" \
         "$root/etc" "$root/proc" "$root/sys" "$root/dev"
chmod 1777 "$root/tmp"
cp /usr/sbin/haproxy "$root/usr/sbin/haproxy"
# the binary's shared libraries and the loader, at the same paths
for lib in $(ldd /usr/sbin/haproxy | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
echo 'root:x:0:0:root:/root:/bin/false' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"

tar -C "$root" -c . | docker import \
    -c 'CMD ["/usr/sbin/haproxy","-W","-db","-f","/usr/local/etc/haproxy/haproxy.cfg"]' \
    -c "LABEL hdc-haproxy-image=$VERSION" \
    - "$IMAGE" >/dev/null
echo "build-haproxy-image: built $IMAGE"
