#!/usr/bin/env bash
# Builds the local cluster's binaries from the Go module proxy into a cache folder outside the
# checkout, keyed by a stamp of every version, and prints the folder. Two sets, named in
# devcluster/loraplane_devcluster/binaries.py (the one list): `control-plane` (kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, etcd, helm: what pods and `make demo` need) and
# `services` (kube-proxy and CoreDNS: Service addresses and cluster DNS, for the tests).
#   devcluster/build-binaries.sh [SET...]     (no set: both)
# Only the named sets' missing binaries are built, into the same folder, so a folder made for the
# demo gets the services added by the first `make test`. A run whose binaries are all there returns
# at once. With `services`, also installs the one host tool kube-proxy needs beyond iproute2: `nft`
# (its nftables mode), from Debian's nftables package when it is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
go_version=$(go env GOVERSION)
stamp="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}_coredns-${COREDNS_VERSION}_${go_version}"
cache=${LORAPLANE_CACHE:-$HOME/.cache/loraplane}
bin="$cache/bin/$stamp"
mapfile -t binaries < <(PYTHONPATH="$here" python3 -m loraplane_devcluster.binaries "$@")
[ "${#binaries[@]}" -gt 0 ] || exit 2  # an unknown set name (the module said which)
log() { echo "[build-binaries] $*" >&2; }
wanted() { local b; for b in "${binaries[@]}"; do [ "$b" = "$1" ] && return 0; done; return 1; }
absent() { wanted "$1" && [ ! -x "$bin/$1" ]; }

# kube-proxy programs Service addresses with the nft command (nftables mode)
if wanted kube-proxy && ! command -v nft >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing nftables (the nft command kube-proxy runs)"
    { apt-get install -y -q --no-install-recommends nftables || { apt-get update -q && apt-get install -y -q --no-install-recommends nftables; }; } >&2
  else
    log "warning: no nft command (Debian package nftables); the local cluster's kube-proxy needs it"
  fi
fi

complete() { for b in "${binaries[@]}"; do [ -x "$bin/$b" ] || return 1; done; }
if complete; then echo "$bin"; exit 0; fi

mkdir -p "$bin" "$cache/build"
start=$(date +%s)
todo=(); for b in "${binaries[@]}"; do if absent "$b"; then todo+=("$b"); fi; done
log "building ${todo[*]} into $bin"

