#!/usr/bin/env bash
# A real node for the test control plane of scripts/k8s-control-plane.sh: a kubelet (built
# once from the same Debian source package of Kubernetes 1.20, with its built-in dockershim)
# that registers as node "kl-node" and runs pods in a Docker daemon of its own, with real pod
# networking (a CNI bridge) and the project's CPU vLLM image preloaded. Nothing is pulled:
# the node's Docker daemon is pointed at a dead proxy, so a missing image fails fast instead
# of reaching a registry; pods must use imagePullPolicy: Never/IfNotPresent with a loaded image.
#
#   scripts/k8s-node.sh build   # kubelet + pause binary (cached; ~6 min cold on 2 cores)
#   scripts/k8s-node.sh start   # idempotent; starts the control plane too; prints KEY=VALUE facts
#   scripts/k8s-node.sh stop    # kubelet, its dockerd, their containers, bridge, node object
#
# The machine's main Docker daemon (/var/run/docker.sock) is only read (docker save of the
# CPU image); its containers, images, docker0 and iptables rules are left alone.
set -euo pipefail
CACHE="${KANOA_DEV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kanoa-local-dev}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RECIPE=1
W=/run/kanoa-k8s-node            # pid files, sockets, kubelet root dir, CNI state, logs
CP=/run/kanoa-k8s                # the control plane's (only its kubeconfig is read)
NODE=kl-node
SOCK="unix://$W/docker.sock"
DATA="$CACHE/k8s-node-docker"    # the node dockerd's data root: kept across stop, so images stay loaded
BRIDGE=kl-cni0; POD_CIDR=10.88.0.0/24; GW=10.88.0.1
# the node dockerd's own default bridge (never used by pods): "bridge": "none" would make that
# dockerd delete docker0 at start — the main daemon's bridge, on which every other container runs
DBRIDGE=kl-nodedk0; DBRIDGE_ADDR=10.89.0.1/24
KUBELET_PORT=10250; HEALTHZ_PORT=10248
HOSTS_TAG="# kanoa-k8s-node"
log() { printf '[k8s-node] %s\n' "$*" >&2; }
nd() { docker -H "$SOCK" "$@"; }  # the node's Docker daemon, never the main one

apt_install() {
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
  rm -f /usr/sbin/policy-rc.d
}

# The kubelet refuses to start unless it may set six kernel tunables itself (vm.overcommit_memory=1,
# kernel.panic_on_oops=1, kernel.panic=10, ...) or, with --protect-kernel-defaults, unless they
# already have those values. Both would change a machine shared with other tests, so the build
# makes it only warn (a mode the code has but no flag selects).
KUBELET_PATCH='s/b := KernelTunableModify$/b := KernelTunableWarn \/\/ kanoa-local: never touch host sysctls/'

bin_dir() {
  local v; v="$(cat "$CACHE/k8s-src/version" 2>/dev/null || echo unknown)"
  echo "$CACHE/k8s-node-bin-$(echo "$RECIPE $v $KUBELET_PATCH" | sha256sum | cut -c1-12)"
}

