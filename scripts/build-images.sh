#!/usr/bin/env bash
# Builds the qm-ipc container images from a statically linked binary, offline:
#   scripts/build-images.sh [--with-bridge] [SERVER_IMAGE [CLIENT_IMAGE [BRIDGE_IMAGE]]]
# Defaults are the names `qm-ipc generate` expects:
#   localhost/qm-ipc-server:latest, localhost/qm-ipc-client:latest and,
#   with --with-bridge, localhost/qm-ipc-bridge:latest (the bridge links
#   Zenoh: its static build takes several times the gateway's, and the
#   tests need only the gateway's images)
# Needs podman (and, on these machines, the containers.conf of
# scripts/containers.conf; set CONTAINERS_CONF to use another).
set -euo pipefail
cd "$(dirname "$0")/.."

with_bridge=false
if [ "${1:-}" = "--with-bridge" ]; then
    with_bridge=true
    shift
fi
server_image=${1:-localhost/qm-ipc-server:latest}
client_image=${2:-localhost/qm-ipc-client:latest}
bridge_image=${3:-localhost/qm-ipc-bridge:latest}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/scripts/containers.conf}

command -v podman >/dev/null || { echo "build-images: podman is not installed (apt-get install podman runc)" >&2; exit 1; }

# The host's own architecture (--target is needed for +crt-static to leave
# build scripts and proc macros dynamic).
target=$(rustc -vV | sed -n 's/^host: //p')
[ -n "$target" ] || { echo "build-images: cannot tell the host's target from rustc -vV" >&2; exit 1; }
# A separate target directory: the static build must not invalidate the
# normal one (and may run while tests hold it). The dist profile is the
# release build with debug info, which is split off below.
bins=(qm-ipc)
$with_bridge && bins+=(qm-ipc-bridge)
RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --locked --profile dist "${bins[@]/#/--bin=}" --target "$target" --target-dir target/static
out=target/static/$target/dist
# The images get the stripped binaries; their debug info and symbols stay
# beside them as NAME.debug (what a -debuginfo package would hold), linked
# by .gnu_debuglink so gdb finds them when pointed at that directory.
for bin in "${bins[@]}"; do
    objcopy --only-keep-debug "$out/$bin" "$out/$bin.debug"
    objcopy --strip-all --add-gnu-debuglink="$out/$bin.debug" "$out/$bin" "images/$bin"
    chmod 0755 "images/$bin"
done

podman build --quiet --target server -t "$server_image" -f images/Containerfile images >/dev/null
podman build --quiet --target client -t "$client_image" -f images/Containerfile images >/dev/null
size=$(stat -c %s images/qm-ipc)
echo "built $server_image and $client_image (binary $size bytes; debug info: $out/qm-ipc.debug)"
if $with_bridge; then
    podman build --quiet --target bridge -t "$bridge_image" -f images/Containerfile images >/dev/null
    echo "built $bridge_image (binary $(stat -c %s images/qm-ipc-bridge) bytes; debug info: $out/qm-ipc-bridge.debug)"
fi
rm -f images/qm-ipc images/qm-ipc-bridge
