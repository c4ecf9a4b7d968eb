#!/usr/bin/env bash
# Builds versitygw (github.com/versity/versitygw, Apache-2.0), a real S3-compatible gateway over a
# POSIX directory, from the Go module proxy into a cache folder keyed by its version and the Go
# toolchain. Tests and the demo run it as the object store (see docs/storage.md). Prints the path
# of the binary. A second run with the same stamp only checks the binary and returns.
# Kept apart from build-binaries.sh: the store is started on demand, so a cluster that does not
# need it does not wait for its build, and its stamp changes independently of Kubernetes'.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
go_version=$(go env GOVERSION)
stamp="versitygw-${VERSITYGW_VERSION}_${go_version}"
cache=${LORAPLANE_CACHE:-$HOME/.cache/loraplane}
bin="$cache/s3/$stamp"
if [ -x "$bin/versitygw" ]; then echo "$bin/versitygw"; exit 0; fi

log() { echo "[build-s3] $*" >&2; }
# The build folder is made from scratch, so two builds at once (two test sessions on a fresh
# machine) would break each other: the second waits here, then finds the binary.
mkdir -p "$cache"
exec 9>"$cache/build-s3.lock"
flock 9
if [ -x "$bin/versitygw" ]; then echo "$bin/versitygw"; exit 0; fi
start=$(date +%s)
mod="$cache/build/versitygw-$VERSITYGW_VERSION"
rm -rf "$mod" && mkdir -p "$mod" "$bin"
# versitygw's go.mod has no replace directives, so `go install`-style building from a wrapper
# module pins exactly the versions its own go.mod (and go.sum from the proxy) name.
log "resolving modules for versitygw $VERSITYGW_VERSION"
(cd "$mod" && go mod init loraplane.local/versitygw 2>/dev/null \
  && go get "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION")
log "compiling versitygw (slow on a cold cache)"
(cd "$mod" && go build -trimpath \
  -ldflags "-s -w -X main.Version=$VERSITYGW_VERSION -X main.Build=module-proxy -X main.BuildTime=1970-01-01T00:00:00Z" \
  -o "$bin/versitygw.tmp" github.com/versity/versitygw/cmd/versitygw)
# rename last: a build killed half-way leaves no binary that the check above would take as done
mv "$bin/versitygw.tmp" "$bin/versitygw"
log "built in $(( $(date +%s) - start )) s: $bin/versitygw"
echo "$bin/versitygw"