build() {
  # The control plane's build installs Go/etcd, fetches Debian's source package into the cache
  # and builds the control plane (needed by start anyway); cached, so a no-op when done.
  bash "$HERE/k8s-control-plane.sh" build >/dev/null
  # socat: dockershim's port-forward (kubectl port-forward) runs it inside the pod's network namespace
  dpkg -s gcc libc6-dev containernetworking-plugins iproute2 iptables socat >/dev/null 2>&1 \
    || { log "installing gcc, libc6-dev, containernetworking-plugins, socat (Debian)"; apt_install gcc libc6-dev containernetworking-plugins iproute2 iptables socat; }
  local out; out="$(bin_dir)"
  [ -x "$out/kubelet" ] && [ -x "$out/pause" ] && [ -f "$out/.complete" ] && { echo "$out"; return 0; }
  local tarball; tarball="$(ls "$CACHE"/k8s-src/kubernetes_*.orig.tar.gz | head -n1)"
  log "building kubelet and pause from $(basename "$tarball") (once, ~6 min)"
  local tree; tree="$(mktemp -d "$CACHE/k8s-node-build.XXXX")"
  trap 'rm -rf "$tree"' EXIT
  tar -xzf "$tarball" -C "$tree"
  local root; root="$(find "$tree" -maxdepth 2 -name Makefile -path '*/kubernetes*' -printf '%h\n' | head -n1)"
  [ -n "$root" ] || root="$(dirname "$(find "$tree" -maxdepth 3 -name Makefile | head -n1)")"
  mkdir -p "$out.tmp"
  # The pod sandbox ("pause") image cannot be pulled (no registry): build its one static binary
  # from the same tree; start imports it into the node's dockerd.
  gcc -Os -static -DVERSION=v1.20.2-kanoa -o "$out.tmp/pause" "$root/build/pause/linux/pause.c"
  strip "$out.tmp/pause"
  # same recipe as the control plane: the vendored reflect2 1.0.1 crashes under Go >= 1.18
  rm -rf "$root/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$root/vendor/github.com/modern-go/reflect2"
  rm -f "$root/vendor/github.com/modern-go/reflect2/go.mod"
  sed -i "$KUBELET_PATCH" "$root/pkg/kubelet/cm/container_manager_linux.go"
  grep -q 'b := KernelTunableWarn' "$root/pkg/kubelet/cm/container_manager_linux.go" \
    || { log "the kernel-tunables patch did not apply"; exit 1; }
  # nice: the machine is shared with other tests while this compiles
  (cd "$root" && GOPROXY=off GOFLAGS=-mod=vendor CGO_ENABLED=0 GOCACHE="$CACHE/go-cache" \
     KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean KUBE_GIT_COMMIT=0000000000000000000000000000000000000000 \
     nice -n 10 make WHAT=cmd/kubelet >"$tree/build.log" 2>&1) \
     || { tail -n 30 "$tree/build.log" >&2; exit 1; }
  cp "$root/_output/bin/kubelet" "$out.tmp/"
  # inside `$(build | tail -n1)` set -e does not hold: check what a cache marked complete holds
  [ -x "$out.tmp/kubelet" ] && [ -x "$out.tmp/pause" ] \
    || { log "the kubelet build left no binary"; tail -n 30 "$tree/build.log" >&2; exit 1; }
  rm -rf "$out"; mv "$out.tmp" "$out"
  touch "$out/.complete"
  rm -rf "$tree"; trap - EXIT
  echo "$out"
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
api() {  # api METHOD PATH [CURL ARGS]: the control plane's API with the admin token of its kubeconfig
  local token; token="$(sed -n 's/.*token: "\(.*\)".*/\1/p' "$CP/kubeconfig")"
  local method="$1" path="$2"; shift 2
  curl -sk -X "$method" -H "Authorization: Bearer $token" "https://127.0.0.1:16443$path" "$@"
}
node_ready() {
  api GET "/api/v1/nodes/$NODE" 2>/dev/null | python3 -c '
import json, sys
try: n = json.load(sys.stdin)
except ValueError: sys.exit(1)
st = n.get("status") if n.get("kind") == "Node" else None  # a 404 is a Status object
c = [x for x in (st or {}).get("conditions", []) if x["type"] == "Ready"]
sys.exit(0 if c and c[0]["status"] == "True" else 1)'
}

start() {
  [ "$(id -u)" = 0 ] || { log "needs root"; exit 77; }
  local bin; bin="$(build | tail -n1)"
  bash "$HERE/k8s-control-plane.sh" start >/dev/null
  mkdir -p "$W/log" "$W/cni/net.d" "$DATA"

  # Pod network: a bridge of our own with the gateway address on it, created here (not lazily by
  # the CNI plugin) because the kubelet's --node-ip must already be an address of this host.
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip addr show dev "$BRIDGE" | grep -q "inet $GW/" || ip addr add "$GW/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Main dockerd's FORWARD policy is DROP and br_netfilter is on, so pod-to-pod traffic on the
  # bridge needs one accept rule (host<->pod traffic does not pass FORWARD).
  iptables -C FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null \
    || iptables -I FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
  # No ipMasq and no default route in pods: pods reach each other and this host, nothing else.
  # IPAM leases live under $W, so stop can drop them with the containers.
  cat > "$W/cni/net.d/10-kl-pods.conflist" <<CONF
{"cniVersion": "0.4.0", "name": "kl-pods", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": false,
   "ipam": {"type": "host-local", "dataDir": "$W/cni/ipam",
            "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$GW"}]]}}]}
