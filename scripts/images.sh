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
# The images run as non-root.
for name in chat-operator chatd chat-xds; do
  user="$(docker image inspect "chatcluster/$name:$tag" --format '{{.Config.User}}')"
  [ "$user" = "65532:65532" ] || { log "$name runs as '$user'"; exit 1; }
done

log "sizes"
docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep "^chatcluster/" | sort
log "ok"
