#!/usr/bin/env bash
# Everything: create the cluster, build and import the images, install, wait for Ready.
# shellcheck source=k3d/lib.sh
source "$(dirname "$0")/lib.sh"
"$ROOT/k3d/create.sh"
"$ROOT/k3d/images.sh"
"$ROOT/k3d/install.sh"
log "up: clients connect to https://localhost:8443"
