#!/bin/sh
# Builds the local test images shoal's tests run (no registry is reachable):
#   shoal-test/busybox:latest  a rootfs holding only a static busybox and its applets
#   shoal-test/busybox:v2      the same plus /VERSION containing "v2" (a different
#                              image id, for rolling-update tests)
# Idempotent: an image that already exists is left alone (FORCE=1 rebuilds both).
# Installs Debian's busybox-static with apt-get when /bin/busybox is missing.
set -eu

REPO=shoal-test/busybox
FORCE=${FORCE:-0}

# Several test processes may call this at once: build under one lock.
if [ -z "${SHOAL_TEST_IMAGES_LOCKED:-}" ] && command -v flock >/dev/null 2>&1; then
    export SHOAL_TEST_IMAGES_LOCKED=1
    exec flock "${TMPDIR:-/tmp}/shoal-test-images.lock" sh "$0" "$@"
fi

have_image() {
    docker image inspect "$1" >/dev/null 2>&1
}

if [ "$FORCE" != 1 ] && have_image "$REPO:latest" && have_image "$REPO:v2"; then
    echo "test images present: $REPO:latest $REPO:v2"
    exit 0
fi

BUSYBOX=/bin/busybox
is_static() {
    # A static binary has no program interpreter (PT_INTERP); `file` may be absent,
    # so ask the binary itself to run with an empty library path as a fallback.
    if command -v file >/dev/null 2>&1; then
        file -L "$1" | grep -q 'statically linked'
    else
        ! grep -q 'ld-linux' "$1"
    fi
}
if [ ! -x "$BUSYBOX" ] || ! is_static "$BUSYBOX"; then
    echo "installing busybox-static (static /bin/busybox needed for the test image)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y busybox-static >/dev/null 2>&1 || {
        apt-get update >/dev/null
        apt-get install -y busybox-static >/dev/null
    }
fi
if ! is_static "$BUSYBOX"; then
    echo "error: $BUSYBOX is not a static binary; install busybox-static" >&2
    exit 1
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

build() {
    tag=$1
    version=$2
    root="$WORK/$version"
    mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/www"
    cp "$BUSYBOX" "$root/bin/busybox"
    for applet in sh sleep httpd nc echo cat ls wget true false env kill ps grep; do
        ln -sf busybox "$root/bin/$applet"
    done
    # httpd and `user` settings want these to exist.
    printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    echo "shoal test page $version" >"$root/www/index.html"
    echo "$version" >"$root/VERSION"
    chmod 1777 "$root/tmp"
    tar -C "$root" --numeric-owner --owner=0 --group=0 -cf - . |
        docker import -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/bin' - "$tag" >/dev/null
    echo "built $tag"
}

# Only missing tags are built, so an existing image id never changes under a test.
for pair in latest:v1 v2:v2; do
    tag="$REPO:${pair%%:*}"
    if [ "$FORCE" = 1 ] || ! have_image "$tag"; then
        build "$tag" "${pair#*:}"
    fi
done
