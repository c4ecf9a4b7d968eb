#!/usr/bin/env bash
# `make test`: set up what a fresh machine lacks, then lint, type-check and run every test (unit,
# real control plane, training and serving). Prints how long each phase took.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$root/operator:$root/worker:$root/devcluster"
logs=${LORAPLANE_TEST_LOGS:-$(mktemp -d /tmp/loraplane-test.XXXXXX)}
phases=()
status=0
now() { date +%s; }
record() { phases+=("$(printf '%-28s %6ss  %s' "$1" "$2" "$3")"); }
run_phase() {  # name, command...
  local name=$1; shift
  local start; start=$(now)
  echo "==> $name"
  if "$@"; then record "$name" $(( $(now) - start )) ok; else record "$name" $(( $(now) - start )) FAILED; status=1; fi
}

# The Go build overlaps the Python set-up and then lint, types and unit tests (scripts/setup.sh, the
# same set-up `make demo` runs).
export SETUP_LOGS=$logs SETUP_FOR_TESTS=1  # also the S3 server, Kueue and the image tools
# shellcheck source=setup.sh
source scripts/setup.sh
run_phase "python environment" setup_start
venv_ok=$status
if [ "$venv_ok" -eq 0 ]; then
  run_phase "lint (ruff)" .venv/bin/ruff check .
  run_phase "format (ruff)" .venv/bin/ruff format --check .
  run_phase "types (mypy)" .venv/bin/mypy operator/loraplane worker/loraplane_worker devcluster/loraplane_devcluster
  run_phase "unit tests" .venv/bin/python -m pytest -q -m "not cluster and not e2e and not torch" -p no:cacheprovider
fi

echo "==> Kubernetes binaries (building since the start; log: $logs/binaries.err)"
binaries_start=$_setup_start
if setup_wait_binaries; then
  record "kubernetes binaries" $(( $(now) - binaries_start )) "ok (overlapped)"
else
  record "kubernetes binaries" $(( $(now) - binaries_start )) FAILED; status=1
fi

# Cluster and end-to-end tests run even when lint or unit tests failed: one run reports everything.
if [ "$venv_ok" -eq 0 ] && [ -n "${LORAPLANE_BIN_DIR:-}" ]; then
  start=$(now)
  echo "==> cluster, training and serving tests"
  .venv/bin/python -m pytest -m "cluster or e2e or torch" -p no:cacheprovider --durations=15 \
    2>&1 | tee "$logs/pytest.log"
  rc=${PIPESTATUS[0]}
  record "cluster + e2e tests" $(( $(now) - start )) "$([ "$rc" -eq 0 ] && echo ok || echo FAILED)"
  [ "$rc" -eq 0 ] || status=1
fi

echo
echo "Time per phase:"
printf '  %s\n' "${phases[@]}"
echo "  logs: $logs"
# CI reads the closing line: end on pytest's own summary.
[ -f "$logs/pytest.log" ] && grep -E '^=+ .*(passed|failed|error).* =+$' "$logs/pytest.log" | tail -n 1
exit "$status"
