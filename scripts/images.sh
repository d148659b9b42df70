#!/usr/bin/env bash
# Builds the workload images (chat-operator, chatd, chat-xds) from static musl binaries with a
# local Docker engine, then runs each once to show it starts. No base image is pulled: every
# image is FROM scratch.
#
#   scripts/images.sh            build, smoke-run, print sizes
#   TAG=0.1.0 scripts/images.sh  tag (default: the workspace version)
#
# Uses $DOCKER_HOST when it answers; otherwise starts its own dockerd (vfs storage, no
# networking) in a temp dir and stops it on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
tag="${TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)}"
log() { printf 'images: %s\n' "$*"; }

state=""
cleanup() {
  if [ -n "$state" ]; then
    if [ -f "$state/dockerd.pid" ]; then kill "$(cat "$state/dockerd.pid")" 2>/dev/null || true; fi
    sleep 1
    rm -rf "$state" 2>/dev/null || true
  fi
}
trap cleanup EXIT

if ! docker version >/dev/null 2>&1; then
  state="$(mktemp -d)"
  export DOCKER_HOST="unix://$state/docker.sock"
  log "starting dockerd in $state"
  dockerd --data-root "$state/data" --exec-root "$state/exec" --host "$DOCKER_HOST" \
    --pidfile "$state/dockerd.pid" --storage-driver vfs \
    --iptables=false --ip-masq=false --bridge=none >"$state/dockerd.log" 2>&1 &
  for _ in $(seq 1 60); do
    docker version >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker version >/dev/null 2>&1 || { cat "$state/dockerd.log"; exit 1; }
fi
export DOCKER_BUILDKIT=0

# Wherever cargo builds (CARGO_TARGET_DIR, config), ask it.
target_dir="$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"

log "building static binaries ($target)"
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked --target "$target" \
  -p chat-operator -p chatd -p chat-xds --bin chat-operator --bin chatd --bin chat-xds

build() { # name dockerfile-dir
  local name=$1 dir=$2 ctx
  ctx="$(mktemp -d)"
  cp "$dir/Dockerfile" "$ctx/"
  cp "$target_dir/$target/release/$name" "$ctx/"
  # (The legacy builder warns that it is deprecated; it needs nothing from the network.)
  docker build -q -t "chatcluster/$name:$tag" "$ctx" >/dev/null 2>&1
  docker image inspect "chatcluster/$name:$tag" >/dev/null
  rm -rf "$ctx"
}
build chat-operator operator
build chatd services/chat
build chat-xds services/xds

run() { docker run --rm --network none "$@"; }
log "smoke runs"
run "chatcluster/chat-operator:$tag" --version
run "chatcluster/chatd:$tag" --version
run "chatcluster/chat-xds:$tag" --version
# chatd must refuse to start without a service list, with a message saying so.
set +e
out="$(run "chatcluster/chatd:$tag" 2>&1)"
code=$?
set -e
if [ "$code" -ne 2 ] || ! grep -q "no service to run" <<<"$out"; then
  log "chatd without services: exit $code, output: $out"
  exit 1
fi
log "chatd without services: exit 2, \"$out\""
# MariaDB pods and re-seed Jobs copy the operator's binary out of its image into a shared
# volume and run it in the database's image: the copy must run with nothing of its image.
agent="$(mktemp -d)"
chmod 777 "$agent"
run -v "$agent:/agent" "chatcluster/chat-operator:$tag" seed install /agent/chat-operator
env -i "$agent/chat-operator" --version >/dev/null
rm -rf "$agent"
log "chat-operator seed install: the copied binary runs"
# The images run as non-root.
for name in chat-operator chatd chat-xds; do
  user="$(docker image inspect "chatcluster/$name:$tag" --format '{{.Config.User}}')"
  [ "$user" = "65532:65532" ] || { log "$name runs as '$user'"; exit 1; }
done

