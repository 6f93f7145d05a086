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

target=x86_64-unknown-linux-gnu
# A separate target directory: the static build must not invalidate the
# normal one (and may run while tests hold it).
RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --locked --release --bin qm-ipc --target "$target" --target-dir target/static
install -m 0755 "target/static/$target/release/qm-ipc" images/qm-ipc

podman build --quiet --target server -t "$server_image" -f images/Containerfile images >/dev/null
podman build --quiet --target client -t "$client_image" -f images/Containerfile images >/dev/null
rm -f images/qm-ipc
echo "built $server_image and $client_image"
