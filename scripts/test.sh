#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test (unit, in-memory API, real Envoy,
# MariaDB and helm), then the workload images. Ends with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

results="$(mktemp)"
trap 'rm -f "$results"' EXIT
cargo test --workspace --locked 2>&1 | tee "$results"

# The workload images: built FROM scratch from static binaries, each run once.
./scripts/images.sh

read -r passed failed < <(grep -o 'test result: [a-zA-Z]*\. [0-9]* passed; [0-9]* failed' "$results" |
  awk '{p += $4; f += $6} END {print p + 0, f + 0}')
echo "tests: ${passed} passed, ${failed} failed"
