# shellcheck shell=bash
# Shared by the k3d scripts: names, logging, and tool checks.
set -euo pipefail

CLUSTER_NAME="${CLUSTER_NAME:-chatcluster}"
NAMESPACE="${NAMESPACE:-chat}"
TAG="${TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$(dirname "${BASH_SOURCE[0]}")/../Cargo.toml" | head -n 1)}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CLUSTER_NAME NAMESPACE TAG ROOT

log() { printf 'k3d: %s\n' "$*"; }

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || { log "missing $tool"; exit 1; }
  done
}
