#!/usr/bin/env bash
# Delete the k3d cluster.
# shellcheck source=k3d/lib.sh
source "$(dirname "$0")/lib.sh"
need k3d
k3d cluster delete "$CLUSTER_NAME"
