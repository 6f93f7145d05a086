#!/usr/bin/env bash
# Runs each fuzz target for a bounded time (default 60 s each):
#   scripts/fuzz.sh [SECONDS]
# Installs cargo-fuzz if needed. cargo-fuzz needs nightly compiler flags;
# RUSTC_BOOTSTRAP lets the installed stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
for target in frame_decoder request_parser value_validator; do
    echo "== fuzzing $target for ${seconds}s"
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time="$seconds" -max_len=4096
done
