#!/usr/bin/env bash
# Builds the Debian trixie root filesystem that the real-systemd test tier
# boots as a privileged podman container with systemd as PID 1 (systemd 257
# with varlinkctl, podman 5.4 and its own quadlet, all of one version):
#   scripts/build-test-rootfs.sh [DIR]     (default /var/cache/qm-ipc/trixie-rootfs)
# Cached: a complete rootfs (marked by DIR/.qm-ipc-rootfs-complete) is left
# alone, so only the first run on a machine pays for debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${1:-/var/cache/qm-ipc/trixie-rootfs}
stamp="$dir/.qm-ipc-rootfs-complete"
# Bump when the package list or the configuration below changes.
version=1
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$version" ]; then
    exit 0
fi

command -v debootstrap >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
if [ -z "$mirror" ]; then
    mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$mirror" ] || { echo "build-test-rootfs: cannot find the Debian mirror in /etc/apt" >&2; exit 1; }

rm -rf "$dir"
mkdir -p "$(dirname "$dir")"
tmp="$dir.tmp"
rm -rf "$tmp"
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,podman,runc \
    trixie "$tmp" "$mirror" >/dev/null
# The two podman settings these kernels need, and vfs storage (overlay on
# overlay is not available when nested).
install -m 0644 scripts/containers.conf "$tmp/etc/containers/containers.conf"
printf '[storage]\ndriver = "vfs"\nrunroot = "/run/containers/storage"\ngraphroot = "/var/lib/containers/storage"\n' \
    > "$tmp/etc/containers/storage.conf"
# systemd-modules-load fails in a container (no module loading); mask it so a
# healthy boot reads "running".
ln -sf /dev/null "$tmp/etc/systemd/system/systemd-modules-load.service"
rm -rf "$tmp/var/cache/apt/archives/"*.deb
echo "$version" > "$tmp/.qm-ipc-rootfs-complete"
mv "$tmp" "$dir"
echo "built $dir"
