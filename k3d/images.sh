#!/usr/bin/env bash
# Build the workload images and import them into the k3d cluster.
# shellcheck source=k3d/lib.sh
source "$(dirname "$0")/lib.sh"
need k3d
TAG="$TAG" "$ROOT/scripts/images.sh"
k3d image import --cluster "$CLUSTER_NAME" \
  "chatcluster/chat-operator:$TAG" "chatcluster/chatd:$TAG" "chatcluster/chat-xds:$TAG"
log "images imported"
