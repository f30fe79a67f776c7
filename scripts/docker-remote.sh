#!/usr/bin/env bash
# A second Docker host for tests: a dockerd inside its own network namespace, reached over
# tcp:// on a private veth link (no default route: it talks to nothing but this machine).
# Its data root is cached in $KANOA_DEV_CACHE, so an image loaded into it stays for the next run.
#
#   scripts/docker-remote.sh start [IMAGE...]   # start (idempotent), load IMAGEs from the local daemon
#   scripts/docker-remote.sh stop               # stop the daemon, remove the namespace
# Also an sshd in the namespace (Debian's openssh-server, run by hand with its own config and
# keys under /run), so the same daemon is reachable as ssh://root@ADDR with the printed key.
# Prints KANOA_REMOTE_DOCKER=tcp://ADDR:2375, KANOA_REMOTE_ADDR=ADDR, KANOA_REMOTE_SSH=ssh://root@ADDR,
# KANOA_REMOTE_SSH_KEY (private key) and KANOA_REMOTE_SSH_KNOWN_HOSTS (a known_hosts line).
set -euo pipefail
NS=kl-remote
HOST_IF=kl-r0; NS_IF=kl-r1
HOST_ADDR=10.213.7.1; NS_ADDR=10.213.7.2
RUN=/run/kanoa-remote
CACHE="${KANOA_DEV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kanoa-local-dev}"
DATA="$CACHE/docker-remote"
SOCK="unix://$RUN/docker.sock"
log() { printf '[docker-remote] %s\n' "$*" >&2; }
# shellcheck source=netns.sh
. "$(dirname "${BASH_SOURCE[0]}")/netns.sh"

up() { docker -H "$SOCK" info >/dev/null 2>&1; }

start() {
  [ "$(id -u)" = 0 ] || { log "needs root (network namespaces)"; exit 77; }
  command -v dockerd >/dev/null || { log "no dockerd: run scripts/docker-engine.sh first"; exit 1; }
  if netns_add "$NS" "$HOST_IF" "$NS_IF" "$NS_ADDR/30"; then
    ip addr add "$HOST_ADDR/30" dev "$HOST_IF"
    ip link set "$HOST_IF" up
  fi
  mkdir -p "$RUN" "$DATA"
  if ! up; then
    log "starting a second dockerd in namespace $NS ($NS_ADDR)"
    # nsenter, not `ip netns exec` (which remounts /sys and dockerd dies)
    setsid nsenter --net="/var/run/netns/$NS" dockerd --data-root "$DATA" --exec-root "$RUN/exec" \
      --pidfile "$RUN/dockerd.pid" -H "$SOCK" -H "tcp://$NS_ADDR:2375" \
      --iptables=false --ip-masq=false --ip-forward=false >"$RUN/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 1 60); do up && break; sleep 1; done
    up || { log "it did not answer; its log:"; tail -n 20 "$RUN/dockerd.log" >&2; exit 1; }
  fi
  ssh_start
  for image in "$@"; do
    if ! docker -H "$SOCK" image inspect "$image" >/dev/null 2>&1; then
      log "loading $image into it (docker save | load; once, cached with its data root)"
      docker save "$image" | docker -H "$SOCK" load >/dev/null
    fi
  done
  echo "KANOA_REMOTE_DOCKER=tcp://$NS_ADDR:2375"
  echo "KANOA_REMOTE_ADDR=$NS_ADDR"
  echo "KANOA_REMOTE_NETNS=/var/run/netns/$NS"
  echo "KANOA_REMOTE_DOCKERD_PID=$(cat "$RUN/dockerd.pid")"
  echo "KANOA_REMOTE_SSH=ssh://root@$NS_ADDR"
  echo "KANOA_REMOTE_SSH_KEY=$RUN/ssh/client_key"
  echo "KANOA_REMOTE_SSH_KNOWN_HOSTS=$NS_ADDR $(cut -d' ' -f1-2 "$RUN/ssh/host_key.pub")"
}

ssh_start() {
  if ! [ -x /usr/sbin/sshd ]; then
    log "installing openssh-server (no service started)"
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server >/dev/null \
      || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server >/dev/null; }
    rm -f /usr/sbin/policy-rc.d
  fi
  mkdir -p "$RUN/ssh" /run/sshd
  [ -f "$RUN/ssh/host_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$RUN/ssh/host_key"
  [ -f "$RUN/ssh/client_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$RUN/ssh/client_key"
  cp "$RUN/ssh/client_key.pub" "$RUN/ssh/authorized_keys"
  cat > "$RUN/ssh/sshd_config" <<CONF
ListenAddress $NS_ADDR
Port 22
HostKey $RUN/ssh/host_key
PidFile $RUN/ssh/sshd.pid
AuthorizedKeysFile $RUN/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
# \`docker system dial-stdio\` (what an ssh:// Docker client runs) must find this daemon
SetEnv DOCKER_HOST=$SOCK
CONF
  if ! { [ -f "$RUN/ssh/sshd.pid" ] && kill -0 "$(cat "$RUN/ssh/sshd.pid")" 2>/dev/null; }; then
    nsenter --net="/var/run/netns/$NS" /usr/sbin/sshd -f "$RUN/ssh/sshd_config"
  fi
}

stop() {
  if [ -f "$RUN/ssh/sshd.pid" ]; then kill "$(cat "$RUN/ssh/sshd.pid")" 2>/dev/null || true; rm -f "$RUN/ssh/sshd.pid"; fi
  if [ -f "$RUN/dockerd.pid" ]; then
    pid="$(cat "$RUN/dockerd.pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  if ip netns list | grep -qw "$NS"; then
    for p in $(ip netns pids "$NS"); do kill "$p" 2>/dev/null || true; done
    sleep 1
    [ -z "$(ip netns pids "$NS")" ] || { log "processes still in $NS: $(ip netns pids "$NS")"; exit 1; }
    ip netns del "$NS"
  fi
  ip link del "$HOST_IF" 2>/dev/null || true
  log "stopped"
}

case "${1:-start}" in
  start) shift || true; start "$@" ;;
  stop) stop ;;
  *) echo "usage: $0 start [IMAGE...] | stop" >&2; exit 2 ;;
esac
