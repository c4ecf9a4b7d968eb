#!/usr/bin/env bash
# Builds Kueue's controller manager (sigs.k8s.io/kueue/cmd/kueue) from the Go module proxy into
# ~/.cache/loraplane/bin/kueue-<v>_go<v>/, with its CRDs, RBAC and webhook manifests copied from
# the same module source. Prints the folder; a second run with a complete folder returns at once.
# Separate from build-binaries.sh (its own module: Kueue pins client-go 0.35), and only built when
# a Kueue test or `loraplane_devcluster.kueue.install` asks for it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
cache=${LORAPLANE_CACHE:-$HOME/.cache/loraplane}
out="$cache/bin/kueue-${KUEUE_VERSION}_$(go env GOVERSION)"
log() { echo "[build-kueue] $*" >&2; }
if [ -x "$out/kueue" ] && [ -f "$out/config/rbac-secrets-role.yaml" ]; then echo "$out"; exit 0; fi
# One build at a time (make test's set-up and a test asking for Kueue may both start one).
mkdir -p "$cache"
exec 9>"$cache/build-kueue.lock"
flock 9
if [ -x "$out/kueue" ] && [ -f "$out/config/rbac-secrets-role.yaml" ]; then echo "$out"; exit 0; fi

start=$(date +%s)
mkdir -p "$cache/build"
mod="$cache/build/kueue-$KUEUE_VERSION"
rm -rf "$mod" "$out.tmp" && mkdir -p "$mod" "$out.tmp"
log "compiling kueue $KUEUE_VERSION"
(cd "$mod" && go mod init loraplane.local/kueue 2>/dev/null && go get "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION" \
  && go build -trimpath -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" \
       -o "$out.tmp/kueue" sigs.k8s.io/kueue/cmd/kueue)
src=$(cd "$mod" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)
mkdir -p "$out.tmp/config"
cp -r "$src/config/components/crd/bases" "$out.tmp/config/crd"
cp "$src/config/components/rbac/role.yaml" "$out.tmp/config/rbac-role.yaml"
cp "$src/config/components/rbac/manager_secrets_role.yaml" "$out.tmp/config/rbac-secrets-role.yaml"
cp "$src/config/components/webhook/manifests.yaml" "$out.tmp/config/webhooks.yaml"
chmod -R u+w "$out.tmp"
rm -rf "$out" && mv "$out.tmp" "$out"
log "built in $(( $(date +%s) - start )) s: $out"
echo "$out"