# --- Kubernetes + etcd: a wrapper module whose staging replaces come from k8s' own go.mod -------
# Builds only the named commands (and etcd when asked), so each set builds alone.
build_kubernetes() {
  local with_etcd=$1; shift
  local mod="$cache/build/k8s-$KUBERNETES_VERSION"
  rm -rf "$mod" && mkdir -p "$mod"
  local k8s_gomod
  k8s_gomod=$(cd "$mod" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  local staging_version="v0.${KUBERNETES_VERSION#v1.}"
  {
    echo "module loraplane.local/k8s-binaries"
    echo
    grep -E '^go [0-9.]+$' "$k8s_gomod"
    echo
    echo "require ("
    echo "	k8s.io/kubernetes $KUBERNETES_VERSION"
    echo "	go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    echo ")"
    echo
    echo "replace ("
    # every k8s.io/* requirement at the placeholder v0.0.0 is a staging module of this release
    grep -oE '^\s+k8s\.io/[a-z0-9-]+ v0\.0\.0$' "$k8s_gomod" | awk -v v="$staging_version" '{print "\t" $1 " => " $1 " " v}'
    echo ")"
    echo
    echo "tool ("
    for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl; do echo "	k8s.io/kubernetes/cmd/$c"; done
    echo "	go.etcd.io/etcd/server/v3"
    echo ")"
  } > "$mod/go.mod"
  log "resolving modules for Kubernetes $KUBERNETES_VERSION and etcd $ETCD_VERSION"
  (cd "$mod" && go mod tidy)

  local major=${KUBERNETES_VERSION#v} minor
  minor=${major#*.}; major=${major%%.*}; minor=${minor%%.*}
  local ldflags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit=module-proxy -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  # etcd joins the commands' `go build`: they share most packages, and one build links them side by
  # side where a second build after the first links alone. (etcd links no k8s.io/component-base:
  # the -X flags do nothing there.)
  local packages=("${@/#/k8s.io/kubernetes/cmd/}") names=("$@")
  if [ "$with_etcd" = yes ]; then packages+=(go.etcd.io/etcd/server/v3); names+=(etcd); fi
  log "compiling ${names[*]} (slow on a cold cache)"
  local began; began=$(date +%s)
  rm -rf "$mod/out" && mkdir -p "$mod/out"
  (cd "$mod" && go build -trimpath -ldflags "$ldflags" -o "$mod/out/" "${packages[@]}")
  # go names a binary after its package path's last element: etcd's server/v3 comes out as `server`
  if [ "$with_etcd" = yes ]; then mv "$mod/out/server" "$mod/out/etcd"; fi
  mv "$mod/out/"* "$bin/"
  log "${names[*]} compiled in $(( $(date +%s) - began )) s"
}

# --- Helm: its own module (other dependency versions) -------------------------------------------
build_helm() {
  log "compiling helm $HELM_VERSION"
  local began; began=$(date +%s)
  local hmod="$cache/build/helm-$HELM_VERSION"
  rm -rf "$hmod" && mkdir -p "$hmod"
  (cd "$hmod" && go mod init loraplane.local/helm 2>/dev/null && go get "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
    && go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
         -o "$bin/helm" helm.sh/helm/v3/cmd/helm)
  log "helm $HELM_VERSION compiled in $(( $(date +%s) - began )) s"
}

# --- CoreDNS: its own module (newer client-go than this Kubernetes release) --------------------
# Only the plugins the local cluster's Corefile uses are linked in (the full build pulls in every
# cloud SDK); the plugin packages register themselves, coremain is CoreDNS's own main.
build_coredns() {
  log "compiling coredns $COREDNS_VERSION"
  local began; began=$(date +%s)
  local cmod="$cache/build/coredns-$COREDNS_VERSION" p
  rm -rf "$cmod" && mkdir -p "$cmod"
  {
    echo "package main"
    echo
    echo "import ("
    echo '	_ "github.com/coredns/coredns/core/dnsserver"'
    echo '	"github.com/coredns/coredns/coremain"'
    for p in bind cache errors health kubernetes log loop ready reload template whoami; do
      echo "	_ \"github.com/coredns/coredns/plugin/$p\""
    done
    echo ")"
    echo
    echo "func main() { coremain.Run() }"
  } > "$cmod/main.go"
  (cd "$cmod" && go mod init loraplane.local/coredns 2>/dev/null && go get "github.com/coredns/coredns@$COREDNS_VERSION" \
    && go mod tidy \
    && go build -trimpath -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" \
         -o "$bin/coredns" .)
  log "coredns $COREDNS_VERSION compiled in $(( $(date +%s) - began )) s"
}

k8s_commands=()
for c in kube-apiserver kube-controller-manager kube-scheduler kubectl kube-proxy; do
  if absent "$c"; then k8s_commands+=("$c"); fi
done
etcd=no; if absent etcd; then etcd=yes; fi
# Helm builds beside the Kubernetes build (its own module: nothing to share, so the two fill both
# cores where one build alone leaves one idle part of the time); CoreDNS after them.
helm_pid=
trap 'if [ -n "$helm_pid" ]; then kill "$helm_pid" 2>/dev/null || true; fi' EXIT  # a failed build stops it
if absent helm; then build_helm & helm_pid=$!; fi
if [ "${#k8s_commands[@]}" -gt 0 ] || [ "$etcd" = yes ]; then build_kubernetes "$etcd" "${k8s_commands[@]}"; fi
if [ -n "$helm_pid" ]; then wait "$helm_pid"; helm_pid=; fi
if absent coredns; then build_coredns; fi

complete || { log "some binaries are missing in $bin"; exit 1; }
log "built in $(( $(date +%s) - start )) s: $bin"
echo "$bin"
