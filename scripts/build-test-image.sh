#!/usr/bin/env bash
# Build the tiny busybox-based test image hdc-test-httpd:latest (no registry
# needed: the rootfs is assembled locally and fed to `docker import`).
# Idempotent: does nothing when the image already exists.
set -euo pipefail

IMAGE="${1:-hdc-test-httpd:latest}"   # another name: a throwaway build (scripts/check-minimal-debian.sh)
VERSION="2"              # bump when the image changes: an older one is rebuilt
BUSYBOX="/bin/busybox"   # from Debian's busybox-static (statically linked)

have="$(docker image inspect -f '{{index .Config.Labels "hdc-test-image"}}' "$IMAGE" 2>/dev/null || true)"
if [ "$have" = "$VERSION" ]; then
    echo "build-test-image: $IMAGE already present"
    exit 0
fi

if [ ! -x "$BUSYBOX" ]; then
    echo "build-test-image: $BUSYBOX missing; install busybox-static (scripts/setup.sh)" >&2
    exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
root="$tmp/rootfs"
mkdir -p "$root/bin" "$root/www" "$root/etc" "$root/tmp" "$root/proc" "$root/sys" "$root/dev"
chmod 1777 "$root/tmp"
cp "$BUSYBOX" "$root/bin/busybox"
for applet in sh httpd hostname sleep cat echo mkdir ls kill; do
    ln -s busybox "$root/bin/$applet"
done

# PID 1 ignores signals it has no handler for, so trap TERM/INT explicitly.
# Like a real service it shuts down gracefully: on TERM it keeps serving for
# HDC_GRACE seconds (default 1) before taking the two httpd children down, so
# a balancer that reacts to the stop loses no request.
cat >"$root/start.sh" <<'SH'
#!/bin/sh
export PATH=/bin
mkdir -p /www
echo "$(hostname)" > /www/index.html
httpd -f -p 8080 -h /www &
p1=$!
httpd -f -p 9090 -h /www &
p2=$!
trap 'sleep "${HDC_GRACE:-1}"; kill $p1 $p2 2>/dev/null; exit 0' TERM INT
wait
SH
chmod 755 "$root/start.sh"

tar -C "$root" -c . | docker import \
    -c 'CMD ["/bin/sh","/start.sh"]' \
    -c 'ENV PATH=/bin' \
    -c "LABEL hdc-test-image=$VERSION" \
    - "$IMAGE" >/dev/null
echo "build-test-image: built $IMAGE"
