#!/usr/bin/env bash
# The set-up `make test` and `make demo` share: the Kubernetes binaries (a Go build, ~9 min cold on 2
# cores, seconds when cached) overlap the Python environment (~5 min cold: downloads and unpacking),
# with a progress line every $LORAPLANE_PROGRESS_S seconds (default 20) while either still runs.
#
# Run it (`scripts/setup.sh`): both, then it prints the binaries folder on stdout.
# Source it (scripts/test.sh): `setup_start` builds the binaries in the background and the venv in
# the foreground, so more work can run before `setup_wait_binaries` (which sets LORAPLANE_BIN_DIR).
# Logs go to $SETUP_LOGS (a fresh /tmp folder unless set). SETUP_BINARIES names the sets of
# binaries to build (devcluster/build-binaries.sh; default: all of them): `make demo` builds only
# `control-plane`, not the ~5 minutes of kube-proxy and CoreDNS it never uses.

_setup_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SETUP_LOGS=${SETUP_LOGS:-$(mktemp -d /tmp/loraplane-setup.XXXXXX)}
_setup_start=$(date +%s)
_setup_gocache=$(go env GOCACHE 2>/dev/null || true)

_setup_say() { echo "[setup] $*" >&2; }
_setup_elapsed() { local s=$(( $(date +%s) - _setup_start )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
_setup_mb() { [ -n "$1" ] && [ -d "$1" ] && du -sm "$1" 2>/dev/null | cut -f1 || echo 0; }

# What the build scripts are compiling now: every "[build-X] compiling ITEM" without its "ITEM
# compiled in" or its script's "built in" line (helm compiles beside Kubernetes, so there can be
# two), else their last line.
_setup_build_step() {
  awk '
    match($0, /^\[build-[a-z0-9-]+\] /) {
      prefix = substr($0, 1, RLENGTH - 1); rest = substr($0, RLENGTH + 1); last = $0
      if (rest ~ /^compiling /) {
        item = substr(rest, 11); sub(/ \(.*$/, "", item); key = prefix SUBSEP item
        open[key] = item; order[++n] = key
      } else if (rest ~ / compiled in /) {
        item = rest; sub(/ compiled in .*$/, "", item); delete open[prefix SUBSEP item]
      } else if (rest ~ /^built in /) {
        for (key in open) if (index(key, prefix SUBSEP) == 1) delete open[key]
      }
    }
    END {
      for (i = 1; i <= n; i++) if ((order[i] in open) && !shown[order[i]]++) now = now (now ? " + " : "") open[order[i]]
      print (now ? "compiling " now : last)
    }' "$1" 2>/dev/null || true
}

# One line for what each unfinished step is doing: the Go build's own last step and how much it has
# compiled so far; pip's last action and how many packages it has gathered.
_setup_progress_line() {
  local parts=()
  if [ -n "${_setup_bin_pid:-}" ] && kill -0 "$_setup_bin_pid" 2>/dev/null; then
    local step; step=$(_setup_build_step "$SETUP_LOGS/binaries.err")
    local grown=$(( $(_setup_mb "$_setup_gocache") - _setup_gocache_mb ))
    parts+=("Go build: ${step:-starting} (+${grown} MB compiled)")
  fi
  if [ -n "${_setup_venv_pid:-}" ] && kill -0 "$_setup_venv_pid" 2>/dev/null; then
    local log="$SETUP_LOGS/pip.log" gathered last
    gathered=$(grep -c '^Collecting ' "$log" 2>/dev/null || true)
    last=$(grep -E '^ *(Collecting|Downloading|Installing|Building|Successfully)' "$log" 2>/dev/null \
      | tail -n 1 | sed 's/^ *//' | cut -c1-70)
    parts+=("Python: ${gathered:-0} packages gathered, ${last:-creating the venv}")
  fi
  [ "${#parts[@]}" -gt 0 ] && _setup_say "$(_setup_elapsed)  $(IFS='|'; echo "${parts[*]}" | sed 's/|/  |  /g')"
  return 0
}

_setup_ticker() {
  local nap
  trap 'kill "$nap" 2>/dev/null; exit 0' TERM  # no stray sleep keeps a pipe of `make demo | tee` open
  while :; do
    sleep "${LORAPLANE_PROGRESS_S:-20}" & nap=$!
    wait "$nap"
    _setup_progress_line
  done
}

# What the local cluster and the image test run besides Python and Go: nft (kube-proxy's nftables
# mode), buildah, podman and debootstrap (the operator image). Installed from Debian's packages when
# missing and running as root; without root the image test says what it lacks and skips.
_SETUP_DEBIAN_PACKAGES=(nftables:nft buildah:buildah podman:podman debootstrap:debootstrap)
_setup_system_packages() {
  local missing=() entry
  for entry in "${_SETUP_DEBIAN_PACKAGES[@]}"; do
    command -v "${entry#*:}" >/dev/null 2>&1 || missing+=("${entry%%:*}")
  done
  [ "${#missing[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 0
  echo "[build-packages] installing ${missing[*]} (Debian packages)" >&2
  { apt-get install -y -q --no-install-recommends "${missing[@]}" \
      || { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; }; } >&2 \
    || echo "[build-packages] warning: could not install ${missing[*]}" >&2
}

setup_start() {
  _setup_gocache_mb=$(_setup_mb "$_setup_gocache")
  # Under the lock loraplane_devcluster.binaries takes too: two builds at once would break each other.
  local cache=${LORAPLANE_CACHE:-$HOME/.cache/loraplane}
  mkdir -p "$cache"
  # One background chain, so the Go builds take turns on the cores instead of slowing each other:
  # the Kubernetes binaries (under the lock loraplane_devcluster.binaries takes too) and, for the
  # tests, first the Debian tools they drive and then the S3 server and Kueue they start.
  # The test servers and tools only for `make test` (SETUP_FOR_TESTS=1): the demo needs neither.
  local sets=()  # none named: every set; the tests need them all whatever SETUP_BINARIES says
  [ -n "${SETUP_FOR_TESTS:-}" ] || read -ra sets <<<"${SETUP_BINARIES:-}"
  {
    [ -z "${SETUP_FOR_TESTS:-}" ] || _setup_system_packages
    flock "$cache/build-binaries.lock" "$_setup_root/devcluster/build-binaries.sh" "${sets[@]}" \
      >"$SETUP_LOGS/binaries.out" || exit
    [ -z "${SETUP_FOR_TESTS:-}" ] || { "$_setup_root/devcluster/build-s3.sh" >/dev/null \
      && "$_setup_root/devcluster/build-kueue.sh" >/dev/null; }
  } 2>"$SETUP_LOGS/binaries.err" &
  _setup_bin_pid=$!
  SETUP_VENV_LOG="$SETUP_LOGS/pip.log" "$_setup_root/scripts/setup-venv.sh" >"$SETUP_LOGS/venv.out" &
  _setup_venv_pid=$!
  # After both pids are set: the ticker is a subshell and sees only what was set before it forked.
  _setup_ticker &
  _setup_ticker_pid=$!
  wait "$_setup_venv_pid"
  local rc=$?
  _setup_venv_pid=
  if [ "$rc" -ne 0 ]; then
    _setup_say "the Python environment failed (rc $rc); pip's log: $SETUP_LOGS/pip.log"
    tail -n 20 "$SETUP_LOGS/pip.log" >&2 2>/dev/null
  else
    _setup_say "$(_setup_elapsed)  Python environment ready: $(tail -n 1 "$SETUP_LOGS/venv.out")"
  fi
  return "$rc"
}

setup_wait_binaries() {
  wait "$_setup_bin_pid"
  local rc=$?
  _setup_bin_pid=
  kill "$_setup_ticker_pid" 2>/dev/null
  wait "$_setup_ticker_pid" 2>/dev/null
  if [ "$rc" -ne 0 ]; then
    _setup_say "the Kubernetes binaries failed (rc $rc); log: $SETUP_LOGS/binaries.err"
    tail -n 40 "$SETUP_LOGS/binaries.err" >&2
    return "$rc"
  fi
  export LORAPLANE_BIN_DIR; LORAPLANE_BIN_DIR=$(tail -n 1 "$SETUP_LOGS/binaries.out")
  _setup_say "$(_setup_elapsed)  Kubernetes binaries ready: $LORAPLANE_BIN_DIR"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -uo pipefail
  setup_start; venv_rc=$?
  setup_wait_binaries; bin_rc=$?
  [ "$venv_rc" -eq 0 ] && [ "$bin_rc" -eq 0 ] || exit 1
  echo "$LORAPLANE_BIN_DIR"
fi