CONF

  # The sandbox has no CAP_SYS_RESOURCE, so no process here may get a negative oom_score_adj;
  # dockershim asks -998 for every pod sandbox (and the kubelet -997 for Guaranteed pods), and
  # runc then fails with "can't get final child's PID from pipe: EOF". This wrapper, the node
  # dockerd's default runtime, clamps the value in the OCI spec to 0 before running runc.
  local runc; runc="$(command -v runc)"
  cat > "$W/runc-oom-clamp" <<WRAP
#!/bin/sh
bundle=. ; process= ; prev=
for a in "\$@"; do
  case "\$prev" in --bundle|-b) bundle="\$a" ;; --process|-p) process="\$a" ;; esac
  case "\$a" in --bundle=*) bundle="\${a#--bundle=}" ;; --process=*) process="\${a#--process=}" ;; esac
  prev="\$a"
done
for f in "\$bundle/config.json" "\$process"; do
  [ -n "\$f" ] && [ -f "\$f" ] && sed -i -E 's/"oomScoreAdj": *-[0-9]+/"oomScoreAdj":0/g' "\$f"
done
exec $runc "\$@"
WRAP
  chmod 755 "$W/runc-oom-clamp"

  # A Docker daemon of the node's own (socket, pidfile, exec root under $W, data root in the
  # cache), so the machine's main dockerd and its containers are untouched: a bridge of its own
  # (not "none": see DBRIDGE), no iptables, no ip_forward (pods get their network from CNI),
  # the oom-clamping runtime.
  ip link show "$DBRIDGE" >/dev/null 2>&1 || { ip link add "$DBRIDGE" type bridge; ip addr add "$DBRIDGE_ADDR" dev "$DBRIDGE"; }
  cat > "$W/daemon.json" <<CONF
{"hosts": ["$SOCK"], "pidfile": "$W/dockerd.pid", "exec-root": "$W/exec", "data-root": "$DATA",
 "bridge": "$DBRIDGE", "iptables": false, "ip6tables": false, "ip-forward": false, "ip-masq": false,
 "exec-opts": ["native.cgroupdriver=cgroupfs"], "cgroup-parent": "/kanoa-k8s-node",
 "log-driver": "json-file", "log-opts": {"max-size": "50m"},
 "storage-driver": "overlay2",
 "runtimes": {"kl-runc": {"path": "$W/runc-oom-clamp"}}, "default-runtime": "kl-runc"}
