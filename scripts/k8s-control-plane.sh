#!/usr/bin/env bash
# A real Kubernetes control plane for tests, on 127.0.0.1 only: etcd + kube-apiserver +
# kube-scheduler + kube-controller-manager, built once from Debian's source package of
# Kubernetes 1.20 (no binary of them is packaged; nothing is downloaded at run time besides
# Debian's own archive) and cached in $KANOA_DEV_CACHE. No kubelet: pods are scheduled, never run.
#
#   scripts/k8s-control-plane.sh build   # the binaries (cached; ~7-10 min cold on 2 cores)
#   scripts/k8s-control-plane.sh start   # idempotent; prints KUBECONFIG=...
#   scripts/k8s-control-plane.sh stop
set -euo pipefail
CACHE="${KANOA_DEV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kanoa-local-dev}"
RECIPE=1
W=/run/kanoa-k8s
ETCD_PORT=23791; API_PORT=16443
log() { printf '[k8s-control-plane] %s\n' "$*" >&2; }

apt_install() {
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
  rm -f /usr/sbin/policy-rc.d
}

bin_dir() {
  local v; v="$(cat "$CACHE/k8s-src/version" 2>/dev/null || echo unknown)"
  echo "$CACHE/k8s-bin-$(echo "$RECIPE $v" | sha256sum | cut -c1-12)"
}

