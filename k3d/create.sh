#!/usr/bin/env bash
# Create the k3d cluster described by k3d/cluster.yaml.
# shellcheck source=k3d/lib.sh
source "$(dirname "$0")/lib.sh"
need k3d kubectl
k3d cluster create --config "$ROOT/k3d/cluster.yaml" --wait
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
log "cluster $CLUSTER_NAME ready"
