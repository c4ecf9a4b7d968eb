#!/usr/bin/env bash
# `make bench`: every benchmark, each printing ratios against a baseline measured in the same run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export HF_HUB_OFFLINE=1 PYTHONPATH="$root/operator:$root/worker:$root/devcluster:$root/tests"
py=.venv/bin/python
for bench in cluster_start node_agent training_jobs worker_throughput serving; do
  echo "==> bench/$bench.py"
  "$py" "bench/$bench.py"
done