CONF
  if ! alive "$W/dockerd.pid"; then
    rm -f "$W/dockerd.pid"
    # a dead proxy: an image missing here fails to pull at once, and no registry (nor DNS
    # server) is ever contacted from this machine
    env -u NO_PROXY -u no_proxy HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 \
      setsid dockerd --config-file "$W/daemon.json" >"$W/log/dockerd.log" 2>&1 </dev/null &
  fi
  for _ in $(seq 1 60); do nd info >/dev/null 2>&1 && break; sleep 1; done
  nd info >/dev/null 2>&1 || { log "the node's dockerd did not answer"; tail -n 20 "$W/log/dockerd.log" >&2; exit 1; }

  # the pod sandbox image, from the pause binary built with the kubelet
  local pause="kanoa-local/pause:$(basename "$bin" | sed 's/^k8s-node-bin-//')"
  if ! nd image inspect "$pause" >/dev/null 2>&1; then
    log "importing $pause"
    tar -C "$bin" -c pause | nd import -c 'ENTRYPOINT ["/pause"]' - "$pause" >/dev/null
  fi
  # the project's CPU vLLM image, copied from the main dockerd once per image id
  local image; image="$(bash "$HERE/cpu-runtime.sh" image | sed -n 's/^KANOA_CPU_IMAGE=//p')"
  [ -n "$image" ] || { log "scripts/cpu-runtime.sh image printed no image"; exit 1; }
  if [ "$(nd image inspect -f '{{.Id}}' "$image" 2>/dev/null)" != "$(docker image inspect -f '{{.Id}}' "$image")" ]; then
    log "loading $image into the node's dockerd (~1-2 min, once per image id)"
    docker save "$image" | nd load -q >/dev/null
  fi

  # The API server reaches a kubelet at its node's "Hostname" address first, i.e. the name
  # "kl-node": make that resolve from /etc/hosts (to the loopback the kubelet listens on), so
  # `logs`/`exec` work and the lookup never goes to a DNS server.
  grep -qE "^127\.0\.0\.1[[:space:]]+$NODE([[:space:]]|\$)" /etc/hosts \
    || echo "127.0.0.1 $NODE $HOSTS_TAG" >> /etc/hosts
  # pods get a resolver that answers nothing (their own loopback), not the host's DNS server
  printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' > "$W/resolv.conf"

  if ! alive "$W/kubelet.pid"; then
    # Flags, where not obvious:
    #  --node-ip: must be a non-loopback address of this host; --address: the kubelet's API only
    #    on the loopback (the API server dials kl-node -> 127.0.0.1; it does not verify the
    #    kubelet's self-signed cert, and sends no client cert, hence the default anonymous auth)
    #  --docker: cAdvisor's docker endpoint (image fs stats), else it reads the main dockerd
    #  --oom-score-adj=0, --cgroups-per-qos=false, --enforce-node-allocatable=: no
    #    CAP_SYS_RESOURCE / cgroup v1 without QoS hierarchy in this sandbox
    #  --make-iptables-util-chains=false, --hairpin-mode=none: no host iptables/sysfs changes
    #  --image-gc-high-threshold=100, --eviction-hard: never delete the preloaded images (they
    #    cannot be pulled back), evict only on memory
    #  every path (root dir, dockershim socket and root, CNI cache, volume plugins) under $W
    # Environment: the kubelet's built-in AWS ECR credential provider probes the EC2 metadata
    # address 169.254.169.254 at startup (and at each image pull) unless told not to; and, as a
    # second guard, any other outbound HTTP of the kubelet goes to a dead proxy (the API server,
    # kl-node and the pods stay direct: probes must reach pod IPs).
    env AWS_EC2_METADATA_DISABLED=true HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 \
      NO_PROXY="127.0.0.1,localhost,$NODE,$POD_CIDR" no_proxy="127.0.0.1,localhost,$NODE,$POD_CIDR" \
    setsid "$bin/kubelet" --kubeconfig="$CP/kubeconfig" \
      --hostname-override="$NODE" --node-ip="$GW" --address=127.0.0.1 --port="$KUBELET_PORT" \
      --healthz-bind-address=127.0.0.1 --healthz-port="$HEALTHZ_PORT" --read-only-port=0 \
      --root-dir="$W/kubelet" --cert-dir="$W/kubelet/pki" --volume-plugin-dir="$W/volume-plugins" \
      --container-runtime=docker --docker-endpoint="$SOCK" --docker="$SOCK" \
      --container-runtime-endpoint="unix://$W/dockershim.sock" --image-service-endpoint="unix://$W/dockershim.sock" \
      --experimental-dockershim-root-directory="$W/dockershim" --pod-infra-container-image="$pause" \
      --network-plugin=cni --cni-conf-dir="$W/cni/net.d" --cni-bin-dir=/usr/lib/cni --cni-cache-dir="$W/cni/cache" \
      --hairpin-mode=none --resolv-conf="$W/resolv.conf" \
      --fail-swap-on=false --cgroup-driver=cgroupfs --cgroups-per-qos=false --enforce-node-allocatable= \
      --oom-score-adj=0 --make-iptables-util-chains=false \
      --image-gc-high-threshold=100 --image-gc-low-threshold=99 --eviction-hard='memory.available<100Mi' \
      >"$W/log/kubelet.log" 2>&1 </dev/null & echo $! > "$W/kubelet.pid"
  fi
  for _ in $(seq 1 90); do node_ready && break; alive "$W/kubelet.pid" || break; sleep 1; done
  node_ready || { log "node $NODE did not get Ready"; tail -n 30 "$W/log/kubelet.log" >&2; exit 1; }
  # The kubelet registers its node with the taint node.kubernetes.io/not-ready:NoSchedule, which
  # only the node-lifecycle controller removes, and the test control plane does not run that
  # controller: drop that one taint (others, e.g. a test's own, stay) once the node is Ready.
  local patch
  patch="$(api GET "/api/v1/nodes/$NODE" | python3 -c '