build() {
  command -v go >/dev/null && command -v etcd >/dev/null && [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] \
    || { log "installing golang-go, etcd-server, reflect2 source (Debian)"; apt_install golang-go etcd-server golang-github-modern-go-reflect2-dev make rsync openssl; }
  mkdir -p "$CACHE/k8s-src"
  if ! ls "$CACHE"/k8s-src/kubernetes_*.orig.tar.gz >/dev/null 2>&1; then
    log "fetching Debian's kubernetes source package"
    local src=/etc/apt/sources.list.d/kanoa-k8s-src.sources
    printf 'Types: deb-src\nURIs: %s\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1)" > "$src"
    apt-get update -qq >/dev/null 2>&1 || true
    (cd "$CACHE/k8s-src" && apt-get source -d -qq kubernetes >/dev/null 2>&1)
    rm -f "$src"; apt-get update -qq >/dev/null 2>&1 || true
  fi
  local tarball; tarball="$(ls "$CACHE"/k8s-src/kubernetes_*.orig.tar.gz | head -n1)"
  basename "$tarball" > "$CACHE/k8s-src/version"
  local out; out="$(bin_dir)"
  [ -x "$out/kube-apiserver" ] && [ -f "$out/.complete" ] && { echo "$out"; return 0; }
  log "building kube-apiserver, kube-scheduler, kube-controller-manager from $(basename "$tarball") (once)"
  local tree; tree="$(mktemp -d "$CACHE/k8s-build.XXXX")"
  tar -xzf "$tarball" -C "$tree"
  local root; root="$(find "$tree" -maxdepth 2 -name Makefile -path '*/kubernetes*' -printf '%h\n' | head -n1)"
  [ -n "$root" ] || root="$(dirname "$(find "$tree" -maxdepth 3 -name Makefile | head -n1)")"
  # the vendored reflect2 1.0.1 crashes under Go >= 1.18 when a custom resource is stored
  rm -rf "$root/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$root/vendor/github.com/modern-go/reflect2"
  rm -f "$root/vendor/github.com/modern-go/reflect2/go.mod"
  (cd "$root" && GOPROXY=off GOFLAGS=-mod=vendor CGO_ENABLED=0 GOCACHE="$CACHE/go-cache" \
     KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean KUBE_GIT_COMMIT=0000000000000000000000000000000000000000 \
     make WHAT="cmd/kube-apiserver cmd/kube-scheduler cmd/kube-controller-manager" >"$tree/build.log" 2>&1) \
     || { tail -n 30 "$tree/build.log" >&2; exit 1; }
  mkdir -p "$out"
  cp "$root"/_output/bin/kube-apiserver "$root"/_output/bin/kube-scheduler "$root"/_output/bin/kube-controller-manager "$out/"
  touch "$out/.complete"
  rm -rf "$tree"
  echo "$out"
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  [ "$(id -u)" = 0 ] || { log "needs root"; exit 77; }
  local bin; bin="$(build | tail -n1)"
  mkdir -p "$W/certs" "$W/log"
  [ -f "$W/sa.key" ] || { openssl genrsa -out "$W/sa.key" 2048 2>/dev/null; openssl rsa -in "$W/sa.key" -pubout -out "$W/sa.pub" 2>/dev/null; }
  [ -f "$W/token" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$W/token"
  local token; token="$(cat "$W/token")"
  echo "$token,kanoa-admin,1,\"system:masters\"" > "$W/tokens.csv"
  cat > "$W/kubeconfig" <<CONF
apiVersion: v1
kind: Config
clusters:
- name: kanoa-test
  cluster: {server: "https://127.0.0.1:$API_PORT", insecure-skip-tls-verify: true}
users:
- name: kanoa-admin
  user: {token: "$token"}
contexts:
- name: kanoa-test
  context: {cluster: kanoa-test, user: kanoa-admin, namespace: default}
current-context: kanoa-test
CONF
  chmod 600 "$W/kubeconfig"
  if ! alive "$W/etcd.pid"; then
    setsid etcd --data-dir "$W/etcd" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
      --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
      >"$W/log/etcd.log" 2>&1 </dev/null & echo $! > "$W/etcd.pid"
  fi
  if ! alive "$W/apiserver.pid"; then
    setsid "$bin/kube-apiserver" --etcd-servers="http://127.0.0.1:$ETCD_PORT" --bind-address=127.0.0.1 \
      --advertise-address=127.0.0.1 --secure-port="$API_PORT" --cert-dir="$W/certs" \
      --token-auth-file="$W/tokens.csv" --authorization-mode=RBAC \
      --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$W/sa.pub" \
      --service-account-signing-key-file="$W/sa.key" --service-cluster-ip-range=10.232.0.0/24 \
      --enable-priority-and-fairness=false \
      >"$W/log/apiserver.log" 2>&1 </dev/null & echo $! > "$W/apiserver.pid"
  fi
  for _ in $(seq 1 60); do
    curl -sk -H "Authorization: Bearer $token" "https://127.0.0.1:$API_PORT/readyz" 2>/dev/null | grep -q ok && break
    sleep 1
  done
  curl -sk -H "Authorization: Bearer $token" "https://127.0.0.1:$API_PORT/readyz" | grep -q ok \
    || { log "the API server did not get ready"; tail -n 20 "$W/log/apiserver.log" >&2; exit 1; }
  if ! alive "$W/scheduler.pid"; then
    setsid "$bin/kube-scheduler" --kubeconfig="$W/kubeconfig" --leader-elect=false --port=0 \
      >"$W/log/scheduler.log" 2>&1 </dev/null & echo $! > "$W/scheduler.pid"
  fi
  if ! alive "$W/controller-manager.pid"; then
    setsid "$bin/kube-controller-manager" --kubeconfig="$W/kubeconfig" --leader-elect=false --port=0 \
      --controllers=deployment,replicaset,serviceaccount,serviceaccount-token,persistentvolume-binder,garbagecollector,pvc-protection \
      --service-account-private-key-file="$W/sa.key" \
      >"$W/log/controller-manager.log" 2>&1 </dev/null & echo $! > "$W/controller-manager.pid"
  fi
  echo "KUBECONFIG=$W/kubeconfig"
}

stop() {
  for p in controller-manager scheduler apiserver etcd; do
    f="$W/$p.pid"; [ -f "$f" ] || continue
    pid="$(cat "$f")"; kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true; rm -f "$f"
  done
  rm -rf "$W/etcd"
  log "stopped"
}

case "${1:-start}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 build|start|stop" >&2; exit 2 ;;
esac
