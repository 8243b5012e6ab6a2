#!/bin/sh
# Builds the shoal image from the local release binary, without any registry:
# stages a root filesystem (the binary, the shared libraries ldd lists, the
# files name resolution needs) and runs `docker build` on deploy/Dockerfile.
# Usage: deploy/build-image.sh [TAG]   (default shoal:latest)
set -eu
tag=${1:-shoal:latest}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
cargo build --release -p shoal-cli --bin shoal
bin=target/release/shoal

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp" "$root/var/lib/shoal"
cp "$bin" "$root/usr/local/bin/shoal"
# The release profile keeps debug info (for profiling); the image needs only the
# symbols, for backtraces: about a quarter of the size.
if command -v objcopy >/dev/null 2>&1; then
    objcopy --strip-debug "$root/usr/local/bin/shoal"
fi
# The dynamic loader and every library the binary links, at the same paths.
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
# Name resolution for compose service names and localhost.
for lib in /lib/x86_64-linux-gnu/libnss_dns.so.2 /lib/x86_64-linux-gnu/libnss_files.so.2 \
           /lib/x86_64-linux-gnu/libresolv.so.2; do
    if [ -e "$lib" ]; then mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"; fi
done
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
printf 'root:x:0:0:root:/:/usr/local/bin/shoal\n' >"$root/etc/passwd"
chmod 1777 "$root/tmp"
cp deploy/Dockerfile "$ctx/Dockerfile"
docker build -q -t "$tag" "$ctx"
echo "built $tag"