import json, sys
taints = json.load(sys.stdin).get("spec", {}).get("taints") or []
keep = [t for t in taints if t.get("key") != "node.kubernetes.io/not-ready"]
if keep != taints: print(json.dumps({"spec": {"taints": keep or None}}))')"
  if [ -n "$patch" ]; then
    api PATCH "/api/v1/nodes/$NODE" -H 'Content-Type: application/merge-patch+json' -d "$patch" >/dev/null
  fi
  echo "KUBECONFIG=$CP/kubeconfig"
  echo "KUBE_NODE=$NODE"
  echo "KUBE_NODE_DOCKER=$SOCK"
  echo "KUBE_NODE_IMAGE=$image"
  echo "KUBE_POD_NETWORK=$POD_CIDR"
}

stop_pid() {  # stop_pid FILE [SECONDS]: TERM, wait, KILL
  local f="$1" pid; [ -f "$f" ] || return 0
  pid="$(cat "$f")"; kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 $((${2:-10} * 2))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true; rm -f "$f"
}

stop() {
  stop_pid "$W/kubelet.pid"
  # the node object too: with no kubelet behind it (and no node-lifecycle controller in the
  # control plane to taint it) the scheduler would keep binding pods to it
  [ -f "$CP/kubeconfig" ] && api DELETE "/api/v1/nodes/$NODE" >/dev/null 2>&1 || true
  if alive "$W/dockerd.pid"; then
    local ids; ids="$(nd ps -aq 2>/dev/null || true)"
    [ -z "$ids" ] || nd rm -f $ids >/dev/null 2>&1 || true
    stop_pid "$W/dockerd.pid" 30
  fi
  rm -f "$W/dockerd.pid"
  # the kubelet's volume mounts (service-account token tmpfs, ...) and its bind mount of its root
  # dir, dockerd's of its data root (if it left them), innermost first
  awk -v w="$W/" -v d="$DATA" 'index($2, w) == 1 || $2 == d || index($2, d "/") == 1 {print $2}' /proc/mounts \
    | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE"; fi
  if ip link show "$DBRIDGE" >/dev/null 2>&1; then ip link del "$DBRIDGE"; fi
  iptables -D FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null || true
  if grep -q " $HOSTS_TAG\$" /etc/hosts; then
    # rewrite in place (same inode), dropping only our line
    grep -v " $HOSTS_TAG\$" /etc/hosts > "$W/hosts.new" || true; cat "$W/hosts.new" > /etc/hosts
  fi
  # the kubelet's pod log links (fixed paths in 1.20) that now point at removed containers
  find /var/log/pods /var/log/containers -xtype l -delete 2>/dev/null || true
  find /var/log/pods -mindepth 1 -type d -empty -delete 2>/dev/null || true
  # paths the 1.20 kubelet hard-codes (no flag moves them): its device-plugin socket dir, the log
  # dirs; removed only when nothing else is left in them
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock /var/lib/kubelet/device-plugins/DEPRECATION \
    /var/lib/kubelet/device-plugins/kubelet_internal_checkpoint
  rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet /var/log/pods /var/log/containers 2>/dev/null || true
  # everything but the logs
  [ -d "$W" ] && find "$W" -mindepth 1 -maxdepth 1 ! -name log -exec rm -rf --one-file-system {} +
  log "stopped"
}

case "${1:-start}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 build|start|stop" >&2; exit 2 ;;
esac
