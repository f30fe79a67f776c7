#!/usr/bin/env bash
# Make a Docker Engine answer on this machine: install Debian's docker.io when dockerd is
# absent, start dockerd in the background when the socket does not answer (no systemd here),
# and wait until `docker info` answers. Idempotent: safe to run any number of times.
set -euo pipefail

log() { printf '[docker-engine] %s\n' "$*" >&2; }

if docker info >/dev/null 2>&1; then
  log "Docker Engine already answering"
  exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    log "dockerd is not installed and this is not root: install Docker Engine first"; exit 1
  fi
  log "installing Debian's docker.io"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends docker.io iptables >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    log "dockerd is not running and this is not root: start it (sudo dockerd &)"; exit 1
  fi
  log "starting dockerd in the background (log: /var/log/kanoa-dockerd.log)"
  # setsid: the daemon must outlive this script and not take the caller's Ctrl-C.
  setsid dockerd >/var/log/kanoa-dockerd.log 2>&1 < /dev/null &
fi

for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then log "Docker Engine ready"; exit 0; fi
  sleep 1
done
log "dockerd did not answer within 60 s; see /var/log/kanoa-dockerd.log"
tail -n 20 /var/log/kanoa-dockerd.log >&2 || true
exit 1
