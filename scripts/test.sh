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
cargo test --locked --workspace
