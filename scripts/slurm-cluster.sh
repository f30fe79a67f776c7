#!/usr/bin/env bash
# A real Slurm cluster for tests, on this machine: munge + slurmctld here, and two compute nodes
# (slurmd gpu1, gpu2) in their own network namespaces, joined to this one by a private bridge
# (no default route: they reach each other and the controller, nothing else),
# each with 2 "GPUs" (character devices standing in for /dev/nvidiaN: Slurm allocates and
# sets CUDA_VISIBLE_DEVICES from them; nothing reads them). Debian's packages (22.05).
#
#   scripts/slurm-cluster.sh start   # idempotent; prints SLURM_CONF=... and the node addresses
#   scripts/slurm-cluster.sh stop
set -euo pipefail
W=/run/kanoa-slurm
CTL_ADDR=10.213.8.1
declare -A NODE_ADDR=([gpu1]=10.213.8.2 [gpu2]=10.213.8.3)
BRIDGE=kl-slurm0
log() { printf '[slurm-cluster] %s\n' "$*" >&2; }
# shellcheck source=netns.sh
. "$(dirname "${BASH_SOURCE[0]}")/netns.sh"
export SLURM_CONF="$W/etc/slurm.conf"

install() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    && command -v sbatch >/dev/null && return 0
  log "installing munge, slurmctld, slurmd, slurm-client (Debian)"
  # no service may start from the package scripts
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' RETURN
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null \
    || { apt-get update -qq >/dev/null; apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null; }
}

netns() {
  local node=$1 i=$2
  local ns="kl-slurm-$node" hif="kl-s${i}h" nif="kl-s${i}n"
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$CTL_ADDR/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
  fi
  # Docker's FORWARD policy is DROP and bridged frames go through iptables (br_netfilter):
  # let the nodes talk to each other across this bridge only
  if command -v iptables >/dev/null && ! iptables -C FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null; then
    iptables -I FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null || true
  fi
  if netns_add "$ns" "$hif" "$nif" "${NODE_ADDR[$node]}/24"; then
    ip link set "$hif" master "$BRIDGE"
    ip link set "$hif" up
  fi
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  [ "$(id -u)" = 0 ] || { log "needs root"; exit 77; }
  install
  mkdir -p "$W"/{etc,spool,log,dev,jobs}
  chmod 1777 "$W/jobs"
  for n in 0 1; do [ -e "$W/dev/nvidia$n" ] || mknod "$W/dev/nvidia$n" c 1 3; done
  if [ ! -f "$W/munge.key" ]; then
    head -c 1024 /dev/urandom > "$W/munge.key"; chmod 400 "$W/munge.key"
  fi
  netns gpu1 1; netns gpu2 2
  local host; host="$(hostname)"
  cat > "$W/etc/slurm.conf" <<CONF
ClusterName=kanoa
SlurmctldHost=$host($CTL_ADDR)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$W/munge.sock
StateSaveLocation=$W/spool/ctld
SlurmdSpoolDir=$W/spool/%n
SlurmctldPidFile=$W/slurmctld.pid
SlurmdPidFile=$W/slurmd-%n.pid
SlurmctldLogFile=$W/log/slurmctld.log
SlurmdLogFile=$W/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
MailProg=/bin/true
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
NodeName=gpu1 NodeAddr=${NODE_ADDR[gpu1]} CPUs=2 RealMemory=1000 Gres=gpu:2 State=UNKNOWN
NodeName=gpu2 NodeAddr=${NODE_ADDR[gpu2]} CPUs=2 RealMemory=1000 Gres=gpu:2 State=UNKNOWN
PartitionName=main Nodes=gpu1,gpu2 Default=YES MaxTime=INFINITE State=UP
CONF
  cat > "$W/etc/gres.conf" <<CONF
NodeName=gpu1 Name=gpu File=$W/dev/nvidia[0-1]
NodeName=gpu2 Name=gpu File=$W/dev/nvidia[0-1]
CONF
  if ! alive "$W/munged.pid"; then
    munged --force --key-file="$W/munge.key" --socket="$W/munge.sock" --pid-file="$W/munged.pid" \
      --log-file="$W/log/munged.log" --seed-file="$W/munge.seed"
  fi
  if ! alive "$W/slurmctld.pid"; then
    setsid slurmctld -f "$SLURM_CONF" >/dev/null 2>&1 </dev/null
  fi
  for node in gpu1 gpu2; do
    if ! alive "$W/slurmd-$node.pid"; then
      # inside a node this machine's name must mean the node's own address (srun tells the
      # other nodes where to call back by it): a private mount of a hosts file that says so
      # (not `ip netns exec`, which remounts /sys and slurmd loses its cgroups)
      printf '127.0.0.1 localhost\n%s %s\n%s gpu1\n%s gpu2\n' "${NODE_ADDR[$node]}" "$host" \
        "${NODE_ADDR[gpu1]}" "${NODE_ADDR[gpu2]}" > "$W/etc/hosts-$node"
      setsid nsenter --net="/var/run/netns/kl-slurm-$node" unshare --mount --propagation private \
        sh -c "mount --bind '$W/etc/hosts-$node' /etc/hosts && exec slurmd -f '$SLURM_CONF' -N $node" \
        >/dev/null 2>&1 </dev/null
    fi
  done
  for _ in $(seq 1 40); do
    scontrol update nodename=gpu1,gpu2 state=resume >/dev/null 2>&1 || true
    if [ "$(sinfo -h -o '%T' 2>/dev/null | sort -u | tr '\n' ' ')" = "idle " ]; then break; fi
    sleep 1
  done
  sinfo -h -o '%N %T' >&2 || true
  [ "$(sinfo -h -o '%T' 2>/dev/null | sort -u | tr '\n' ' ')" = "idle " ] || {
    log "nodes are not idle; logs in $W/log"; tail -n 5 "$W"/log/*.log >&2; exit 1; }
  echo "SLURM_CONF=$SLURM_CONF"
  echo "KANOA_SLURM_JOBS=$W/jobs"
  echo "KANOA_SLURM_NODES=gpu1=${NODE_ADDR[gpu1]},gpu2=${NODE_ADDR[gpu2]}"
}

stop() {
  for f in "$W"/slurmd-*.pid "$W/slurmctld.pid" "$W/munged.pid"; do
    [ -f "$f" ] || continue
    pid="$(cat "$f")"; kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
  done
  for node in gpu1 gpu2; do
    ns="kl-slurm-$node"
    ip netns list | grep -qw "$ns" || continue
    for p in $(ip netns pids "$ns"); do kill -9 "$p" 2>/dev/null || true; done
    sleep 0.5
    ip netns del "$ns"
  done
  ip link del kl-s1h 2>/dev/null || true; ip link del kl-s2h 2>/dev/null || true
  ip link del "$BRIDGE" 2>/dev/null || true
  iptables -D FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null || true
  rm -rf "$W/spool"
  log "stopped"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
