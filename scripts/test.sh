#!/usr/bin/env bash
# The test command: installs the test prerequisites, then checks formatting
# and lints and runs every test in the workspace, every tier:
#   fast     plain `cargo test` as any user: unit tests, real sockets
#   root     peers as other uids            python  the reference varlink client
#   quadlet  podman's quadlet, systemd-analyze
#   podman   real containers from the images
#   systemd  the generated units under systemd 257 as PID 1 (trixie rootfs)
#   packaging  the RPM (rpmbuild, rpmlint), man -l, tmt lint
#   netns    two hosts as network namespaces, each with a gateway and a
#            qm-ipc-bridge over Zenoh (root, iproute2)
# and then the fuzz targets for 20 s each.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
scripts/install-test-deps.sh
# The container images the end-to-end tests run (offline: FROM scratch).
scripts/build-images.sh
# The root filesystem the real-systemd tier boots (cached after the first run).
scripts/build-test-rootfs.sh
echo "test prerequisites ready after $(( $(date +%s) - start )) s"

cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
# Smoke runs of the benchmarks: they must run; they judge no times.
cargo bench --locked -p qm-ipc --bench compare -- --quick
cargo bench --locked -p qm-ipc --bench interference -- --quick
cargo bench --locked -p qm-ipc --bench library -- --quick
cargo bench --locked -p qm-ipc-server --bench held_slice -- --quick
# The README's first command, exactly as written there: the demo runs its
# ten round trips and stops, and both directions must show.
readme_demo=$(awk '/^Run the demo/ { found = 1 } found && /^    cargo run/ { sub(/^    /, ""); print; exit }' README.md)
if [ -z "$readme_demo" ]; then echo "README.md: no demo command after 'Run the demo'" >&2; exit 1; fi
mkdir -p target
if ! timeout 600 bash -c "$readme_demo" > target/readme-demo.log 2>&1 \
    || ! grep -q "vehicle.speed = " target/readme-demo.log \
    || ! grep -q "Current time received from client" target/readme-demo.log; then
    cat target/readme-demo.log >&2
    echo "the README's demo command ($readme_demo) did not show both directions" >&2
    exit 1
fi
QM_IPC_TEST_TIERS=all cargo test --locked --workspace
# Every fuzz target (frame decoder, request parser, value validator) for a
# bounded time; a crash fails the run and leaves its input in fuzz/artifacts.
scripts/fuzz.sh 20
echo "all tiers passed in $(( $(date +%s) - start )) s"
