#!/bin/bash
# Stand-in for systemd running a socket-activated quadlet service with
# Restart=always, for the e2e tests: this shell keeps the listening socket
# (fd 3, from systemd-socket-activate) open, runs the unit's ExecStart,
# waits for its container to end, runs the unit's ExecStopPost, waits
# RestartSec (systemd's default, 100 ms) and starts it again. Each start
# runs with LISTEN_PID set to the pid podman runs as (exec keeps the pid of
# the inner shell).
#   restart-always.sh CIDFILE EXEC_STOP_POST... -- EXEC_START...
set -u
cidfile=$1
shift
stop_post=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    stop_post+=("$1")
    shift
done
shift
while :; do
    sh -c 'LISTEN_PID=$$ exec "$@"' sh "$@"
    if [ -s "$cidfile" ]; then
        podman wait "$(cat "$cidfile")" >/dev/null 2>&1
    fi
    "${stop_post[@]}" >/dev/null 2>&1
    # Debian 12's podman 4.3 leaves the cidfile behind when the container
    # is already gone (--rm), and then refuses to start with it; the podman
    # that matches the quadlet generator removes it.
    rm -f "$cidfile"
    sleep 0.1
done
