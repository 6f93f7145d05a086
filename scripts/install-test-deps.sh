#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian 12 machine
# (run as root). Idempotent: what is already there is left alone.
set -euo pipefail

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# systemd-socket-activate and systemd-analyze: the stand-ins for systemd.
command -v systemd-socket-activate >/dev/null || apt_install systemd

# podman (quadlet's generated services call it; systemd-analyze verify checks
# that) and runc, the runtime that works on these kernels.
command -v podman >/dev/null && command -v runc >/dev/null || apt_install podman runc

# dbus-daemon, the D-Bus side of the comparison benchmark.
command -v dbus-daemon >/dev/null || apt_install dbus-daemon

# podman's quadlet generator, which Debian 12's podman lacks.
"$(dirname "$0")/install-quadlet.sh" >/dev/null

# iproute2 (ip netns, veth): the netns tier's hosts, each a network
# namespace with its own gateway and qm-ipc-bridge.
command -v ip >/dev/null || apt_install iproute2

# The reference Python varlink implementation, for the interoperability test.
if ! python3 -c 'import varlink' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check varlink
fi
# asyncvarlink, a second independent implementation (typed classes rather
# than a parsed interface), for the services interoperability test.
if ! python3 -c 'import asyncvarlink' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check asyncvarlink
fi

# The packaging tier: rpmbuild (Debian's rpm) builds packaging/qm-ipc.spec,
# rpmlint checks the package, man-db renders the manual pages, and tmt
# lints the plan (tmt/). tmt goes into a venv of its own so that its
# dependencies leave the system's Python alone.
command -v rpmbuild >/dev/null && command -v rpmlint >/dev/null || apt_install rpm rpmlint
command -v man >/dev/null || apt_install man-db
command -v cpio >/dev/null || apt_install cpio
if ! command -v tmt >/dev/null; then
    python3 -m venv /opt/qm-ipc-test/tmt
    /opt/qm-ipc-test/tmt/bin/pip install --quiet --disable-pip-version-check tmt
    ln -sf /opt/qm-ipc-test/tmt/bin/tmt /usr/local/bin/tmt
fi
