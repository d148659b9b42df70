#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build, and run the ChatCluster a
# file describes as processes on this machine, in the foreground (Ctrl-C stops it cleanly).
#   scripts/local.sh [FILE] [chat-operator local options]   (default FILE: examples/laptop.yaml)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
file="${1:-examples/laptop.yaml}"
shift || true

"$root/scripts/setup.sh"
cargo build --release --locked --manifest-path "$root/Cargo.toml" \
  -p chat-operator -p chatd -p chat-xds
exec "$root/target/release/chat-operator" local -f "$file" "$@"