# Each binary is PID 1 in its image, where the kernel ignores a signal without a handler:
# SIGTERM must end it within 2 s, also while it waits for something that does not answer.
files="$(mktemp -d)"
silent_pid=""
cleanup_signals() {
  if [ -n "$silent_pid" ]; then kill "$silent_pid" 2>/dev/null || true; fi
  rm -rf "$files"
}
trap 'cleanup_signals; cleanup' EXIT
stops_on_sigterm() { # name, log line that shows it is up (or "" for: still running after 1 s), docker run args…
  local name=$1 ready=$2 id start code ms
  shift 2
  id="$(docker run -d "$@")"
  if [ -n "$ready" ]; then
    for _ in $(seq 1 50); do
      docker logs "$id" 2>&1 | grep -q "$ready" && break
      sleep 0.2
    done
  else
    sleep 1
  fi
  if [ "$(docker inspect -f '{{.State.Running}}' "$id")" != true ] ||
    { [ -n "$ready" ] && ! docker logs "$id" 2>&1 | grep -q "$ready"; }; then
    log "$name did not come up:"
    docker logs "$id" 2>&1 | tail -n 20
    docker rm -f "$id" >/dev/null
    exit 1
  fi
  start=$(date +%s%N)
  docker kill --signal TERM "$id" >/dev/null
  code="$(timeout 10 docker wait "$id" || echo none)"
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  docker rm -f "$id" >/dev/null
  if [ "$code" != 0 ] || [ "$ms" -ge 2000 ]; then
    log "$name on SIGTERM: exit $code after ${ms} ms"
    exit 1
  fi
  log "$name stops on SIGTERM as PID 1 in ${ms} ms"
}
chmod 755 "$files"
openssl genpkey -algorithm ed25519 -out "$files/private.pem" 2>/dev/null
openssl pkey -in "$files/private.pem" -pubout -out "$files/public.pem"
printf 'services: {}\n' >"$files/endpoints.yaml"
cat >"$files/xds.yaml" <<'YAML'
cluster: demo
namespace: chat
endpointSelector: chatcluster.io/cluster=demo
listenerPort: 8443
tlsSecret: demo-tls
grpcWeb: true
services: []
YAML
chmod 644 "$files"/*
# chat-xds serving (no Envoy connected); chatd waiting for a database that is not there.
stops_on_sigterm chat-xds "chat-xds serving" --network none -v "$files:/cfg:ro" \
  -e CHAT_XDS_CONFIG=/cfg/xds.yaml -e CHAT_XDS_ENDPOINTS_FILE=/cfg/endpoints.yaml \
  "chatcluster/chat-xds:$tag"
stops_on_sigterm chatd "database not reachable yet" --network none -v "$files:/cfg:ro" \
  -e CHATD_SERVICES=groups -e CHATD_TOKEN_PUBLIC_KEY_FILE=/cfg/public.pem \
  "chatcluster/chatd:$tag"
# The operator against an API server that accepts connections and never answers (on this
# machine's loopback, hence the host network).
silent_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
python3 -c 'import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16); time.sleep(600)' "$silent_port" &
silent_pid=$!
# It must listen before the operator starts (a loaded machine starts Python slowly).
for _ in $(seq 1 100); do
  python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' \
    "$silent_port" 2>/dev/null && break
  sleep 0.1
done
# A CA, as in-cluster configuration always has one (without it the client would look for the
# system's roots, which a FROM scratch image has none of).
openssl req -x509 -newkey ed25519 -nodes -keyout /dev/null -out "$files/ca.crt" -subj /CN=silent \
  -days 1 2>/dev/null
cat >"$files/kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters: [{ name: silent, cluster: { server: "http://127.0.0.1:$silent_port", certificate-authority-data: "$(base64 -w0 "$files/ca.crt")" } }]
users: [{ name: nobody, user: { token: x } }]
contexts: [{ name: silent, context: { cluster: silent, user: nobody } }]
current-context: silent
YAML
chmod 644 "$files/kubeconfig"
stops_on_sigterm chat-operator "" --network host -v "$files:/cfg:ro" -e KUBECONFIG=/cfg/kubeconfig \
  "chatcluster/chat-operator:$tag" run --metrics-addr 127.0.0.1:0

log "sizes"
docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep "^chatcluster/" | sort
log "ok"
