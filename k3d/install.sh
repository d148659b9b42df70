#!/usr/bin/env bash
# Install the operator chart, apply the example ChatCluster, wait until it is Ready.
# shellcheck source=k3d/lib.sh
source "$(dirname "$0")/lib.sh"
need helm kubectl
helm upgrade --install chat-operator "$ROOT/charts/chat-operator" \
  --namespace "$NAMESPACE" --create-namespace \
  --set image.tag="$TAG" --set image.pullPolicy=Never --wait --timeout 5m
kubectl -n "$NAMESPACE" apply -f "$ROOT/examples/laptop.yaml"
kubectl -n "$NAMESPACE" wait --for=condition=Ready chatcluster/laptop --timeout=15m
kubectl -n "$NAMESPACE" get chatclusters
