#!/usr/bin/env bash
# The end-to-end test against the running cluster (after k3d/up.sh): two users chat through
# the Envoy LoadBalancer, the database primary's pod is deleted under writes (nothing
# acknowledged may be lost), a service is scaled and Envoy must follow, and a pod outside the
# firewall's allowed set cannot reach the database.
# shellcheck source=k3d/lib.sh
source "$(dirname "$0")/lib.sh"
need cargo kubectl
cargo run --quiet --locked --manifest-path "$ROOT/Cargo.toml" -p chatcluster-tests --bin e2e -- \
  --endpoint https://localhost:8443 --namespace "$NAMESPACE" --cluster laptop
