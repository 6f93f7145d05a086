#!/usr/bin/env bash
# The test command: installs the test prerequisites, then checks formatting
# and lints and runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
# The container images the end-to-end tests run (offline: FROM scratch).
scripts/build-images.sh
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
# Smoke runs of the benchmarks: they must run; they judge no times.
cargo bench --locked -p qm-ipc --bench compare -- --quick
cargo bench --locked -p qm-ipc --bench interference -- --quick
cargo test --locked --workspace
