#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, in-memory API, real Envoy).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# The workload images: built FROM scratch from static binaries, each run once.
./scripts/images.sh
