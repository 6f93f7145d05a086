#!/usr/bin/env bash
# Builds the qm-ipc container images from a statically linked binary, offline:
#   scripts/build-images.sh [SERVER_IMAGE [CLIENT_IMAGE]]
# Defaults are the names `qm-ipc generate` expects:
#   localhost/qm-ipc-server:latest and localhost/qm-ipc-client:latest
# Needs podman (and, on these machines, the containers.conf of
# scripts/containers.conf; set CONTAINERS_CONF to use another).
set -euo pipefail
cd "$(dirname "$0")/.."

server_image=${1:-localhost/qm-ipc-server:latest}
client_image=${2:-localhost/qm-ipc-client:latest}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/scripts/containers.conf}

command -v podman >/dev/null || { echo "build-images: podman is not installed (apt-get install podman runc)" >&2; exit 1; }

# The host's own architecture (--target is needed for +crt-static to leave
# build scripts and proc macros dynamic).
target=$(rustc -vV | sed -n 's/^host: //p')
[ -n "$target" ] || { echo "build-images: cannot tell the host's target from rustc -vV" >&2; exit 1; }
# A separate target directory: the static build must not invalidate the
# normal one (and may run while tests hold it). The dist profile is the
# release build with debug info, which is split off below.
RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --locked --profile dist --bin qm-ipc --target "$target" --target-dir target/static
out=target/static/$target/dist
# The images get the stripped binary; its debug info and symbols stay
# beside it as qm-ipc.debug (what a -debuginfo package would hold), linked
# by .gnu_debuglink so gdb finds them when pointed at that directory.
objcopy --only-keep-debug "$out/qm-ipc" "$out/qm-ipc.debug"
objcopy --strip-all --add-gnu-debuglink="$out/qm-ipc.debug" "$out/qm-ipc" images/qm-ipc
chmod 0755 images/qm-ipc

podman build --quiet --target server -t "$server_image" -f images/Containerfile images >/dev/null
podman build --quiet --target client -t "$client_image" -f images/Containerfile images >/dev/null
size=$(stat -c %s images/qm-ipc)
rm -f images/qm-ipc
echo "built $server_image and $client_image (binary $size bytes; its debug info: $out/qm-ipc.debug)"
