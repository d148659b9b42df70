#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build, and run the ChatCluster a
# file describes as processes on this machine, in the foreground (Ctrl-C stops it cleanly).
#   scripts/local.sh [FILE] [chat-operator local options]   (default FILE: examples/laptop.yaml)
# FILE is taken relative to the directory you run it from, as is the default data directory
# (.chatcluster/<name>). CHATCLUSTER_BIN_DIR=DIR runs the binaries already built in DIR instead
# of building (the newcomer test does); CHATCLUSTER_PORT, CHATCLUSTER_PLAINTEXT_PORT and
# CHATCLUSTER_BASE_PORT move the ports.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
file="${1:-$root/examples/laptop.yaml}"
shift || true

"$root/scripts/setup.sh"
bin="${CHATCLUSTER_BIN_DIR:-}"
if [ -z "$bin" ]; then
  cargo build --release --locked --manifest-path "$root/Cargo.toml" \
    -p chat-operator -p chatd -p chat-xds
  bin="$root/target/release"
fi
exec "$bin/chat-operator" local -f "$file" "$@"
