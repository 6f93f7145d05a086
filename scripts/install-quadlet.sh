#!/usr/bin/env bash
# Installs podman's quadlet generator (podman 5.x, from Debian trixie's podman
# package) to /usr/local/libexec/qm-ipc/quadlet without touching the
# system's apt sources. Debian 12's podman 4.3 has no quadlet; the generator
# needs only libc. Tests find it there (or through $QUADLET).
set -euo pipefail

target=${1:-/usr/local/libexec/qm-ipc/quadlet}
if [ -x "$target" ] && "$target" -version >/dev/null 2>&1; then
    exit 0
fi

d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
if [ -z "$mirror" ]; then
    mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
if [ -z "$mirror" ]; then
    echo "install-quadlet: cannot find the Debian mirror in /etc/apt" >&2
    exit 1
fi
echo "deb $mirror trixie main" > "$d/sources.list"
o=(-o "Dir::Etc::sourcelist=$d/sources.list" -o Dir::Etc::sourceparts=/dev/null
   -o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d/cache")
mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
apt-get "${o[@]}" -qq update
(cd "$d" && apt-get "${o[@]}" -qq download podman)
dpkg-deb -x "$d"/podman_*.deb "$d/x"
install -D -m 0755 "$d/x/usr/libexec/podman/quadlet" "$target"
"$target" -version
